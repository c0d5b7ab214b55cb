"""Quality metrics: CLIP score, directional CLIP, and FID / KID over a configurable feature extractor.

They need a CLIP model (``transformers`` ``CLIPModel``, by Hub id or local path) or, for FID / KID, any
``transformers`` vision model. None ships in a package, so offline they are reported ``unavailable`` with the
reason, never as a made-up number. The intervals of FID / KID (half-subsets of the pairs) come from
``stats.set_distance_figure``.
"""

from __future__ import annotations

import numpy as np

from .base import Pair, PairMetric, first_line, hub_model
from .stats import SUBSET_INTERVAL, SUBSET_ROUNDS, mean_figure, set_distance_figure

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the paper's ViT-L/14


class ClipFeatures:
    """Normalised CLIP image and text embeddings, batched, loaded once."""

    def __init__(self, model_id: str = DEFAULT_CLIP, revision: str | None = None, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.processor = CLIPProcessor.from_pretrained(model_id, revision=revision)
        self.model = CLIPModel.from_pretrained(model_id, revision=revision).to(device).eval()
        self.device, self.batch_size, self._torch = device, batch_size, torch
        self.model_id = model_id

    def _normalise(self, x):
        # transformers 5 returns a model output whose pooler_output holds the projected embedding
        x = getattr(x, "pooler_output", x).float()
        return (x / x.norm(dim=-1, keepdim=True)).cpu().numpy()

    def images(self, images: list) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(images=[im.convert("RGB") for im in images[start : start + self.batch_size]], return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                out.append(self._normalise(self.model.get_image_features(**inputs)))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))

    def texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.processor(text=texts[start : start + self.batch_size], return_tensors="pt", padding=True, truncation=True).to(self.device)
            with self._torch.inference_mode():
                out.append(self._normalise(self.model.get_text_features(**inputs)))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim))


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per pair: 100 * max(cosine(image, text), 0) of normalised embeddings (the usual CLIPScore scale)."""
    return 100.0 * np.clip((image_emb * text_emb).sum(axis=1), 0.0, None)


def directional_clip(img_before: np.ndarray, img_after: np.ndarray, txt_before: np.ndarray, txt_after: np.ndarray) -> np.ndarray:
    """Per pair: cosine between the image change and the caption change (private -> public caption); NaN where
    either change is zero, as a cosine without a direction is undefined (0 would read as 'unrelated')."""
    di, dt = img_after - img_before, txt_after - txt_before
    denom = np.linalg.norm(di, axis=1) * np.linalg.norm(dt, axis=1)
    return np.where(denom > 0, (di * dt).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


CHANGED_LEVEL = 24  # grey levels (0-255) a pixel must move by, in some channel, to count as changed
CHANGED_SHARE = 0.0005  # share of the pixels that must change for the image to count as changed


def image_changed(original: np.ndarray, anonymized: np.ndarray) -> bool:
    """Whether the anonymized image differs from its source beyond re-encoding noise: its size changed, or at
    least 0.05 % of its pixels moved by more than 24 grey levels in some channel. Measured on six skimage photos
    saved as JPEG (quality 90) and re-encoded with full-resolution chroma, as the editor writes them: at quality
    95 (the default), 90 and 85 at most 0.034 % of the pixels move that far; blurring or pixelating a patch of 1 %
    of the photo moves 0.09-0.35 % of them (a flat patch moves none: nothing visible changed)."""
    if original.shape != anonymized.shape:
        return True
    diff = np.maximum(original, anonymized) - np.minimum(original, anonymized)  # |a - b| without uint8 wrap-around
    moved = diff > CHANGED_LEVEL
    if moved.ndim == 3:
        moved = moved.any(axis=-1)
    return bool(moved.mean() >= CHANGED_SHARE)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(cov_a @ cov_b))  # complex only by rounding: S_a S_b has real eigenvalues >= 0
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float(
        (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1)) - 2.0 * k_ab.mean()
    )


class ClipMetric(PairMetric):
    """Quality figures: CLIP features accumulated pair by pair (flushed in batches) and summarised at the end.
    The caption figures read the anonymized rows' ``private_caption`` / ``public_caption`` columns."""

    name = "clip"
    figures = {
        "clip_score": "mean 100 * max(cos, 0) between the CLIP embeddings of the anonymized image and its public caption (higher is better)",
        "directional_clip": (
            "mean cosine between the CLIP image change (original -> anonymized) and the caption change (private -> "
            "public caption), over the pairs whose image changed (size changed, or at least "
            f"{CHANGED_SHARE:.2%} of the pixels moved by more than {CHANGED_LEVEL} grey levels of 255: beyond "
            "re-encoding noise) and whose public caption differs from the private one; the others are counted in "
            "`skipped`, not as 0; n = pairs measured"
        ),
    }

    def __init__(self, clip_model: str | None, private_captions: list | None, public_captions: list | None, revision: str | None = None):
        super().__init__()
        self.model_id = clip_model or DEFAULT_CLIP
        self.model = hub_model(self.model_id, revision)
        self.private, self.public = private_captions, public_captions
        try:
            self.clip = ClipFeatures(self.model_id, revision=revision)
            self.models = {"clip": self.model}
        except (OSError, ValueError, ImportError) as exc:  # no weights offline, not a CLIP checkpoint, missing extra
            self.unavailable = f"CLIP model {self.model_id!r} could not be loaded ({first_line(exc)})"
            self.models = {"clip": f"{self.model_id} (unavailable)"}
        self.buffer: list = []
        self.score, self.direction = [], []
        self.skipped = 0  # pairs without a direction: image unchanged beyond re-encoding noise, or caption unchanged

    def add(self, pairs: list[Pair]) -> None:
        self.buffer += pairs
        if len(self.buffer) >= self.clip.batch_size:
            self._flush()

    def _flush(self) -> None:
        from PIL import Image

        if not self.buffer:
            return
        after = self.clip.images([Image.fromarray(p.anonymized) for p in self.buffer])
        if self.public is not None:
            rows = [p.row for p in self.buffer]
            pub = self.clip.texts([self.public[j] or "" for j in rows])
            self.score += list(clip_score(after, pub))
            if self.private is not None:
                self._directions(after, pub)
        self.buffer = []

    def _directions(self, after: np.ndarray, pub: np.ndarray) -> None:
        """Directional CLIP of the buffered pairs whose image and caption both changed; the others only counted as
        skipped: without a change there is no direction, and scoring it 0 pulled the mean towards 0. The caption is
        compared as text, as the embeddings of one caption differ by rounding between batches."""
        from PIL import Image

        def moved(p: Pair) -> bool:
            caption_changed = (self.private[p.row] or "").strip() != (self.public[p.row] or "").strip()
            return caption_changed and image_changed(p.original, p.anonymized)

        changed = [i for i, p in enumerate(self.buffer) if moved(p)]
        if changed:
            before = self.clip.images([Image.fromarray(self.buffer[i].original) for i in changed])
            priv = self.clip.texts([self.private[self.buffer[i].row] or "" for i in changed])
            cosines = directional_clip(before, after[changed], priv, pub[changed])
            self.direction += [float(c) for c in cosines if np.isfinite(c)]
            self.skipped += int((~np.isfinite(cosines)).sum())  # an image change CLIP does not see at all
        self.skipped += len(self.buffer) - len(changed)

    def finish(self, seed: int) -> dict[str, dict]:
        self._flush()
        f, m = self.figures, self.model
        direction = mean_figure(self.direction, f["directional_clip"], seed, m)
        direction["skipped"] = self.skipped
        return {"clip_score": mean_figure(self.score, f["clip_score"], seed, m), "directional_clip": direction}


