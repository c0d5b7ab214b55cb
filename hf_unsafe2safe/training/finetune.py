"""Fine-tune an InstructPix2Pix editor on the pairs an anonymization run produced (the paper's recipe).

Training data: the rows of an anonymization output kept with ``keep_original`` (``--keep-original``) that were
flagged and really edited (status ``edited``, both images present): the source image is the condition, the
anonymized image the target, the edit instruction the text and, with ``dual_prompt`` or ``safe_attention``, the
public caption a second text window ([instruction ; caption], the context the editor builds at inference). With
``clip_model`` the paper's triplet filter (``triplet_filter.filter_pairs``) keeps only the pairs whose edit kept
the caption's CLIP alignment (ratio > ``clip_threshold``), before the held-out split.

What learns (the VAE and the text encoder always stay frozen):
- full fine-tuning (default): every UNet weight;
- ``safe_attention``: the paper's dual-prompt editor. Safe cross-attention processors
  (``editing.safe_attention``: an own caption branch per cross-attention layer, fused with the instruction branch
  by a zero-initialised gate, so that training starts from the single-prompt editor exactly) are put on the UNet
  and train together with it (``fusion_learning_rate`` for the fusion weights, default ``learning_rate``). A base
  that already has them (an earlier safe-attention run) continues with its own;
- ``lora_rank`` > 0: LoRA adapters (peft) on the UNet's attention projections (to_q, to_k, to_v, to_out.0) and
  nothing else; the result is an adapter folder (``pytorch_lora_weights.safetensors``, written by the pipeline's
  ``save_lora_weights`` with the peft config as metadata) that ``diffusion.lora`` loads on top of ``base``.
  A FLUX Kontext base (``model_index.json`` class ``FluxKontextPipeline``) is handed to
  ``kontext_lora.finetune_kontext`` (LoRA only).

The objective is InstructPix2Pix's: the UNet sees the noised latents of the target next to the (unscaled, mode)
latents of the source and predicts the noise (or v, as the scheduler says); text, image or both conditions are
dropped with ``condition_dropout`` each so that classifier-free guidance keeps working. Pairs are cropped alike
(shorter side resized to ``resolution``, the same random square crop and flip for source and target).
AdamW (or bitsandbytes' AdamW8bit with ``use_8bit_adam``), learning rate warmed up linearly over ``warmup_steps``
((t + 1) / warmup at optimizer step t), then constant or cosine-decayed to 0 at ``steps`` (``lr_schedule``: the
decay of diffusers' ``get_cosine_schedule_with_warmup``), stepped once per optimizer step whatever the
accumulation and process count. With ``ema_decay`` > 0 an exponential moving average of the trained weights is
kept (diffusers' ``EMAModel``: decay min(ema_decay, (1 + k) / (10 + k)) at update k >= 1, the first update a copy)
and is what gets saved; ``gradient_checkpointing`` trades compute for activation memory (same result).
Training runs on Accelerate (device, mixed precision, gradient accumulation; several processes under
``accelerate launch``). Every random draw comes from generators seeded by ``seed``: the same data, config and
seed give the same weights. The result is a complete pipeline folder that ``diffusion.model`` loads (or, with
LoRA, an adapter folder), with ``unsafe2safe_finetune.json`` (config, rows used, triplet filter, losses, learning
rates, held-out loss before / after, how to load the result), ``loss.png`` and ``samples.png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from .. import columns as C
from ..config import _check

RECORD = "unsafe2safe_finetune.json"
LR_SCHEDULES = ("constant", "cosine")
# the UNet's attention projections that LoRA adapts (self- and cross-attention), as diffusers' LoRA examples
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA weight file name


@dataclass
class FinetuneConfig:
    """What to fine-tune, on what, and how; validates itself."""

    # an InstructPix2Pix pipeline (InstructPix2Pix or MagicBrush weights; with lora_rank also FLUX Kontext): Hub id or folder
    base: str = "timbrooks/instruct-pix2pix"
    revision: str | None = None
    dual_prompt: bool = False  # condition on [instruction ; public caption], as diffusion.dual_prompt does
    # the paper's safe cross-attention (own caption branch + learned fusion), trained with the UNet
    safe_attention: bool = False
    fusion_learning_rate: float | None = None  # learning rate of the fusion weights (None: learning_rate)
    resolution: int = 256  # square training crops (InstructPix2Pix was trained at 256)
    steps: int = 1000  # optimizer steps
    batch_size: int = 4  # pairs per step and process (before gradient accumulation)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after the warmup: "constant" or "cosine" (decay to 0 at `steps`)
    ema_decay: float = 0.0  # EMA of the trained weights, saved instead of the raw ones (0: off; the paper uses EMA, e.g. 0.9999)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, same result)
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit (optional dependency) instead of torch's AdamW
    condition_dropout: float = 0.05  # drop the text, the image, and both, each with this probability
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (Accelerate)
    flip: bool = True  # random horizontal flips, the same for source and target
    held_out: int = 8  # pairs kept aside to measure the loss before and after (0: none)
    seed: int = 0
    cpu: bool = False  # force the CPU even with a GPU
    log_every: int = 10
    # samples.png: this many held-out pairs (training pairs without a held-out set) edited by the base and the
    # fine-tuned editor next to the source and the run's own result; 0 = none
    samples: int = 4
    sample_steps: int = 20
    # LoRA fine-tuning (peft): rank of the adapters on the denoiser's attention projections; 0 = full fine-tuning.
    # The output is then an adapter folder that `diffusion.lora` loads on top of `base`
    lora_rank: int = 0
    lora_alpha: float | None = None  # None: = lora_rank (scale 1)
    # the paper's triplet filter: a pair is kept when CLIP(edited, public caption) / CLIP(original, public caption)
    # exceeds clip_threshold; clip_model = a CLIP Hub id or folder ("" = no filter, and the record says so)
    clip_model: str = ""
    clip_threshold: float = 0.7

    def __post_init__(self) -> None:
        _check(isinstance(self.base, str) and bool(self.base), "finetune.base", self.base, "an InstructPix2Pix / MagicBrush (or, with lora_rank, FLUX Kontext) pipeline id or folder")
        _check(isinstance(self.resolution, int) and self.resolution >= 16 and self.resolution % 8 == 0, "finetune.resolution", self.resolution, "a multiple of 8, >= 16")
        _check(isinstance(self.samples, int) and self.samples >= 0, "finetune.samples", self.samples, "an int >= 0")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "log_every", "sample_steps"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"finetune.{name}", getattr(self, name), "an int >= 1")
        _check(isinstance(self.held_out, int) and self.held_out >= 0, "finetune.held_out", self.held_out, "an int >= 0")
        _check(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.steps, "finetune.warmup_steps", self.warmup_steps, f"an int in [0, steps={self.steps}]")
        _check(self.learning_rate > 0 and self.weight_decay >= 0 and self.max_grad_norm > 0, "finetune.learning_rate / weight_decay / max_grad_norm", (self.learning_rate, self.weight_decay, self.max_grad_norm), "lr > 0, decay >= 0, grad norm > 0")
        _check(0 <= self.condition_dropout < 1 / 3, "finetune.condition_dropout", self.condition_dropout, "a probability in [0, 1/3)")
        _check(isinstance(self.lora_rank, int) and self.lora_rank >= 0, "finetune.lora_rank", self.lora_rank, "an int >= 0 (0: full fine-tuning)")
        _check(self.lora_alpha is None or self.lora_alpha > 0, "finetune.lora_alpha", self.lora_alpha, "None or a number > 0")
        _check(self.mixed_precision in ("no", "fp16", "bf16"), "finetune.mixed_precision", self.mixed_precision, "'no', 'fp16' or 'bf16'")
        _check(self.lr_schedule in LR_SCHEDULES, "finetune.lr_schedule", self.lr_schedule, f"one of {LR_SCHEDULES}")
        _check(isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1, "finetune.ema_decay", self.ema_decay, "a number in [0, 1) (0: no EMA)")
        for name in ("safe_attention", "gradient_checkpointing", "use_8bit_adam", "dual_prompt", "flip", "cpu"):
            _check(isinstance(getattr(self, name), bool), f"finetune.{name}", getattr(self, name), "true or false")
        _check(self.fusion_learning_rate is None or (isinstance(self.fusion_learning_rate, (int, float)) and self.fusion_learning_rate > 0), "finetune.fusion_learning_rate", self.fusion_learning_rate, "None or a number > 0")
        _check(self.fusion_learning_rate is None or self.safe_attention, "finetune.fusion_learning_rate", self.fusion_learning_rate, "None without safe_attention (only the fusion weights use it)")
        _check(not (self.safe_attention and self.lora_rank), "finetune.lora_rank", self.lora_rank, "0 with safe_attention (safe cross-attention trains the UNet and its fusion weights fully; LoRA trains adapters only)")
        _check(isinstance(self.clip_model, str), "finetune.clip_model", self.clip_model, "'' or a CLIP Hub id / folder")
        _check(isinstance(self.clip_threshold, (int, float)) and self.clip_threshold > 0, "finetune.clip_threshold", self.clip_threshold, "a number > 0 (the paper: 0.7)")


def training_rows(dataset) -> list[int]:
    """Rows usable as pairs: flagged, status ``edited``, source and result both present, an instruction."""
    missing = [c for c in (C.ORIGINAL_IMAGE, C.PRIVACY_FLAG, C.ANONYMIZATION, C.EDIT_INSTRUCTION, C.PUBLIC_CAPTION) if c not in dataset.column_names]
    if missing:
        hint = " (anonymize with --keep-original / keep_original=True to keep the sources)" if C.ORIGINAL_IMAGE in missing else ""
        raise ValueError(f"the dataset has no column {missing[0]!r}{hint}: fine-tuning needs the source and the anonymized image of each row")
    rows = []
    table = dataset.select_columns([C.PRIVACY_FLAG, C.ANONYMIZATION, C.EDIT_INSTRUCTION])
    for i, row in enumerate(table):
        if row[C.PRIVACY_FLAG] and (row[C.ANONYMIZATION] or {}).get("status") == C.STATUS_EDITED and (row[C.EDIT_INSTRUCTION] or "").strip():
            rows.append(i)
    if not rows:
        raise ValueError("no row was flagged and edited: nothing to learn from")
    return rows


@dataclass
class FinetuneResult:
    output: str
    rows: int  # training pairs
    held_out: int
    losses: list[float]  # one per optimizer step (mean over accumulation and processes)
    held_out_loss_before: float | None
    held_out_loss_after: float | None
    processes: int
    kind: str = "full"  # "full", "safe_attention", "lora"


class _Pairs:
    """The training pairs as tensors in [-1, 1], cropped and flipped alike, from seeded draws."""

    def __init__(self, dataset, rows: list[int], image_column: str, resolution: int, flip: bool):
        self.dataset, self.rows, self.image_column = dataset, rows, image_column
        self.resolution, self.flip = resolution, flip

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int, rng) -> dict:
        row = self.dataset[self.rows[i]]
        source, target = (self._open(row[C.ORIGINAL_IMAGE]), self._open(row[self.image_column]))
        if target.size != source.size:
            target = target.resize(source.size)
        w, h = source.size
        scale = self.resolution / min(w, h)
        size = (max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale)))
        x = int(rng.integers(0, size[0] - self.resolution + 1))
        y = int(rng.integers(0, size[1] - self.resolution + 1))
        flip = self.flip and bool(rng.integers(0, 2))
        from PIL import Image

        tensors = []
        for img in (source, target):
            img = img.resize(size).crop((x, y, x + self.resolution, y + self.resolution))
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tensors.append(_to_tensor(img))
        return {"source": tensors[0], "target": tensors[1], "instruction": row[C.EDIT_INSTRUCTION], "caption": row[C.PUBLIC_CAPTION] or ""}

    @staticmethod
    def _open(cell):
        import io

        from PIL import Image

        if isinstance(cell, dict):
            data = cell.get("bytes")
            return Image.open(io.BytesIO(data) if data is not None else cell["path"]).convert("RGB")
        return cell.convert("RGB")


def _to_tensor(img):
    import numpy as np
    import torch

    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def split_pairs(dataset, cfg: FinetuneConfig, image_column: str, device: str):
    """The pairs of a run: its usable rows (``training_rows``) through the paper's triplet filter, then a seeded
    held-out split. Returns the dataset with both image columns undecoded, the training rows, the held-out rows
    and the filter's record."""
    import datasets
    import numpy as np

    from .triplet_filter import filter_pairs

    rows, filter_record = filter_pairs(dataset, training_rows(dataset), image_column, cfg.clip_model, cfg.clip_threshold, device)
    if not rows:
        raise ValueError(f"the triplet filter kept no pair (threshold {cfg.clip_threshold}, {filter_record.get('dropped_by_reason')}): nothing to learn from")
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False)).cast_column(C.ORIGINAL_IMAGE, datasets.Image(decode=False))
    rng = np.random.default_rng(cfg.seed)
    order = [rows[i] for i in rng.permutation(len(rows))]
    held = order[: min(cfg.held_out, len(order) - 1)] if cfg.held_out else []
    train = [r for r in order if r not in set(held)]
    return dataset, train, held, filter_record


