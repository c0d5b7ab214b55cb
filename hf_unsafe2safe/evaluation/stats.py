"""The statistics the evaluation shares: how the two datasets are paired, and how per-pair values become figures
with their 95% intervals. Every metric module takes them from here (never from ``report.py``).

- pairing: ``align`` (by a key column, or by position checked on the shared columns or on the content);
- means: ``bootstrap_ci`` / ``mean_figure`` (percentile bootstrap of a mean over pairs), ``cluster_ratio_ci`` /
  ``pooled_mean_figure`` (a ratio of sums pooled over pairs, resampling whole pairs);
- proportions: ``wilson_interval``, ``design_effect``, ``ratio_figure`` (Wilson score interval at the effective
  sample size);
- distributions: ``normalized_entropy``, ``entropy_figure``;
- set distances (FID, KID): ``half_subsets``, ``half_subset_interval``, ``set_distance_figure``.

A figure is a dict ``{"value", "ci95", "n", "definition", "model"}`` (see ``base``). Every interval is
deterministic under its ``seed``.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import columns as C

logger = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 1000


# ---- pairing -------------------------------------------------------------------------------------------------


def align(original, anonymized, key: str | None = None, image_column: str = "image", run_seed: int = 0):
    """Pairs of rows, by ``key`` when given, else by position, checked on every shared non-image column or, when
    the datasets share none, on the content: each anonymized row's ``anonymization.seed`` derives from the
    original image's bytes and the run's global seed (``run_seed``), so a shifted or reordered row shows."""
    if key is not None:
        for name, ds in (("original", original), ("anonymized", anonymized)):
            if key not in ds.column_names:
                raise ValueError(f"Got {key!r} for `key`; the {name} dataset has columns {ds.column_names}")
        index = {k: i for i, k in enumerate(original[key])}
        if len(index) != len(original):
            raise ValueError(f"`key` column {key!r} is not unique in the original dataset")
        missing = [k for k in anonymized[key] if k not in index]
        if missing:
            raise ValueError(f"{len(missing)} anonymized rows have no original with the same {key!r} (e.g. {missing[:3]})")
        return [(index[k], j) for j, k in enumerate(anonymized[key])]
    if len(original) != len(anonymized):
        raise ValueError(f"the datasets have {len(original)} and {len(anonymized)} rows; pass `key` to align them by a column")
    shared = [c for c in original.column_names if c in anonymized.column_names and c != image_column and c not in C.ADDED_COLUMNS]
    for column in shared:
        if original[column] != anonymized[column]:
            raise ValueError(f"rows are not aligned: column {column!r} differs between the datasets; pass `key`")
    if not shared:
        _check_content_order(original, anonymized, image_column, run_seed)
    return [(i, i) for i in range(len(original))]


def _check_content_order(original, anonymized, image_column: str, run_seed: int) -> None:
    """Position alone is never trusted: row i's anonymization seed must be the one the transform derives from the
    bytes of the original's row i (rows without an image or a seed, e.g. invalid input, are skipped)."""
    import hashlib

    from datasets import Image

    from ..transform import row_seed
    from ..utils.images import image_bytes

    if C.ANONYMIZATION not in anonymized.column_names:
        raise ValueError("rows cannot be aligned: the datasets share no column to check their order and the anonymized one has no `anonymization` column; pass `key`")
    cells = original.cast_column(image_column, Image(decode=False))[image_column] if image_column in original.column_names else []
    checked = 0
    for i, (cell, status) in enumerate(zip(cells, anonymized[C.ANONYMIZATION])):
        seed = (status or {}).get("seed")
        if seed is None or seed < 0:
            continue
        try:
            data, _ = image_bytes(cell)
        except (OSError, ValueError):
            continue
        if data is None:
            continue
        if row_seed(run_seed, hashlib.sha256(data).hexdigest()) != seed:
            raise ValueError(
                f"rows are not aligned: the anonymization seed of row {i} does not derive from the original image of row {i} "
                f"(run seed {run_seed}); pass `key`, or `run_seed` if the anonymization ran with another --seed"
            )
        checked += 1
    logger.info("row order checked on the content of %d rows", checked)


# ---- means over pairs ----------------------------------------------------------------------------------------


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


