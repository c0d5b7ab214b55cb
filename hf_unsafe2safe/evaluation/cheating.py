"""Cheating pair metrics. Did the output just copy the source? SSIM, perceptual hash and region copies on pixels,
and LPIPS with user-supplied weights. Did it destroy more than the sensitive regions? Change outside the regions,
the share of pixels changed, and the fine detail kept (``overedit``: a blackout, a global blur or a global
pixelation of the flagged images looks perfect on every privacy figure and must show here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np

from ..config import LiteEditorConfig, _check
from .base import Pair, PairMetric, file_sha256, first_line, package_version
from .metrics import _grey, hamming, phash, ssim
from .stats import BOOTSTRAP_ROUNDS, cluster_ratio_ci, mean_figure, ratio_figure

NEAR_DUPLICATE_BITS = 8  # perceptual-hash distance at or under which two images count as near-duplicates
UNCHANGED_SSIM = 0.98  # a flagged image this similar to its source was not really anonymized
REGION_UNCHANGED = 8.0  # mean |diff| (0-255) under which a sensitive region counts as copied through
LPIPS_NETS = ("alex", "vgg")
LPIPS_MISSING = "no package ships the ImageNet AlexNet/VGG weights offline; pass --lpips-backbone PATH --lpips-calibration PATH"

# Over-edit. The lite editor (and the diffusion composite) grows each region box by ``dilation`` of its size per
# side and blends over a ``feather``-px ramp around it; every other pixel keeps its source value, up to the noise of
# re-encoding the output (JPEG quality 95, 4:4:4). Measured on 16 skimage.data images (astronaut, coffee, chelsea,
# rocket, hubble_deep_field, retina, immunohistochemistry, camera, grass, gravel, brick, text, page, moon, cell,
# logo), one JPEG q95 4:4:4 round trip changes a pixel by at most 10.7 (mean |change| over R, G, B, 0-255; 13.0
# on the synthetic logo) and an image by at most 1.8 on average (2.3 for lossy WebP q95, 2.6 for JPEG q95 4:2:0).
OUTSIDE_MARGIN = 16  # px beyond the feather still counted as the region's: two 8x8 JPEG blocks (one 4:2:0 MCU)
CHANGED_LEVEL = 16.0  # a pixel whose mean |change| over R, G, B (0-255) is above this was edited, not re-encoded
OVER_EDITED = 4.0  # outside_region_change above this: the edit reached beyond the regions (re-encoding: <= 2.6)
DETAIL_SIGMA = 1.0  # fine detail = |luma - Gaussian blur(luma, DETAIL_SIGMA px)|
MIN_DETAIL = 0.5  # mean fine detail (0-255) of the original under which detail_ratio is undefined (a flat image)


class PixelCheating(PairMetric):
    name = "pixels"
    figures = {
        "ssim": "mean SSIM between original and anonymized over flagged pairs, computed as scikit-image's structural_similarity(channel_axis=2, data_range=255): RGB, full resolution, 7x7 uniform window (an anonymized image of another size is resized to the original's first; cheating check: 1 means a copy)",
        "unchanged_share": f"share of flagged pairs whose SSIM (as in ssim) is above {UNCHANGED_SSIM} (whole-image edits: should be 0; region-restricted edits and metadata-only rows can legitimately stay this close)",
        "near_duplicate_share": f"share of flagged pairs whose 64-bit DCT perceptual hashes (imagehash.phash's algorithm, bit for bit) are within {NEAR_DUPLICATE_BITS} bits (whole-image edits: should be 0; region-restricted edits keep the image and are expected to stay near-duplicates)",
        "region_unchanged_share": f"share of the sensitive regions (privacy_regions boxes) of flagged pairs of the same size whose pixels changed by less than {REGION_UNCHANGED} on average (0-255): sensitive content copied through (should be 0)",
    }

    def __init__(self) -> None:
        super().__init__()
        self.model = (
            f"no model: SSIM (scikit-image's definition, {package_version('scikit-image')}), 64-bit DCT perceptual hash "
            "(imagehash's algorithm), pixel differences"
        )
        self.per_pair = {"ssim": []}
        self.counts: list[tuple[int, int, int, int, int]] = []  # flagged, unchanged, near-duplicate, regions, regions unchanged

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            if not pair.flagged:  # unflagged rows keep their bytes: nothing to check
                continue
            a, b = pair.original, pair.anonymized
            s = ssim(a, b)
            self.keep("ssim", pair.row, s)
            unchanged = int(s is not None and s > UNCHANGED_SSIM)
            near_dup = int(hamming(phash(a), phash(b)) <= NEAR_DUPLICATE_BITS)
            regions = regions_unchanged = 0
            if a.shape == b.shape:
                for region in pair.regions:
                    x0, y0, x1, y1 = (int(v) for v in region["box"])
                    if x1 <= x0 or y1 <= y0:
                        continue
                    regions += 1
                    regions_unchanged += float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean()) < REGION_UNCHANGED
            self.counts.append((1, unchanged, near_dup, regions, regions_unchanged))

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 5)
        f, m = self.figures, self.model
        return {
            "ssim": mean_figure(self.per_pair["ssim"], f["ssim"], seed, m),
            "unchanged_share": ratio_figure(c[:, 1], c[:, 0], f["unchanged_share"], seed, m),
            "near_duplicate_share": ratio_figure(c[:, 2], c[:, 0], f["near_duplicate_share"], seed, m),
            "region_unchanged_share": ratio_figure(c[:, 4], c[:, 3], f["region_unchanged_share"], seed, m),
        }


def _editor_default(name: str):
    return next(f.default for f in fields(LiteEditorConfig) if f.name == name)


def grown_boxes(regions, dilation: float, feather: int, margin: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The boxes (x0, y0, x1, y1; ends exclusive, clipped to the image) an edit of ``regions`` may change:
    each privacy_regions box (a dict with ``box`` [x0, y0, x1, y1], or an object with ``box``) grown as the lite
    editor grows it (``dilation`` of its size per side), then by ``feather + margin`` pixels."""
    from ..editing.lite import _grow

    extra = int(feather) + int(margin)
    out = []
    for region in regions or []:
        box = region.get("box") if isinstance(region, dict) else getattr(region, "box", None)
        if box is None or len(box) != 4:
            continue
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        if x1 <= x0 or y1 <= y0:
            continue
        gx0, gy0, gx1, gy1 = _grow((x0, y0, x1, y1), dilation, width, height)
        gx0, gy0, gx1, gy1 = max(0, gx0 - extra), max(0, gy0 - extra), min(width, gx1 + extra), min(height, gy1 + extra)
        if gx1 > gx0 and gy1 > gy0:
            out.append((gx0, gy0, gx1, gy1))
    return out


