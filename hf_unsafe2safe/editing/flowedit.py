"""FlowEdit (Kulikov et al., 2024): inversion-free, training-free editing on a rectified-flow model (SD3).

Instead of inverting the source to noise, FlowEdit integrates the *difference* of the two velocity fields
along the flow: at each edited step a fresh noise sample puts the source latent on the flow at time sigma,
the current edit is shifted by the same amount, and the edit moves by (v_target - v_source) dt, each velocity
with its own classifier-free guidance. Only the last ``n_max`` of ``steps`` steps edit (the early, coarse
ones would redraw the layout); the last ``n_min`` of them continue as plain sampling from the target prompt.
Implemented on diffusers' SD3 components; batched over rows, every row with its own generator.
"""

from __future__ import annotations

from .diffusion import InstructPix2PixEditor


class FlowEditEditor(InstructPix2PixEditor):
    name = "flowedit"
    uses_source_prompt = True

    def load_pipeline(self, config, dtype):
        from diffusers import StableDiffusion3Pipeline

        extra = {"text_encoder_3": None, "tokenizer_3": None} if config.without_t5 else {}
        return StableDiffusion3Pipeline.from_pretrained(config.model, revision=config.revision, dtype=dtype, **extra)

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    def _velocity(self, latents, t, embeds, guidance: float):
        """Classifier-free-guided velocity for a batch of latents (unconditional and conditional in one pass)."""
        cond, uncond, pooled, uncond_pooled = embeds
        n = latents.shape[0]
        out = self.pipe.transformer(
            hidden_states=self._torch.cat([latents, latents]),
            timestep=t.expand(2 * n),
            encoder_hidden_states=self._torch.cat([uncond, cond]),
            pooled_projections=self._torch.cat([uncond_pooled, pooled]),
            return_dict=False,
        )[0]
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def _noise(self, like, generators):
        return self._torch.stack([self._torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators])

    def _encode(self, prompts: list[str]):
        return self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=[""] * len(prompts),
            do_classifier_free_guidance=True, device=self.device,
        )

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        from diffusers import FlowMatchEulerDiscreteScheduler

        torch, pipe, c = self._torch, self.pipe, self.config
        if sources is None:
            raise ValueError("FlowEdit needs a source prompt (a caption of the original) for every row")
        vae = pipe.vae
        with torch.inference_mode():
            # 1. the source latents (the mode of the encoder's distribution: deterministic)
            pixels = pipe.image_processor.preprocess(images, height=size[1], width=size[0]).to(self.device, vae.dtype)
            z0 = (vae.encode(pixels).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
            z0 = z0.to(pipe.transformer.dtype)
            # 2. both prompts, with their unconditional halves
            src, tar = self._encode(sources), self._encode(prompts)
            # 3. the sigma schedule of a fresh scheduler (no state shared between calls)
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
            scheduler.set_timesteps(c.steps, device=self.device)
            sigmas = scheduler.sigmas.to(z0.dtype)
            z_edit, z_tar = z0.clone(), None
            for i, t in enumerate(scheduler.timesteps):
                remaining = c.steps - i
                if remaining > c.n_max:
                    continue
                dt = sigmas[i + 1] - sigmas[i]
                if remaining > c.n_min:
                    # 4. FlowEdit step: the velocity difference, averaged over n_avg noise draws
                    delta = torch.zeros_like(z0)
                    for _ in range(c.n_avg):
                        z_src_t = (1 - sigmas[i]) * z0 + sigmas[i] * self._noise(z0, generators)
                        z_tar_t = z_edit + z_src_t - z0
                        delta += (self._velocity(z_tar_t, t, tar, c.target_guidance) - self._velocity(z_src_t, t, src, c.source_guidance)) / c.n_avg
                    z_edit = z_edit + dt * delta
                else:
                    # 5. the last n_min steps: plain sampling from the target prompt, starting from the edit
                    if z_tar is None:
                        z_tar = z_edit + (1 - sigmas[i]) * z0 + sigmas[i] * self._noise(z0, generators) - z0
                    z_tar = z_tar + dt * self._velocity(z_tar, t, tar, c.target_guidance)
            z_out = z_tar if z_tar is not None else z_edit
            # 6. decode
            decoded = vae.decode((z_out.to(vae.dtype) / vae.config.scaling_factor) + vae.config.shift_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")
