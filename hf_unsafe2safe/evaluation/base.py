"""The pluggable part of the evaluation suite: what a pair metric is, and the statistics every figure shares.

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


WILSON_Z = 1.959963984540054  # standard normal 97.5 % quantile: a two-sided 95 % interval
PROPORTION_INTERVAL = "Wilson score 95% interval on the pooled counts, at the effective sample size: pooled total / design effect of the pairs"


def wilson_interval(hits: float, total: float, z: float = WILSON_Z) -> list[float] | None:
    """Wilson score interval of the proportion ``hits / total`` (None when nothing was counted; fractional counts
    are allowed, for an effective sample size). Unlike the normal (Wald) or a bootstrap interval it does not
    collapse at 0 or 1: 0 of 14 gives [0, 0.215], not [0, 0], and it keeps close to its nominal coverage on small
    counts (Brown, Cai & DasGupta 2001)."""
    if total <= 0:
        return None
    p, z2 = hits / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * np.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    low = 0.0 if hits <= 0 else max(0.0, float(centre - half))  # exact ends: rounding leaves 1e-17 at 0 of n
    high = 1.0 if hits >= total else min(1.0, float(centre + half))
    return [low, high]


def design_effect(hits: np.ndarray, totals: np.ndarray) -> float:
    """How much the pairs inflate the variance of the pooled share sum(hits) / sum(totals): the variance of that
    ratio with the pairs as clusters (the linearised ratio estimator, Cochran 1977, ch. 6) over its variance were
    every unit (face, string, person) independent, p (1 - p) / (N - 1); at least 1. Units of one image share its
    lighting, size and edit, so they agree more often than independent ones: ten faces of one group photo weigh
    less than ten photos. 1 with a single unit per pair, under two pairs, or when the share is 0 or 1 (then the
    data hold no spread to estimate it from, and 1 is the usual choice)."""
    keep = totals > 0
    h, t = hits[keep], totals[keep]
    k, total = len(t), float(t.sum())
    p = float(h.sum()) / total if total else 0.0
    if k < 2 or total < 2 or p <= 0.0 or p >= 1.0:
        return 1.0
    clustered = k / (k - 1) * float(((h - p * t) ** 2).sum()) / total**2
    return max(1.0, clustered / (p * (1 - p) / (total - 1)))


def ratio_figure(hits, totals, definition: str, seed: int, model: str, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """sum(hits) / sum(totals) pooled over pairs (one entry per pair) with a Wilson score 95 % interval at the
    effective sample size sum(totals) / design effect (``design_effect``: units of one pair are not independent),
    the effective-sample-size interval of survey statistics (Korn & Graubard 1998). ``n`` is the pooled total;
    ``design_effect`` and ``interval`` say what the interval is. It replaced a pair bootstrap, whose interval is
    [0, 0] or [1, 1] whenever every unit agrees (0 of 14 read as certain). ``seed`` and ``rounds`` are unused,
    kept so that the callers' signature stays the same."""
    hits, totals = np.asarray(hits, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    n = int(totals.sum())
    if not n:
        return {"value": None, "ci95": None, "n": 0, "definition": definition, "model": model, "interval": PROPORTION_INTERVAL}
    value = float(hits.sum() / totals.sum())
    deff = design_effect(hits, totals)
    effective = float(totals.sum()) / deff
    return {
        "value": value, "ci95": wilson_interval(value * effective, effective), "n": n, "definition": definition, "model": model,
        "interval": PROPORTION_INTERVAL, "design_effect": deff,
    }


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
    ``labels``). ``distribution`` keeps the pooled counts per label. The interval is a percentile bootstrap that
    resamples pairs and recomputes the pooled distribution: an entropy is no proportion, so the Wilson interval
    does not apply and no closed form is at hand, and resampling whole pairs (a cluster bootstrap) keeps the persons
    of one image together, as they are not independent."""
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
