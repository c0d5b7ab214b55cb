"""Fine-tune an InstructPix2Pix editor on the pairs an anonymization run produced.

Training data: the rows of an anonymization output kept with ``keep_original`` (``--keep-original``) that were
flagged and really edited (status ``edited``, both images present): the source image is the condition, the
anonymized image the target, the edit instruction the text and, with ``dual_prompt``, the public caption a
second text window ([instruction ; caption], the context the editor's ``diffusion.dual_prompt`` inference
builds). Only the UNet learns; the VAE and the text encoder stay frozen.

The objective is InstructPix2Pix's: the UNet sees the noised latents of the target next to the (unscaled, mode)
latents of the source and predicts the noise (or v, as the scheduler says); text, image or both conditions are
dropped with ``condition_dropout`` each so that classifier-free guidance keeps working. Pairs are cropped alike
(shorter side resized to ``resolution``, the same random square crop and flip for source and target).
Training runs on Accelerate (device, mixed precision, gradient accumulation; several processes under
``accelerate launch``). Every random draw comes from generators seeded by ``seed``: the same data, config and
seed give the same weights. The result is a complete pipeline folder that ``diffusion.model`` loads, with
``unsafe2safe_finetune.json`` (config, rows used, losses, held-out loss before / after) and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from .. import columns as C
from ..config import _check

RECORD = "unsafe2safe_finetune.json"


@dataclass
class FinetuneConfig:
    """What to fine-tune, on what, and how; validates itself."""

    base: str = "timbrooks/instruct-pix2pix"  # an InstructPix2Pix pipeline: Hub id or local folder
    revision: str | None = None
    dual_prompt: bool = False  # condition on [instruction ; public caption], as diffusion.dual_prompt does
    resolution: int = 256  # square training crops (InstructPix2Pix was trained at 256)
    steps: int = 1000  # optimizer steps
    batch_size: int = 4  # pairs per step and process (before gradient accumulation)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
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
        _check(isinstance(self.base, str) and bool(self.base), "finetune.base", self.base, "an InstructPix2Pix pipeline id or folder")
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


def finetune_editor(dataset, output: str, config: FinetuneConfig | None = None, *, image_column: str = "image", progress: bool = True) -> FinetuneResult:
    """Fine-tune ``config.base`` on the pairs of ``dataset`` (an anonymization output with originals kept) and
    save the pipeline to ``output``; see the module doc."""
    import datasets
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline
    from tqdm.auto import tqdm

    cfg = config or FinetuneConfig()
    if image_column not in dataset.column_names:
        raise ValueError(f"Got {image_column!r} for `image_column`; the dataset's columns are {dataset.column_names}")
    rows = training_rows(dataset)
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False)).cast_column(C.ORIGINAL_IMAGE, datasets.Image(decode=False))
    rng = np.random.default_rng(cfg.seed)
    order = [rows[i] for i in rng.permutation(len(rows))]
    held = order[: min(cfg.held_out, len(order) - 1)] if cfg.held_out else []
    train = [r for r in order if r not in set(held)]

    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(cfg.base, revision=cfg.revision, safety_checker=None, requires_safety_checker=False)
    unet, vae, text_encoder, tokenizer, scheduler = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    if unet.config.in_channels != 8:
        raise ValueError(f"{cfg.base!r} is not an InstructPix2Pix UNet (in_channels {unet.config.in_channels}, expected 8)")
    # training noise follows the model's own noise schedule, whatever sampler it ships for inference
    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    device = accelerator.device
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    vae.requires_grad_(False).to(device, dtype=frozen_dtype)
    text_encoder.requires_grad_(False).to(device, dtype=frozen_dtype)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_lambda = (lambda step: min(1.0, (step + 1) / cfg.warmup_steps)) if cfg.warmup_steps else (lambda step: 1.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)

    pairs = _Pairs(dataset, train, image_column, cfg.resolution, cfg.flip)
    held_pairs = _Pairs(dataset, held, image_column, cfg.resolution, flip=False)
    # each process draws its own stream; together they cover the data like a distributed sampler
    data_rng = np.random.default_rng([cfg.seed, accelerator.process_index])
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1009 + accelerator.process_index)

    def embed(texts: list[str]):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(device))[0]

    def context(batch: list[dict]):
        states = embed([b["instruction"] for b in batch])
        if cfg.dual_prompt:
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

    before = held_out_loss()
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, desc="fine-tuning", disable=not (progress and accelerator.is_main_process))
    while len(losses) < cfg.steps:
        step_losses = []
        for _ in range(cfg.gradient_accumulation_steps):
            batch = [pairs.get(int(i), data_rng) for i in data_rng.integers(0, len(pairs), cfg.batch_size)]
            with accelerator.accumulate(unet):
                loss = loss_of(batch, generator, dropout=True)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad()
            step_losses.append(loss.detach())
        mean = accelerator.gather(torch.stack(step_losses).mean()[None]).mean()
        losses.append(float(mean))
        bar.update(1)
        if len(losses) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}")
    bar.close()
    after = held_out_loss()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe.unet = accelerator.unwrap_model(unet)
        if frozen_dtype != torch.float32:  # the frozen parts ran in half precision: save the full-precision weights
            pipe.vae.to(torch.float32)
            pipe.text_encoder.to(torch.float32)
        pipe.save_pretrained(output)
        record = {
            "base": cfg.base, "revision": cfg.revision, "config": asdict(cfg), "rows": len(train), "held_out": len(held),
            "losses": losses, "held_out_loss_before": before, "held_out_loss_after": after, "processes": accelerator.num_processes,
            "use_with": {"diffusion": {"name": "instruct-pix2pix", "model": os.path.abspath(output), "dual_prompt": cfg.dual_prompt}},
        }
        _plot_losses(losses, before, after, os.path.join(output, "loss.png"))
        if cfg.samples:
            accelerator.free_memory()  # drop the finished optimizer state before two editors load
            shown = (held or train)[: cfg.samples]
            record["samples"] = {"file": "samples.png", "rows": shown, "held_out": bool(held)}
            _write_samples(dataset, shown, image_column, cfg, output, str(device))
        with open(os.path.join(output, RECORD), "w") as f:
            json.dump(record, f, indent=2)
    accelerator.wait_for_everyone()
    return FinetuneResult(output, len(train), len(held), losses, before, after, accelerator.num_processes)


def _write_samples(dataset, rows: list[int], image_column: str, cfg: FinetuneConfig, output: str, device: str) -> None:
    """samples.png: source | the run's result | the base editor's edit | the fine-tuned editor's edit, per pair,
    through the project's own editor (the base with its single prompt, the result as it was trained)."""
    from ..config import DiffusionEditorConfig
    from ..editing.diffusion import InstructPix2PixEditor
    from ..preview import contact_sheet

    picked = [dataset[r] for r in rows]
    sources = [_Pairs._open(row[C.ORIGINAL_IMAGE]) for row in picked]
    targets = [_Pairs._open(row[image_column]) for row in picked]
    instructions = [row[C.EDIT_INSTRUCTION] for row in picked]
    captions = [row[C.PUBLIC_CAPTION] or "" for row in picked]
    columns = [("source (private)", sources), ("the run's result", targets)]
    for title, model, revision, dual in (("base editor", cfg.base, cfg.revision, False), ("fine-tuned editor", output, None, cfg.dual_prompt)):
        config = DiffusionEditorConfig(model=model, revision=revision, dual_prompt=dual, steps=cfg.sample_steps, max_side=max(64, cfg.resolution), batch_size=len(rows), leak_check=False)
        editor = InstructPix2PixEditor(config, device)
        edited = editor.edit(sources, instructions, seeds=[cfg.seed + i for i in range(len(rows))], captions=captions if dual else None)
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
