"""The FLUX.1 Kontext editor (``diffusion.name=kontext``): an in-context instruction editor on a rectified-flow
transformer (``training.kontext_lora`` fine-tunes LoRA adapters for it)."""

from __future__ import annotations

from .base import PackedLatentEditor


class KontextEditor(PackedLatentEditor):
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