def lr_factor(cfg: FinetuneConfig):
    """The learning-rate multiplier at optimizer step t (0-based): linear warmup (t + 1) / warmup_steps, then 1
    (constant) or the cosine decay of diffusers' ``get_cosine_schedule_with_warmup`` (to 0 at ``steps``)."""
    warmup, steps = cfg.warmup_steps, cfg.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, steps - warmup)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return 1.0

    return factor


def base_pipeline_class(base: str, revision: str | None = None) -> str | None:
    """The ``_class_name`` in ``base``'s model_index.json (None when it cannot be read: the loader will say why)."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(base, revision=revision).get("_class_name")
    except Exception:  # noqa: BLE001 - not a pipeline folder / id: from_pretrained raises the clear error
        return None


def _optimizer_class(cfg: FinetuneConfig):
    import torch

    if not cfg.use_8bit_adam:
        return torch.optim.AdamW, "AdamW (torch)"
    try:
        import bitsandbytes
    except ImportError as err:
        raise ValueError("`finetune.use_8bit_adam` (--use-8bit-adam) needs bitsandbytes, which is not installed: pip install bitsandbytes (or train without it)") from err
    return bitsandbytes.optim.AdamW8bit, f"AdamW8bit (bitsandbytes {getattr(bitsandbytes, '__version__', '?')})"


def finetune_editor(dataset, output: str, config: FinetuneConfig | None = None, *, image_column: str = "image", progress: bool = True) -> FinetuneResult:
    """Fine-tune ``config.base`` on the pairs of ``dataset`` (an anonymization output with originals kept) and
    save the pipeline (or, with LoRA, the adapter) to ``output``; see the module doc."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline
    from tqdm.auto import tqdm

    from ..editing import safe_attention as sa

    cfg = config or FinetuneConfig()
    if image_column not in dataset.column_names:
        raise ValueError(f"Got {image_column!r} for `image_column`; the dataset's columns are {dataset.column_names}")
    # 0. a FLUX Kontext base is LoRA-tuned by its own trainer
    if base_pipeline_class(cfg.base, cfg.revision) == "FluxKontextPipeline":
        if not cfg.lora_rank:
            raise ValueError(f"{cfg.base!r} is a FLUX Kontext pipeline: it is fine-tuned with LoRA only; set `finetune.lora_rank` (--lora-rank R, e.g. 16)")
        from .kontext_lora import finetune_kontext

        return finetune_kontext(dataset, output, cfg, image_column=image_column, progress=progress)
    optimizer_cls, optimizer_name = _optimizer_class(cfg)  # a missing bitsandbytes fails before anything loads

    # 1. the pairs: usable rows, the paper's triplet filter, a held-out split
    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    device = accelerator.device
    dataset, train, held, filter_record = split_pairs(dataset, cfg, image_column, str(device))

    # 2. the pipeline and what learns
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(cfg.base, revision=cfg.revision, safety_checker=None, requires_safety_checker=False)
    unet, vae, text_encoder, tokenizer, scheduler = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    if unet.config.in_channels != 8:
        raise ValueError(f"{cfg.base!r} is not an InstructPix2Pix UNet (in_channels {unet.config.in_channels}, expected 8)")
    # training noise follows the model's own noise schedule, whatever sampler it ships for inference
    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    vae.requires_grad_(False).to(device, dtype=frozen_dtype)
    text_encoder.requires_grad_(False).to(device, dtype=frozen_dtype)
    safe_folder = sa.find_safe_attention(cfg.base, cfg.revision)
    if safe_folder is not None and cfg.lora_rank:
        raise ValueError(f"{cfg.base!r} has safe cross-attention: fine-tune it fully (without --lora-rank)")
    safe = cfg.safe_attention or safe_folder is not None
    if safe_folder is not None:  # an earlier safe-attention run: continue with its fusion weights
        sa.load_safe_attention(unet, safe_folder)
    elif cfg.safe_attention:
        sa.add_safe_attention(unet, tokenizer.model_max_length)
    kind = "lora" if cfg.lora_rank else ("safe_attention" if safe else "full")
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank
    if cfg.lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False).to(dtype=frozen_dtype)  # the frozen base in the mixed-precision dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the A matrices' initialisation; B starts at zero (the base model exactly)
            unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()  # trained weights (and the optimizer's view of them) in float32
    unet.to(device)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    fusion_ids = {id(p) for n, p in unet.named_parameters() if ".processor." in n} if safe else set()
    groups = [{"params": [p for p in trainable if id(p) not in fusion_ids], "lr": cfg.learning_rate}]
    if fusion_ids:
        groups.append({"params": [p for p in trainable if id(p) in fusion_ids], "lr": cfg.fusion_learning_rate or cfg.learning_rate})
    optimizer = optimizer_cls(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    # stepped by hand once per optimizer step (an Accelerate-prepared scheduler steps once per process)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=cfg.ema_decay)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    pairs = _Pairs(dataset, train, image_column, cfg.resolution, cfg.flip)
    held_pairs = _Pairs(dataset, held, image_column, cfg.resolution, flip=False)
    # each process draws its own stream; together they cover the data like a distributed sampler
    data_rng = np.random.default_rng([cfg.seed, accelerator.process_index])
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1009 + accelerator.process_index)
    with_caption = cfg.dual_prompt or safe

    def embed(texts: list[str]):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(device))[0]

    def context(batch: list[dict]):
        states = embed([b["instruction"] for b in batch])
        if with_caption:
            states = torch.cat([states, embed([b["caption"] for b in batch])], dim=1)
        return states

    def loss_of(batch: list[dict], gen, dropout: bool):
        with torch.no_grad():
            target_px = torch.stack([b["target"] for b in batch]).to(device, frozen_dtype)
            source_px = torch.stack([b["source"] for b in batch]).to(device, frozen_dtype)
            latents = vae.encode(target_px).latent_dist.sample(generator=gen) * vae.config.scaling_factor
            # the pipeline conditions on the mode of the source's latents, unscaled
            source_latents = vae.encode(source_px).latent_dist.mode()
            text = context(batch)
            if dropout and cfg.condition_dropout:
                draw = torch.rand(len(batch), generator=gen).to(device)
                p = cfg.condition_dropout
                drop_text = draw < 2 * p  # text only, or both
                drop_image = (draw >= p) & (draw < 3 * p)  # both, or image only
                empty = context([{"instruction": "", "caption": ""}] * len(batch))
                text = torch.where(drop_text[:, None, None], empty, text)
                source_latents = source_latents * (~drop_image).to(source_latents.dtype)[:, None, None, None]
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=gen).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, steps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, steps)
        else:
            target = noise
        with accelerator.autocast():
            pred = unet(torch.cat([noisy, source_latents], dim=1), steps, encoder_hidden_states=text).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def held_out_loss() -> float | None:
        """Mean loss over the held-out pairs with fixed draws (the same before and after training)."""
        if not held:
            return None
        unet.eval()
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 77)
        crop_rng = np.random.default_rng(cfg.seed + 77)
        batch = [held_pairs.get(i, crop_rng) for i in range(len(held))]
        with torch.no_grad():
            value = float(np.mean([float(loss_of(batch, gen, dropout=False)) for _ in range(4)]))
        unet.train()
        return value

    # 3. training
    before = held_out_loss()
    losses: list[float] = []
    learning_rates: list[float] = []
    bar = tqdm(total=cfg.steps, desc="fine-tuning", disable=not (progress and accelerator.is_main_process))
    while len(losses) < cfg.steps:
        step_losses = []
        for _ in range(cfg.gradient_accumulation_steps):
            batch = [pairs.get(int(i), data_rng) for i in data_rng.integers(0, len(pairs), cfg.batch_size)]
            with accelerator.accumulate(unet):
                loss = loss_of(batch, generator, dropout=True)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    learning_rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    lr_schedule.step()
                    if ema is not None:
                        ema.step(trainable)
            step_losses.append(loss.detach())
        mean = accelerator.gather(torch.stack(step_losses).mean()[None]).mean()
        losses.append(float(mean))
        bar.update(1)
        if len(losses) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}")
    bar.close()
    after_raw = None
    if ema is not None:  # what is saved (and measured) is the average
        after_raw = held_out_loss()
        ema.copy_to(trainable)
    after = held_out_loss()

    # 4. the result, the record, the plots
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tuned = accelerator.unwrap_model(unet)
        out = os.path.abspath(output)
        base = os.path.abspath(cfg.base) if os.path.isdir(cfg.base) else cfg.base
        record = {
            "base": cfg.base, "revision": cfg.revision, "kind": kind, "config": asdict(cfg), "rows": len(train), "held_out": len(held),
            "row_ids": {"train": train, "held_out": held},  # indices into the run's dataset
            "losses": losses, "learning_rates": learning_rates, "held_out_loss_before": before, "held_out_loss_after": after,
            "processes": accelerator.num_processes, "optimizer": optimizer_name,
            "schedule": {"warmup_steps": cfg.warmup_steps, "after_warmup": cfg.lr_schedule, "steps": cfg.steps},
            "ema": {"decay": cfg.ema_decay, "updates": ema.optimization_step, "saved": True, "held_out_loss_after_raw": after_raw} if ema is not None else None,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "triplet_filter": filter_record,
        }
        if kind == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(tuned)).items()}
            StableDiffusionInstructPix2PixPipeline.save_lora_weights(
                out, unet_lora_layers=layers, weight_name=LORA_WEIGHTS, safe_serialization=True,
                unet_lora_adapter_metadata=tuned.peft_config["default"].to_dict(),
            )
            record["adapter"] = {
                "file": LORA_WEIGHTS, "rank": cfg.lora_rank, "alpha": alpha, "target_modules": LORA_TARGETS, "tensors": len(layers),
                "parameters": int(sum(v.numel() for v in layers.values())),
            }
            use_with = {"name": "instruct-pix2pix", "model": base, "lora": out}
            if cfg.revision:
                use_with["revision"] = cfg.revision
        else:
            pipe.unet = tuned
            if frozen_dtype != torch.float32:  # the frozen parts ran in half precision: save the full-precision weights
                pipe.vae.to(torch.float32)
                pipe.text_encoder.to(torch.float32)
            if safe:
                sa.save_pipeline_with_safe_attention(pipe, output)
                record["safe_attention"] = {
                    "weights": f"unet/{sa.WEIGHTS_NAME}", "config": f"unet/{sa.CONFIG_NAME}", "continued_from_base": safe_folder is not None,
                    "layers": len(sa.cross_attention_layers(tuned)), "fusion_learning_rate": cfg.fusion_learning_rate or cfg.learning_rate,
                }
                # the editor finds the fusion weights in the folder and conditions on the public caption itself
                use_with = {"name": "instruct-pix2pix", "model": out}
            else:
                pipe.save_pretrained(output)
                use_with = {"name": "instruct-pix2pix", "model": out, "dual_prompt": cfg.dual_prompt}
        record["use_with"] = {"diffusion": use_with}
        _plot_losses(losses, before, after, os.path.join(output, "loss.png"))
        if cfg.samples:
            del tuned
            pipe = unet = optimizer = None
            accelerator.free_memory()  # drop the finished optimizer state before two editors load
            shown = (held or train)[: cfg.samples]
            record["samples"] = {"file": "samples.png", "rows": shown, "held_out": bool(held)}
            _write_samples(dataset, shown, image_column, cfg, use_with, output, str(device))
        with open(os.path.join(output, RECORD), "w") as f:
            json.dump(record, f, indent=2)
    accelerator.wait_for_everyone()
    return FinetuneResult(output, len(train), len(held), losses, before, after, accelerator.num_processes, kind)


