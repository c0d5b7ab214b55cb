"""Fine-tuning an InstructPix2Pix editor on the pairs of an anonymization run (tiny random-weight pipeline saved
and loaded through `from_pretrained`; real lite anonymization of real photos as the data): full fine-tuning, the
paper's safe cross-attention, LoRA, EMA, learning-rate schedules, gradient checkpointing, 8-bit Adam, the triplet
filter's place in the run and the hand-off of FLUX Kontext bases."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import datasets  # noqa: E402
from conftest import encode, image_dataset  # noqa: E402
from tiny_models import build_tiny_instruct_pix2pix  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.training.common import FinetuneConfig  # noqa: E402
from hf_unsafe2safe.training.finetune import finetune_editor  # noqa: E402
from hf_unsafe2safe.training.pairs import training_rows  # noqa: E402


@pytest.fixture(scope="module")
def pairs(lite):
    """A lite run with the originals kept: faces and text edited, a plain photo passed, junk bytes invalid."""
    from skimage import data

    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset
    from hf_unsafe2safe.demo import build_demo_dataset

    demo = build_demo_dataset()
    extra = image_dataset([encode(data.coffee()[::4, ::4]), b"junk"], name=["coffee", "junk"])
    source = datasets.concatenate_datasets([demo, extra])
    keep = Unsafe2Safe.from_preset("lite", keep_original=True)
    return anonymize_dataset(source, keep, batch_size=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_instruct_pix2pix(str(tmp_path_factory.mktemp("ip2p-base")))


def test_only_flagged_and_edited_rows_with_both_images_are_pairs(pairs):
    rows = training_rows(pairs)
    statuses = [a["status"] for a in pairs[C.ANONYMIZATION]]
    instructions = pairs[C.EDIT_INSTRUCTION]
    # a row edited only by metadata removal has no instruction (its pixels did not change): not a pair
    assert rows == [i for i, (f, s, t) in enumerate(zip(pairs[C.PRIVACY_FLAG], statuses, instructions)) if f and s == C.STATUS_EDITED and t.strip()]
    assert len(rows) >= 4 and C.STATUS_PASSED in statuses and C.STATUS_INVALID in statuses
    with pytest.raises(ValueError, match="--keep-original"):
        training_rows(pairs.remove_columns(C.ORIGINAL_IMAGE))
    with pytest.raises(ValueError, match="nothing to learn from"):
        training_rows(pairs.select([statuses.index(C.STATUS_PASSED)]))


def test_config_validates_itself():
    with pytest.raises(ValueError, match="finetune.resolution"):
        FinetuneConfig(resolution=30)
    with pytest.raises(ValueError, match="finetune.condition_dropout"):
        FinetuneConfig(condition_dropout=0.5)
    with pytest.raises(ValueError, match="finetune.mixed_precision"):
        FinetuneConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="finetune.lr_schedule"):
        FinetuneConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="finetune.ema_decay"):
        FinetuneConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="finetune.lora_rank"):
        FinetuneConfig(safe_attention=True, lora_rank=4)
    with pytest.raises(ValueError, match="finetune.fusion_learning_rate"):
        FinetuneConfig(fusion_learning_rate=1e-4)  # only the safe-attention fusion weights use it
    with pytest.raises(ValueError, match="finetune.clip_threshold"):
        FinetuneConfig(clip_threshold=0)


def _config(base, **kw):
    return FinetuneConfig(**{"base": base, "resolution": 32, "steps": 30, "batch_size": 4, "learning_rate": 2e-3, "held_out": 2, "log_every": 10, **kw})


def test_fine_tuning_lowers_the_held_out_loss_and_the_result_edits(pairs, base, tmp_path):
    from hf_unsafe2safe.config import DiffusionEditorConfig
    from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor

    out = tmp_path / "tuned"
    result = finetune_editor(pairs, str(out), _config(base, dual_prompt=True), progress=False)
    assert result.rows + result.held_out == len(training_rows(pairs)) and result.held_out == 2
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    # the same held-out pairs, timesteps and noise before and after: training fitted the run's edits
    assert result.held_out_loss_after < result.held_out_loss_before
    record = json.loads((out / "unsafe2safe_finetune.json").read_text())
    assert record["use_with"]["diffusion"] == {"name": "instruct-pix2pix", "model": str(out), "dual_prompt": True}
    assert record["held_out_loss_after"] == result.held_out_loss_after and (out / "loss.png").stat().st_size > 0
    assert record["kind"] == "full" and record["triplet_filter"]["applied"] is False and "clip_model" in record["triplet_filter"]["reason"]
    assert record["optimizer"].startswith("AdamW") and record["ema"] is None and len(record["learning_rates"]) == 30
    # samples.png: the held-out pairs, 4 columns (source, the run's result, base editor, fine-tuned editor)
    from PIL import Image

    assert record["samples"]["held_out"] and len(record["samples"]["rows"]) == 2
    assert set(record["samples"]["rows"]) <= set(training_rows(pairs))
    sheet = Image.open(out / "samples.png")
    assert sheet.width > 4 * 320 and sheet.height > 2 * 100
    # the saved folder is a complete pipeline the editor loads, with the dual prompt it was trained for
    editor = InstructPix2PixEditor(DiffusionEditorConfig(model=str(out), dual_prompt=True, steps=2, max_side=64, batch_size=2), "cpu")
    images = [pairs[i][C.ORIGINAL_IMAGE] for i in training_rows(pairs)[:2]]
    edited = editor.edit(images, ["blur the face", "remove the text"], seeds=[1, 2], captions=["a person", "a sign"])
    assert [e.size for e in edited] == [i.size for i in images]
    base_unet = InstructPix2PixEditor(DiffusionEditorConfig(model=base, steps=2, max_side=64), "cpu").pipe.unet
    changed = [not torch.equal(a, b) for a, b in zip(base_unet.parameters(), editor.pipe.unet.parameters())]
    assert all(changed)  # every UNet tensor learned; the VAE and text encoder did not
    assert all(torch.equal(a, b) for a, b in zip(InstructPix2PixEditor(DiffusionEditorConfig(model=base, steps=2, max_side=64), "cpu").pipe.vae.parameters(), editor.pipe.vae.parameters()))


def test_same_seed_same_weights(pairs, base, tmp_path):
    from diffusers import UNet2DConditionModel

    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = finetune_editor(pairs, str(tmp_path / name), _config(base, steps=3, held_out=0, seed=seed, samples=0), progress=False)
        runs.append((result.losses, UNet2DConditionModel.from_pretrained(str(tmp_path / name / "unet"))))
    (loss_a, unet_a), (loss_b, unet_b), (loss_c, unet_c) = runs
    assert loss_a == loss_b and all(torch.equal(x, y) for x, y in zip(unet_a.parameters(), unet_b.parameters()))
    assert loss_a != loss_c


def test_fine_tune_from_the_command_line(pairs, base, tmp_path, capsys):
    from hf_unsafe2safe.cli import main

    run = tmp_path / "run"
    pairs.save_to_disk(str(run))
    out = tmp_path / "cli-tuned"
    assert main(["finetune", str(run), "--base", base, "--output", str(out), "--steps", "2", "--resolution", "32", "--batch-size", "2", "--held-out", "1", "--samples", "1"]) == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "--set diffusion.model=" in printed and "samples.png" in printed
    assert (out / "model_index.json").exists() and (out / "samples.png").exists()
    plain = tmp_path / "plain"
    datasets.load_from_disk(str(run)).remove_columns(C.ORIGINAL_IMAGE).save_to_disk(str(plain))
    with pytest.raises(SystemExit, match="--keep-original"):
        main(["finetune", str(plain), "--base", base, "--output", str(tmp_path / "x"), "--steps", "1"])
    assert not (tmp_path / "x").exists()


def test_two_processes_under_torchrun_train_one_model(pairs, base, tmp_path):
    """`finetune` under torchrun (2 CPU processes, gloo): Accelerate averages the gradients, rank 0 writes."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    pairs.save_to_disk(str(run))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m", "hf_unsafe2safe.cli",
        "finetune", str(run), "--base", base, "--output", str(tmp_path / "tuned"), "--steps", "3", "--resolution", "32",
        "--batch-size", "2", "--held-out", "1", "--cpu", "--samples", "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fine-tuned on") == 1  # one writer
    record = json.loads((tmp_path / "tuned" / "unsafe2safe_finetune.json").read_text())
    assert record["processes"] == 2 and len(record["losses"]) == 3 and (tmp_path / "tuned" / "unet").is_dir()