def cluster_ratio_ci(sums, counts, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> list[float] | None:
    """Percentile bootstrap 95% interval of the pooled ratio sum(sums) / sum(counts), one entry per pair, that
    draws whole pairs with replacement and recomputes the pooled ratio (a cluster bootstrap: the units of one pair,
    its faces or its pixels, are not independent); deterministic under ``seed``. None under 2 pairs or when nothing
    was counted; draws that hold no unit take no part."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if len(counts) < 2 or not float(counts.sum()):
        return None
    idx = np.random.default_rng(seed).integers(0, len(counts), size=(rounds, len(counts)))
    c = counts[idx].sum(axis=1)
    ratios = sums[idx].sum(axis=1)[c > 0] / c[c > 0]
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if len(ratios) else None


def pooled_mean_figure(groups, definition: str, seed: int, model: str, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Mean over every value of every group (``groups``: one list of values per pair, e.g. its faces), each value
    weighing the same. The 95% interval is a percentile bootstrap that draws pairs with replacement and recomputes
    the pooled mean (``cluster_ratio_ci``: values of one pair are not independent), deterministic under ``seed``;
    pairs without a value take no part. ``n``: the values pooled; ``pairs``: the pairs holding them."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if g is not None and len(g)]
    sums = np.array([g.sum() for g in groups], dtype=np.float64)
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    n = int(sizes.sum())
    ci = cluster_ratio_ci(sums, sizes, seed, rounds)
    value = float(sums.sum() / n) if n else None
    interval = f"percentile bootstrap 95% interval over pairs ({rounds} rounds; the values of one pair are drawn together)"
    return {"value": value, "ci95": ci, "n": n, "definition": definition, "model": model, "pairs": len(groups), "interval": interval}


# ---- proportions ---------------------------------------------------------------------------------------------


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


# ---- distributions -------------------------------------------------------------------------------------------


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


# ---- set distances (FID, KID) --------------------------------------------------------------------------------


SUBSET_ROUNDS = 100  # each round recomputes the distance (for FID a d x d matrix square root)
SUBSET_INTERVAL = (
    "95% interval: the spread of the figure over {rounds} random half-subsets of the pairs (all of them when there "
    "are fewer), drawn without replacement (no pair twice, so no duplicated features), centred on the full-set value "
    "(delete-half jackknife): the sampling variability at this number of pairs"
)


def half_subsets(n: int, rounds: int, rng: np.random.Generator) -> tuple[int, list[np.ndarray]]:
    """Subset size m = max(2, n // 2) and index sets of m of the ``n`` pairs, each drawn without replacement:
    every such set when there are at most ``rounds`` of them, else ``rounds`` random ones. Without replacement
    because a with-replacement bootstrap repeats rows, and repeats bias both set distances upwards: FID sees fewer
    distinct features (its small-sample bias grows) and KID's within-set kernel sums pair a row with its own copy."""
    import itertools
    import math

    m = max(2, n // 2)
    if math.comb(n, m) <= rounds:
        return m, [np.array(s) for s in itertools.combinations(range(n), m)]
    return m, [np.sort(rng.choice(n, size=m, replace=False)) for _ in range(rounds)]


def half_subset_interval(distance, before: np.ndarray, after: np.ndarray, value: float, seed: int, rounds: int = SUBSET_ROUNDS) -> list[float] | None:
    """95% interval of a set distance from half-subsets of the pairs (row i of both sets kept together),
    deterministic under ``seed``; None under 3 pairs. The subset values' deviations from their median, scaled by
    sqrt(m / (n - m)) (1 for half-subsets), are added to the full-set ``value``. This is the delete-d jackknife
    with d = n - m: the variance of a statistic over subsets of m, times m / (n - m), estimates its variance over
    n (Shao & Wu 1989 show this for a wide class of statistics when d is a fixed fraction of n). Centring on the
    median removes the extra small-sample bias of the smaller subsets (FID's bias grows as the set shrinks) and
    puts the full-set value inside the interval, by construction. The interval covers the sampling variability at
    n pairs, not FID's bias itself."""
    n = len(before)
    if n < 3:
        return None
    m, subsets = half_subsets(n, rounds, np.random.default_rng(seed))
    values = np.array([distance(before[s], after[s]) for s in subsets])
    spread = (values - np.median(values)) * np.sqrt(m / (n - m))
    return [value + float(np.percentile(spread, 2.5)), value + float(np.percentile(spread, 97.5))]


def set_distance_figure(distance, before: np.ndarray, after: np.ndarray, definition: str, seed: int, model: str, rounds: int = SUBSET_ROUNDS, floor: float | None = None) -> dict:
    """A distance between two feature sets (None under 2 pairs) with the half-subset interval of
    ``half_subset_interval``; ``floor`` is the least value the distance can take (FID: 0), where the interval's
    lower end is cut."""
    n = len(before)
    if n < 2:
        return {"value": None, "ci95": None, "n": n, "definition": definition, "model": model}
    value = distance(before, after)
    ci = half_subset_interval(distance, before, after, value, seed, rounds)
    if ci is not None and floor is not None:
        ci[0] = min(max(ci[0], floor), value)
    return {"value": value, "ci95": ci, "n": n, "definition": definition, "model": model, "interval": SUBSET_INTERVAL.format(rounds=rounds)}
