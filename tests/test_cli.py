"""The `unsafe2safe` command line on real files: image folders, save_to_disk directories, the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe import columns as C
from hf_unsafe2safe.cli import main


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An imagefolder with two labels: a real face photo, rendered text, and plain images."""
    from skimage import data

    from hf_unsafe2safe import demo

    root = tmp_path_factory.mktemp("folder")
    (root / "people").mkdir()
    (root / "things").mkdir()
    (root / "people" / "a_astronaut.jpg").write_bytes(encode(data.astronaut()))
    (root / "things" / "b_note.png").write_bytes(encode(demo.letter(), "PNG"))
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (90, 1, 3))
    (root / "things" / "c_plain.jpg").write_bytes(encode(gradient))
    return root


def test_anonymize_an_image_folder(image_folder, tmp_path, capsys):
    import datasets

    out_dir = tmp_path / "safe"
    assert main(["anonymize", str(image_folder), "--output", str(out_dir), "--split", "train", "--preview", str(tmp_path / "preview")]) == 0
    printed = capsys.readouterr().out
    assert "rows            3" in printed and "flagged         2" in printed and "people" in printed
    safe = datasets.load_from_disk(str(out_dir))
    source = datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="train")
    assert len(safe) == len(source)
    assert safe["label"] == source["label"]  # same rows in the same order
    assert [a["status"] for a in safe[C.ANONYMIZATION]] == [C.STATUS_EDITED, C.STATUS_EDITED, C.STATUS_PASSED]
    run = json.loads((out_dir / "unsafe2safe_run.json").read_text())
    assert run["config"]["preset"] == "lite" and run["summary"]["rows"] == 3
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\n") and "unsafe2safe-lite" in card and "| flagged as privacy-prone | 2 |" in card
    assert (tmp_path / "preview" / "preview.html").stat().st_size > 1000
    assert (tmp_path / "preview" / "preview.png").exists()


def test_anonymize_a_save_to_disk_directory_with_options(tmp_path, capsys):
    import datasets
    from skimage import data

    src = tmp_path / "src"
    image_dataset([encode(data.astronaut()[::2, ::2])], name=["x"]).rename_column("image", "photo").save_to_disk(str(src))
    out_dir = tmp_path / "safe"
    args = ["anonymize", str(src), "-o", str(out_dir), "--image-column", "photo", "--detectors", "faces",
            "--set", "editor.strength=medium", "--set", 'editor.methods={"people": "blur"}', "--seed", "4"]
    assert main(args) == 0
    safe = datasets.load_from_disk(str(out_dir))
    assert safe["name"] == ["x"]
    run = json.loads((out_dir / "unsafe2safe_run.json").read_text())
    assert run["config"]["inspector"]["text"] is False
    assert run["config"]["editor"]["methods"]["people"] == "blur"
    assert run["config"]["seed"] == 4
    # refuses to overwrite without --overwrite
    with pytest.raises(SystemExit, match="--overwrite"):
        main(args)
    assert main(args + ["--overwrite"]) == 0


def test_bad_options_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--detectors"):
        main(["demo", "--output", str(tmp_path), "--detectors", "faces,pets"])
    with pytest.raises(SystemExit, match="editor.strength"):
        main(["demo", "--output", str(tmp_path), "--set", "editor.strength=max"])
    with pytest.raises(SystemExit, match="neither"):
        empty = tmp_path / "empty"
        empty.mkdir()
        main(["anonymize", str(empty), "--output", str(tmp_path / "o")])


def test_demo_writes_dataset_and_preview(tmp_path, capsys):
    import datasets

    assert main(["demo", "--output", str(tmp_path)]) == 0
    safe = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert len(safe) == 9
    statuses = [a["status"] for a in safe[C.ANONYMIZATION]]
    assert statuses.count(C.STATUS_EDITED) >= 4 and C.STATUS_FAILED not in statuses
    assert (tmp_path / "preview.html").exists() and (tmp_path / "preview.png").exists()
    assert "preview" in capsys.readouterr().out


def test_entry_point_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "hf_unsafe2safe.cli", "anonymize", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--output", "--split", "--image-column", "--preset", "--batch-size", "--num-proc", "--seed", "--detectors", "--set", "--preview", "--overwrite", "--keep-original"):
        assert option in out


def test_torchrun_processes_each_take_a_shard_and_rank_0_joins_them(image_folder, tmp_path):
    """`torchrun -m hf_unsafe2safe.cli anonymize`: 2 CPU processes, one contiguous shard each, joined in order by
    rank 0 into the same dataset a single process writes (rows, order, bytes), one record, no shards left."""
    import os

    import datasets

    pytest.importorskip("accelerate")
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["anonymize", str(image_folder), "--split", "train", "--batch-size", "1"]
    assert main(args + ["--output", str(one)]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519", "-m", "hf_unsafe2safe.cli", *args, "--output", str(two)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved:") == 1  # rank 0 reports
    single = datasets.load_from_disk(str(one)).cast_column("image", datasets.Image(decode=False))
    joined = datasets.load_from_disk(str(two)).cast_column("image", datasets.Image(decode=False))
    assert joined.column_names == single.column_names and len(joined) == len(single) == 3
    assert list(joined) == list(single)
    assert (two / "unsafe2safe_run.json").exists() and not (tmp_path / "two.shards").exists()