def _unet_state(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(folder)).state_dict()


def _images(pairs, n=2):
    return [pairs[i][C.ORIGINAL_IMAGE] for i in training_rows(pairs)[:n]]


def test_safe_attention_fine_tuning_reloads_and_edits_through_the_cli(pairs, base, tmp_path, capsys):
    """The acceptance criterion: `finetune --safe-attention` on a lite run's pairs trains the fusion weights, and the
    folder reloads and edits through `anonymize --editor instruct-pix2pix --set diffusion.model=FOLDER`."""
    from safetensors.torch import load_file

    from hf_unsafe2safe.cli import main
    from hf_unsafe2safe.config import DiffusionEditorConfig
    from hf_unsafe2safe.editing import safe_attention as sa
    from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor

    run, out = tmp_path / "run", tmp_path / "safe"
    pairs.save_to_disk(str(run))
    args = ["finetune", str(run), "--base", base, "--output", str(out), "--safe-attention", "--steps", "3", "--resolution", "32",
            "--batch-size", "2", "--held-out", "1", "--samples", "1", "--learning-rate", "1e-3", "--fusion-learning-rate", "1e-2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"--editor instruct-pix2pix --set diffusion.model={out}" in printed and "safe cross-attention" in printed
    assert "dual_prompt" not in printed  # the folder says it itself
    record = json.loads((out / "unsafe2safe_finetune.json").read_text())
    assert record["kind"] == "safe_attention" and record["use_with"] == {"diffusion": {"name": "instruct-pix2pix", "model": str(out)}}
    assert record["safe_attention"]["layers"] == 4 and record["safe_attention"]["fusion_learning_rate"] == 1e-2
    assert record["triplet_filter"]["applied"] is False and record["ema"] is None
    assert (out / "samples.png").exists() and (out / "unet" / sa.WEIGHTS_NAME).exists() and (out / "unet" / sa.CONFIG_NAME).exists()

    # the fusion weights moved away from their initialisation (closed gate, caption branch = the layer's own k / v)
    trained = load_file(str(out / "unet" / sa.WEIGHTS_NAME))
    base_unet = _unet_state(f"{base}/unet")
    scales = [v for k, v in trained.items() if k.endswith(".scale")]
    assert len(scales) == 4 and all(bool((s != 0).all()) for s in scales)
    for key, value in trained.items():
        if key.endswith("caption_k_weight"):
            assert not torch.equal(value, base_unet[key.replace("processor.caption_k_weight", "to_k.weight")])
    # the UNet learned too, and its own file is a plain UNet's
    tuned_unet = _unet_state(out / "unet")
    assert set(tuned_unet) == set(base_unet) and not torch.equal(tuned_unet["conv_in.weight"], base_unet["conv_in.weight"])

    # the editor finds the fusion weights, wants the captions, and the trained gate makes the caption matter
    editor = InstructPix2PixEditor(DiffusionEditorConfig(model=str(out), steps=2, max_side=64, batch_size=2, leak_check=False), "cpu")
    assert editor.uses_caption and editor.safe_attention is not None
    images = _images(pairs)
    a = editor.edit(images, ["blur the face", "remove the text"], seeds=[1, 2], captions=["a person", "a sign"])
    b = editor.edit(images, ["blur the face", "remove the text"], seeds=[1, 2], captions=["a red car on a road", "a bowl of soup"])
    assert [e.size for e in a] == [i.size for i in images]
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))

    # through the command line, on a photo with a face
    from conftest import encode
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "face.png").write_bytes(encode(data.astronaut()[::4, ::4], "PNG"))
    anonymized = tmp_path / "anonymized"
    assert main(["anonymize", str(photos), "-o", str(anonymized), "--split", "train", "--editor", "instruct-pix2pix",
                 "--set", f"diffusion.model={out}", "--set", "diffusion.steps=2", "--set", "diffusion.max_side=64"]) == 0
    row = datasets.load_from_disk(str(anonymized))[0]
    assert row[C.ANONYMIZATION]["status"] == C.STATUS_EDITED and row[C.ANONYMIZATION]["editor"].startswith("instruct-pix2pix")
    assert row[C.PUBLIC_CAPTION]