def _write_samples(dataset, rows: list[int], image_column: str, cfg: FinetuneConfig, use_with: dict, output: str, device: str) -> None:
    """samples.png: source | the run's result | the base editor's edit | the fine-tuned editor's edit, per pair,
    through the project's own editor (the base with its single prompt, the result loaded as ``use_with`` says)."""
    from ..config import DiffusionEditorConfig
    from ..editing.diffusion import InstructPix2PixEditor
    from ..preview import contact_sheet

    picked = [dataset[r] for r in rows]
    sources = [_Pairs._open(row[C.ORIGINAL_IMAGE]) for row in picked]
    targets = [_Pairs._open(row[image_column]) for row in picked]
    instructions = [row[C.EDIT_INSTRUCTION] for row in picked]
    captions = [row[C.PUBLIC_CAPTION] or "" for row in picked]
    columns = [("source (private)", sources), ("the run's result", targets)]
    tuned = {k: v for k, v in use_with.items() if k != "name"}
    for title, settings in (("base editor", {"model": cfg.base, "revision": cfg.revision}), ("fine-tuned editor", tuned)):
        config = DiffusionEditorConfig(**settings, steps=cfg.sample_steps, max_side=max(64, cfg.resolution), batch_size=len(rows), leak_check=False)
        editor = InstructPix2PixEditor(config, device)
        edited = editor.edit(sources, instructions, seeds=[cfg.seed + i for i in range(len(rows))], captions=captions if editor.uses_caption else None)
        columns.append((title, edited))
        del editor
    contact_sheet(columns, instructions).save(os.path.join(output, "samples.png"))


def _plot_losses(losses: list[float], before: float | None, after: float | None, path: str) -> None:
    """Training loss per step (and its running mean) with the held-out loss before and after."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional: the numbers are in the record
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, color="0.7", lw=0.8, label="training loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        running = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), running, color="C0", label=f"running mean ({window})")
    if before is not None and after is not None and not (math.isnan(before) or math.isnan(after)):
        ax.axhline(before, color="C3", ls="--", lw=1, label=f"held-out before {before:.4f}")
        ax.axhline(after, color="C2", ls="--", lw=1, label=f"held-out after {after:.4f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
