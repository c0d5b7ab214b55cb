"""The Qwen-Image-Edit editor (``diffusion.name=qwen-image-edit``): an MMDiT instruction editor whose prompt is
encoded by Qwen2.5-VL together with the source image."""

from __future__ import annotations

from .base import PackedLatentEditor


class QwenImageEditEditor(PackedLatentEditor):
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