class VisionFeatures:
    """Image features of any ``transformers`` vision model (``AutoModel`` + ``AutoImageProcessor``): the pooled
    output where the model has one, else the first (CLS) token; a CLIP checkpoint gives its projected image
    embedding. Batched, loaded once."""

    def __init__(self, model_id: str, revision: str | None = None, device: str = "cpu", batch_size: int = 32):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        self.processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
        if AutoConfig.from_pretrained(model_id, revision=revision).model_type == "clip":
            self.clip = ClipFeatures(model_id, revision, device, batch_size)
        else:
            self.clip = None
            self.model = AutoModel.from_pretrained(model_id, revision=revision).to(device).eval()
        self.device, self.batch_size, self._torch = device, batch_size, torch

    def __call__(self, images: list) -> np.ndarray:
        if self.clip is not None:
            return self.clip.images(images).astype(np.float64)
        out = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(images=[im.convert("RGB") for im in images[start : start + self.batch_size]], return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                result = self.model(**inputs)
            pooled = getattr(result, "pooler_output", None)
            feats = pooled if pooled is not None else result.last_hidden_state[:, 0]
            out.append(feats.float().cpu().numpy().astype(np.float64))
        return np.concatenate(out)


class FrechetMetric(PairMetric):
    """FID and KID between the original and the anonymized image sets, over the features of ``feature_model``
    (default: the CLIP model of the quality group; any transformers vision model, e.g. DINOv2)."""

    name = "fid"
    figures = {
        "fid": (
            "Frechet distance between the image features ({features}) of the original and the anonymized sets (lower: "
            "closer distributions; biased upwards on few pairs, the more so the more feature dimensions). "
            + SUBSET_INTERVAL.format(rounds=SUBSET_ROUNDS) + "; its lower end cut at 0"
        ),
        "kid": (
            "kernel distance between the same feature sets: MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, "
            "the estimator unbiased for independent sets (lower is closer; can fall below 0 when the sets are alike, as each "
            "anonymized image's features sit near its own original's). " + SUBSET_INTERVAL.format(rounds=SUBSET_ROUNDS)
        ),
    }

    def __init__(self, feature_model: str | None = None, revision: str | None = None):
        super().__init__()
        self.model_id = feature_model or DEFAULT_CLIP
        self.model = hub_model(self.model_id, revision)
        self.figures = {k: v.format(features=self.model_id) for k, v in FrechetMetric.figures.items()}
        try:
            self.features = VisionFeatures(self.model_id, revision)
            self.models = {"fid features": self.model}
        except (OSError, ValueError, ImportError) as exc:  # no weights offline, not a vision model, missing extra
            self.unavailable = f"feature model {self.model_id!r} could not be loaded ({first_line(exc)}); pass --fid-model ID_OR_PATH"
            self.models = {"fid features": f"{self.model_id} (unavailable)"}
        self.before: list = []
        self.after: list = []

    def add(self, pairs: list[Pair]) -> None:
        from PIL import Image

        self.before.append(self.features([Image.fromarray(p.original) for p in pairs]))
        self.after.append(self.features([Image.fromarray(p.anonymized) for p in pairs]))

    def finish(self, seed: int) -> dict[str, dict]:
        before = np.concatenate(self.before) if self.before else np.zeros((0, 1))
        after = np.concatenate(self.after) if self.after else np.zeros((0, 1))
        f, m = self.figures, self.model
        return {
            "fid": set_distance_figure(frechet_distance, before, after, f["fid"], seed, m, floor=0.0),
            "kid": set_distance_figure(kernel_inception_distance, before, after, f["kid"], seed, m),
        }
