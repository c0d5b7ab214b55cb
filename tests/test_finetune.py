"""Fine-tuning an InstructPix2Pix editor on the pairs of an anonymization run (tiny random-weight pipeline saved
and loaded through `from_pretrained`; real lite anonymization of real photos as the data)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import datasets  # noqa: E402
from conftest import encode, image_dataset  # noqa: E402
from tiny_models import build_tiny_instruct_pix2pix  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.training.finetune import FinetuneConfig, finetune_editor, training_rows  # noqa: E402


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


def _config(base, **kw):
    return FinetuneConfig(**{"base": base, "resolution": 32, "steps": 30, "batch_size": 4, "learning_rate": 2e-3, "held_out": 2, "log_every": 10, **kw})


def test_fine_tuning_lowers_the_held_out_loss_and_the_result_edits(pairs, base, tmp_path):
    from hf_unsafe2safe.config import DiffusionEditorConfig
    from hf_unsafe2safe.editing.diffusion import InstructPix2PixEditor

    out = tmp_path / "tuned"
    result = finetune_editor(pairs, str(out), _config(base, dual_prompt=True), progress=False)
    assert result.rows + result.held_out == len(training_rows(pairs)) and result.held_out == 2
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    # the same held-out pairs, timesteps and noise before and after: training fitted the run's edits
    assert result.held_out_loss_after < result.held_out_loss_before
    record = json.loads((out / "unsafe2safe_finetune.json").read_text())
    assert record["use_with"]["diffusion"] == {"name": "instruct-pix2pix", "model": str(out), "dual_prompt": True}
    assert record["held_out_loss_after"] == result.held_out_loss_after and (out / "loss.png").stat().st_size > 0
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
