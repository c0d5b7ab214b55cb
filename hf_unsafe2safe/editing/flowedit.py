"""FlowEdit (Kulikov et al., 2024): inversion-free, training-free editing on a rectified-flow model (SD3).

Instead of inverting the source to noise, FlowEdit integrates the *difference* of the two velocity fields
along the flow: at each edited step a fresh noise sample puts the source latent on the flow at time sigma,
the current edit is shifted by the same amount, and the edit moves by (v_target - v_source) dt, each velocity
with its own classifier-free guidance. Only the last ``n_max`` of ``steps`` steps edit (the early, coarse
ones would redraw the layout); the last ``n_min`` of them continue as plain sampling from the target prompt.
Implemented on diffusers' SD3 components; batched over rows, every row with its own generator.

Precision: the sigma schedule, its step sizes and every accumulated latent (the source latent, the edit, the
sampled target, the averaged velocity difference) stay in float32 whatever the transformer's dtype; only the
transformer's inputs are cast to its dtype, and its velocities come back as float32 (guidance is combined in
float32). The FlowEdit authors' code likewise takes its times from the float32 timesteps and makes each update
in float32 (it then stores the edit back in the model's dtype; here it stays float32). bf16 holds the sigmas
in [0.5, 1) only to 2**-8, about half of one of SD3's 50 steps there, so a bf16 schedule gets single step
sizes wrong by up to 25 % (SD3's shift 3, last 33 steps), and a bf16 latent is rounded at every step by far
more than a small edit moves it. Noise is drawn in float32 from each row's generator: a row sees the same
noise in every dtype.
"""

from __future__ import annotations

from .base import DiffusionEditor


class FlowEditEditor(DiffusionEditor):
    """``diffusion.name=flowedit``: FlowEdit on ``StableDiffusion3Pipeline``'s components; text = the target caption,
    contrasted with a caption of the source (``uses_source_prompt``)."""

    name = "flowedit"
    uses_source_prompt = True

    def load_pipeline(self, config, dtype):
        from diffusers import StableDiffusion3Pipeline

        extra = {"text_encoder_3": None, "tokenizer_3": None} if config.without_t5 else {}
        return StableDiffusion3Pipeline.from_pretrained(config.model, revision=config.revision, dtype=dtype, **extra)

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    def _velocity(self, latents, t, embeds, guidance: float):
        """Classifier-free-guided velocity (float32) for a batch of float32 latents: unconditional and conditional
        in one transformer pass in the transformer's dtype, the guidance combination in float32."""
        torch, transformer = self._torch, self.pipe.transformer
        cond, uncond, pooled, uncond_pooled = embeds
        n, dtype = latents.shape[0], transformer.dtype
        out = transformer(
            hidden_states=torch.cat([latents, latents]).to(dtype),
            timestep=t.expand(2 * n),
            encoder_hidden_states=torch.cat([uncond, cond]).to(dtype),
            pooled_projections=torch.cat([uncond_pooled, pooled]).to(dtype),
            return_dict=False,
        )[0]
        v_uncond, v_cond = out.float().chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def _noise(self, like, generators):
        """One float32 standard-normal sample per row, each from its row's generator."""
        torch = self._torch
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=torch.float32) for g in generators])

    def _encode(self, prompts: list[str]):
        return self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=[""] * len(prompts),
            do_classifier_free_guidance=True, device=self.device,
        )

    def edit_latents(self, images, prompts, sources, size, generators):
        """The edited latents (float32, before decoding) of ``images`` (PIL at the working ``size``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        torch, pipe, c = self._torch, self.pipe, self.config
        vae = pipe.vae
        with torch.inference_mode():
            # 1. the source latents (the mode of the encoder's distribution: deterministic), in float32
            pixels = pipe.image_processor.preprocess(images, height=size[1], width=size[0]).to(self.device, vae.dtype)
            z0 = ((vae.encode(pixels).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor).float()
            # 2. both prompts, with their unconditional halves
            src, tar = self._encode(sources), self._encode(prompts)
            # 3. the sigma schedule of a fresh scheduler (no state shared between calls), in float32
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
            scheduler.set_timesteps(c.steps, device=self.device)
            sigmas = scheduler.sigmas.to(torch.float32)
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
        return z_tar if z_tar is not None else z_edit

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        torch, pipe = self._torch, self.pipe
        if sources is None:
            raise ValueError("FlowEdit needs a source prompt (a caption of the original) for every row")
        z_out = self.edit_latents(images, prompts, sources, size, generators)
        vae = pipe.vae
        with torch.inference_mode():
            # 6. decode (the VAE in its own dtype)
            decoded = vae.decode((z_out / vae.config.scaling_factor + vae.config.shift_factor).to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")
