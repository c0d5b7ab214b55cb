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

The config (``common.FinetuneConfig``), the held-out split, the schedule and the record's file names are shared
with ``kontext_lora`` through ``common``; the pairs through ``pairs``.

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
import os

from .. import columns as C
from .common import LORA_WEIGHTS, RECORD, FinetuneConfig, FinetuneResult, optimise, optimizer_class, plot_losses, prepare_optimisation, split_pairs, training_record
from .pairs import TrainingPairs, open_image

# the UNet's attention projections that LoRA adapts (self- and cross-attention), as diffusers' LoRA examples
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def base_pipeline_class(base: str, revision: str | None = None) -> str | None:
    """The ``_class_name`` in ``base``'s model_index.json (None when it cannot be read: the loader will say why)."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(base, revision=revision).get("_class_name")
    except Exception:  # noqa: BLE001 - not a pipeline folder / id: from_pretrained raises the clear error
        return None


def finetune_editor(dataset, output: str, config: FinetuneConfig | None = None, *, image_column: str = "image", progress: bool = True) -> FinetuneResult:
    """Fine-tune ``config.base`` on the pairs of ``dataset`` (an anonymization output with originals kept) and
    save the pipeline (or, with LoRA, the adapter) to ``output``; see the module doc."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline

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
    optimizer_cls, optimizer_name = optimizer_class(cfg)  # a missing bitsandbytes fails before anything loads

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
    unet, optimizer, lr_schedule, ema = prepare_optimisation(cfg, accelerator, unet, groups, trainable, optimizer_cls)

    pairs = TrainingPairs(dataset, train, image_column, cfg.resolution, cfg.flip)
    held_pairs = TrainingPairs(dataset, held, image_column, cfg.resolution, flip=False)
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
    run = optimise(
        cfg, accelerator, unet, optimizer, lr_schedule, ema, trainable,
        lambda: [pairs.get(int(i), data_rng) for i in data_rng.integers(0, len(pairs), cfg.batch_size)],
        lambda batch: loss_of(batch, generator, dropout=True), held_out_loss, desc="fine-tuning", progress=progress,
    )
    losses, before, after = run.losses, run.before, run.after

    # 4. the result, the record, the plots
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tuned = accelerator.unwrap_model(unet)
        out = os.path.abspath(output)
        base = os.path.abspath(cfg.base) if os.path.isdir(cfg.base) else cfg.base
        record = training_record(cfg, kind, train, held, run, accelerator.num_processes, optimizer_name, ema, filter_record)
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
        plot_losses(losses, before, after, os.path.join(output, "loss.png"))
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
    from ..editing.instruct_pix2pix import InstructPix2PixEditor
    from ..preview import contact_sheet

    picked = [dataset[r] for r in rows]
    sources = [open_image(row[C.ORIGINAL_IMAGE]) for row in picked]
    targets = [open_image(row[image_column]) for row in picked]
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

