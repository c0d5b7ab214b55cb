"""LoRA fine-tuning of a FLUX Kontext editor on anonymization pairs: a one-block random-weight Kontext pipeline saved
and loaded through `from_pretrained`, its scheduler set up like FLUX.1 Kontext [dev]'s (dynamic shifting), the
adapter loaded back by the project's own KontextEditor."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import encode  # noqa: E402
from tiny_models import build_tiny_clip, build_tiny_kontext  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.training.common import LORA_WEIGHTS, RECORD, FinetuneConfig  # noqa: E402
from hf_unsafe2safe.training.kontext_lora import finetune_kontext  # noqa: E402

SIDE = 32


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = build_tiny_kontext(str(tmp_path_factory.mktemp("kontext-base")))
    # FLUX.1 Kontext [dev]'s scheduler settings: noise levels shifted by the image's token count
    config_file = f"{path}/scheduler/scheduler_config.json"
    with open(config_file) as f:
        config = json.load(f)
    config.update(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    with open(config_file, "w") as f:
        json.dump(config, f)
    return path


def _photos(n: int) -> list[np.ndarray]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(), data.colorwheel()]
    return [np.ascontiguousarray(p[:: p.shape[0] // SIDE, :: p.shape[1] // SIDE][:SIDE, :SIDE, :3]) for p in photos[:n]]


def _pairs(originals, captions=None, passed: int = 0):
    """An anonymization output with the originals kept: a grey box painted over the middle of each photo (edited),
    then `passed` unflagged rows (not pairs)."""
    from datasets import Dataset, Image

    edited = []
    for o in originals:
        e = o.copy()
        e[SIDE // 4 : 3 * SIDE // 4, SIDE // 4 : 3 * SIDE // 4] = 128
        edited.append(e)
    n = len(originals)
    images = edited + originals[:passed]
    return Dataset.from_dict({
        "image": [{"bytes": encode(e, "PNG"), "path": None} for e in images],
        C.ORIGINAL_IMAGE: [{"bytes": encode(o, "PNG"), "path": None} for o in originals + originals[:passed]],
        C.PRIVACY_FLAG: [True] * n + [False] * passed,
        C.ANONYMIZATION: [{"status": C.STATUS_EDITED}] * n + [{"status": C.STATUS_PASSED}] * passed,
        C.EDIT_INSTRUCTION: ["cover the face with a grey box"] * n + [""] * passed,
        C.PUBLIC_CAPTION: (captions or ["a photo"] * n) + [""] * passed,
    }).cast_column("image", Image()).cast_column(C.ORIGINAL_IMAGE, Image())


def _config(base, **kw):
    return FinetuneConfig(**{
        "base": base, "resolution": SIDE, "steps": 8, "batch_size": 2, "learning_rate": 1e-2, "held_out": 2, "lora_rank": 4,
        "samples": 1, "sample_steps": 2, "log_every": 4, **kw,
    })


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("kontext-lora") / "adapter"
    data = _pairs(_photos(6), passed=1)
    return data, out, finetune_kontext(data, str(out), _config(base), progress=False)


def test_the_loss_of_a_step_is_the_flow_matching_loss_on_the_same_draws(base, tmp_path):
    """One pair, no crop or flip to draw: the first step's loss, before any update (LoRA B starts at zero), is the
    base transformer's flow-matching loss on the documented draws, recomputed here with diffusers' own Kontext
    packing, position ids, latent scaling, prompt encoding and scheduler shift."""
    from diffusers import FluxKontextPipeline
    from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift
    from PIL import Image

    photo = _photos(1)
    data = _pairs(photo, passed=1)
    cfg = _config(base, steps=2, batch_size=1, held_out=0, samples=0, flip=False, seed=5)
    result = finetune_kontext(data, str(tmp_path / "a"), cfg, progress=False)
    again = finetune_kontext(data, str(tmp_path / "b"), cfg, progress=False)
    assert result.rows == 1 and result.losses == again.losses  # seeded: the same draws, the same updates
    from safetensors.torch import load_file

    first, second = load_file(str(tmp_path / "a" / LORA_WEIGHTS)), load_file(str(tmp_path / "b" / LORA_WEIGHTS))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    pipe = FluxKontextPipeline.from_pretrained(base)
    row = data[0]
    with torch.no_grad():
        x0 = pipe._encode_vae_image(pipe.image_processor.preprocess(row["image"]), generator=None)
        context = pipe._encode_vae_image(pipe.image_processor.preprocess(Image.fromarray(photo[0])), generator=None)
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt=[row[C.EDIT_INSTRUCTION]], prompt_2=None, max_sequence_length=512)
    gen = torch.Generator().manual_seed(5 * 1009)
    noise = torch.randn(x0.shape, generator=gen)
    u = torch.rand(1, generator=gen, dtype=torch.float64)
    _, channels, h, w = x0.shape
    sched = pipe.scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), sched.base_image_seq_len, sched.max_image_seq_len, sched.base_shift, sched.max_shift)
    sigma = pipe.scheduler.time_shift(mu, 1.0, u).float()
    assert 0 < float(sigma) < 1 and abs(float(sigma) - float(u)) > 1e-3  # the shift really moved the draw

    noisy = (1 - sigma) * x0 + sigma * noise
    tokens = torch.cat([pipe._pack_latents(noisy, 1, channels, h, w), pipe._pack_latents(context, 1, channels, h, w)], dim=1)
    target_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", prompt_embeds.dtype)
    context_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", prompt_embeds.dtype)
    context_ids[..., 0] = 1
    velocity = pipe._pack_latents(noise - x0, 1, channels, h, w)

    def loss(ids):
        with torch.no_grad():
            pred = pipe.transformer(
                hidden_states=tokens, timestep=sigma, guidance=torch.full([1], 2.5), pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=ids, return_dict=False,
            )[0][:, : velocity.shape[1]]
        return float(((pred - velocity) ** 2).mean())

    expected = loss(torch.cat([target_ids, context_ids]))
    assert result.losses[0] == pytest.approx(expected, rel=1e-6)  # measured: 8e-8 (float rounding of the pixels)
    # the tolerance can tell: the context's tokens at the target's positions (first id 0) give a loss 1e-4 away
    assert loss(torch.cat([target_ids, target_ids])) != pytest.approx(expected, rel=1e-6)


def test_the_adapter_is_saved_recorded_and_loaded_by_the_kontext_editor(trained, base):
    from safetensors.torch import load_file

    from hf_unsafe2safe.config import DiffusionEditorConfig
    from hf_unsafe2safe.editing.kontext import KontextEditor

    data, out, result = trained
    assert result.rows == 4 and result.held_out == 2 and len(result.losses) == 8 and all(np.isfinite(result.losses))
    # the same held-out pairs, noise and noise levels before and after: the adapter fitted the run's edits
    assert result.held_out_loss_after < result.held_out_loss_before
    record = json.loads((out / RECORD).read_text())
    assert record["use_with"] == {"diffusion": {"name": "kontext", "model": base, "lora": str(out)}}
    assert {k: record[k] for k in ("base", "rows", "held_out", "losses", "held_out_loss_before", "held_out_loss_after", "processes")} == {
        "base": base, "rows": 4, "held_out": 2, "losses": result.losses, "held_out_loss_before": result.held_out_loss_before,
        "held_out_loss_after": result.held_out_loss_after, "processes": 1,
    }
    assert record["config"]["lora_rank"] == 4 and record["adapter"]["rank"] == 4 and record["adapter"]["alpha"] == 4
    assert record["triplet_filter"]["applied"] is False and record["objective"]["guidance"] == 2.5
    assert (out / "loss.png").stat().st_size > 0 and (out / "samples.png").stat().st_size > 0
    assert record["samples"]["held_out"] and len(record["samples"]["rows"]) == 1

    # diffusers' LoRA format: transformer-prefixed A/B pairs on the attention projections, B trained away from zero
    saved = load_file(str(out / LORA_WEIGHTS))
    assert saved and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in saved)
    assert {k.split(".")[-3] for k in saved} >= {"to_q", "to_k", "to_v", "add_q_proj", "to_add_out"}
    assert all(float(v.abs().max()) > 0 for k, v in saved.items() if ".lora_B." in k)
    assert record["adapter"]["tensors"] == len(saved)

    def editor(**kw):
        return KontextEditor(DiffusionEditorConfig(name="kontext", model=base, steps=2, max_side=64, batch_size=2, leak_check=False, **kw), "cpu")

    sources = [data[i][C.ORIGINAL_IMAGE] for i in range(2)]
    prompts = ["cover the face with a grey box"] * 2

    def edit(e):
        return np.stack([np.asarray(img, dtype=np.int16) for img in e.edit(sources, prompts, seeds=[1, 2])])

    tuned = editor(lora=str(out))
    # the editor holds exactly the saved weights (diffusers' loader under the adapter name the editors use)
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(tuned.pipe.transformer, adapter_name="unsafe2safe")
    assert {f"transformer.{k}" for k in loaded} == set(saved)
    assert all(torch.equal(loaded[k].float(), saved[f"transformer.{k}"]) for k in loaded)

    plain, with_lora = edit(editor()), edit(tuned)
    assert with_lora.shape == plain.shape == (2, SIDE, SIDE, 3)
    assert np.abs(with_lora - plain).mean() > 0.5  # same seeds: the difference is the adapter's
    # the adapter switched off gives the base editor's output exactly: what changed it is the LoRA and nothing else
    tuned.pipe.disable_lora()
    assert np.array_equal(edit(tuned), plain)


def test_the_triplet_filter_chooses_the_pairs(base, tmp_path):
    from hf_unsafe2safe.training.pairs import training_rows
    from hf_unsafe2safe.training.triplet_filter import filter_pairs

    clip = build_tiny_clip(str(tmp_path / "clip"))
    captions = ["a person", "", "a cup of coffee", "a cat", "a rocket", "a colour wheel"]
    data = _pairs(_photos(6), captions)
    cfg = _config(base, steps=1, held_out=0, samples=0, clip_model=clip, clip_threshold=0.7)
    expected, expected_record = filter_pairs(data, training_rows(data), "image", clip, 0.7, "cpu")
    assert 2 <= len(expected) < 6 and expected_record["dropped_by_reason"]["empty_caption"] == 1
    result = finetune_kontext(data, str(tmp_path / "out"), cfg, progress=False)
    record = json.loads((tmp_path / "out" / RECORD).read_text())
    assert record["triplet_filter"] == expected_record and result.rows + result.held_out == len(expected)
    # nothing passes: a clear error, no adapter
    with pytest.raises(ValueError, match="kept no pair"):
        finetune_kontext(_pairs(_photos(2), ["", " "]), str(tmp_path / "none"), cfg, progress=False)
    assert not (tmp_path / "none").exists()


def test_refuses_what_it_cannot_train(base, tmp_path):
    data = _pairs(_photos(2))
    with pytest.raises(ValueError, match="lora_rank"):
        finetune_kontext(data, str(tmp_path / "x"), _config(base, lora_rank=0))
    with pytest.raises(ValueError, match="dual_prompt"):
        finetune_kontext(data, str(tmp_path / "x"), _config(base, dual_prompt=True))
    with pytest.raises(ValueError, match="image_column"):
        finetune_kontext(data, str(tmp_path / "x"), _config(base), image_column="safe")


def test_schedule_accumulation_and_ema_are_the_shared_recipe(base, tmp_path):
    """Two micro-batches per step, one warmup step then a cosine decay, an EMA of the LoRA weights."""
    data = _pairs(_photos(3))
    cfg = _config(base, steps=3, batch_size=1, gradient_accumulation_steps=2, warmup_steps=1, lr_schedule="cosine", ema_decay=0.5, held_out=1, samples=0)
    result = finetune_kontext(data, str(tmp_path / "out"), cfg, progress=False)
    record = json.loads((tmp_path / "out" / RECORD).read_text())
    assert result.kind == record["kind"] == "lora" and len(result.losses) == 3
    # the learning rate of each optimizer step: warmup (t + 1) / 1, then 0.5 (1 + cos(pi (t - 1) / 2))
    assert record["learning_rates"] == pytest.approx([1e-2, 1e-2, 0.5e-2])
    assert record["ema"]["updates"] == 3 and record["ema"]["held_out_loss_after_raw"] is not None
    assert record["ema"]["held_out_loss_after_raw"] != record["held_out_loss_after"]  # the saved average is not the last weights
    assert record["schedule"] == {"warmup_steps": 1, "after_warmup": "cosine", "steps": 3} and record["optimizer"] == "AdamW (torch)"


def test_fine_tune_a_kontext_base_from_the_command_line(base, tmp_path, capsys):
    """`unsafe2safe finetune --lora-rank` on a Kontext folder goes to this trainer and says how to load the adapter."""
    from hf_unsafe2safe.cli import main

    run = tmp_path / "run"
    _pairs(_photos(3), passed=1).save_to_disk(str(run))
    out = tmp_path / "adapter"
    args = ["finetune", str(run), "--base", base, "--output", str(out), "--lora-rank", "4", "--steps", "1", "--resolution", str(SIDE), "--batch-size", "1", "--held-out", "1", "--samples", "0", "--cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"--editor kontext --set diffusion.model={base} --set diffusion.lora={out}" in printed and "(adapter)" in printed
    assert (out / LORA_WEIGHTS).exists() and json.loads((out / RECORD).read_text())["kind"] == "lora"
