"""Per-pair metrics of the evaluation suite that run offline on models shipped in packages.

Privacy
- FaceSim: faces found in the original (RetinaFace) are embedded with dlib's 128-d ResNet; each is compared
  with every face found in the anonymized image (best match) and with whatever is left at its own spot.
  Besides the paper's mean best-match cosine similarity we count what the reference skips: faces that
  vanished (no face detected in the anonymized image) and faces re-identified (dlib distance < 0.6).
- TextSim: text read by a full OCR (PP-OCRv4 via rapidocr) in both images, compared with rapidfuzz's
  token-set ratio / 100, plus the leak rate of the original's identifier-like strings (4+ alphanumerics).
Cheating (did the output just copy the source?)
- SSIM of the two images (grey, 256 px on the longer side) and a 64-bit perceptual hash (DCT) distance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

DLIB_SAME_PERSON = 0.6
_TOKEN = re.compile(r"[A-Za-z0-9@.+-]{4,}")


@dataclass
class FacePair:
    faces: int = 0  # faces found in the original
    best_cosine: list[float] = field(default_factory=list)  # per original face with a counterpart
    spot_distance: list[float] = field(default_factory=list)  # dlib distance to the pixels at its own spot
    vanished: int = 0  # original faces with no face at all in the anonymized image
    reidentified: int = 0  # original faces whose best match is closer than DLIB_SAME_PERSON


class FaceMatcher:
    """RetinaFace detection + dlib 128-d embeddings, loaded once."""

    def __init__(self, threshold: float = 0.5):
        import dlib
        import face_recognition_models as frm

        from ..inspection.lite import FaceDetector

        self.detector = FaceDetector(threshold, 1280)
        self.shape = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self._dlib = dlib

    def embed(self, rgb: np.ndarray, box) -> np.ndarray:
        shape = self.shape(rgb, self._dlib.rectangle(*[int(v) for v in box]))
        return np.asarray(self.net.compute_face_descriptor(rgb, shape))

    def compare(self, original: np.ndarray, anonymized: np.ndarray) -> FacePair:
        result = FacePair()
        faces = [box for box, _ in self.detector(original)]
        result.faces = len(faces)
        if not faces:
            return result
        after = [self.embed(anonymized, box) for box, _ in self.detector(anonymized)]
        for box in faces:
            e = self.embed(original, box)
            result.spot_distance.append(float(np.linalg.norm(e - self.embed(anonymized, _scaled(box, original, anonymized)))))
            if not after:
                result.vanished += 1
                continue
            distances = [float(np.linalg.norm(e - a)) for a in after]
            cosines = [float(e @ a / (np.linalg.norm(e) * np.linalg.norm(a) + 1e-12)) for a in after]
            result.best_cosine.append(max(cosines))
            if min(distances) < DLIB_SAME_PERSON:
                result.reidentified += 1
        return result


def _scaled(box, original: np.ndarray, anonymized: np.ndarray):
    sy, sx = anonymized.shape[0] / original.shape[0], anonymized.shape[1] / original.shape[1]
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


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


def text_similarity(before: list[str], after: list[str]) -> float | None:
    """rapidfuzz token-set ratio / 100 of all text read; None when the original has no text."""
    from rapidfuzz import fuzz

    if not before:
        return None
    return fuzz.token_set_ratio(" ".join(before), " ".join(after)) / 100.0


def leaked_strings(before: list[str], after: list[str]) -> tuple[int, int]:
    """(identifier-like strings of the original, how many of them can still be read in the anonymized image)."""
    tokens = {t.lower() for line in before for t in _TOKEN.findall(line)}
    after_text = " ".join(after).lower().replace(" ", "")
    return len(tokens), sum(1 for t in tokens if t in after_text)


def _grey(rgb: np.ndarray, side: int = 256) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    small = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def ssim(original: np.ndarray, anonymized: np.ndarray) -> float:
    import cv2
    from skimage.metrics import structural_similarity

    a = _grey(original)
    b = cv2.resize(_grey(anonymized), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return float(structural_similarity(a, b, data_range=255))


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash."""
    import cv2

    small = cv2.resize(_grey(rgb), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")
