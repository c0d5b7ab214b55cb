"""Did a diffusion edit really anonymize its regions? Identity and text checks run on every edited row.

A diffusion editor can change a region's pixels a lot and still leave the same person or the same words in
it (a recoloured face, re-rendered text). After compositing, each region is checked with the models the
evaluation suite uses, so "edited" means the same thing in both places:

- faces: RetinaFace finds the faces of the *source* whose centre lies inside an edited region; each is
  embedded with dlib's 128-d ResNet in the source and at the same spot in the result. A distance under
  ``face_distance`` (dlib's same-person threshold is 0.6) means the identity survived: that face box leaks.
- text: the result is read once by a full OCR (PP-OCRv4); the lines whose centre lies in a region of the text
  category are compared with the region's text in the source (recognised by Stage 1, else read). The region leaks when an identifier-like string of the source (4+ letters/digits) can still be read in the
  result, or the whole text read is at least ``text_similarity`` alike (difflib ratio).

The leaking boxes go back to the caller, who gives them the lite edit (fail closed).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from ..inspection.base import Region


@dataclass
class Leak:
    region: Region  # the box to re-edit
    kind: str  # "face" or "text"
    evidence: float  # dlib distance (face) or text similarity (text)


def _inside(point, box) -> bool:
    x, y = point
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def _lines_in(lines, box) -> list[str]:
    return [text for (x0, y0, x1, y1), text in lines if _inside(((x0 + x1) / 2, (y0 + y1) / 2), box)]


def text_leaks(before: list[str], after: list[str], min_similarity: float) -> tuple[bool, float]:
    """(does text of the source survive in the result, similarity of all text read): an identifier-like string
    still readable, or the whole text at least ``min_similarity`` alike."""
    from ..evaluation.metrics import leaked_strings

    if not before:
        return False, 0.0
    similarity = difflib.SequenceMatcher(None, " ".join(before).lower(), " ".join(after).lower()).ratio() if after else 0.0
    _, leaked = leaked_strings(before, after)
    return leaked > 0 or similarity >= min_similarity, similarity


class LeakChecker:
    """Loaded once per process next to the diffusion editor; ``check`` is called once per edited row."""

    def __init__(self, face_distance: float = 0.6, text_similarity: float = 0.8, face_threshold: float = 0.5):
        try:
            from ..evaluation.metrics import FaceMatcher, TextReader

            self.faces = FaceMatcher(face_threshold)
        except ImportError as exc:
            raise ImportError(
                "the diffusion leak check needs dlib (pip install 'hf_unsafe2safe[models]'); "
                "or turn it off with diffusion.leak_check=false"
            ) from exc
        self.text = TextReader()
        self.face_distance, self.text_similarity = face_distance, text_similarity

    def check(self, source, result, regions: list[Region], text_categories=("text_symbols",)) -> list[Leak]:
        """Boxes of ``regions`` where the identity or the text of ``source`` (PIL) can still be found in ``result``."""
        a = np.ascontiguousarray(np.asarray(source.convert("RGB")))
        b = np.ascontiguousarray(np.asarray(result.convert("RGB")))
        leaks = []
        for box, score in self.faces.detector(a):
            box = tuple(int(round(v)) for v in box)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            if not any(_inside(centre, r.box) for r in regions):
                continue  # not a face Stage 1 asked to edit
            distance = float(np.linalg.norm(self.faces.embed(a, box) - self.faces.embed(b, box)))
            if distance < self.face_distance:
                h, w = a.shape[:2]
                clipped = (max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3]))
                leaks.append(Leak(Region("face", "people", clipped, float(score), "leak-check"), "face", distance))
        text_regions = [r for r in regions if r.category in text_categories or r.label.startswith("text")]
        if text_regions:
            # one OCR pass per image (not per region); a line belongs to the region holding its centre
            after = self.text.lines(b)
            before = self.text.lines(a) if any(not r.text for r in text_regions) else []
            for region in text_regions:
                source_text = [region.text] if region.text else _lines_in(before, region.box)
                if not source_text:
                    continue  # nothing readable to begin with
                leaked, similarity = text_leaks(source_text, _lines_in(after, region.box), self.text_similarity)
                if leaked:
                    leaks.append(Leak(region, "text", similarity))
        return leaks
