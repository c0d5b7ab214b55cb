"""Stage 2 with ``diffusers``: instruction-driven editors whose output is composited back only inside the
sensitive regions.

The editor sees the whole image (aspect ratio kept, sides snapped to the model's multiple, the longer side
bounded), so that the edit fits the scene; its output is resized back to the source size and blended in only
inside the dilated, feathered region boxes, with the same rule as the lite editor: every pixel farther away
keeps its source value exactly. Batches are bucketed by working size, each row has its own seeded
``torch.Generator`` (the same row gives the same output whatever the batch holds).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from .compositing import working_size

logger = logging.getLogger(__name__)

EDITORS = ("instruct-pix2pix", "inpaint", "flowedit", "kontext", "qwen-image-edit")
DEFAULT_EDITOR_MODELS = {
    "instruct-pix2pix": "timbrooks/instruct-pix2pix",
    "inpaint": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "flowedit": "stabilityai/stable-diffusion-3-medium-diffusers",
    "kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit",
}
# (steps, guidance_scale) each editor's model card recommends; used where the config leaves them unset
# (FlowEdit guides with source_guidance / target_guidance instead; for qwen-image-edit it is true_cfg_scale)
EDITOR_DEFAULTS = {
    "instruct-pix2pix": (20, 7.5), "inpaint": (20, 7.5), "flowedit": (50, 13.5), "kontext": (28, 2.5), "qwen-image-edit": (50, 4.0),
}


class InstructPix2PixEditor:
    """``StableDiffusionInstructPix2PixPipeline`` (InstructPix2Pix or MagicBrush weights); text = the edit instruction.

    A pipeline folder written by ``unsafe2safe finetune --safe-attention`` (``unet/safe_attention.json`` next to
    the UNet) is the paper's dual-prompt editor: its safe cross-attention processors are put back on the UNet
    (``editing.safe_attention``) and the public caption conditions every edit through its own branch
    (``uses_caption``; a row without a caption gets an empty window). A plain folder loads as before."""

    name = "instruct-pix2pix"
    safe_attention: dict | None = None  # the loaded safe cross-attention config, None for a plain UNet

    def __init__(self, config, device: str):
        import torch

        from ..inspection.vlm import pick_dtype

        self.config, self.device, self._torch = config, device, torch
        self.pipe = self.load_pipeline(config, pick_dtype(config.dtype, device)).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        if config.lora:
            # an adapter from `unsafe2safe finetune --lora-rank R`, through the pipeline's own LoRA loader
            self.pipe.load_lora_weights(config.lora, adapter_name="unsafe2safe")
            self.pipe.set_adapters(["unsafe2safe"], adapter_weights=[config.lora_scale])
        self.multiple = self.size_multiple()
        denoiser = getattr(self.pipe, "transformer", None) or self.pipe.unet
        if config.attention_backend:
            denoiser.set_attention_backend(config.attention_backend)  # diffusers' dispatcher; unknown names raise
        if config.compile:
            # one graph per working-size bucket and batch size: pays off on long jobs with few distinct sizes
            denoiser.compile(mode=config.compile)

    def load_pipeline(self, config, dtype):
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from .safe_attention import find_safe_attention, load_safe_attention

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            config.model, revision=config.revision, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
        folder = find_safe_attention(config.model, config.revision)
        if folder is not None:
            self.safe_attention = load_safe_attention(pipe.unet, folder)
            logger.info("%s: safe cross-attention on %d layers; the public caption conditions the edit", config.model, len(self.safe_attention["layers"]))
        return pipe

    def size_multiple(self) -> int:
        """Working sides must be multiples of this: the VAE's downscale times the UNet's."""
        return self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    uses_mask = False
    uses_source_prompt = False

    @property
    def uses_caption(self) -> bool:
        """Dual prompt or safe cross-attention: the public caption conditions the edit next to the instruction."""
        return self.config.dual_prompt or self.safe_attention is not None

    def _embed(self, texts: list[str]):
        """CLIP text states, one 77-token window per text."""
        tok = self.pipe.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids.to(self.device))[0]

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        c = self.config
        text: dict = {"prompt": prompts}
        if captions is None and self.safe_attention is not None:
            captions = [""] * len(prompts)  # the caption branch reads an empty window, as in the dropout of training
        if captions is not None:
            # the UNet cross-attends to [instruction tokens ; caption tokens] (safe cross-attention splits them
            # into its two branches); the unconditional side is two empty windows, so all guidance branches see
            # contexts of one length
            with self._torch.inference_mode():
                empty = self._embed([""] * len(prompts))
                text = {
                    "prompt_embeds": self._torch.cat([self._embed(prompts), self._embed(captions)], dim=1),
                    "negative_prompt_embeds": self._torch.cat([empty, empty], dim=1),
                }
        return self.pipe(
            **text,
            image=images,
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            image_guidance_scale=c.image_guidance_scale,
            generator=generators,
        ).images


    def edit(self, images: list, prompts: list[str], seeds: list[int], masks: list | None = None, source_prompts: list[str] | None = None, captions: list[str] | None = None) -> list:
        """Edited PIL images at each source's size; one pipeline call per (working size, batch) bucket.
        ``masks``: PIL "L" images (white = repaint) for editors that take one; ``source_prompts``: captions of
        the sources for editors that contrast them with the target (FlowEdit); ``captions``: the public
        captions, a second conditioning for editors with ``uses_caption``."""
        c = self.config
        self._masks, self._sources, self._captions = masks, source_prompts, captions
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            buckets[working_size(img.size, c.max_side, self.multiple)].append(i)
        out: list = [None] * len(images)
        for size, idx in buckets.items():
            for start in range(0, len(idx), c.batch_size):
                self._run(idx[start : start + c.batch_size], size, images, prompts, seeds, out)
        return out

    def _run(self, chunk: list[int], size, images, prompts, seeds, out) -> None:
        from ..utils.memory import split_on_oom

        def call(rows: list[int]) -> list:
            return self._call(
                [prompts[i] for i in rows],
                [images[i].convert("RGB").resize(size) for i in rows],
                [self._masks[i].resize(size) for i in rows] if self._masks is not None else None,
                size,
                [self._torch.Generator(self.device).manual_seed(seeds[i] % 2**63) for i in rows],
                [self._sources[i] for i in rows] if self._sources is not None else None,
                [self._captions[i] for i in rows] if self._captions is not None else None,
            )

        # per-row generators: the halves of a split batch give the same rows as the whole
        for i, img in zip(chunk, split_on_oom(call, chunk, logger, "editing a batch of")):
            out[i] = img.resize(images[i].size)


class InpaintEditor(InstructPix2PixEditor):
    """``AutoPipelineForInpainting`` (e.g. an SD inpainting checkpoint): the region mask is repainted from the
    prompt (the row's target caption), the rest of the image is context."""

    name = "inpaint"
    uses_mask = True

    def load_pipeline(self, config, dtype):
        from diffusers import AutoPipelineForInpainting

        return AutoPipelineForInpainting.from_pretrained(
            config.model, revision=config.revision, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        return self.pipe(
            prompt=prompts,
            image=images,
            mask_image=masks,
            height=size[1],
            width=size[0],
            num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance_scale,
            generator=generators,
        ).images


class _PackedLatentEditor(InstructPix2PixEditor):
    """Editors whose diffusers pipeline loads with no extra arguments and packs its latents 2x2 (FLUX Kontext,
    Qwen-Image-Edit): the pipeline class is named by ``pipeline_class``."""

    pipeline_class = ""

    def load_pipeline(self, config, dtype):
        import diffusers

        return getattr(diffusers, self.pipeline_class).from_pretrained(config.model, revision=config.revision, dtype=dtype)

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2  # latents are packed 2x2


class KontextEditor(_PackedLatentEditor):
    """``FluxKontextPipeline`` (FLUX.1 Kontext): an in-context instruction editor on a rectified-flow
    transformer; text = the edit instruction, the source image is the context. Kontext's own snapping to its
    preferred resolutions is off: the working size follows the source's aspect ratio like every editor here."""

    name = "kontext"
    pipeline_class = "FluxKontextPipeline"

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        return self.pipe(
            image=images,
            prompt=prompts,
            height=size[1],
            width=size[0],
            num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance_scale,
            generator=generators,
            max_area=size[0] * size[1],  # the pipeline rescales height x width to this area
            _auto_resize=False,
        ).images


class QwenImageEditEditor(_PackedLatentEditor):
    """``QwenImageEditPipeline`` (Qwen-Image-Edit): an MMDiT instruction editor whose prompt is encoded by
    Qwen2.5-VL together with the source image; text = the edit instruction. The output is generated at the working
    size; guidance is true classifier-free guidance (``true_cfg_scale`` = ``diffusion.guidance_scale``, against the
    negative prompt " " as the model card does; at 1 or below it is off and the pipeline runs once per step).

    Cost: whatever the working size, the pipeline resizes its condition image to about one megapixel (its
    ``calculate_dimensions(1024 * 1024, aspect)``): the VAE encodes it at that size, Qwen2.5-VL reads it at that
    size (about 1,350 visual tokens, once for the prompt and once for the negative prompt), and the transformer
    attends over its ~4,096 latent tokens next to the output's (working size / 16)**2 at every step. A smaller
    ``diffusion.max_side`` therefore saves little (at 512 px the condition is 4/5 of the image tokens); 1024 gives
    the model's own output size with 1.6x the image tokens of 512.

    Batched: the pipeline encodes a list of images with their prompts in one Qwen2.5-VL call (padded, the padding
    masked in the transformer's joint attention) and takes one generator per row, and every row of a bucket
    shares its working size and hence its condition size, so a whole bucket goes in one call (the tests check
    that a row gives the same output alone or in a batch)."""

    name = "qwen-image-edit"
    pipeline_class = "QwenImageEditPipeline"

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        guided = self.config.guidance_scale > 1
        return self.pipe(
            image=images,
            prompt=prompts,
            # one negative prompt per row: the pipeline encodes each with its row's image
            negative_prompt=[" "] * len(prompts) if guided else None,
            true_cfg_scale=self.config.guidance_scale,
            height=size[1],
            width=size[0],
            num_inference_steps=self.config.steps,
            generator=generators,
        ).images
