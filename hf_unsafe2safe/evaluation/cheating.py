"""Cheating pair metrics (did the output just copy the source?): SSIM, perceptual hash and region copies on
pixels, and LPIPS with user-supplied weights."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..config import _check
from .base import Pair, PairMetric, file_sha256, first_line, mean_figure, package_version, ratio_figure
from .metrics import hamming, phash, ssim

NEAR_DUPLICATE_BITS = 8  # perceptual-hash distance at or under which two images count as near-duplicates
UNCHANGED_SSIM = 0.98  # a flagged image this similar to its source was not really anonymized
REGION_UNCHANGED = 8.0  # mean |diff| (0-255) under which a sensitive region counts as copied through
LPIPS_NETS = ("alex", "vgg")
LPIPS_MISSING = "no package ships the ImageNet AlexNet/VGG weights offline; pass --lpips-backbone PATH --lpips-calibration PATH"


class PixelCheating(PairMetric):
    name = "pixels"
    figures = {
        "ssim": "mean SSIM between original and anonymized, grey, 256 px (cheating check: 1 means a copy)",
        "unchanged_share": f"share of flagged images whose SSIM to the source is above {UNCHANGED_SSIM} (whole-image edits: should be 0; region-restricted edits and metadata-only rows can legitimately stay this close)",
        "near_duplicate_share": f"share of flagged images whose 64-bit perceptual hash is within {NEAR_DUPLICATE_BITS} bits of the source's (whole-image edits: should be 0; region-restricted edits keep the image and are expected to stay near-duplicates)",
        "region_unchanged_share": f"share of the sensitive regions (privacy_regions) of flagged images whose pixels changed by less than {REGION_UNCHANGED} on average (0-255): sensitive content copied through (should be 0)",
    }

    def __init__(self) -> None:
        super().__init__()
        self.model = f"no model: SSIM ({package_version('scikit-image')}), 64-bit DCT perceptual hash, pixel differences"
        self.per_pair = {"ssim": []}
        self.counts: list[tuple[int, int, int, int, int]] = []  # flagged, unchanged, near-duplicate, regions, regions unchanged

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            a, b = pair.original, pair.anonymized
            s = ssim(a, b)
            self.keep("ssim", pair.row, s)
            flagged = unchanged = near_dup = regions = regions_unchanged = 0
            if pair.flagged:
                flagged, unchanged = 1, int(s > UNCHANGED_SSIM)
                near_dup = int(hamming(phash(a), phash(b)) <= NEAR_DUPLICATE_BITS)
                if a.shape == b.shape:
                    for region in pair.regions:
                        x0, y0, x1, y1 = region["box"]
                        regions += 1
                        regions_unchanged += float(np.abs(a[y0:y1, x0:x1].astype(np.int16) - b[y0:y1, x0:x1]).mean()) < REGION_UNCHANGED
            self.counts.append((flagged, unchanged, near_dup, regions, regions_unchanged))

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 5)
        f, m = self.figures, self.model
        return {
            "ssim": mean_figure(self.per_pair["ssim"], f["ssim"], seed, m),
            "unchanged_share": ratio_figure(c[:, 1], c[:, 0], f["unchanged_share"], seed, m),
            "near_duplicate_share": ratio_figure(c[:, 2], c[:, 0], f["near_duplicate_share"], seed, m),
            "region_unchanged_share": ratio_figure(c[:, 4], c[:, 3], f["region_unchanged_share"], seed, m),
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