def test_ema_weights_are_what_is_saved(pairs, base, tmp_path):
    """The saved UNet is the EMA of the per-step weights, by diffusers' EMAModel rule computed here by hand: the
    first update copies, update k >= 2 uses decay min(ema_decay, k / (9 + k))."""
    common = dict(steps=3, held_out=1, samples=0, batch_size=2, seed=5)
    thetas = []
    for steps in (1, 2, 3):  # the raw weights after each optimizer step (constant learning rate: runs are prefixes)
        raw = finetune_editor(pairs, str(tmp_path / f"raw{steps}"), _config(base, **{**common, "steps": steps}), progress=False)
        thetas.append(_unet_state(tmp_path / f"raw{steps}" / "unet"))
    decay = 0.2
    result = finetune_editor(pairs, str(tmp_path / "ema"), _config(base, ema_decay=decay, **common), progress=False)
    assert result.losses == raw.losses  # the average does not touch training
    saved = _unet_state(tmp_path / "ema" / "unet")
    expected = {}
    for key in saved:
        e = thetas[0][key].double()
        for k, theta in ((2, thetas[1][key]), (3, thetas[2][key])):
            d = min(decay, k / (9 + k))
            e = d * e + (1 - d) * theta.double()
        expected[key] = e
    assert all(torch.allclose(saved[k].double(), expected[k], rtol=0, atol=1e-6) for k in saved)
    assert not all(torch.equal(saved[k], thetas[2][k]) for k in saved)  # not the raw last weights
    record = json.loads((tmp_path / "ema" / "unsafe2safe_finetune.json").read_text())
    assert record["ema"]["decay"] == decay and record["ema"]["updates"] == 3 and record["ema"]["saved"]
    # the held-out loss after training is the saved (EMA) model's; the raw weights' is recorded next to it
    assert record["ema"]["held_out_loss_after_raw"] == pytest.approx(raw.held_out_loss_after, abs=1e-6)
    assert record["held_out_loss_after"] == result.held_out_loss_after != raw.held_out_loss_after


