"""LoRA fine-tuning of a FLUX.1 Kontext editor on the pairs of an anonymization run (the paper's third editor
family, a LoRA on a FLUX editor).

Data: the pairs ``training_rows`` finds (flagged, edited, original kept), optionally thinned by the paper's
triplet filter (``triplet_filter.filter_pairs`` when ``clip_model`` is set). The source image is Kontext's context
image, the anonymized image the target, the edit instruction the prompt: what ``KontextEditor`` feeds the pipeline
at inference. Pairs are cropped alike (``pairs.TrainingPairs``: shorter side to ``resolution``, the same random square
crop and flip for both).

Objective: rectified-flow matching as FLUX is trained. With x0 the target's latents (VAE posterior mode, then
``(z - shift_factor) * scaling_factor``, the pipeline's own latent scaling), noise ~ N(0, I) and sigma in (0, 1):

    x_sigma = (1 - sigma) * x0 + sigma * noise,        v_target = noise - x0,        loss = mean (v_pred - v_target)^2

The transformer sees Kontext's sequence: the 2x2-packed tokens of x_sigma followed by the packed tokens of the
source's latents (same scaling), with position ids (0, row, col) for the target and (1, row, col) for the context
(the first coordinate tells the two images apart, as ``FluxKontextPipeline`` builds them), text ids all zero, the
T5 states and pooled CLIP embedding of the instruction, ``timestep = sigma`` (the pipeline passes t / 1000) and, for
guidance-distilled transformers (``guidance_embeds``), the embedded guidance the editor uses at inference. Only the
predictions at the target's tokens enter the loss.

sigma = shift(u) with u ~ U(0, 1): the same warping of [0, 1] that the pipeline's scheduler applies to its inference
schedule (resolution-dependent ``exp(mu) / (exp(mu) + 1/u - 1)`` with ``mu`` from the target's token count when the
scheduler uses dynamic shifting, as FLUX.1 [dev] and Kontext do; ``shift * u / (1 + (shift - 1) * u)`` otherwise),
so training noise levels follow the ones the editor denoises. No condition dropout: Kontext is guidance-distilled
and its editor runs without classifier-free guidance.

Random draws, per micro-batch: the pairs and their crops from ``numpy.random.default_rng([seed, process])``; then,
from ``torch.Generator().manual_seed(seed * 1009 + process)``, the noise (float32, latent shape, before packing)
and then u (float64).
The held-out loss uses fixed draws (seed + 77), the same before and after training.

Only the LoRA weights learn (rank ``lora_rank``, alpha ``lora_alpha`` or the rank, on the attention projections of
both transformer block kinds, text and image streams; A Gaussian-initialised from ``seed``, B zero, so training
starts from the base exactly); VAE, text encoders and the base transformer stay frozen, in the mixed-precision
dtype, the LoRA weights in float32. The optimizer, learning-rate schedule (warmup, constant or cosine, stepped once
per optimizer step), EMA (``ema_decay``: the average is what is measured after training and saved), gradient
checkpointing and Accelerate set-up are ``finetune_editor``'s, with the same config fields and record keys.
Saved with ``FluxKontextPipeline.save_lora_weights`` (diffusers' format, peft config as adapter metadata) into
``output``, with ``unsafe2safe_finetune.json``, ``loss.png`` and ``samples.png``; ``diffusion.lora=OUTPUT`` on
``diffusion.name=kontext`` with ``diffusion.model=BASE`` loads it.
"""

from __future__ import annotations

import json
import math
import os

from .. import columns as C
from ..config import DEFAULT_EDITOR_MODELS, EDITOR_DEFAULTS, REVISIONS, DiffusionEditorConfig
from .common import LORA_WEIGHTS, RECORD, FinetuneConfig, FinetuneResult, optimise, optimizer_class, plot_losses, prepare_optimisation, split_pairs, training_record
from .pairs import TrainingPairs, open_image

