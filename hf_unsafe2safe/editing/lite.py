"""Stage 2 of the lite preset: classical edits restricted to the sensitive regions.

Each region box is grown by ``dilation`` and fully replaced; a ``feather``-pixel ramp outside it blends
the edit into the surroundings. Every pixel farther than that from a region keeps its source value
exactly. Edits run on the source pixel mode (8/16-bit, grey, RGB(A), CMYK) in float32 (float64 for 32-bit sources) and are rounded
back, so nothing outside the regions is touched.
"""

from __future__ import annotations

import numpy as np

from ..config import LiteEditorConfig
from ..inspection.base import Region

# cells across the longer side of a region (pixelate) / box size divided by the blur sigma
_PIXELATE_CELLS = {"low": 16, "medium": 10, "high": 6}
_BLUR_DIVISOR = {"low": 12.0, "medium": 6.0, "high": 3.0}
# the whole-image fallback: this many cells across the longer side of the image
FALLBACK_CELLS = 16


class RegionEditor:
    """Pixelate / blur / fill / inpaint per taxonomy category, inside dilated region boxes only."""

    name = "lite"

    def __init__(self, config: LiteEditorConfig):
        self.config = config

    def edit(self, pixels: np.ndarray, regions: list[Region]) -> tuple[np.ndarray, list[str]]:
        """Edit a copy of ``pixels``; returns it and the method used per region."""
        out = pixels.copy()
        h, w = pixels.shape[:2]
        methods = []
        for region in regions:
            method = self.config.method_for(region.category)
            core = _grow(region.box, self.config.dilation, w, h)
            self._apply(out, core, method)
            methods.append(method)
        return out, methods

    def _apply(self, img: np.ndarray, core: tuple[int, int, int, int], method: str) -> None:
        """Edit ``img`` in place, touching only the core box and its feather margin."""
        f = self.config.feather
        h, w = img.shape[:2]
        x0, y0, x1, y1 = core
        ex0, ey0, ex1, ey1 = max(0, x0 - f), max(0, y0 - f), min(w, x1 + f), min(h, y1 + f)
        work = _work_dtype(img.dtype)
        patch = img[ey0:ey1, ex0:ex1].astype(work)
        strength = self.config.strength
        if method == "pixelate":
            # the cell grid starts at the core box so that the core is covered by whole cells
            cells = _PIXELATE_CELLS[strength]
            cell = max(2, int(np.ceil(max(x1 - x0, y1 - y0) / cells)))
            edited = _pixelate(patch, cell, (x0 - ex0) % cell, (y0 - ey0) % cell)
        elif method == "blur":
            edited = _blur(patch, max(x1 - x0, y1 - y0) / _BLUR_DIVISOR[strength])
        elif method == "fill":
            edited = np.empty_like(patch)
            edited[...] = _ring_mean(img, core)
        elif method == "inpaint":
            edited = _inpaint(img, core, (ex0, ey0, ex1, ey1), work)
        else:  # config validation makes this unreachable
            raise ValueError(f"unknown edit method {method!r}")
        weight = _feather_weight(ey1 - ey0, ex1 - ex0, (x0 - ex0, y0 - ey0, x1 - ex0, y1 - ey0), f, work)
        if patch.ndim == 3:
            weight = weight[..., None]
        img[ey0:ey1, ex0:ex1] = _cast_back(patch * (1.0 - weight) + edited * weight, img.dtype)

    def fallback(self, pixels: np.ndarray) -> np.ndarray:
        """The strongest lite edit: the whole image pixelated into FALLBACK_CELLS cells across."""
        h, w = pixels.shape[:2]
        cell = max(2, int(np.ceil(max(h, w) / FALLBACK_CELLS)))
        return _cast_back(_pixelate(pixels.astype(_work_dtype(pixels.dtype)), cell, 0, 0), pixels.dtype)


def _grow(box, fraction: float, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    dx, dy = int(round((x1 - x0) * fraction)), int(round((y1 - y0) * fraction))
    return max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)


def _work_dtype(dtype) -> type:
    """The float type edits are computed in: float32 holds every 8- and 16-bit value exactly (and is float32
    images' own), float64 every 32-bit one; so pixels the edit does not reach round-trip unchanged."""
    dtype = np.dtype(dtype)
    return np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64


def _feather_weight(h: int, w: int, core, feather: int, dtype=np.float64) -> np.ndarray:
    """1 inside the core box, falling linearly to 0 over ``feather`` pixels outside it."""
    x0, y0, x1, y1 = core
    xs, ys = np.arange(w), np.arange(h)
    # per axis: the weight a pixel at that distance from the core gets, then the smaller of the two
    ramp = lambda d: np.clip(1.0 - np.maximum(d, 0) / (feather + 1), 0.0, 1.0).astype(dtype)  # noqa: E731
    return np.minimum(ramp(np.maximum(y0 - ys, ys - (y1 - 1)))[:, None], ramp(np.maximum(x0 - xs, xs - (x1 - 1)))[None, :])


