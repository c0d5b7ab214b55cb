"""The InstructPix2Pix editor (``diffusion.name=instruct-pix2pix``): InstructPix2Pix or MagicBrush weights, and the
paper's dual-prompt editor (``diffusion.dual_prompt``, or a pipeline folder with safe cross-attention)."""

from __future__ import annotations

import logging

from .base import DiffusionEditor

logger = logging.getLogger(__name__)


class InstructPix2PixEditor(DiffusionEditor):
    """``StableDiffusionInstructPix2PixPipeline`` (InstructPix2Pix or MagicBrush weights); text = the edit instruction.

    A pipeline folder written by ``unsafe2safe finetune --safe-attention`` (``unet/safe_attention.json`` next to
    the UNet) is the paper's dual-prompt editor: its safe cross-attention processors are put back on the UNet
    (``editing.safe_attention``) and the public caption conditions every edit through its own branch
    (``uses_caption``; a row without a caption gets an empty window). A plain folder loads as before."""

    name = "instruct-pix2pix"
    safe_attention: dict | None = None  # the loaded safe cross-attention config, None for a plain UNet

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
