"""The paper's nine privacy categories, loaded from ``taxonomy.json`` (package data).

Detectors emit labels (``face``, ``text:phone_number``, ``metadata:gps`` ...); the taxonomy maps each
label to categories and to the reason shown in the privacy review.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Category:
    id: str
    number: int
    name: str
    description: str


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...]
    detector_labels: dict
    sha256: str

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories)

    def categories_for(self, label: str) -> list[str]:
        entry = self.detector_labels.get(label) or self.detector_labels.get(label.split(":", 1)[0])
        if entry is None:
            raise KeyError(f"Unknown detector label {label!r}; add it to taxonomy.json")
        return list(entry["categories"])

    def reason_for(self, label: str) -> str:
        entry = self.detector_labels.get(label) or self.detector_labels[label.split(":", 1)[0]]
        return entry["reason"]


@lru_cache(maxsize=1)
def load_taxonomy() -> Taxonomy:
    raw = resources.files("hf_unsafe2safe").joinpath("taxonomy.json").read_bytes()
    data = json.loads(raw)
    cats = tuple(Category(**c) for c in data["categories"])
    for label, entry in data["detector_labels"].items():
        unknown = set(entry["categories"]) - {c.id for c in cats}
        if unknown:
            raise ValueError(f"taxonomy.json: label {label!r} maps to unknown categories {sorted(unknown)}")
    return Taxonomy(categories=cats, detector_labels=data["detector_labels"], sha256=hashlib.sha256(raw).hexdigest())

