"""The pluggable part of the evaluation suite: what a pair metric is (``Pair``, ``PairMetric``), and the small
helpers every metric uses to report itself (``unavailable``, ``first_line``, and the model names
``package_version``, ``file_sha256``, ``hub_model``). The statistics behind the figures live in ``stats``.

A figure is a dict ``{"value", "ci95", "n", "definition", "model"}`` (plus ``"unavailable": reason`` when it
could not be measured, and optional details such as ``"distribution"``, or ``"interval"`` naming the kind of
interval). A ``PairMetric`` loads its models once, sees the aligned pairs in batches and turns them into figures
at the end; a metric whose model cannot be loaded reports every one of its figures as unavailable with the reason,
never a number.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np


@dataclass
class Pair:
    """One aligned pair, decoded: RGB uint8 arrays (display orientation) and the anonymized row's columns."""

    row: int  # index of the anonymized row
    original: np.ndarray
    anonymized: np.ndarray
    flagged: bool = True
    regions: list = field(default_factory=list)  # the row's privacy_regions


class PairMetric:
    """Base class of the pair metrics. Subclasses set ``name`` (the ``--metrics`` name), ``figures`` (figure name
    -> definition) and ``model`` (model ids with revision or package version), load their models in ``__init__``
    and set ``self.unavailable`` to the reason when they cannot; ``add`` is then never called."""

    name: str = ""
    figures: dict[str, str] = {}

    def __init__(self) -> None:
        self.unavailable: str | None = None
        self.model = ""
        self.models: dict[str, str] = {}  # role -> model, for the report's model list
        self.per_pair: dict[str, list] = {}  # figure -> per-pair values, for the histograms
        self.per_row: dict[str, dict[int, float]] = {}  # figure -> anonymized row -> value, for the per-category table
        self.risk: dict[int, float] = {}  # row -> how identifiable the pair still is (ranks the least private rows)

    def add(self, pairs: list[Pair]) -> None:
        raise NotImplementedError

    def keep(self, figure: str, row: int, value) -> None:
        """One pair's value of a figure (None: undefined for that pair)."""
        self.per_pair.setdefault(figure, []).append(value)
        if value is not None:
            self.per_row.setdefault(figure, {})[row] = float(value)

    def finish(self, seed: int) -> dict[str, dict]:
        raise NotImplementedError

    def report(self, seed: int) -> dict[str, dict]:
        if self.unavailable is not None:
            return {name: unavailable(definition, self.unavailable, self.model) for name, definition in self.figures.items()}
        return self.finish(seed)


def unavailable(definition: str, reason: str, model: str = "") -> dict:
    return {"value": None, "ci95": None, "n": 0, "definition": definition, "model": model, "unavailable": reason}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def package_version(dist: str) -> str:
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return f"{dist} (not installed)"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_model(model_id: str, revision: str | None) -> str:
    """``id@revision``; a model given without a revision is marked unpinned."""
    return f"{model_id}@{revision}" if revision else f"{model_id} (revision not pinned)"