def test_cosine_schedule_follows_diffusers_and_steps_once_per_optimizer_step(pairs, base, tmp_path):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from hf_unsafe2safe.training.common import lr_factor

    def diffusers_lrs(lr, warmup, steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
        values = []
        for _ in range(steps):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return values

    # without warmup the whole cosine curve is diffusers' (and ends near 0)
    factor = lr_factor(FinetuneConfig(steps=50, lr_schedule="cosine"))
    assert [1e-3 * factor(t) for t in range(50)] == pytest.approx(diffusers_lrs(1e-3, 0, 50), rel=1e-12, abs=1e-15)
    assert [lr_factor(FinetuneConfig(steps=10))(t) for t in range(10)] == [1.0] * 10
    # in a run: 2 warmup steps ((t + 1) / 2: the first step already learns), then diffusers' cosine decay; with
    # gradient accumulation 2 the schedule still moves once per optimizer step
    result = finetune_editor(pairs, str(tmp_path / "cos"), _config(base, steps=4, warmup_steps=2, lr_schedule="cosine", gradient_accumulation_steps=2, batch_size=1, held_out=0, samples=0), progress=False)
    lrs = json.loads((tmp_path / "cos" / "unsafe2safe_finetune.json").read_text())["learning_rates"]
    reference = diffusers_lrs(2e-3, 2, 4)
    assert len(lrs) == len(result.losses) == 4
    assert lrs[:2] == pytest.approx([1e-3, 2e-3], rel=1e-12) and lrs[2:] == pytest.approx(reference[2:], rel=1e-12)
    assert lrs[2] == pytest.approx(2e-3) and lrs[3] == pytest.approx(1e-3)  # half-way down the cosine


def test_gradient_checkpointing_trains_the_same_model(pairs, base, tmp_path):
    runs = []
    for name, checkpointing in (("plain", False), ("ckpt", True)):
        result = finetune_editor(pairs, str(tmp_path / name), _config(base, steps=2, batch_size=2, held_out=0, samples=0, safe_attention=True, gradient_checkpointing=checkpointing), progress=False)
        runs.append((result.losses, _unet_state(tmp_path / name / "unet")))
    (loss_a, a), (loss_b, b) = runs
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    assert json.loads((tmp_path / "ckpt" / "unsafe2safe_finetune.json").read_text())["gradient_checkpointing"] is True


def test_8bit_adam_when_bitsandbytes_is_installed(pairs, base, tmp_path, monkeypatch):
    import sys

    with monkeypatch.context() as absent:  # without bitsandbytes: a clear error before anything loads
        absent.setitem(sys.modules, "bitsandbytes", None)
        with pytest.raises(ValueError, match="pip install bitsandbytes"):
            finetune_editor(pairs, str(tmp_path / "none"), _config(base, use_8bit_adam=True, steps=1), progress=False)
    assert not (tmp_path / "none").exists()
    pytest.importorskip("bitsandbytes")
    result = finetune_editor(pairs, str(tmp_path / "8bit"), _config(base, use_8bit_adam=True, steps=2, batch_size=2, held_out=0, samples=0), progress=False)
    record = json.loads((tmp_path / "8bit" / "unsafe2safe_finetune.json").read_text())
    assert record["optimizer"].startswith("AdamW8bit") and all(np.isfinite(result.losses))
    tuned, start = _unet_state(tmp_path / "8bit" / "unet"), _unet_state(f"{base}/unet")
    assert all(not torch.equal(tuned[k], start[k]) for k in ("conv_in.weight", "up_blocks.0.attentions.0.proj_in.weight"))


def test_lora_adapter_saved_loaded_and_changes_the_edit(pairs, base, tmp_path):
    """`finetune --lora-rank 4`: an adapter folder that `diffusion.lora` loads on the base and that changes the edit."""
    from safetensors.torch import load_file

    from hf_unsafe2safe.cli import use_with_command
    from hf_unsafe2safe.config import DiffusionEditorConfig
    from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor

    out = tmp_path / "lora"
    config = _config(base, lora_rank=4, lora_alpha=8, steps=3, batch_size=2, held_out=1, samples=1, sample_steps=2, learning_rate=1e-2)
    result = finetune_editor(pairs, str(out), config, progress=False)
    record = json.loads((out / "unsafe2safe_finetune.json").read_text())
    assert result.kind == record["kind"] == "lora"
    assert record["use_with"] == {"diffusion": {"name": "instruct-pix2pix", "model": base, "lora": str(out)}}
    assert use_with_command(record).endswith(f"--editor instruct-pix2pix --set diffusion.model={base} --set diffusion.lora={out}")
    assert record["adapter"]["rank"] == 4 and record["adapter"]["alpha"] == 8
    assert not (out / "unet").exists() and (out / "samples.png").exists()  # an adapter, not a pipeline
    weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("unet.") and "lora" in k for k in weights)
    # diffusers' LoRA format (peft's lora_A / lora_B as lora.down / lora.up), rank 4
    assert {v.shape[0] for k, v in weights.items() if k.endswith("lora.down.weight")} == {4}
    assert any(v.abs().max() > 0 for k, v in weights.items() if k.endswith("lora.up.weight"))  # up started at zero and learned

    def editor(**kw):
        return InstructPix2PixEditor(DiffusionEditorConfig(model=base, steps=2, max_side=64, batch_size=2, leak_check=False, **kw), "cpu")

    images = _images(pairs)
    plain = editor().edit(images, ["blur the face", "remove the text"], seeds=[1, 2])
    tuned = editor(lora=str(out))
    adapted = tuned.edit(images, ["blur the face", "remove the text"], seeds=[1, 2])
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(plain, adapted))
    # the loaded adapter is the saved one, with the saved rank and alpha (from the peft config in the file's metadata)
    unet = tuned.pipe.unet
    assert unet.peft_config["unsafe2safe"].r == 4 and unet.peft_config["unsafe2safe"].lora_alpha == 8
    loaded = {"unet." + k.replace(".unsafe2safe", "").replace("lora_A", "lora.down").replace("lora_B", "lora.up"): v for k, v in unet.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(weights) and all(torch.equal(loaded[k], v) for k, v in weights.items())
    # the base UNet's own weights were not trained
    start = _unet_state(f"{base}/unet")
    assert all(torch.equal(v, start[k.replace(".base_layer", "")]) for k, v in unet.state_dict().items() if "lora_" not in k)


def test_triplet_filter_runs_on_the_training_rows_before_the_split(pairs, base, tmp_path):
    from tiny_models import build_tiny_clip

    from hf_unsafe2safe.training.triplet_filter import filter_pairs

    clip = build_tiny_clip(str(tmp_path / "clip"))
    # the filter's decision on the run's pairs, at a threshold this random-weight CLIP's ratios straddle (their 10th
    # percentile: the lowest pair is dropped, most are kept), whatever the pairs' pixels
    rows = training_rows(pairs)
    _, probe = filter_pairs(pairs, rows, "image", clip, 1.0, "cpu")
    threshold = probe["ratios"]["p10"]
    kept, _ = filter_pairs(pairs, rows, "image", clip, threshold, "cpu")
    assert 2 <= len(kept) < len(rows)
    result = finetune_editor(pairs, str(tmp_path / "filtered"), _config(base, clip_model=clip, clip_threshold=threshold, steps=1, batch_size=2, held_out=1, samples=0), progress=False)
    record = json.loads((tmp_path / "filtered" / "unsafe2safe_finetune.json").read_text())
    filtered = record["triplet_filter"]
    assert filtered["applied"] and filtered["model"] == clip and filtered["considered"] == len(rows) and filtered["kept"] == len(kept)
    # training and held-out pairs both come from the kept rows (the filter runs before the split)
    assert sorted(record["row_ids"]["train"] + record["row_ids"]["held_out"]) == sorted(kept)
    assert result.rows + result.held_out == len(kept) and result.held_out == 1
    # a threshold no pair passes: a clear error, nothing written
    with pytest.raises(ValueError, match="triplet filter kept no pair"):
        finetune_editor(pairs, str(tmp_path / "none"), _config(base, clip_model=clip, clip_threshold=1e6, steps=1), progress=False)
    assert not (tmp_path / "none").exists()


def test_a_flux_kontext_base_goes_to_the_kontext_lora_trainer(pairs, tmp_path):
    from tiny_models import build_tiny_kontext

    kontext = build_tiny_kontext(str(tmp_path / "kontext"))
    with pytest.raises(ValueError, match="LoRA only"):
        finetune_editor(pairs, str(tmp_path / "full"), _config(kontext, steps=1), progress=False)
    finetune_editor(pairs, str(tmp_path / "lora"), _config(kontext, lora_rank=4, steps=1, batch_size=1, held_out=0, samples=0), progress=False)
    record = json.loads((tmp_path / "lora" / "unsafe2safe_finetune.json").read_text())
    assert record["use_with"]["diffusion"]["name"] == "kontext" and record["use_with"]["diffusion"]["lora"] == str(tmp_path / "lora")