def protected_mask(shape, regions, dilation: float, feather: int, margin: int = OUTSIDE_MARGIN) -> np.ndarray:
    """(h, w) bool, True inside ``grown_boxes``: where an edit of ``regions`` may change pixels. No region:
    nothing is protected."""
    h, w = shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in grown_boxes(regions, dilation, feather, margin, w, h):
        mask[y0:y1, x0:x1] = True
    return mask


def fine_detail(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel fine detail (0-255): |luma - Gaussian blur(luma, DETAIL_SIGMA)|, a difference of Gaussians that
    keeps the finest scale of the image. Blur, pixelation and flat fills remove it; JPEG q95 keeps it (ratio
    0.99-1.01 on the skimage photos)."""
    import cv2

    g = _grey(rgb)
    return np.abs(g - cv2.GaussianBlur(g, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT))


@dataclass
class OverEdit:
    """One pair's over-edit measurements (see ``OverEditMetric``)."""

    pixels: int  # pixels of the image
    changed: int  # pixels changed beyond JPEG noise
    outside_pixels: int  # pixels outside the grown regions
    outside_changed: int  # ... of them changed beyond JPEG noise
    outside_sum: float  # sum over the outside pixels of their mean |change| over the channels
    detail_ratio: float | None  # fine detail of the anonymized / of the original, outside the grown regions

    @property
    def outside_change(self) -> float | None:
        return self.outside_sum / self.outside_pixels if self.outside_pixels else None


_STRIP = 256  # rows per strip: the working buffers stay a few MB whatever the image size
_DETAIL_HALO = 8  # rows of context above and below a strip for the Gaussian of fine_detail (its kernel reaches 4)


def over_edit(original: np.ndarray, anonymized: np.ndarray, regions, dilation: float | None = None, feather: int | None = None, margin: int = OUTSIDE_MARGIN) -> OverEdit:
    """Over-edit measurements of one pair of RGB uint8 images; ``regions`` are the row's privacy_regions, in the
    original's pixels. The editor's default dilation and feather unless given. An anonymized image of another
    size is resized (area interpolation) to the original's first. Runs on horizontal strips (bounded memory on
    very large images; the same result as on the whole image)."""
    import cv2

    dilation = _editor_default("dilation") if dilation is None else dilation
    feather = _editor_default("feather") if feather is None else feather
    a, b = original, anonymized
    if b.shape[:2] != a.shape[:2]:
        b = cv2.resize(np.ascontiguousarray(b), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    h, w = a.shape[:2]
    a, b = a.reshape(h, w, -1), b.reshape(h, w, -1)
    channels = a.shape[2]
    boxes = grown_boxes(regions, dilation, feather, margin, w, h)
    changed = outside_pixels = outside_changed = 0
    outside_sum = detail_a = detail_b = 0.0
    for r0 in range(0, h, _STRIP):
        r1 = min(h, r0 + _STRIP)
        outside = np.ones((r1 - r0, w), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            if y0 < r1 and y1 > r0:
                outside[max(y0, r0) - r0 : min(y1, r1) - r0, x0:x1] = False
        diff = np.abs(a[r0:r1].astype(np.int16) - b[r0:r1].astype(np.int16)).sum(axis=2, dtype=np.int32)  # channels x mean |change|
        edited = diff > CHANGED_LEVEL * channels
        changed += int(edited.sum())
        n = int(outside.sum())
        if not n:
            continue
        outside_pixels += n
        outside_changed += int(edited[outside].sum())
        outside_sum += float(diff[outside].sum()) / channels
        h0, h1 = max(0, r0 - _DETAIL_HALO), min(h, r1 + _DETAIL_HALO)
        detail_a += float(fine_detail(a[h0:h1])[r0 - h0 : r1 - h0][outside].sum())
        detail_b += float(fine_detail(b[h0:h1])[r0 - h0 : r1 - h0][outside].sum())
    ratio = detail_b / detail_a if outside_pixels and detail_a >= MIN_DETAIL * outside_pixels else None
    return OverEdit(h * w, changed, outside_pixels, outside_changed, outside_sum, ratio)


def _pooled(sums, counts, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """sum(sums) / sum(counts) over pairs, with a percentile bootstrap interval that resamples whole pairs
    (``stats.cluster_ratio_ci``: the pixels of one image are not independent, so no interval over pixels)."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    value = float(sums.sum() / total) if total else None
    return {"value": value, "ci95": cluster_ratio_ci(sums, counts, seed, rounds), "pixels": int(total)}


def _overedit_figures(dilation: float, feather: int, margin: int) -> dict[str, str]:
    """The definitions of the over-edit figures for the given region growth."""
    grown = (
        f"each privacy_regions box grown as the lite editor grows it (dilation {dilation:g} of its size per side, "
        f"then its {feather}-px feather) plus a {margin}-px safety margin (two JPEG blocks); a pair without regions "
        "(metadata-only edit, whole-image fallback) has its whole image outside"
    )
    return {
        "outside_region_change": (
            f"mean over flagged pairs of the mean absolute change (0-255, averaged over R, G, B) of the pixels outside the sensitive "
            f"regions, {grown}; pairs whose regions cover the whole image are left out. JPEG q95 re-encoding alone stays under 2; "
            "'pooled' weighs every outside pixel alike (over-edit check: a blackout, a global blur or pixelation, a whole-image "
            "fallback raise it)"
        ),
        "edited_area_share": (
            f"mean over flagged pairs of the share of the image's pixels changed beyond JPEG noise (mean absolute change over R, G, B "
            f"above {CHANGED_LEVEL:g} of 255; one JPEG q95 4:4:4 round trip of real photos stays at or under 10.7); 'pooled' weighs "
            "every pixel alike, 'outside' is the mean share among the pixels outside the grown regions (as in outside_region_change) "
            "(over-edit check: a region edit changes about its regions' area, a blackout nearly all)"
        ),
        "over_edited_share": (
            f"share of flagged pairs (those with pixels outside the grown regions) whose outside_region_change is above {OVER_EDITED:g} "
            "(0-255; JPEG q95 re-encoding alone: at most 1.8 on real photos): edited well beyond their sensitive regions "
            "(whole-image fallback rows count here by design)"
        ),
        "detail_ratio": (
            "mean over flagged pairs of the fine detail of the anonymized image divided by the original's, both summed over the "
            f"pixels outside the grown regions (as in outside_region_change); fine detail = |luma - Gaussian blur(luma, sigma "
            f"{DETAIL_SIGMA:g} px)|, a no-reference sharpness statistic; pairs whose original has under {MIN_DETAIL:g} of it on average "
            "there (flat images) are left out. 1: the kept pixels are as sharp as the source (JPEG q95: 0.99-1.01); a global blur or "
            "pixelation drives it toward 0, a blackout to 0; above 1: detail or noise added"
        ),
    }


class OverEditMetric(PairMetric):
    """Did the edit destroy more than the sensitive regions? Over flagged pairs: the change outside the grown
    regions, the share of pixels changed beyond JPEG noise, the share of pairs edited beyond their regions, and
    the fine detail kept outside the regions. No model. A pair without regions (metadata-only edit, or a
    whole-image fallback after a failed inspection) has its whole image outside: a metadata-only edit stays near
    0 there, a fallback (the whole image pixelated, by design: fail closed) counts as over-edited, as does a
    diffusion run in ``global`` mode."""

    name = "overedit"
    figures = _overedit_figures(_editor_default("dilation"), _editor_default("feather"), OUTSIDE_MARGIN)

    def __init__(self, editor: LiteEditorConfig | None = None, margin: int = OUTSIDE_MARGIN) -> None:
        super().__init__()
        self.dilation = editor.dilation if editor is not None else _editor_default("dilation")
        self.feather = editor.feather if editor is not None else _editor_default("feather")
        _check(isinstance(margin, int) and margin >= 0, "overedit margin", margin, "an int >= 0")
        self.margin = margin
        self.figures = _overedit_figures(self.dilation, self.feather, margin)
        self.model = (
            f"no model: pixel differences and a difference-of-Gaussians detail statistic outside the regions grown by dilation "
            f"{self.dilation:g}, feather {self.feather} px, margin {margin} px"
        )
        self.per_pair = {"outside_region_change": [], "edited_area_share": [], "detail_ratio": []}
        self.pairs: list[OverEdit] = []

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            if not pair.flagged:
                continue
            m = over_edit(pair.original, pair.anonymized, pair.regions, self.dilation, self.feather, self.margin)
            self.pairs.append(m)
            self.keep("outside_region_change", pair.row, m.outside_change)
            self.keep("edited_area_share", pair.row, m.changed / m.pixels)
            self.keep("detail_ratio", pair.row, m.detail_ratio)

    def finish(self, seed: int) -> dict[str, dict]:
        f, model, ps = self.figures, self.model, self.pairs
        outside = [p for p in ps if p.outside_pixels]
        change = mean_figure(self.per_pair["outside_region_change"], f["outside_region_change"], seed, model)
        change["pooled"] = _pooled([p.outside_sum for p in outside], [p.outside_pixels for p in outside], seed)
        area = mean_figure(self.per_pair["edited_area_share"], f["edited_area_share"], seed, model)
        area["pooled"] = _pooled([p.changed for p in ps], [p.pixels for p in ps], seed)
        area["outside"] = float(np.mean([p.outside_changed / p.outside_pixels for p in outside])) if outside else None
        over = [int(p.outside_change > OVER_EDITED) for p in outside]
        return {
            "outside_region_change": change,
            "edited_area_share": area,
            "over_edited_share": ratio_figure(over, [1] * len(over), f["over_edited_share"], seed, model),
            "detail_ratio": mean_figure(self.per_pair["detail_ratio"], f["detail_ratio"], seed, model),
        }


@dataclass
class LPIPSConfig:
    """LPIPS for the cheating dimension. No package ships the ImageNet backbone weights, so both files are
    needed: ``backbone`` a torchvision-format AlexNet / VGG16 state dict (``features.N.weight`` ...),
    ``calibration`` the lpips v0.1 linear layers (``lin0.model.1.weight`` ...). Validates itself."""

    net: str = "vgg"  # the paper reports LPIPS (VGG)
    backbone: str | None = None
    calibration: str | None = None
    side: int = 256  # both images resized to the original's aspect with this longer side
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check(self.net in LPIPS_NETS, "lpips.net", self.net, f"one of {LPIPS_NETS}")
        _check((self.backbone is None) == (self.calibration is None), "lpips.backbone / lpips.calibration", (self.backbone, self.calibration), "both paths or neither")
        for name in ("backbone", "calibration"):
            path = getattr(self, name)
            _check(path is None or (isinstance(path, str) and os.path.isfile(path)), f"lpips.{name}", path, "None or the path of an existing file")
        _check(isinstance(self.side, int) and self.side >= 32, "lpips.side", self.side, "an int >= 32")

    @property
    def configured(self) -> bool:
        return self.backbone is not None


class LPIPSMetric(PairMetric):
    name = "lpips"
    figures = {
        "lpips": "mean LPIPS (v0.1 calibration) between original and anonymized over flagged pairs, both at 256 px on the longer side (cheating check: 0 means a perceptual copy; higher: more changed)",
    }

    def __init__(self, config: LPIPSConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LPIPSConfig()
        self.figures = {"lpips": self.figures["lpips"].replace("256 px", f"{config.side} px")}
        self.per_pair = {"lpips": []}
        if not config.configured:
            self.model = f"lpips v0.1 {config.net} (weights not given)"
            self.unavailable = LPIPS_MISSING
            return
        self.model = (
            f"lpips v0.1 {config.net}: backbone {config.backbone} (sha256 {file_sha256(config.backbone)[:16]}), "
            f"calibration {config.calibration} (sha256 {file_sha256(config.calibration)[:16]})"
        )
        self.models = {"lpips": self.model}
        try:
            from .lpips import LPIPS

            self.lpips = LPIPS(config.net, config.backbone, config.calibration, config.side, config.device)
        except (ImportError, OSError, RuntimeError, ValueError, KeyError) as exc:  # missing torch, wrong or corrupt files
            self.unavailable = f"LPIPS weights could not be loaded ({first_line(exc)})"

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            if pair.flagged:
                self.keep("lpips", pair.row, self.lpips.distance(pair.original, pair.anonymized))

    def finish(self, seed: int) -> dict[str, dict]:
        return {"lpips": mean_figure(self.per_pair["lpips"], self.figures["lpips"], seed, self.model)}
