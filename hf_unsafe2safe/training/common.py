"""What the editor trainers share: the fine-tuning config (``FinetuneConfig``) and result (``FinetuneResult``), the
pairs of a run through the triplet filter and a held-out split (``split_pairs``), the learning-rate schedule
(``lr_factor``), the optimizer (``optimizer_class``), the loss plot (``plot_losses``) and the names of the files a
run writes (``RECORD``, ``LORA_WEIGHTS``). ``finetune`` (InstructPix2Pix) and ``kontext_lora`` (FLUX Kontext) both
build on it; it imports neither."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import columns as C
from ..config import _check
from .pairs import training_rows

RECORD = "unsafe2safe_finetune.json"  # the record of a run, next to its weights
LR_SCHEDULES = ("constant", "cosine")
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


@dataclass
class FinetuneResult:
    """What a fine-tuning run returns (the record in ``output``/``RECORD`` holds the rest)."""

    output: str
    rows: int  # training pairs
    held_out: int
    losses: list[float]  # one per optimizer step (mean over accumulation and processes)
    held_out_loss_before: float | None
    held_out_loss_after: float | None
    processes: int
    kind: str = "full"  # "full", "safe_attention", "lora"


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


def optimizer_class(cfg: FinetuneConfig):
    """The optimizer class ``cfg`` asks for and its name for the record; a missing bitsandbytes raises here."""
    import torch

    if not cfg.use_8bit_adam:
        return torch.optim.AdamW, "AdamW (torch)"
    try:
        import bitsandbytes
    except ImportError as err:
        raise ValueError("`finetune.use_8bit_adam` (--use-8bit-adam) needs bitsandbytes, which is not installed: pip install bitsandbytes (or train without it)") from err
    return bitsandbytes.optim.AdamW8bit, f"AdamW8bit (bitsandbytes {getattr(bitsandbytes, '__version__', '?')})"


def plot_losses(losses: list[float], before: float | None, after: float | None, path: str) -> None:
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


def held_out_after(ema, trainable: list, held_out_loss) -> tuple:
    """(held-out loss of what is saved, of the raw weights or None): with an EMA the saved weights are the average,
    so the raw weights are measured first and the average is then copied into them."""
    after_raw = None
    if ema is not None:
        after_raw = held_out_loss()
        ema.copy_to(trainable)
    return held_out_loss(), after_raw


@dataclass
class TrainingRun:
    """What ``optimise`` measured: one loss and one learning rate per optimizer step, the held-out loss before, after
    (of what is saved: the EMA when there is one) and of the raw weights when an EMA is saved."""

    losses: list
    learning_rates: list
    before: float | None
    after: float | None
    after_raw: float | None


def optimise(cfg: FinetuneConfig, accelerator, model, optimizer, lr_schedule, ema, trainable: list, draw_batch, batch_loss, held_out_loss, *, desc: str, progress: bool) -> TrainingRun:
    """The optimisation loop both trainers share: ``cfg.steps`` optimizer steps of ``cfg.gradient_accumulation_steps``
    batches (``draw_batch()``, scored by ``batch_loss(batch)``), gradients clipped to ``cfg.max_grad_norm``, the
    learning-rate schedule and the EMA stepped once per optimizer step, the step's loss averaged over the accumulation
    and the processes; ``held_out_loss()`` before and after (see ``held_out_after``)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    before = held_out_loss()
    losses: list[float] = []
    learning_rates: list[float] = []
    bar = tqdm(total=cfg.steps, desc=desc, disable=not (progress and accelerator.is_main_process))
    while len(losses) < cfg.steps:
        step_losses = []
        for _ in range(cfg.gradient_accumulation_steps):
            batch = draw_batch()
            with accelerator.accumulate(model):
                loss = batch_loss(batch)
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
        losses.append(float(accelerator.gather(torch.stack(step_losses).mean()[None]).mean()))
        bar.update(1)
        if len(losses) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}")
    bar.close()
    after, after_raw = held_out_after(ema, trainable, held_out_loss)
    return TrainingRun(losses, learning_rates, before, after, after_raw)


def prepare_optimisation(cfg: FinetuneConfig, accelerator, model, params, trainable: list, optimizer_cls):
    """(model, optimizer, learning-rate schedule, EMA or None) for ``params`` (tensors or parameter groups): the
    schedule is stepped by hand once per optimizer step (an Accelerate-prepared scheduler steps once per process),
    the EMA (``cfg.ema_decay``, diffusers' ``EMAModel``) averages ``trainable``."""
    import torch

    optimizer = optimizer_cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    ema = None
    if cfg.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=cfg.ema_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, lr_schedule, ema


def training_record(cfg: FinetuneConfig, kind: str, train: list, held: list, run: TrainingRun, processes: int, optimizer_name: str, ema, filter_record: dict) -> dict:
    """The part of ``unsafe2safe_finetune.json`` both trainers write: settings, pairs (with their row ids in the run's
    dataset), every step's loss and learning rate, the held-out losses, optimizer, schedule, EMA, triplet filter."""
    from dataclasses import asdict

    return {
        "base": cfg.base, "revision": cfg.revision, "kind": kind, "config": asdict(cfg), "rows": len(train), "held_out": len(held),
        "row_ids": {"train": train, "held_out": held},
        "losses": run.losses, "learning_rates": run.learning_rates, "held_out_loss_before": run.before, "held_out_loss_after": run.after,
        "processes": processes, "optimizer": optimizer_name,
        "schedule": {"warmup_steps": cfg.warmup_steps, "after_warmup": cfg.lr_schedule, "steps": cfg.steps},
        "ema": {"decay": cfg.ema_decay, "updates": ema.optimization_step, "saved": True, "held_out_loss_after_raw": run.after_raw} if ema is not None else None,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "triplet_filter": filter_record,
    }
