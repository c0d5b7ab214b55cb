"""The report's warnings: what a reader must see before any number, each with the figure that triggered it.

A report can look good for the wrong reason: a blackout has no face to re-identify and no text to read, and a
copy of the originals has no artefacts. These checks turn the figures into plain warnings:

- ``over-edit``: most of every flagged image changed (``edited_area_share`` above ``EDITED_AREA``), or, in a
  regions-mode run, the pixels outside the grown sensitive regions changed (``outside_region_change`` above
  ``OUTSIDE_CHANGE`` grey levels on average, or more than ``OUTSIDE_EDITED`` of them beyond JPEG noise):
  destroyed, blurred or repainted wholesale, not anonymized (a lite region edit stays at 1.1-1.8 grey levels and
  0 % outside; a global blur reaches 9-20 and 17-42 %, a blackout about 100 and 80-100 %);
- ``copy``: flagged images left (nearly) as they were: ``region_unchanged_share`` (sensitive regions copied
  through) at or above ``COPIED_REGIONS``, or ``edited_area_share`` under ``UNEDITED_AREA`` (nothing changed);
- ``privacy-leak``: ``face_reidentified_share`` or ``text_leak_rate`` above ``LEAK_SHARE``;
- ``unmeasured``: a whole dimension of the evaluation (privacy, cheating, quality, utility) has no figure, because
  it was not asked for or because every one of its models is unavailable offline.

The thresholds are deliberately loose: a warning means "look at this", and a clean report needs each figure to
be read as well.
"""

from __future__ import annotations

OUTSIDE_CHANGE = 6.0  # mean |change| (0-255) outside the grown regions; JPEG q95 re-encoding stays under 2
OUTSIDE_EDITED = 0.1  # share of the pixels outside the grown regions changed beyond JPEG noise
EDITED_AREA = 0.5  # share of the flagged images' pixels changed beyond JPEG noise
UNEDITED_AREA = 0.002  # ... under which nothing was really edited
COPIED_REGIONS = 0.25  # share of sensitive regions whose pixels barely changed
LEAK_SHARE = 0.1  # share of faces re-identified, or of identifier-like strings still legible

# the dimensions of the evaluation and the figures that measure each (any one available counts as measured)
DIMENSIONS = {
    "privacy": ("face_sim", "face_reidentified_share", "face_vanished_share", "text_sim", "text_leak_rate", "gender_agreement", "age_agreement", "race_agreement", "vlm_score"),
    "cheating": ("ssim", "unchanged_share", "near_duplicate_share", "region_unchanged_share", "outside_region_change", "edited_area_share", "over_edited_share", "detail_ratio", "lpips"),
    "quality": ("clip_score", "directional_clip", "fid", "kid"),
    "utility": ("utility_accuracy_original", "utility_accuracy_anonymized", "utility_accuracy_difference"),
}


def _value(metrics: dict, name: str) -> float | None:
    m = metrics.get(name)
    return None if not m or m.get("value") is None else float(m["value"])


def _warning(kind: str, message: str, figure: str | None = None, value: float | None = None, threshold: float | None = None) -> dict:
    return {"kind": kind, "message": message, "figure": figure, "value": value, "threshold": threshold}


def report_warnings(metrics: dict, global_edit: bool = False) -> list[dict]:
    """The warnings of a report's figures (``{"kind", "message", "figure", "value", "threshold"}``), most serious
    first. ``global_edit``: the run edited whole images on purpose (``diffusion.mode = "global"``), so change
    outside the regions is expected there."""
    out = []
    area = _value(metrics, "edited_area_share")
    outside = _value(metrics, "outside_region_change")
    if area is not None and area > EDITED_AREA:
        out.append(_warning("over-edit", f"{area:.0%} of the flagged images' pixels changed: most of each image was rewritten, not only its sensitive regions (blackout, global blur or repaint?)", "edited_area_share", area, EDITED_AREA))
    elif outside is not None and outside > OUTSIDE_CHANGE and not global_edit:
        out.append(_warning("over-edit", f"pixels outside the sensitive regions changed by {outside:.1f} grey levels on average: the edit was not confined to the regions", "outside_region_change", outside, OUTSIDE_CHANGE))
    elif not global_edit and (metrics.get("edited_area_share") or {}).get("outside") is not None:
        share = float(metrics["edited_area_share"]["outside"])
        if share > OUTSIDE_EDITED:
            out.append(_warning("over-edit", f"{share:.0%} of the pixels outside the sensitive regions changed beyond JPEG noise: the edit was not confined to the regions", "edited_area_share.outside", share, OUTSIDE_EDITED))
    for name in ("face_reidentified_share", "text_leak_rate"):
        v = _value(metrics, name)
        if v is not None and v > LEAK_SHARE:
            what = "faces are still the same person" if name.startswith("face") else "identifier-like strings can still be read"
            out.append(_warning("privacy-leak", f"{v:.0%} of the {what} after anonymization", name, v, LEAK_SHARE))
    copied = _value(metrics, "region_unchanged_share")
    if copied is not None and copied >= COPIED_REGIONS:
        out.append(_warning("copy", f"{copied:.0%} of the sensitive regions were copied through (their pixels barely changed)", "region_unchanged_share", copied, COPIED_REGIONS))
    elif area is not None and area < UNEDITED_AREA:
        out.append(_warning("copy", f"only {area:.2%} of the flagged images' pixels changed: the flagged images were left as they were", "edited_area_share", area, UNEDITED_AREA))
    for dimension, names in DIMENSIONS.items():
        present = [metrics[n] for n in names if n in metrics]
        if any(m.get("value") is not None for m in present):
            continue
        reasons = sorted({m["unavailable"] for m in present if m.get("unavailable")})
        why = ("unavailable: " + "; ".join(reasons)) if reasons else ("nothing to measure" if present else "not asked for")
        out.append(_warning("unmeasured", f"{dimension} was not measured ({why})", None, None, None))
    return out
