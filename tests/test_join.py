"""join_chunks writes finished chunks in the layout of datasets' own save_to_disk, checked against save_to_disk."""

import io
import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image as PILImage

from hf_unsafe2safe.pipeline import _keep_chunk, join_chunks


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunks(tmp_path, rows: int, per_chunk: int, extra_paths: list[str] | None = None):
    """Chunk folders as anonymize_to_disk leaves them: map's own Arrow files, moved by _keep_chunk."""
    features = datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64"), "mask": datasets.Image()})
    data = {
        "image": [{"bytes": _png(i), "path": None} for i in range(rows)],
        "n": list(range(rows)),
        "mask": [{"bytes": None, "path": p} for p in extra_paths] if extra_paths else [None] * rows,
    }
    source = datasets.Dataset.from_dict(data, features=features, split="train")
    folders, mapped = [], []
    for c in range(0, rows, per_chunk):
        part = source.select(range(c, min(rows, c + per_chunk)))
        cache = tmp_path / "cache" / f"{c}.arrow"
        cache.parent.mkdir(exist_ok=True)
        result = part.map(lambda b: {"n": [v * 10 for v in b["n"]]}, batched=True, batch_size=3, writer_batch_size=2,
                          cache_file_name=str(cache), load_from_cache_file=False)
        raw = result.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
        mapped.append(datasets.Dataset.from_dict(raw.to_dict(), features=raw.features).cast(result.features))
        folder = tmp_path / f"chunk-{c:06d}"
        _keep_chunk(result, str(folder))
        folders.append(str(folder))
    expected = datasets.concatenate_datasets(mapped)
    expected.reset_format()  # concatenate_datasets lists the columns as the format's; a dataset as map returns it has none
    return source, folders, expected


def test_layout_and_rows_equal_save_to_disk(tmp_path):
    source, folders, expected = _chunks(tmp_path, rows=11, per_chunk=4)
    reference = tmp_path / "reference"
    expected.save_to_disk(str(reference))

    out = tmp_path / "joined"
    join_chunks(folders, source.info.copy(), source.split, "fp", str(out))
    loaded = datasets.load_from_disk(str(out))
    assert loaded.to_dict() == datasets.load_from_disk(str(reference)).to_dict()
    assert loaded.features == expected.features and loaded.split == "train"
    mine = json.loads((out / "state.json").read_text())
    theirs = json.loads((reference / "state.json").read_text())
    assert sorted(mine) == sorted(theirs)
    for key in ("_format_columns", "_format_kwargs", "_format_type", "_output_all_columns"):
        assert mine[key] == theirs[key]
    assert mine["_split"] == "train" and mine["_fingerprint"] == "fp"
    assert json.loads((out / "dataset_info.json").read_text())["features"] == json.loads((reference / "dataset_info.json").read_text())["features"]


def test_shards_roll_over_and_keep_order(tmp_path):
    source, folders, expected = _chunks(tmp_path, rows=9, per_chunk=5)
    out = tmp_path / "joined"
    join_chunks(folders, source.info.copy(), None, "fp", str(out), max_shard_bytes=1)  # a new shard per record batch
    files = sorted(f for f in os.listdir(out) if f.endswith(".arrow"))
    batches = []
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            with pa.OSFile(os.path.join(folder, name)) as f:
                batches += [b.num_rows for b in pa.ipc.open_stream(f)]
    assert len(batches) > 2
    assert files == [f"data-{k:05d}-of-{len(batches):05d}.arrow" for k in range(len(batches))]
    assert datasets.load_from_disk(str(out)).to_dict() == expected.to_dict()


def test_no_chunks_is_an_empty_dataset_with_the_schema(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64")})
    out = tmp_path / "empty"
    join_chunks([], datasets.DatasetInfo(features=features), "test", "fp", str(out))
    loaded = datasets.load_from_disk(str(out))
    assert len(loaded) == 0 and loaded.features == features and loaded.split == "test"


def test_local_files_are_embedded_like_save_to_disk(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"mask{i}.png"
        p.write_bytes(_png(100 + i))
        paths.append(str(p))
    source, folders, expected = _chunks(tmp_path, rows=4, per_chunk=2, extra_paths=paths)
    # map kept the path-only cells as paths: the moved chunk files point at the source files
    assert datasets.Dataset.from_file(os.path.join(folders[0], os.listdir(folders[0])[0])).cast_column("mask", datasets.Image(decode=False))[0]["mask"]["bytes"] is None
    reference, out = tmp_path / "reference", tmp_path / "joined"
    expected.save_to_disk(str(reference))
    join_chunks(folders, source.info.copy(), None, "fp", str(out))
    for p in paths:
        os.remove(p)
    cells = lambda d: datasets.load_from_disk(str(d)).cast_column("mask", datasets.Image(decode=False))["mask"]  # noqa: E731
    ours, theirs = cells(out), cells(reference)
    assert [c["bytes"] for c in ours] == [c["bytes"] for c in theirs] == [_png(100 + i) for i in range(4)]


@pytest.mark.parametrize("names", [["train", "test"]])
def test_anonymize_to_disk_dict_output_loads_like_save_to_disk(tmp_path, names):
    """A DatasetDict: dataset_dict.json names the splits in order, as DatasetDict.save_to_disk writes it."""
    from hf_unsafe2safe import Unsafe2Safe, anonymize_to_disk

    features = datasets.Features({"image": datasets.Image()})
    dd = datasets.DatasetDict({n: datasets.Dataset.from_dict({"image": [{"bytes": _png(i + k), "path": None} for i in range(3 - k * 3)]}, features=features, split=n) for k, n in enumerate(names)})
    out = tmp_path / "safe"
    safe = anonymize_to_disk(dd, Unsafe2Safe.from_preset("lite", inspector={"faces": False, "text": False}), str(out), chunk_rows=2)
    reference = tmp_path / "reference"
    datasets.DatasetDict({n: datasets.Dataset.from_dict(safe[n].to_dict(), features=safe[n].features) for n in names}).save_to_disk(str(reference))
    assert json.loads((out / "dataset_dict.json").read_text()) == json.loads((reference / "dataset_dict.json").read_text())
    assert list(safe) == names and len(safe["train"]) == 3 and len(safe["test"]) == 0
    assert safe["test"].features == safe["train"].features
