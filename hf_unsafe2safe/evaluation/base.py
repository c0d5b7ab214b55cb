"""The pluggable part of the evaluation suite: what a pair metric is, and the statistics every figure shares.

A figure is a dict ``{"value", "ci95", "n", "definition", "model"}`` (plus ``"unavailable": reason`` when it
could not be measured, and optional details such as ``"distribution"``). A ``PairMetric`` loads its models once,
sees the aligned pairs in batches and turns them into figures at the end; a metric whose model cannot be loaded
reports every one of its figures as unavailable with the reason, never a number.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

BOOTSTRAP_ROUNDS = 1000


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


# ---- statistics ----------------------------------------------------------------------------------------------


def bootstrap_ci(values: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean (deterministic under ``seed``)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=np.float64)
    means = arr[rng.integers(0, len(arr), size=(rounds, len(arr)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def mean_figure(values: list, definition: str, seed: int, model: str) -> dict:
    """Mean of the defined per-pair values (None: undefined for that pair) with its bootstrap interval."""
    vals = [float(v) for v in values if v is not None]
    return {"value": float(np.mean(vals)) if vals else None, "ci95": bootstrap_ci(vals, seed), "n": len(vals), "definition": definition, "model": model}


def ratio_figure(hits, totals, definition: str, seed: int, model: str, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """sum(hits) / sum(totals) pooled over pairs (one entry per pair); the interval resamples pairs (a ratio
    bootstrap), deterministic under ``seed``. ``n`` is the pooled total."""
    hits, totals = np.asarray(hits, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    n = int(totals.sum())
    value = float(hits.sum() / n) if n else None
    ci = None
    if n and len(totals) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(totals), size=(rounds, len(totals)))
        t = totals[idx].sum(axis=1)
        ratios = hits[idx].sum(axis=1)[t > 0] / t[t > 0]
        ci = [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if len(ratios) else None
    return {"value": value, "ci95": ci, "n": n, "definition": definition, "model": model}


def normalized_entropy(counts) -> float | None:
    """Shannon entropy of the distribution ``counts / sum(counts)`` divided by log(K), K = len(counts) (all
    categories, also the empty ones): 0 when everyone falls in one category, 1 when they are spread evenly.
    None when nothing was counted."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0 or len(c) < 2:
        return None
    p = c[c > 0] / total
    return max(0.0, float(-(p * np.log(p)).sum() / np.log(len(c))))  # max: no -0.0 for a single category


def entropy_figure(rows, labels: tuple[str, ...], definition: str, seed: int, model: str, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Normalized entropy of the distribution pooled over pairs; ``rows`` holds one count vector per pair (over
    ``labels``). The interval resamples pairs and recomputes the pooled distribution. ``distribution`` keeps the
    pooled counts per label."""
    counts = np.asarray(rows, dtype=np.float64).reshape(-1, len(labels))
    pooled = counts.sum(axis=0)
    ci = None
    if pooled.sum() > 0 and len(counts) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(counts), size=(rounds, len(counts)))
        values = [v for v in (normalized_entropy(c) for c in counts[idx].sum(axis=1)) if v is not None]
        ci = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None
    return {
        "value": normalized_entropy(pooled), "ci95": ci, "n": int(pooled.sum()), "definition": definition, "model": model,
        "distribution": {label: int(c) for label, c in zip(labels, pooled)},
    }