# the attention projections of FLUX's double-stream blocks (image: to_*, text: add_*) and single-stream blocks
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
MAX_SEQUENCE_LENGTH = 512  # T5 tokens: FluxKontextPipeline's default, what the editor encodes at inference


def pack(latents):
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens: each 2x2 patch one token, channels outer, rows then
    columns inner, token order row-major over the patch grid (FLUX's layout)."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def position_ids(height: int, width: int, image_index: int, device, dtype):
    """(H/2 * W/2, 3) rotary ids of the packed tokens of an H x W latent: (image_index, row, column)."""
    import torch

    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.full_like(rows, image_index), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


def sample_sigmas(u, image_tokens: int, scheduler_config):
    """Noise levels from uniform draws ``u``, warped like the scheduler warps its inference schedule."""
    import torch

    cfg = dict(scheduler_config)
    if cfg.get("use_dynamic_shifting", False):
        # mu grows linearly with the image's token count between the base and max sequence lengths
        base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
        base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
        mu = base_shift + (max_shift - base_shift) * (image_tokens - base_len) / (max_len - base_len)
        if cfg.get("time_shift_type", "exponential") == "linear":
            return mu / (mu + (1 / u - 1))
        return math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    shift = float(cfg.get("shift", 1.0))
    return shift * u / (1 + (shift - 1) * u) if shift != 1.0 else torch.as_tensor(u).clone()


def encode_latents(vae, pixels):
    """Scaled latents of images in [-1, 1]: posterior mode, then the pipeline's shift and scale."""
    z = vae.encode(pixels).latent_dist.mode()
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def flow_matching_loss(transformer, target_latents, source_latents, noise, sigmas, prompt_embeds, pooled_embeds, guidance: float | None):
    """The rectified-flow loss of Kontext's transformer on one batch (see the module doc); latents (B, C, H, W)."""
    import torch

    model = getattr(transformer, "module", transformer)  # its config and dtype, also when wrapped for DDP
    b, _, h, w = target_latents.shape
    s = sigmas.to(target_latents.dtype).view(b, 1, 1, 1)
    noisy = (1 - s) * target_latents + s * noise
    target_tokens = pack(noisy)
    hidden = torch.cat([target_tokens, pack(source_latents)], dim=1)
    dtype, device = prompt_embeds.dtype, prompt_embeds.device
    img_ids = torch.cat([position_ids(h, w, 0, device, dtype), position_ids(source_latents.shape[2], source_latents.shape[3], 1, device, dtype)], dim=0)
    txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    embedded = torch.full((b,), guidance, device=device, dtype=torch.float32) if model.config.guidance_embeds else None
    pred = transformer(
        hidden_states=hidden.to(model.dtype), timestep=sigmas.to(device, model.dtype), guidance=embedded,
        pooled_projections=pooled_embeds, encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
    )[0]
    pred = pred[:, : target_tokens.shape[1]]  # the context's tokens are conditioning, not predictions
    return torch.nn.functional.mse_loss(pred.float(), pack(noise - target_latents).float())


def finetune_kontext(dataset, output: str, config: FinetuneConfig | None = None, *, image_column: str = "image", progress: bool = True, guidance: float | None = None) -> FinetuneResult:
    """LoRA-fine-tune the FLUX Kontext pipeline ``config.base`` on the pairs of ``dataset`` (an anonymization output
    with originals kept) and save the adapter to ``output``; see the module doc. ``guidance``: the embedded guidance
    trained with (default: the kontext editor's own default, ``config.EDITOR_DEFAULTS``)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if config is None:  # FLUX.1 Kontext [dev] at its pinned revision, rank 16 as the paper's FLUX LoRA
        model = DEFAULT_EDITOR_MODELS["kontext"]
        config = FinetuneConfig(base=model, revision=REVISIONS.get(model), lora_rank=16)
    cfg = config
    if cfg.lora_rank < 1:
        raise ValueError(f"Got {cfg.lora_rank!r} for `finetune.lora_rank`; a FLUX Kontext base is fine-tuned with LoRA only: set a rank >= 1 (e.g. 16)")
    if cfg.dual_prompt or cfg.safe_attention:
        raise ValueError("`finetune.dual_prompt` / `safe_attention` are InstructPix2Pix conditionings; the Kontext editor takes the instruction alone")
    if image_column not in dataset.column_names:
        raise ValueError(f"Got {image_column!r} for `image_column`; the dataset's columns are {dataset.column_names}")
    guidance = EDITOR_DEFAULTS["kontext"][1] if guidance is None else float(guidance)
    optimizer_cls, optimizer_name = optimizer_class(cfg)  # a missing bitsandbytes fails before anything loads

    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    device = accelerator.device
    # 1. the pairs: usable rows, the paper's triplet filter, a held-out split
    dataset, train, held, filter_record = split_pairs(dataset, cfg, image_column, str(device))

    # 2. the pipeline: frozen parts in the mixed-precision dtype, LoRA weights in float32
    pipe = FluxKontextPipeline.from_pretrained(cfg.base, revision=cfg.revision)
    vae, transformer, scheduler_config = pipe.vae, pipe.transformer, pipe.scheduler.config
    guided = bool(transformer.config.guidance_embeds)
    multiple = pipe.vae_scale_factor * 2
    if cfg.resolution % multiple:
        raise ValueError(f"Got {cfg.resolution} for `finetune.resolution`; this Kontext pipeline needs a multiple of {multiple} (VAE x 2x2 packing)")
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    for module in (vae, pipe.text_encoder, pipe.text_encoder_2, transformer):
        module.requires_grad_(False).to(device, dtype=frozen_dtype)
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the LoRA A matrices' initialisation (B starts at zero: the base model exactly)
        transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    transformer, optimizer, lr_schedule, ema = prepare_optimisation(cfg, accelerator, transformer, trainable, trainable, optimizer_cls)

    pairs = TrainingPairs(dataset, train, image_column, cfg.resolution, cfg.flip)
    held_pairs = TrainingPairs(dataset, held, image_column, cfg.resolution, flip=False)
    data_rng = np.random.default_rng([cfg.seed, accelerator.process_index])
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1009 + accelerator.process_index)

    def encode(batch: list[dict]) -> tuple:
        """The frozen parts' work on a batch: target and context latents, T5 states and pooled CLIP embedding."""
        with torch.no_grad():
            target = encode_latents(vae, torch.stack([b["target"] for b in batch]).to(device, frozen_dtype))
            source = encode_latents(vae, torch.stack([b["source"] for b in batch]).to(device, frozen_dtype))
            prompt_embeds, pooled, _ = pipe.encode_prompt(prompt=[b["instruction"] for b in batch], prompt_2=None, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return target, source, prompt_embeds, pooled

    def loss_of(encoded: tuple, gen):
        target, source, prompt_embeds, pooled = encoded
        noise = torch.randn(target.shape, generator=gen).to(device, target.dtype)
        u = torch.rand(target.shape[0], generator=gen, dtype=torch.float64)
        sigmas = sample_sigmas(u, (target.shape[2] // 2) * (target.shape[3] // 2), scheduler_config).to(device, torch.float32)
        with accelerator.autocast():
            return flow_matching_loss(transformer, target, source, noise, sigmas, prompt_embeds, pooled, guidance)

    def held_out_loss() -> float | None:
        """Mean loss over the held-out pairs with fixed draws (the same before and after training)."""
        if not held:
            return None
        transformer.eval()
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 77)
        crop_rng = np.random.default_rng(cfg.seed + 77)
        encoded = encode([held_pairs.get(i, crop_rng) for i in range(len(held))])
        with torch.no_grad():
            value = float(np.mean([float(loss_of(encoded, gen)) for _ in range(4)]))
        transformer.train()
        return value

    # 3. training
    run = optimise(
        cfg, accelerator, transformer, optimizer, lr_schedule, ema, trainable,
        lambda: [pairs.get(int(i), data_rng) for i in data_rng.integers(0, len(pairs), cfg.batch_size)],
        lambda batch: loss_of(encode(batch), generator), held_out_loss, desc="fine-tuning Kontext LoRA", progress=progress,
    )
    losses, before, after = run.losses, run.before, run.after

    # 4. the adapter, the record, the plots
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tuned = accelerator.unwrap_model(transformer)
        layers = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(tuned).items()}
        FluxKontextPipeline.save_lora_weights(output, transformer_lora_layers=layers, weight_name=LORA_WEIGHTS, transformer_lora_adapter_metadata=tuned.peft_config["default"].to_dict())
        base = os.path.abspath(cfg.base) if os.path.isdir(cfg.base) else cfg.base
        use_with = {"name": "kontext", "model": base, "lora": os.path.abspath(output)}
        if cfg.revision:
            use_with["revision"] = cfg.revision
        record = {
            **training_record(cfg, "lora", train, held, run, accelerator.num_processes, optimizer_name, ema, filter_record),
            "use_with": {"diffusion": use_with},
            "adapter": {"file": LORA_WEIGHTS, "rank": cfg.lora_rank, "alpha": alpha, "target_modules": LORA_TARGETS, "tensors": len(layers), "parameters": int(sum(v.numel() for v in layers.values()))},
            "objective": {
                "type": "rectified flow matching (x = (1 - sigma) x0 + sigma noise, target noise - x0)", "guidance": guidance if guided else None,
                "max_sequence_length": MAX_SEQUENCE_LENGTH, "sigma": "u ~ U(0, 1) warped by the scheduler's shift", "condition_dropout": "not used (guidance-distilled model)",
            },
        }
        plot_losses(losses, before, after, os.path.join(output, "loss.png"))
        if cfg.samples:
            del layers
            accelerator.free_memory()  # the optimizer state and the training pipeline go before the editor loads
            pipe = transformer = tuned = optimizer = ema = None
            shown = (held or train)[: cfg.samples]
            record["samples"] = {"file": "samples.png", "rows": shown, "held_out": bool(held)}
            _write_samples(dataset, shown, image_column, cfg, output, str(device), guidance)
        with open(os.path.join(output, RECORD), "w") as f:
            json.dump(record, f, indent=2)
    accelerator.wait_for_everyone()
    return FinetuneResult(output, len(train), len(held), losses, before, after, accelerator.num_processes, "lora")


def _write_samples(dataset, rows: list[int], image_column: str, cfg: FinetuneConfig, output: str, device: str, guidance: float) -> None:
    """samples.png: source | the run's result | the base Kontext edit | the edit with the adapter, per pair, through
    the project's own ``KontextEditor`` (one load: the adapter switched off for the base column)."""
    from ..editing.kontext import KontextEditor
    from ..preview import contact_sheet

    picked = [dataset[r] for r in rows]
    sources = [open_image(row[C.ORIGINAL_IMAGE]) for row in picked]
    targets = [open_image(row[image_column]) for row in picked]
    instructions = [row[C.EDIT_INSTRUCTION] for row in picked]
    config = DiffusionEditorConfig(
        name="kontext", model=cfg.base, revision=cfg.revision, lora=output, steps=cfg.sample_steps, guidance_scale=guidance,
        max_side=max(64, cfg.resolution), batch_size=len(rows), leak_check=False,
    )
    editor = KontextEditor(config, device)
    seeds = [cfg.seed + i for i in range(len(rows))]
    editor.pipe.disable_lora()
    base = editor.edit(sources, instructions, seeds=seeds)
    editor.pipe.enable_lora()
    tuned = editor.edit(sources, instructions, seeds=seeds)
    columns = [("source (private)", sources), ("the run's result", targets), ("base editor", base), ("with the LoRA", tuned)]
    contact_sheet(columns, instructions).save(os.path.join(output, "samples.png"))
