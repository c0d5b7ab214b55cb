"""Where a diffusion edit lands: the working size an editor sees, the blend mask of the regions, the composite of
the edit into the source (only inside the regions, or everywhere for the paper's global edit), and the checks of
the result (regions left unchanged, a blank output)."""

from __future__ import annotations

import numpy as np

from .lite import _feather_weight, _grow


def working_size(size: tuple[int, int], max_side: int, multiple: int) -> tuple[int, int]:
    """(w, h) with the aspect ratio kept, the longer side at most ``max_side``, both sides multiples of ``multiple``."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return tuple(max(multiple, int(side * scale / multiple + 0.5) * multiple) for side in (w, h))


def region_mask(size: tuple[int, int], regions, dilation: float, feather: int) -> np.ndarray:
    """Blend weights (h, w) in [0, 1]: 1 inside every grown region box, a ``feather`` ramp around, 0 elsewhere."""
    w, h = size
    weight = np.zeros((h, w), np.float64)
    for region in regions:
        x0, y0, x1, y1 = _grow(region.box, dilation, w, h)
        ex0, ey0, ex1, ey1 = max(0, x0 - feather), max(0, y0 - feather), min(w, x1 + feather), min(h, y1 + feather)
        local = _feather_weight(ey1 - ey0, ex1 - ex0, (x0 - ex0, y0 - ey0, x1 - ex0, y1 - ey0), feather)
        np.maximum(weight[ey0:ey1, ex0:ex1], local, out=weight[ey0:ey1, ex0:ex1])
    return weight


def composite(source, edited_rgb, regions, dilation: float, feather: int, whole_image: bool = False):
    """The source PIL image with ``edited_rgb`` (PIL, any size) blended in inside the regions (or everywhere with
    ``whole_image``, the paper's global edit); source mode kept."""
    from PIL import Image

    from ..utils.images import from_edit_array, to_edit_array

    pixels, mode = to_edit_array(source)
    if mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
        raise ValueError(f"a diffusion edit cannot be composited into mode {mode}")
    edited = edited_rgb.convert("RGB").resize(source.size, Image.Resampling.LANCZOS)
    colour_mode = {"RGBA": "RGB", "LA": "L"}.get(mode, mode)
    edited_px = np.asarray(edited.convert(colour_mode), dtype=np.float64)
    weight = np.ones(source.size[::-1]) if whole_image else region_mask(source.size, regions, dilation, feather)
    out = pixels.astype(np.float64)
    colour = out[..., : edited_px.shape[-1]] if edited_px.ndim == 3 else (out[..., 0] if out.ndim == 3 else out)
    w = weight[..., None] if colour.ndim == 3 else weight
    blended = colour * (1.0 - w) + edited_px * w
    if edited_px.ndim == 3:
        out[..., : edited_px.shape[-1]] = blended
    elif out.ndim == 3:
        out[..., 0] = blended
    else:
        out = blended
    return from_edit_array(np.clip(np.rint(out), 0, 255).astype(pixels.dtype), mode)


def unchanged_regions(source, result, regions, threshold: float) -> list:
    """Regions whose pixels moved by less than ``threshold`` (mean absolute difference, 0-255): not anonymized."""
    a = np.asarray(source.convert("RGB"), dtype=np.float64)
    b = np.asarray(result.convert("RGB"), dtype=np.float64)
    stale = []
    for region in regions:
        x0, y0, x1, y1 = region.box
        if np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() < threshold:
            stale.append(region)
    return stale


def is_blank(image) -> bool:
    """An all-black (or nearly) output, what a safety filter returns: not an edit."""
    return float(np.asarray(image.convert("L")).max()) < 8
