"""FlowEdit on a tiny SD3 (random weights, saved and loaded via from_pretrained), checked against a plain loop."""

import numpy as np
import pytest

pytest.importorskip("diffusers")

from conftest import encode  # noqa: E402
from imagegen import assert_rewritten_only_inside_regions  # noqa: E402
from tiny_models import build_tiny_sd3  # noqa: E402

from hf_unsafe2safe import Unsafe2Safe  # noqa: E402
from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.config import DiffusionEditorConfig  # noqa: E402
from hf_unsafe2safe.editing.flowedit import FlowEditEditor  # noqa: E402

STEPS, N_MAX = 6, 4


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory):
    return build_tiny_sd3(str(tmp_path_factory.mktemp("tiny-sd3")))


@pytest.fixture(scope="module")
def editor(sd3_path):
    config = DiffusionEditorConfig(name="flowedit", model=sd3_path, steps=STEPS, n_max=N_MAX, max_side=64, without_t5=True, batch_size=4)
    return FlowEditEditor(config, "cpu")


def reference_flowedit(pipe, image, source_prompt, target_prompt, seed, steps, n_max, source_guidance, target_guidance):
    """FlowEdit for one image, written as plainly as the paper's algorithm: no batching, separate CFG passes."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator("cpu").manual_seed(seed)
    vae = pipe.vae
    with torch.inference_mode():
        x = pipe.image_processor.preprocess([image], height=image.height, width=image.width)
        z0 = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor

        def velocity(z, t, prompt, guidance):
            cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                prompt=[prompt], prompt_2=None, prompt_3=None, negative_prompt=[""], do_classifier_free_guidance=True, device="cpu"
            )
            v_c = pipe.transformer(hidden_states=z, timestep=t.expand(1), encoder_hidden_states=cond, pooled_projections=pooled, return_dict=False)[0]
            v_u = pipe.transformer(hidden_states=z, timestep=t.expand(1), encoder_hidden_states=uncond, pooled_projections=uncond_pooled, return_dict=False)[0]
            return v_u + guidance * (v_c - v_u)

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        z_edit = z0.clone()
        for i, t in enumerate(scheduler.timesteps):
            if steps - i > n_max:
                continue
            sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            noise = torch.randn(z0.shape[1:], generator=g)[None]
            z_src = (1 - sigma) * z0 + sigma * noise
            z_tar = z_edit + z_src - z0
            z_edit = z_edit + (sigma_next - sigma) * (velocity(z_tar, t, target_prompt, target_guidance) - velocity(z_src, t, source_prompt, source_guidance))
        out = vae.decode(z_edit / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    return np.asarray(pipe.image_processor.postprocess(out, output_type="pil")[0], np.int16)


def test_batched_flowedit_matches_the_reference_loop(editor):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (32, 48, 3), np.uint8)) for _ in range(2)]
    sources, targets, seeds = ["a man with a beard", "a red car"], ["a person", "a car"], [11, 12]
    batched = editor.edit(images, targets, seeds, source_prompts=sources)
    c = editor.config
    for img, src, tar, seed, got in zip(images, sources, targets, seeds, batched):
        expected = reference_flowedit(editor.pipe, img, src, tar, seed, STEPS, N_MAX, c.source_guidance, c.target_guidance)
        assert np.abs(np.asarray(got, np.int16) - expected).max() <= 1
    # and the edit is real: another target prompt gives another image
    other = editor.edit(images[:1], ["a cat on a sofa"], seeds[:1], source_prompts=sources[:1])[0]
    assert np.abs(np.asarray(other, np.int16) - np.asarray(batched[0], np.int16)).max() > 1


def test_no_edited_step_returns_the_source_reconstruction(sd3_path):
    from PIL import Image

    config = DiffusionEditorConfig(name="flowedit", model=sd3_path, steps=4, n_max=0, max_side=64, without_t5=True)
    editor = FlowEditEditor(config, "cpu")
    img = Image.fromarray(np.random.RandomState(1).randint(0, 255, (32, 32, 3), np.uint8))
    a = editor.edit([img], ["a person"], [1], source_prompts=["a man"])[0]
    b = editor.edit([img], ["something else entirely"], [2], source_prompts=["x"])[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))  # n_max = 0: nothing edits, prompts and noise play no part


def test_flowedit_in_the_transform_edits_inside_the_regions_only(sd3_path):
    from skimage import data

    anonymize = Unsafe2Safe.from_preset(
        "lite", diffusion={"name": "flowedit", "model": sd3_path, "steps": STEPS, "n_max": N_MAX, "max_side": 64, "without_t5": True}
    )
    face = encode(data.astronaut()[::4, ::4], "PNG")
    out = anonymize({"image": [{"bytes": face, "path": None}]})
    assert out[C.ANONYMIZATION][0]["editor"].startswith("flowedit")
    assert_rewritten_only_inside_regions(face, out, 0, anonymize.config.editor)


def test_paper_preset_uses_flowedit_with_the_paper_settings():
    from hf_unsafe2safe import PipelineConfig

    d = PipelineConfig.from_preset("paper").diffusion
    assert (d.name, d.steps, d.source_guidance, d.target_guidance, d.n_min, d.n_max, d.n_avg) == ("flowedit", 50, 3.5, 13.5, 0, 33, 1)
    assert d.model == "stabilityai/stable-diffusion-3-medium-diffusers"
