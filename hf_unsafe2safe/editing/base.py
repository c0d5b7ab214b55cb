"""What a Stage 2 diffusion editor is: :class:`DiffusionEditor`, the base of every ``diffusers`` editor, and
:class:`PackedLatentEditor`, the shared part of the editors whose pipeline packs its latents 2x2.

The editor sees the whole image (aspect ratio kept, sides snapped to the model's multiple, the longer side
bounded), so that the edit fits the scene; its output is resized back to the source size, and the transform
blends it in (``editing.compositing``) only inside the dilated, feathered region boxes, with the same rule as the
lite editor: every pixel farther away keeps its source value exactly. Batches are bucketed by working size, each
row has its own seeded ``torch.Generator`` (the same row gives the same output whatever the batch holds).

An editor is one subclass in its own module that says how its pipeline loads (``load_pipeline``), how one
batch of rows at one working size is edited (``_call``), what its working sides must be multiples of
(``size_multiple``) and what it needs besides the instruction (``uses_mask``, ``uses_source_prompt``,
``uses_caption``); ``editing.registry`` maps its ``diffusion.name`` to it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from .compositing import working_size

logger = logging.getLogger(__name__)


class DiffusionEditor:
    """A ``diffusers`` pipeline, loaded once, that edits batches of PIL images from text.

    Loading: ``load_pipeline`` (one per editor) in the dtype ``diffusion.dtype`` asks for (``auto``: bf16 / fp16
    on GPU, fp32 on CPU), moved to the device, with the LoRA adapter of ``diffusion.lora`` on top, the denoiser's
    attention backend (``diffusion.attention_backend``) and ``torch.compile`` (``diffusion.compile``) if set.
    Editing: ``edit`` buckets the rows by working size, runs each bucket in chunks of ``diffusion.batch_size``
    (``_run``), halves a chunk that runs out of memory, and gives every row its own generator, seeded by its
    row seed. A subclass writes ``load_pipeline`` and ``_call``, and ``size_multiple`` when its denoiser is not a
    UNet."""

    name = ""  # the `diffusion.name` this editor serves
    # what `edit` needs next to the instruction: region masks (white = repaint), a caption of each source (an
    # editor that contrasts it with the target), the public captions as a second conditioning
    uses_mask = False
    uses_source_prompt = False
    uses_caption = False

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
        """The ``diffusers`` pipeline of ``config.model`` (at ``config.revision``) in ``dtype``, on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its pipeline loads (load_pipeline)")

    def size_multiple(self) -> int:
        """Working sides must be multiples of this; for a UNet denoiser, the VAE's downscale times the UNet's."""
        return self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    def _call(self, prompts, images, masks, size, generators, sources, captions) -> list:
        """One pipeline call: PIL images (all at the working ``size``) edited from ``prompts``, one generator per
        row; ``masks`` / ``sources`` / ``captions`` are None unless the editor uses them."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it edits a batch (_call)")

    def edit(self, images: list, prompts: list[str], seeds: list[int], masks: list | None = None, source_prompts: list[str] | None = None, captions: list[str] | None = None) -> list:
        """Edited PIL images at each source's size; one pipeline call per (working size, batch) bucket.
        ``masks``: PIL "L" images (white = repaint) for editors that take one; ``source_prompts``: captions of
        the sources for editors that contrast them with the target (FlowEdit); ``captions``: the public
        captions, a second conditioning for editors with ``uses_caption``."""
        c = self.config
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            buckets[working_size(img.size, c.max_side, self.multiple)].append(i)
        out: list = [None] * len(images)
        for size, idx in buckets.items():
            for start in range(0, len(idx), c.batch_size):
                self._run(idx[start : start + c.batch_size], size, images, prompts, seeds, out, masks, source_prompts, captions)
        return out

    def _run(self, chunk: list[int], size, images, prompts, seeds, out, masks=None, sources=None, captions=None) -> None:
        """Edit the rows ``chunk`` (all of working ``size``) into ``out``, halving the chunk on out-of-memory."""
        from ..utils.memory import split_on_oom

        def call(rows: list[int]) -> list:
            return self._call(
                [prompts[i] for i in rows],
                [images[i].convert("RGB").resize(size) for i in rows],
                [masks[i].resize(size) for i in rows] if masks is not None else None,
                size,
                [self._torch.Generator(self.device).manual_seed(seeds[i] % 2**63) for i in rows],
                [sources[i] for i in rows] if sources is not None else None,
                [captions[i] for i in rows] if captions is not None else None,
            )

        # per-row generators: the halves of a split batch give the same rows as the whole
        for i, img in zip(chunk, split_on_oom(call, chunk, logger, "editing a batch of")):
            out[i] = img.resize(images[i].size)


class PackedLatentEditor(DiffusionEditor):
    """Editors whose diffusers pipeline loads with no extra arguments and packs its latents 2x2 (FLUX Kontext,
    Qwen-Image-Edit): the pipeline class is named by ``pipeline_class``."""

    pipeline_class = ""

    def load_pipeline(self, config, dtype):
        import diffusers

        return getattr(diffusers, self.pipeline_class).from_pretrained(config.model, revision=config.revision, dtype=dtype)

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2  # latents are packed 2x2
