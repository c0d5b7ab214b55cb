"""Utility: does a classifier trained on the anonymized training split do as well as one trained on the original?

The paper trains the same image classifier (a ViT-B/16) twice, once on the original and once on the anonymized
training split, and compares their accuracy on the original test split (Caltech101, MIT Indoor67).
``evaluate_utility`` does that with a configurable backbone and two modes:

- ``linear-probe``: the backbone is frozen; its features are computed once per image set (the test set once
  for both runs) and only a linear head is trained;
- ``fine-tune``: the whole model (backbone + linear head) is trained.

Both runs start from the same state: the backbone is loaded once per process and each run gets a fresh copy of
it, and the head is initialised from the same seed. Training runs on ``accelerate`` (device placement, mixed
precision, gradient accumulation, ``accelerate launch`` for several processes); on the CPU a run is
deterministic under ``seed``. Accuracy intervals are a paired test-set bootstrap: the same resampled test rows
score both models, so the interval of the difference accounts for their correlation.

The offline default backbone, ``builtin:vit-tiny``, is a 2-layer ViT with random initial weights built from a
``ViTConfig`` (no download): in ``fine-tune`` mode it is trained from scratch, which runs on a CPU in seconds
on small data. It says whether the anonymized images still carry the label, not what a pretrained ViT would
score; for the paper's setting pass a Hub id or a local path (``UtilityConfig.paper()``).

MAE checkpoints (``model_type`` ``vit_mae``, e.g. ``facebook/vit-mae-base``) are loaded as a plain
``transformers.ViTModel`` holding the MAE encoder weights: ``ViTMAEModel`` shuffles the patch tokens in a new
random order on every forward pass even at ``mask_ratio=0`` (its ``random_masking`` always runs), so the same
image gives other patch outputs each time; the ``ViTModel`` sees every patch, in place, deterministically, and
its position embeddings are trainable, as in MAE's fine-tuning. In ``fine-tune`` mode an MAE backbone is pooled
as MAE fine-tunes it (``main_finetune.py``'s default ``global_pool``): the mean of the patch tokens of the last
block, without the encoder's final LayerNorm, through a new LayerNorm (``fc_norm``) and the linear head.

Augmentation (``fine-tune`` mode, training images only): ``"randaugment"`` is torchvision's
``transforms.RandAugment`` (2 ops, magnitude 9, its defaults) after a random horizontal flip, drawn per image;
it needs torchvision, which cannot run beside a CPU build of torch from PyPI: without an importable torchvision
``augment="randaugment"`` (the paper setting) is refused when the config is built, with the fix, and never
replaced silently; ``"flip-shift"`` (a random horizontal flip and a shift of up to 1/8 of the side) needs no
torchvision and runs only when asked for.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import columns as C
from ..config import _check
from .stats import align, bootstrap_ci

logger = logging.getLogger(__name__)

BUILTIN_BACKBONE = "builtin:vit-tiny"
# ViT-B/16 pre-trained with MAE (ImageNet-1k, 224 px, 16 px patches): encoder + decoder, the encoder is used
PAPER_BACKBONE = "facebook/vit-mae-base"
MODES = ("linear-probe", "fine-tune")
AUGMENTS = ("none", "flip-shift", "randaugment")
# auto: "mean" for an MAE backbone in fine-tune mode (MAE's fine-tuning), "cls" otherwise (MAE's linear probe too)
POOLINGS = ("auto", "cls", "mean")
# torchvision.transforms.RandAugment's own defaults; MAE's fine-tuning recipe uses timm's rand-m9-mstd0.5 (2 ops, magnitude 9)
RANDAUGMENT = dict(num_ops=2, magnitude=9)
# the encoder fields a ViTMAEConfig shares with a ViTConfig (the rest are the decoder's and the masking's)
_VIT_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
)
FAILED_ROWS = ("drop", "blank")
MIXED_PRECISION = ("no", "fp16", "bf16")
# the built-in backbone: 32 px images cut into 4 px patches (64 tokens + CLS), 2 layers of width 64
_BUILTIN_VIT = dict(image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_BLANK_GREY = 128  # what a `blank` row holds: the emptied image of a failed row as a uniform mid-grey picture

DEFINITIONS = {
    "utility_accuracy_original": "top-1 accuracy on the original test split of the classifier trained on the original training split",
    "utility_accuracy_anonymized": "top-1 accuracy on the original test split of the same classifier (same initial weights, seed and settings) trained on the anonymized training split",
    "utility_accuracy_difference": "anonymized minus original accuracy on the same test rows (negative: utility lost); interval from a paired bootstrap over test rows",
}


@dataclass
class UtilityConfig:
    """How the utility classifier is built and trained. Validates itself."""

    # a transformers vision model (AutoModel) by Hub id or local path, or "builtin:vit-tiny" (offline, random init)
    backbone: str = BUILTIN_BACKBONE
    revision: str | None = None
    mode: str = "fine-tune"
    epochs: int = 10
    batch_size: int = 32
    # None: 1e-3 in fine-tune mode, 1e-2 in linear-probe mode (a lone linear head learns slowly at 1e-3)
    learning_rate: float | None = None
    weight_decay: float = 0.05
    # share of the optimisation steps with a linear warm-up, then cosine decay to 0
    warmup_ratio: float = 0.0
    # square input side; None: the backbone's own `config.image_size` (224 when it has none)
    image_size: int | None = None
    # training-image augmentation (fine-tune mode): "none"; "flip-shift": random horizontal flip and a random shift
    # of up to 1/8 of the side; "randaugment": random horizontal flip, then torchvision's RandAugment (2 ops,
    # magnitude 9), per image (needs torchvision). True / False stand for "flip-shift" / "none".
    augment: bool | str = "none"
    # image vector fed to the head: "cls" (the CLS token after the final LayerNorm), "mean" (mean of the patch
    # tokens without the final LayerNorm, then a new LayerNorm: MAE's fine-tuning; ViT backbones only), "auto":
    # "mean" for an MAE backbone in fine-tune mode, else "cls"
    pooling: str = "auto"
    seed: int = 0
    label_column: str = "label"
    # split names used where a whole dataset (CLI, a DatasetDict) is given
    train_split: str = "train"
    test_split: str = "test"
    # a seeded subset of the training pairs (the same rows for both runs) / of the test rows
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    # anonymized rows whose status is failed / invalid_input hold no image: "drop" them from the anonymized run
    # (counted), or "blank": keep them, with a uniform grey image and their label
    failed_rows: str = "drop"
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    # train on the CPU even when an accelerator is present
    cpu: bool = False
    bootstrap_rounds: int = 1000

    def __post_init__(self) -> None:
        _check(isinstance(self.backbone, str) and bool(self.backbone), "utility.backbone", self.backbone, f"a Hub model id, a local path or {BUILTIN_BACKBONE!r}")
        _check(not self.backbone.startswith("builtin:") or self.backbone == BUILTIN_BACKBONE, "utility.backbone", self.backbone, f"{BUILTIN_BACKBONE!r} (the only built-in)")
        _check(self.mode in MODES, "utility.mode", self.mode, f"one of {MODES}")
        _check(isinstance(self.epochs, int) and self.epochs >= 1, "utility.epochs", self.epochs, "an int >= 1")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "utility.batch_size", self.batch_size, "an int >= 1")
        if self.learning_rate is None:
            self.learning_rate = 1e-2 if self.mode == "linear-probe" else 1e-3
        _check(isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0, "utility.learning_rate", self.learning_rate, "a float > 0")
        _check(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "utility.weight_decay", self.weight_decay, "a float >= 0")
        _check(isinstance(self.warmup_ratio, (int, float)) and 0 <= self.warmup_ratio < 1, "utility.warmup_ratio", self.warmup_ratio, "a float in [0, 1)")
        _check(self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 8), "utility.image_size", self.image_size, "None or an int >= 8")
        if isinstance(self.augment, bool):
            self.augment = "flip-shift" if self.augment else "none"
        _check(self.augment in AUGMENTS, "utility.augment", self.augment, f"one of {AUGMENTS} (or True / False: flip-shift / none)")
        if self.augment == "randaugment":
            _randaugment_class()  # refused now, with the fix, rather than after the backbone and images are loaded
        _check(self.pooling in POOLINGS, "utility.pooling", self.pooling, f"one of {POOLINGS}")
        _check(isinstance(self.seed, int), "utility.seed", self.seed, "an int")
        _check(isinstance(self.label_column, str) and bool(self.label_column), "utility.label_column", self.label_column, "a column name")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value >= 2), f"utility.{name}", value, "None or an int >= 2")
        _check(self.failed_rows in FAILED_ROWS, "utility.failed_rows", self.failed_rows, f"one of {FAILED_ROWS}")
        _check(self.mixed_precision in MIXED_PRECISION, "utility.mixed_precision", self.mixed_precision, f"one of {MIXED_PRECISION}")
        _check(isinstance(self.gradient_accumulation_steps, int) and self.gradient_accumulation_steps >= 1, "utility.gradient_accumulation_steps", self.gradient_accumulation_steps, "an int >= 1")
        _check(isinstance(self.bootstrap_rounds, int) and self.bootstrap_rounds >= 100, "utility.bootstrap_rounds", self.bootstrap_rounds, "an int >= 100")

    @classmethod
    def paper(cls, **overrides) -> "UtilityConfig":
        """The paper's classification-utility setting (PAPER.md: a ViT-B/16 pre-trained with MAE, fine-tuned 100
        epochs at lr 5e-4 with RandAugment, on Caltech101 and MIT Indoor67). Each setting, next to the paper's:

        ==================  ==========================================================  =====================================
        setting             here                                                        paper
        ==================  ==========================================================  =====================================
        backbone            ``facebook/vit-mae-base`` (Hub id or a local copy),          ViT-B/16 pre-trained with MAE
                            loaded as ``ViTModel`` (every patch, no masking)
        mode                ``fine-tune`` (the whole model)                             fine-tuned
        pooling             ``auto`` -> mean of the patch tokens + new LayerNorm        not stated; MAE's fine-tuning default
        epochs              100                                                         100
        learning_rate       5e-4 (AdamW)                                                5e-4
        augment             ``randaugment``: random flip + torchvision RandAugment      RandAugment
                            (2 ops, magnitude 9); needs torchvision
        image_size          224 (shorter side resized, centre crop)                     not stated; MAE ViT-B/16's 224
        warmup_ratio        0.05, then cosine decay                                     not stated; MAE: 5 of 100 epochs
        weight_decay        0.05 (the class default)                                    not stated; MAE's fine-tuning 0.05
        batch_size          32 (the class default)                                      not stated
        ==================  ==========================================================  =====================================

        Not reproduced (MAE's ImageNet fine-tuning recipe, not stated by the paper): layer-wise lr decay, drop
        path, mixup / cutmix, label smoothing, random erasing, random resized crops. Without an importable
        torchvision this raises (``TorchvisionUnavailable``, with the fix); ``paper(augment="flip-shift")`` asks
        for the paper's other settings with flip-and-shift augmentation instead. A GPU job.
        """
        values = dict(backbone=PAPER_BACKBONE, mode="fine-tune", epochs=100, learning_rate=5e-4, warmup_ratio=0.05, image_size=224, augment="randaugment", pooling="auto")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    """One training run: test predictions (in test-row order) and per-epoch training curves."""

    predictions: np.ndarray
    correct: np.ndarray  # bool per test row
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    train_accuracy: list[float] = field(default_factory=list)  # accuracy on the training batches per epoch
    train_samples: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


@dataclass
class UtilityResult:
    original: RunResult
    anonymized: RunResult
    classes: list[str]
    test_labels: np.ndarray
    model: str  # backbone id (and revision) as reported
    config: UtilityConfig
    counts: dict  # rows used, dropped or blanked, by reason
    processes: int = 1  # training processes (Accelerate: torchrun / accelerate launch)
    pooling: str = "cls"  # the pooling used ("auto" resolved)

    @property
    def difference(self) -> float:
        return self.anonymized.accuracy - self.original.accuracy

    def metrics(self) -> dict:
        """name -> {"value", "ci95", "n", "definition", "model"}, the shape of every figure of the report."""
        seed, rounds = self.config.seed, self.config.bootstrap_rounds
        a = self.original.correct.astype(np.float64)
        b = self.anonymized.correct.astype(np.float64)
        # the same seed and length draw the same resampled test rows for all three: a paired bootstrap
        values = {"utility_accuracy_original": a, "utility_accuracy_anonymized": b, "utility_accuracy_difference": b - a}
        return {
            name: {"value": float(v.mean()), "ci95": bootstrap_ci(list(v), seed, rounds), "n": int(len(v)), "definition": DEFINITIONS[name], "model": self.model}
            for name, v in values.items()
        }

    def per_class(self) -> dict:
        out = {}
        for index, name in enumerate(self.classes):
            rows = self.test_labels == index
            if rows.any():
                out[name] = {"n": int(rows.sum()), "original": float(self.original.correct[rows].mean()), "anonymized": float(self.anonymized.correct[rows].mean())}
        return out

    def to_dict(self) -> dict:
        run = lambda r: {"accuracy": r.accuracy, "train_samples": r.train_samples, "loss": r.loss, "train_accuracy": r.train_accuracy, "seconds": round(r.seconds, 2)}  # noqa: E731
        return {
            "model": self.model,
            "mode": self.config.mode,
            "pooling": self.pooling,
            "augment": self.config.augment if self.config.mode == "fine-tune" else "none",
            "classes": self.classes,
            "test_samples": int(len(self.test_labels)),
            "runs": {"original": run(self.original), "anonymized": run(self.anonymized)},
            "per_class": self.per_class(),
            "counts": self.counts,
            "processes": self.processes,
            "config": self.config.to_dict(),
        }


# ---- the backbone -------------------------------------------------------------------------------------


@dataclass
class Backbone:
    model: Any  # torch module on the CPU, never trained in place (each run gets a copy)
    mean: list[float]
    std: list[float]
    image_size: int
    feature_dim: int
    interpolate: bool  # pass interpolate_pos_encoding=True (a ViT run at another size than it was built for)
    name: str
    mae: bool = False  # the weights are an MAE encoder's (model_type vit_mae), loaded as a ViTModel
    layer_norm_eps: float = 1e-6  # of the new LayerNorm that follows mean pooling


class TorchvisionUnavailable(ImportError, ValueError):
    """``augment="randaugment"`` without an importable torchvision (a ValueError too: a config that cannot run)."""


def _randaugment_class():
    """``torchvision.transforms.RandAugment``, or ``TorchvisionUnavailable`` saying how to get it."""
    try:
        from torchvision.transforms import RandAugment
    except Exception as err:  # noqa: BLE001 - ModuleNotFoundError, or a torchvision built for another torch: RuntimeError "operator torchvision::nms does not exist"
        import torch

        version = torch.__version__
        parts = version.split("+")[0].split(".")
        # torch 2.N pairs with torchvision 0.(N+15): 2.13 -> 0.28, 2.11 -> 0.26
        known = len(parts) > 1 and parts[0] == "2" and parts[1].isdigit()
        pin = f"pip install 'torchvision==0.{int(parts[1]) + 15}.*'" if known else "pip install torchvision"
        index = " from the index torch came from (for a +cpu torch: --index-url https://download.pytorch.org/whl/cpu)" if "+cpu" in version else " from the index torch came from"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TorchvisionUnavailable(
            f"Got 'randaugment' for `utility.augment` (the paper's augmentation, UtilityConfig.paper()): it needs torchvision.transforms.RandAugment, "
            f"and torchvision does not import here ({type(err).__name__}: {reason}). Install the torchvision build that matches torch {version}: "
            f"{pin}{index}; or choose another augmentation explicitly: augment='flip-shift' (random flip and shift, not the paper's RandAugment) or 'none'."
        ) from err
    return RandAugment


# transformers >= 5 kernelizes a from_pretrained model by default: on a GPU, model.train() then fetches layers
# (kernels-community/activation) from the Hub, which fails offline ("... not available in the local cache and
# Hugging Face Hub is in offline mode") or without the `kernels` package ("Kernels are not available"). The
# classifier uses the plain torch layers, on every machine alike.
_NO_HUB_KERNELS = {"use_kernels": False}


def _load_mae_as_vit(backbone: str, revision: str | None, mae_config):
    """The encoder of an MAE checkpoint (``vit.*`` of ViTMAEForPreTraining, or a bare ViTMAEModel) in a ``ViTModel``:
    every patch in place, no random masking or shuffling; the decoder weights are left out."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(**{k: getattr(mae_config, k) for k in _VIT_FIELDS if hasattr(mae_config, k)})
    model, info = ViTModel.from_pretrained(backbone, revision=revision, config=config, add_pooling_layer=False, output_loading_info=True, **_NO_HUB_KERNELS)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ValueError(f"{backbone!r} is a vit_mae checkpoint but its encoder weights do not fill a ViTModel: missing {missing[:5]}, mismatched {mismatched[:5]}")
    return model


@functools.lru_cache(maxsize=2)
def load_backbone(backbone: str, revision: str | None = None, image_size: int | None = None, seed: int = 0) -> Backbone:
    """The backbone, loaded once per process for a given (id, revision, size, seed): callers copy it."""
    import inspect

    import torch

    mae = False
    if backbone == BUILTIN_BACKBONE:
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(seed)  # random initial weights, the same for a given seed
        model = ViTModel(ViTConfig(**_BUILTIN_VIT), add_pooling_layer=False)
        mean, std, name = [0.5] * 3, [0.5] * 3, f"{BUILTIN_BACKBONE} (ViT, 2 layers, width 64, 4 px patches, random init with seed {seed}, no pretrained weights)"
        commit = None
    else:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        cfg = AutoConfig.from_pretrained(backbone, revision=revision)
        commit = getattr(cfg, "_commit_hash", None)
        if getattr(cfg, "model_type", None) == "vit_mae":
            model, mae = _load_mae_as_vit(backbone, revision, cfg), True
        else:
            if hasattr(cfg, "mask_ratio"):
                cfg.mask_ratio = 0.0  # other masked encoders mask patches by default; a classifier sees them all
            model = AutoModel.from_pretrained(backbone, revision=revision, config=cfg, **_NO_HUB_KERNELS)
            commit = getattr(model.config, "_commit_hash", None) or commit
        try:
            processor = AutoImageProcessor.from_pretrained(backbone, revision=revision)
            mean, std = list(processor.image_mean), list(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError) as err:
            logger.warning("no image processor for %r (%s): normalising with mean 0.5, std 0.5", backbone, type(err).__name__)
            mean, std = [0.5] * 3, [0.5] * 3
        # the commit the weights came from, when they came from the Hub (None for a local folder)
        resolved = revision or commit
        name = backbone if resolved is None else f"{backbone}@{resolved}"
    model.eval()
    native = getattr(model.config, "image_size", None)
    native = native if isinstance(native, int) else None
    size = image_size or native or 224
    interpolate = native is not None and size != native and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    with torch.inference_mode():
        dim = _features(model, torch.zeros(1, 3, size, size), interpolate).shape[-1]
    eps = getattr(model.config, "layer_norm_eps", 1e-6)
    return Backbone(model, mean, std, size, int(dim), interpolate, name, mae, float(eps) if isinstance(eps, (int, float)) else 1e-6)


def resolve_pooling(config: UtilityConfig, backbone: Backbone) -> str:
    """``config.pooling`` with "auto" resolved: "mean" for an MAE backbone in fine-tune mode, "cls" otherwise.
    "mean" needs a ViT-style backbone (CLS + patch tokens, a final ``layernorm``)."""
    pooling = config.pooling
    if pooling == "auto":
        pooling = "mean" if backbone.mae and config.mode == "fine-tune" else "cls"
    if pooling == "mean":
        from transformers import ViTModel

        if not isinstance(backbone.model, ViTModel):
            raise ValueError(f"Got 'mean' for `utility.pooling` with {backbone.name!r} ({type(backbone.model).__name__}); expected a ViT or MAE backbone (ViTModel), or pooling 'cls' / 'auto'")
    return pooling


def _features(model, pixels, interpolate: bool, pooling: str = "cls"):
    """One vector per image: the CLS token of token models (ViT, DeiT, MAE) or the mean of their patch tokens
    (``pooling="mean"``), the pooled output of the others."""
    out = model(pixel_values=pixels, **({"interpolate_pos_encoding": True} if interpolate else {}))
    hidden = out.last_hidden_state
    if hidden.ndim == 3:
        return hidden[:, 1:].mean(1) if pooling == "mean" else hidden[:, 0]
    return out.pooler_output.flatten(1)


# ---- the trainer ---------------------------------------------------------------------------------------


class UtilityTrainer:
    """Trains the utility classifier on ``accelerate``; the backbone is loaded once and copied per run."""

    def __init__(self, config: UtilityConfig | None = None):
        from accelerate import Accelerator

        self.config = config or UtilityConfig()
        self.backbone = load_backbone(self.config.backbone, self.config.revision, self.config.image_size, self.config.seed)
        self.pooling = resolve_pooling(self.config, self.backbone)
        try:
            self.accelerator = Accelerator(cpu=self.config.cpu, mixed_precision=self.config.mixed_precision, gradient_accumulation_steps=self.config.gradient_accumulation_steps)
        except ValueError as err:  # Accelerate keeps one device / precision setting per process
            raise ValueError(f"Got mixed_precision={self.config.mixed_precision!r}, cpu={self.config.cpu!r} for `utility`; this process already runs Accelerate with other settings, which cannot change until it restarts ({err})") from err

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    def _module(self, head_only: bool, num_classes: int):
        import torch

        bb = self.backbone
        torch.manual_seed(self.config.seed)  # the head starts from the same weights in every run
        head = torch.nn.Linear(bb.feature_dim, num_classes)
        if self.pooling == "mean":  # MAE's fc_norm: a new LayerNorm after the pooling, in place of the final one
            head = torch.nn.Sequential(torch.nn.LayerNorm(bb.feature_dim, eps=bb.layer_norm_eps), head)
        if head_only:
            return head
        return _Classifier(copy.deepcopy(bb.model), head, bb.mean, bb.std, bb.interpolate, self.pooling)

    def encode(self, pixels) -> "Any":
        """Frozen-backbone features of uint8 images (N, 3, S, S), computed once (linear-probe mode)."""
        import torch

        bb = self.backbone
        encoder = _Classifier(copy.deepcopy(bb.model), None, bb.mean, bb.std, bb.interpolate, self.pooling).to(self.accelerator.device).eval()
        out = []
        with torch.inference_mode(), self.accelerator.autocast():
            for start in range(0, len(pixels), self.config.batch_size):
                batch = pixels[start : start + self.config.batch_size].to(self.accelerator.device)
                out.append(encoder(batch).float().cpu())
        del encoder
        return torch.cat(out) if out else torch.zeros(0, bb.feature_dim)

    def run(self, train_x, train_y, test_x, test_y, num_classes: int) -> RunResult:
        """Train on (train_x, train_y), predict test_x. Inputs are uint8 images in fine-tune mode and features
        from ``encode`` in linear-probe mode."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, TensorDataset

        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        head_only = cfg.mode == "linear-probe"
        model = self._module(head_only, num_classes)
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(TensorDataset(train_x, torch.as_tensor(train_y, dtype=torch.long)), batch_size=cfg.batch_size, shuffle=True, generator=generator)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        total = max(1, cfg.epochs * math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        warmup = int(cfg.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
        model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
        augment = _AUGMENTERS[cfg.augment](cfg.seed) if cfg.augment != "none" and not head_only else None
        result = RunResult(predictions=np.zeros(0, dtype=np.int64), correct=np.zeros(0, dtype=bool), train_samples=len(train_y))
        # 1. train: one pass per epoch, loss and accuracy summed over all processes
        for _ in range(cfg.epochs):
            model.train()
            sums = torch.zeros(3, device=acc.device)  # loss * n, correct, n
            for x, y in loader:
                with acc.accumulate(model):
                    if augment is not None:
                        x = augment(x)
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                    acc.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                sums += torch.stack([loss.detach() * len(y), (logits.argmax(-1) == y).sum().float(), torch.tensor(float(len(y)), device=acc.device)])
            sums = acc.reduce(sums, "sum")
            result.loss.append(float(sums[0] / sums[2]))
            result.train_accuracy.append(float(sums[1] / sums[2]))
        # 2. predict the test rows, gathered from every process with their indices
        model.eval()
        test_loader = acc.prepare(DataLoader(TensorDataset(torch.arange(len(test_x)), test_x), batch_size=cfg.batch_size))
        rows, preds = [], []
        with torch.inference_mode():
            for index, x in test_loader:
                pred = model(x).argmax(-1)
                index, pred = acc.gather_for_metrics((index, pred))
                rows.append(index.cpu())
                preds.append(pred.cpu())
        order = torch.cat(rows).argsort()
        result.predictions = torch.cat(preds)[order].numpy()
        result.correct = result.predictions == np.asarray(test_y)
        acc.free_memory()
        result.seconds = time.perf_counter() - started
        return result


@functools.cache
def _classifier_class():
    import torch

    class Classifier(torch.nn.Module):
        """uint8 images -> normalised -> backbone features -> head (no head: the features). With mean pooling
        the backbone's final LayerNorm is dropped (the head starts with its own, as MAE's fc_norm)."""

        def __init__(self, backbone, head, mean, std, interpolate, pooling="cls"):
            super().__init__()
            if pooling == "mean":
                backbone.layernorm = torch.nn.Identity()
            self.backbone, self.head, self.interpolate, self.pooling = backbone, head, interpolate, pooling
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        def forward(self, pixels):
            x = (pixels.float() / 255.0 - self.mean) / self.std
            features = _features(self.backbone, x, self.interpolate, self.pooling)
            return features if self.head is None else self.head(features.float())

    return Classifier


def _Classifier(backbone, head, mean, std, interpolate, pooling="cls"):
    return _classifier_class()(backbone, head, mean, std, interpolate, pooling)


class _Augment:
    """Random horizontal flip and a random shift of up to 1/8 of the side (reflect padding), per image."""

    def __init__(self, seed: int):
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        import torch

        n, _, h, w = x.shape
        pad = max(1, h // 8)
        flip = torch.rand(n, generator=self.generator) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(-1), x)
        padded = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator).to(x.device)
        rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1).expand(n, 3, h, w)
        cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w).expand(n, 3, h, w)
        out = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(3, device=x.device).view(1, 3, 1, 1), rows, cols]
        return out.to(x.dtype)


class _RandAugment:
    """A random horizontal flip, then torchvision's ``RandAugment`` (``RANDAUGMENT``: 2 ops, magnitude 9), drawn
    per image on the uint8 batch (on its device). Seeded: RandAugment draws from torch's global generator, here
    forked and seeded from this augmenter's own generator, so the model's random state is left alone."""

    def __init__(self, seed: int):
        import torch

        self.op = _randaugment_class()(**RANDAUGMENT)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        import torch

        flip = (torch.rand(len(x), generator=self.generator) < 0.5).tolist()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.op(image.flip(-1) if f else image) for image, f in zip(x, flip)])


_AUGMENTERS = {"flip-shift": _Augment, "randaugment": _RandAugment}


# ---- data ------------------------------------------------------------------------------------------------


def _square(cell, size: int) -> np.ndarray | None:
    """An image cell as RGB uint8 (size, size, 3): shorter side resized to ``size``, centre crop; None if unreadable."""
    from PIL import Image

    from ..utils.images import open_cell

    img = open_cell(cell)
    if img is None:
        return None
    img = img.convert("RGB")
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _images(ds, rows: list[int], image_column: str, size: int, desc: str) -> list[np.ndarray | None]:
    from datasets import Image
    from tqdm.auto import tqdm

    cells = ds.cast_column(image_column, Image(decode=False)) if isinstance(ds.features.get(image_column), Image) else ds
    return [_square(cells[r][image_column], size) for r in tqdm(rows, desc=desc)]


def _tensor(arrays: list[np.ndarray], size: int):
    import torch

    if not arrays:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _classes(original_train, original_test, label_column: str) -> tuple[list[str], Any]:
    """Class names and a function value -> class index. ClassLabel columns keep their names and indices; other
    labels (strings, ints) are sorted."""
    from datasets import ClassLabel

    train_feature, test_feature = original_train.features[label_column], original_test.features[label_column]
    if isinstance(train_feature, ClassLabel):
        if not isinstance(test_feature, ClassLabel) or test_feature.names != train_feature.names:
            raise ValueError(f"the `{label_column}` classes of the test split differ from the training split's ({train_feature.names[:5]}...): both must be the same ClassLabel")
        return list(train_feature.names), int
    values = {v for v in original_train[label_column] + original_test[label_column] if v is not None}
    ordered = sorted(values, key=lambda v: (str(type(v)), v))
    index = {v: k for k, v in enumerate(ordered)}
    return [str(v) for v in ordered], index.__getitem__


def evaluate_utility(original_train, anonymized_train, original_test, config: UtilityConfig | None = None, *, key: str | None = None, image_column: str = "image") -> UtilityResult:
    """Train the same classifier on ``original_train`` and on ``anonymized_train`` (aligned row by row, by ``key``
    or by checked position) and test both on ``original_test``.

    Anonymized rows whose status is ``failed`` or ``invalid_input`` hold no image: they are dropped from the
    anonymized run or kept as a grey image (``config.failed_rows``), and counted. Original rows (train or test)
    that cannot be read are dropped and counted. An anonymized row without a readable image and any other
    status, or with another label than its original, is an error.
    """
    cfg = config or UtilityConfig()
    # 1. check the inputs and pair the training rows
    for name, ds in (("original training", original_train), ("anonymized training", anonymized_train), ("original test", original_test)):
        missing = [c for c in (image_column, cfg.label_column) if c not in ds.column_names and not (c == cfg.label_column and name == "anonymized training")]
        if missing:
            raise ValueError(f"utility needs column(s) {missing} in the {name} split; it has {ds.column_names} (label column: `label_column`)")
    pairs = align(original_train, anonymized_train, key, image_column)
    if len({i for i, _ in pairs}) != len(original_train) or len(pairs) != len(original_train):
        raise ValueError(
            f"the anonymized training split pairs {len({i for i, _ in pairs})} of the {len(original_train)} original training rows "
            f"({len(pairs)} anonymized rows): utility trains both classifiers on the same rows, pass matching splits"
        )
    classes, to_index = _classes(original_train, original_test, cfg.label_column)
    train_values, test_values = original_train[cfg.label_column], original_test[cfg.label_column]
    if None in train_values or None in test_values:
        raise ValueError(f"`{cfg.label_column}` is missing (None) in {train_values.count(None)} training and {test_values.count(None)} test rows")
    if cfg.label_column in anonymized_train.column_names:
        anon_values = anonymized_train[cfg.label_column]
        wrong = [(i, j) for i, j in pairs if anon_values[j] != train_values[i]]
        if wrong:
            i, j = wrong[0]
            raise ValueError(f"{len(wrong)} anonymized rows carry another `{cfg.label_column}` than their original (e.g. anonymized row {j}: {anon_values[j]!r}, original row {i}: {train_values[i]!r})")
    if len(classes) < 2:
        raise ValueError(f"utility needs at least 2 classes in `{cfg.label_column}`; got {classes}")
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_train_samples is not None and len(pairs) > cfg.max_train_samples:
        pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), cfg.max_train_samples, replace=False))]
    test_rows = list(range(len(original_test)))
    if cfg.max_test_samples is not None and len(test_rows) > cfg.max_test_samples:
        test_rows = sorted(int(k) for k in rng.choice(len(test_rows), cfg.max_test_samples, replace=False))

    # 2. load the backbone (once per process) and decode every image at its input size
    trainer = UtilityTrainer(cfg)
    size = trainer.image_size
    statuses = [(a or {}).get("status") for a in anonymized_train[C.ANONYMIZATION]] if C.ANONYMIZATION in anonymized_train.column_names else [None] * len(anonymized_train)
    src = _images(original_train, [i for i, _ in pairs], image_column, size, "utility: original train")
    dst = _images(anonymized_train, [j for _, j in pairs], image_column, size, "utility: anonymized train")
    test = _images(original_test, test_rows, image_column, size, "utility: test")
    counts: dict[str, Any] = {"train_pairs": len(pairs), "failed_rows_policy": cfg.failed_rows, "original_unreadable": 0, "anonymized_failed": {}, "test_rows": len(test_rows), "test_unreadable": 0}
    orig_x, orig_y, anon_x, anon_y = [], [], [], []
    blank = np.full((size, size, 3), _BLANK_GREY, dtype=np.uint8)
    for (i, j), a, b in zip(pairs, src, dst):
        label = to_index(train_values[i])
        if a is None:
            counts["original_unreadable"] += 1
        else:
            orig_x.append(a)
            orig_y.append(label)
        status = statuses[j]
        if status in (C.STATUS_FAILED, C.STATUS_INVALID):
            counts["anonymized_failed"][status] = counts["anonymized_failed"].get(status, 0) + 1
            if cfg.failed_rows == "blank":
                anon_x.append(blank)
                anon_y.append(label)
            continue
        if b is None:
            raise ValueError(f"anonymized row {j} has no readable image but status {status!r}: only failed / invalid_input rows may lack their image")
        anon_x.append(b)
        anon_y.append(label)
    test_x, test_y = [], []
    for r, t in zip(test_rows, test):
        if t is None:
            counts["test_unreadable"] += 1
            continue
        test_x.append(t)
        test_y.append(to_index(test_values[r]))
    counts.update(original_train_used=len(orig_y), anonymized_train_used=len(anon_y), test_used=len(test_y))
    dropped = sum(counts["anonymized_failed"].values())
    if dropped or counts["original_unreadable"] or counts["test_unreadable"]:
        logger.warning(
            "utility: %d failed/invalid anonymized rows %s; %d unreadable original training and %d unreadable test rows dropped",
            dropped, "dropped" if cfg.failed_rows == "drop" else "kept as grey images", counts["original_unreadable"], counts["test_unreadable"],
        )
    for name, n in (("original training", len(orig_y)), ("anonymized training", len(anon_y)), ("test", len(test_y))):
        if n < 2:
            raise ValueError(f"utility: only {n} usable {name} rows remain (see the counts of failed and unreadable rows)")

    # 3. train and test both classifiers from the same initial state
    orig_x, anon_x, test_x = _tensor(orig_x, size), _tensor(anon_x, size), _tensor(test_x, size)
    if cfg.mode == "linear-probe":
        orig_x, anon_x, test_x = trainer.encode(orig_x), trainer.encode(anon_x), trainer.encode(test_x)
    test_y = np.asarray(test_y, dtype=np.int64)
    original = trainer.run(orig_x, orig_y, test_x, test_y, len(classes))
    anonymized = trainer.run(anon_x, anon_y, test_x, test_y, len(classes))
    logger.info("utility: accuracy %.4f (original) vs %.4f (anonymized) on %d test rows", original.accuracy, anonymized.accuracy, len(test_y))
    return UtilityResult(original=original, anonymized=anonymized, classes=classes, test_labels=test_y, model=trainer.backbone.name, config=cfg, counts=counts, processes=trainer.accelerator.num_processes, pooling=trainer.pooling)
