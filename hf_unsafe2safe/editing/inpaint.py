"""The inpainting editor (``diffusion.name=inpaint``): an SD inpainting checkpoint repaints the region masks."""

from __future__ import annotations

from .base import DiffusionEditor


class InpaintEditor(DiffusionEditor):
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
