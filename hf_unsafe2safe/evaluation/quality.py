"""Quality metrics: CLIP score, directional CLIP, and FID / KID over a configurable feature extractor.

They need a CLIP model (``transformers`` ``CLIPModel``, by Hub id or local path). None ships in a package, so
offline they are reported ``unavailable`` with the reason, never as a made-up number.
"""

from __future__ import annotations

import numpy as np

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
    """Per pair: cosine between the image change and the caption change (private -> public caption)."""
    di, dt = img_after - img_before, txt_after - txt_before
    denom = np.linalg.norm(di, axis=1) * np.linalg.norm(dt, axis=1)
    return np.where(denom > 0, (di * dt).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float(
        (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1)) - 2.0 * k_ab.mean()
    )
