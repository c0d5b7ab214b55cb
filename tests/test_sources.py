"""Local folders as sources: every image file is a row, whatever it is called, checked against what the
`datasets` imagefolder builder itself does with the same folders."""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import encode

from hf_unsafe2safe import columns as C
from hf_unsafe2safe.cli import main
from hf_unsafe2safe.sources import folder_manifest, load_source

# names that imagefolder reads as split names (datasets.data_files: train/test/validation keywords)
SPLIT_LIKE = ["test_001.jpg", "my_train_photo.jpg", "valid-3.png", "eval.jpg", "dev_2.jpg", "testing_trip.jpg"]


def _tile(seed: int, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (*size, 3), dtype=np.uint8)


def _write(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    path.write_bytes(encode(_tile(seed), fmt))


@pytest.fixture()
def split_named_folder(tmp_path):
    """Plain names next to names that look like split names, flat."""
    root = tmp_path / "photos"
    for i, name in enumerate(["a.jpg", "b.jpg", *SPLIT_LIKE, "z.png"]):
        _write(root / name, i)
    return root


def test_imagefolder_turns_split_like_names_into_splits_and_loses_rows(split_named_folder):
    """What the issue reported, reproduced with datasets itself: our loader exists because of this."""
    ref = datasets.load_dataset("imagefolder", data_dir=str(split_named_folder))
    assert set(ref) != {"train"} and sum(len(part) for part in ref.values()) < 9  # e.g. 6 rows in 3 splits, a.jpg lost


def test_a_folder_is_one_split_with_one_row_per_image_file(split_named_folder):
    ds = load_source(str(split_named_folder))
    assert list(ds) == ["train"] and len(ds["train"]) == 9
    files = folder_manifest(ds["train"], split_named_folder)
    assert files == sorted(p.name for p in split_named_folder.iterdir())  # sorted relative path
    assert len(load_source(str(split_named_folder), split="train")) == 9
    with pytest.raises(ValueError, match="one split"):
        load_source(str(split_named_folder), split="test")


def test_labels_follow_imagefolders_own_rule(tmp_path):
    # same depth, two folder names: imagefolder adds `label`, and so do we, with the same values
    flat = tmp_path / "flat"
    for i, rel in enumerate(["cats/1.jpg", "cats/2.jpg", "dogs/3.jpg", "dogs/sub_is_not_a_split.jpg"]):
        _write(flat / rel, i)
    ours = load_source(str(flat), split="train")
    ref = datasets.load_dataset("imagefolder", data_dir=str(flat), split="train")
    assert ours.features["label"] == ref.features["label"]
    ref_paths = [Path(c["path"]).relative_to(flat).as_posix() for c in ref.cast_column("image", datasets.Image(decode=False))["image"]]
    assert sorted(zip(folder_manifest(ours, flat), ours["label"])) == sorted(zip(ref_paths, ref["label"]))

    # mixed depths: imagefolder adds no label, neither do we
    mixed = tmp_path / "mixed"
    for i, rel in enumerate(["top.jpg", "cats/1.jpg", "dogs/2.jpg"]):
        _write(mixed / rel, i)
    assert "label" not in datasets.load_dataset("imagefolder", data_dir=str(mixed), split="train").features
    assert "label" not in load_source(str(mixed), split="train").features

    # one folder name only: no label either way
    single = tmp_path / "single"
    for i, rel in enumerate(["cats/1.jpg", "cats/2.jpg"]):
        _write(single / rel, i)
    assert "label" not in datasets.load_dataset("imagefolder", data_dir=str(single), split="train").features
    assert "label" not in load_source(str(single), split="train").features


def test_metadata_files_add_their_columns_as_imagefolder_does(tmp_path):
    root = tmp_path / "meta"
    entries = []
    for i, name in enumerate(["x1.jpg", "x2.jpg", "x3.jpg"]):
        _write(root / name, i)
        entries.append({"file_name": name, "labels": ["a0_safe"] if i else ["a1_face"], "score": i * 1.5})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(e) for e in entries))
    ours = load_source(str(root), split="train")
    ref = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    assert ours.features["labels"] == ref.features["labels"] and ours.features["score"] == ref.features["score"]
    assert ours["labels"] == ref["labels"] and ours["score"] == ref["score"]
    assert "label" not in ours.features

    # an image without an entry: imagefolder drops it; here it is a row with empty metadata
    _write(root / "x4.jpg", 9)
    assert len(datasets.load_dataset("imagefolder", data_dir=str(root), split="train")) == 3
    more = load_source(str(root), split="train")
    assert len(more) == 4 and more["labels"][3] is None


def test_unreadable_image_files_become_invalid_rows_and_other_files_one_warning(tmp_path, lite, caplog):
    root = tmp_path / "odd"
    _write(root / "ok.jpg", 1)
    (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # a HEIC header and no image in it
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.png").write_bytes(encode(_tile(2), "PNG")[:60])
    (root / "notes.txt").write_text("hello")
    (root / "clip.mov").write_bytes(b"\x00" * 10)
    with caplog.at_level(logging.WARNING, logger="hf_unsafe2safe.sources"):
        ds = load_source(str(root), split="train")
    warnings = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert len(warnings) == 1 and "clip.mov" in warnings[0] and "notes.txt" in warnings[0]
    assert folder_manifest(ds, root) == ["cut.png", "empty.jpg", "ok.jpg", "phone.heic"]
    from hf_unsafe2safe import anonymize_dataset

    safe = anonymize_dataset(ds, lite)
    statuses = [a["status"] for a in safe[C.ANONYMIZATION]]
    assert statuses == [C.STATUS_INVALID, C.STATUS_INVALID, C.STATUS_PASSED, C.STATUS_INVALID]
    errors = [a["error"] for a in safe[C.ANONYMIZATION]]
    assert str(root) not in " ".join(e or "" for e in errors)  # no file name in the rows


def test_cli_on_a_folder_with_split_like_names_and_sub_folders(tmp_path, capsys):
    root = tmp_path / "trip"
    names = [*SPLIT_LIKE, "train/kids_at_beach.jpg", "test/x.jpg", "validation/deep/y.png", "plain.jpg"]
    for i, rel in enumerate(names):
        _write(root / rel, i)
    out = tmp_path / "safe"
    assert main(["anonymize", str(root), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"rows            {len(names)}" in printed and "unsafe2safe_files.json" in printed
    safe = datasets.load_from_disk(str(out))
    assert list(safe) == ["train"] and len(safe["train"]) == len(names)
    manifest = json.loads((out / "unsafe2safe_files.json").read_text())
    assert manifest["splits"]["train"] == sorted(names)
    run = json.loads((out / "unsafe2safe_run.json").read_text())
    assert run["summary"]["train"]["rows"] == len(names)
