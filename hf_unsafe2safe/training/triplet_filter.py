"""The paper's triplet filter: keep a training pair only when its edit kept what the public caption describes.

For every pair (original image, anonymized image, public caption) a CLIP model scores how well each image matches
the caption (cosine similarity of the projected, L2-normalised image and text embeddings), and the pair is kept when

    ratio = CLIP(edited, caption) / CLIP(original, caption) > threshold        (the paper: 0.7)

i.e. the edit may lose at most 30 % of the caption alignment the original had: an edit that wrecked the scene
(a smear, a blank, an unrelated picture) is not a pair to learn from.

The ratio is defined only for a positive denominator. Cosine similarities can be <= 0 (an unrelated caption, a
random-weight model); the rule is:
- ``CLIP(original, caption) <= 0``: the original itself does not match its caption by this CLIP, so there is no
  alignment to preserve and the ratio means nothing (dividing by a negative number would even invert the test):
  the pair is dropped with the reason ``original_not_aligned`` and no ratio is counted.
- ``CLIP(original, caption) > 0`` and ``CLIP(edited, caption) <= 0``: the ratio is <= 0, below any (positive)
  threshold: dropped as ``below_threshold``, its ratio counted in the summary.
- a pair without a public caption (empty or blank) cannot be scored: dropped as ``empty_caption``; a pair with
  an image missing: dropped as ``missing_image``.
The threshold must be a positive number, so that a kept pair always has two positive similarities.
"""

from __future__ import annotations

import math

from .. import columns as C
from .pairs import open_image

REASONS = ("empty_caption", "missing_image", "original_not_aligned", "below_threshold")
RULE = "keep when CLIP(original, caption) > 0 and CLIP(edited, caption) / CLIP(original, caption) > threshold"


def off_record(threshold: float, kept: int) -> dict:
    """The record of a run without the filter (no CLIP model given): every pair kept, and said so."""
    return {"applied": False, "model": "", "threshold": threshold, "reason": "no CLIP model given (clip_model): every pair kept", "kept": kept, "dropped": 0}


def filter_pairs(dataset, rows: list[int], image_column: str, clip_model: str, threshold: float, device: str = "cpu", *, batch_size: int = 32, revision: str | None = None) -> tuple[list[int], dict]:
    """The rows of ``rows`` (indices into ``dataset``, an anonymization output with ``original_image`` kept) whose
    pair passes the filter (see the module doc), in their order, and the record of the filtering.

    ``clip_model``: a CLIP Hub id or folder (``transformers`` ``CLIPModel`` + ``CLIPProcessor``), loaded once;
    ``""`` turns the filter off (every row kept, the record says so)."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"Got {threshold!r} for `clip_threshold`; expected a positive number (the paper: 0.7).")
    rows = list(rows)
    if not clip_model:
        return rows, off_record(threshold, len(rows))
    for column in (image_column, C.ORIGINAL_IMAGE, C.PUBLIC_CAPTION):
        if column not in dataset.column_names:
            raise ValueError(f"the dataset has no column {column!r}: the triplet filter needs the original, the anonymized image and the public caption")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Got {batch_size!r} for `batch_size`; expected an int >= 1.")

    import numpy as np
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_model, revision=revision).to(device).eval()
    processor = CLIPProcessor.from_pretrained(clip_model, revision=revision)
    captions = dataset.select_columns([C.PUBLIC_CAPTION])
    images = dataset.select_columns([image_column, C.ORIGINAL_IMAGE])

    dropped = {reason: 0 for reason in REASONS}
    kept: list[int] = []
    ratios: list[float] = []
    scorable: list[tuple[int, str]] = []
    for r in rows:
        caption = (captions[r][C.PUBLIC_CAPTION] or "").strip()
        if caption:
            scorable.append((r, caption))
        else:
            dropped["empty_caption"] += 1

    # images are read one chunk at a time: a run's worth of decoded pairs need not fit in memory
    for start in range(0, len(scorable), batch_size):
        chunk = []
        for r, caption in scorable[start : start + batch_size]:
            row = images[r]
            if row[image_column] is None or row[C.ORIGINAL_IMAGE] is None:
                dropped["missing_image"] += 1
            else:
                chunk.append((r, open_image(row[image_column]), open_image(row[C.ORIGINAL_IMAGE]), caption))
        if not chunk:
            continue
        rs, edited, original, texts = zip(*chunk)
        for r, s_edit, s_orig in zip(rs, *pair_similarities(model, processor, list(edited), list(original), list(texts), device)):
            if s_orig <= 0:
                dropped["original_not_aligned"] += 1
                continue
            ratio = s_edit / s_orig
            ratios.append(ratio)
            if ratio > threshold:
                kept.append(r)
            else:
                dropped["below_threshold"] += 1
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    summary = None
    if ratios:
        a = np.asarray(ratios, dtype=np.float64)
        summary = {
            "count": int(a.size), "min": float(a.min()), "p10": float(np.quantile(a, 0.1)), "median": float(np.median(a)),
            "mean": float(a.mean()), "p90": float(np.quantile(a, 0.9)), "max": float(a.max()),
        }
    record = {
        "applied": True, "model": clip_model, "revision": revision, "threshold": float(threshold), "rule": RULE,
        "considered": len(rows), "kept": len(kept), "dropped": len(rows) - len(kept), "dropped_by_reason": dropped, "ratios": summary,
    }
    return kept, record


def pair_similarities(model, processor, edited: list, original: list, captions: list[str], device: str) -> tuple[list[float], list[float]]:
    """CLIP cosine similarities (edited_i, caption_i) and (original_i, caption_i): one batched pass over the images,
    one over the captions."""
    import torch

    texts = processor(text=captions, padding=True, truncation=True, return_tensors="pt")
    pixels = processor(images=edited + original, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image = _features(model.get_image_features(pixel_values=pixels.to(device, model.dtype)))
        text = _features(model.get_text_features(input_ids=texts["input_ids"].to(device), attention_mask=texts["attention_mask"].to(device)))
    image = torch.nn.functional.normalize(image.float(), dim=-1)
    text = torch.nn.functional.normalize(text.float(), dim=-1)
    n = len(captions)
    return (image[:n] * text).sum(-1).cpu().tolist(), (image[n:] * text).sum(-1).cpu().tolist()


def _features(out):
    """The projected embeddings: transformers 5 returns a model output whose pooler_output holds them, 4.x a tensor."""
    return out if hasattr(out, "dim") else out.pooler_output