def _pixelate(patch: np.ndarray, cell: int, off_x: int, off_y: int) -> np.ndarray:
    """Replace each ``cell`` x ``cell`` block (grid shifted by the offsets) by its mean."""
    h, w = patch.shape[:2]
    out = np.empty_like(patch)
    ys = list(range(off_y - cell if off_y else 0, h, cell))
    xs = list(range(off_x - cell if off_x else 0, w, cell))
    for y in ys:
        ya, yb = max(0, y), min(h, y + cell)
        if ya >= yb:
            continue
        for x in xs:
            xa, xb = max(0, x), min(w, x + cell)
            if xa >= xb:
                continue
            block = patch[ya:yb, xa:xb]
            out[ya:yb, xa:xb] = block.reshape(-1, *block.shape[2:]).mean(axis=0)
    return out


def _blur(patch: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide blurs run on a downscaled copy (sigma ~2 px there), which costs a few ms instead of
    a kernel hundreds of pixels wide, and upsampling adds no detail back."""
    import cv2

    sigma = max(1.0, sigma)
    h, w = patch.shape[:2]
    factor = max(1.0, sigma / 2.0)
    small_w, small_h = max(1, int(round(w / factor))), max(1, int(round(h / factor)))
    work = cv2.resize(patch, (small_w, small_h), interpolation=cv2.INTER_AREA) if factor > 1 else patch
    blurred = cv2.GaussianBlur(work, (0, 0), sigmaX=sigma / factor, sigmaY=sigma / factor, borderType=cv2.BORDER_REPLICATE)
    if factor > 1:
        blurred = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
    return blurred.reshape(patch.shape)


def _ring_mean(img: np.ndarray, core) -> np.ndarray:
    """Mean colour of a thin ring around the box (falls back to the box mean at image borders)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = core
    r = max(2, int(0.1 * max(x1 - x0, y1 - y0)))
    outer = img[max(0, y0 - r) : min(h, y1 + r), max(0, x0 - r) : min(w, x1 + r)]
    mask = np.ones(outer.shape[:2], bool)
    mask[y0 - max(0, y0 - r) : y1 - max(0, y0 - r), x0 - max(0, x0 - r) : x1 - max(0, x0 - r)] = False
    pixels = outer[mask] if mask.any() else outer.reshape(-1, *outer.shape[2:])
    return pixels.astype(np.float64).mean(axis=0)


# Telea's fill is smooth at the scale of the box: a box whose shorter side is over this many pixels is filled on the
# crop shrunk to it and scaled back (the cost grows with the masked area: a 1100x600 text block took 0.5 s)
INPAINT_SIDE = 24


def _inpaint(img: np.ndarray, core, extent, dtype=np.float64) -> np.ndarray:
    """OpenCV Telea inpainting of the core box from its surroundings; returns the ``extent`` patch. Every pixel of the
    fill comes from outside the core: on the shrunk crop, a pixel that any core pixel reaches is filled, never kept."""
    import cv2

    h, w = img.shape[:2]
    x0, y0, x1, y1 = core
    ex0, ey0, ex1, ey1 = extent
    margin = max(8, int(0.25 * max(x1 - x0, y1 - y0)))
    cx0, cy0, cx1, cy1 = max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)
    crop = img[cy0:cy1, cx0:cx1]
    mask = np.zeros(crop.shape[:2], np.uint8)
    mask[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = 255
    rgb8 = crop.ndim == 3 and crop.shape[2] == 3 and img.dtype == np.uint8
    chans = [crop] if rgb8 else [np.ascontiguousarray((crop[..., None] if crop.ndim == 2 else crop)[..., i], dtype=np.float32) for i in range(1 if crop.ndim == 2 else crop.shape[2])]
    factor = INPAINT_SIDE / min(x1 - x0, y1 - y0)
    small = None
    if factor < 0.75:
        small = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
        # grown by one shrunk pixel: area weights rounded to nothing still carry a trace of the core into a neighbour
        small_mask = cv2.dilate((cv2.resize(mask, small, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    filled = []
    for chan in chans:
        if small is None:
            filled.append(cv2.inpaint(chan, mask, 5, cv2.INPAINT_TELEA))
            continue
        fill = cv2.inpaint(cv2.resize(chan, small, interpolation=cv2.INTER_AREA), small_mask, 5, cv2.INPAINT_TELEA)
        fill = cv2.resize(fill, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
        filled.append(np.where((mask > 0)[..., None] if fill.ndim == 3 else mask > 0, fill, chan))
    out = filled[0] if rgb8 else (filled[0] if crop.ndim == 2 else np.stack(filled, axis=-1))
    result = img[ey0:ey1, ex0:ex1].astype(dtype)
    # copy the inpainted crop into the extent patch where they overlap
    ix0, iy0, ix1, iy1 = max(cx0, ex0), max(cy0, ey0), min(cx1, ex1), min(cy1, ey1)
    result[iy0 - ey0 : iy1 - ey0, ix0 - ex0 : ix1 - ex0] = out[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0]
    return result


def _cast_back(arr: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return arr >= 0.5
    return arr.astype(dtype)