def test_no_private_caption_is_left_beside_the_source(tmp_path):
    """datasets caches `map` results beside the source's own files (a save_to_disk folder) unless told otherwise;
    the CLI keeps them in its work folder and removes it."""
    import datasets

    from hf_unsafe2safe.demo import build_demo_dataset

    src = tmp_path / "src"
    build_demo_dataset().save_to_disk(str(src))
    before = sorted(p.name for p in src.rglob("*"))
    assert main(["anonymize", str(src), "--output", str(tmp_path / "safe"), "--chunk-rows", "4"]) == 0
    assert any('reading "' in (c or "") for c in datasets.load_from_disk(str(tmp_path / "safe"))[C.PRIVATE_CAPTION])
    assert sorted(p.name for p in src.rglob("*")) == before  # no cache-*.arrow written into the source
    assert not (tmp_path / "safe.parts").exists()


def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    """As a user meets them, in a fresh process: the exit status and the whole of stderr."""
    from hf_unsafe2safe.demo import build_demo_dataset
    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset

    src = tmp_path / "src"
    build_demo_dataset().select(range(2)).save_to_disk(str(src))
    import datasets

    datasets.DatasetDict({"train": datasets_load(src)}).save_to_disk(str(src) + "-dict")
    done = tmp_path / "done"
    anonymize_dataset(datasets_load(src), Unsafe2Safe.from_preset("lite")).save_to_disk(str(done))
    cases = {
        "could not load 'nobody/no-such-dataset'": ["anonymize", "nobody/no-such-dataset", "-o", str(tmp_path / "a")],
        "was it anonymized already": ["anonymize", str(done), "-o", str(tmp_path / "b")],
        "`editor.nope`": ["anonymize", str(src), "-o", str(tmp_path / "c"), "--set", "editor.nope=1"],
        "--batch-size: expected an int >= 1, got 0": ["anonymize", str(src), "-o", str(tmp_path / "d"), "--batch-size", "0"],
        "--num-proc: expected an int >= 1, got 0": ["anonymize", str(src), "-o", str(tmp_path / "e"), "--num-proc", "0"],
        "--chunk-rows: expected an int >= 1, got -3": ["anonymize", str(src), "-o", str(tmp_path / "f"), "--chunk-rows", "-3"],
        "has splits ['train']": ["anonymize", str(src) + "-dict", "-o", str(tmp_path / "g"), "--split", "test"],
    }
    for expected, args in cases.items():
        out = subprocess.run([sys.executable, "-m", "hf_unsafe2safe.cli", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr and expected in out.stderr, (args, out.stderr[-2000:])
        assert len([line for line in out.stderr.splitlines() if line.startswith("error")]) == 1 or "usage:" in out.stderr
    assert not any((tmp_path / name).exists() for name in "abcdefg")  # nothing written before the error


def datasets_load(path):
    import datasets

    return datasets.load_from_disk(str(path))


def test_the_collector_is_back_on_after_a_run_and_after_a_refused_one(image_folder, tmp_path):
    """`anonymize` turns Python's garbage collector off while it imports and loads, then freezes what it loaded: called
    in-process (a notebook, a script), it must hand the collector back on, also when the set-up stops with an error."""
    import gc

    with pytest.raises(SystemExit):
        main(["anonymize", str(tmp_path / "missing"), "--output", str(tmp_path / "a")])
    assert gc.isenabled()
    assert main(["anonymize", str(image_folder), "--output", str(tmp_path / "b")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()


def test_models_that_cannot_be_loaded_stop_the_command_in_one_line(tmp_path, caplog):
    """A broken install (here: a model file ONNX Runtime cannot read) stops `anonymize` before any row, with the
    error in one line, instead of a traceback or a run whose every row falls back."""
    import argparse
    import logging

    import onnxruntime as ort

    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe.cli import _load_models

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")

    class _BrokenInstall(Unsafe2Safe):
        def load(self, rank=None):
            ort.InferenceSession(str(broken), providers=["CPUExecutionProvider"])

    with caplog.at_level(logging.INFO), pytest.raises(SystemExit, match=r"^error: could not load the models of preset 'lite': .*\S") as stop:
        _load_models(_BrokenInstall.from_preset("lite"), argparse.Namespace(num_proc=1, preset="lite"))
    assert "\n" not in str(stop.value) and "loading the models failed" in caplog.text
