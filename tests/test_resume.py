"""anonymize_to_disk: chunks saved as they finish, a rerun after a crash resumes, other settings never mix in."""

import datasets
import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import anonymize_to_disk


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    from hf_unsafe2safe import demo

    face = data.astronaut()[::2, ::2]
    blobs = [encode(face), encode(demo.letter(), "PNG"), encode(data.coffee()), encode(np.fliplr(face).copy()), encode(data.chelsea())]
    return image_dataset(blobs, name=[f"row{i}" for i in range(len(blobs))])


class _CrashAfter(Unsafe2Safe):
    """The lite transform that dies (like a killed process) once it has done ``limit`` batches: fault injection."""

    limit = 2
    calls = 0

    def __call__(self, batch, rank=None):
        if type(self).calls >= self.limit:
            raise KeyboardInterrupt("simulated crash")
        type(self).calls += 1
        return super().__call__(batch, rank)


class _Counting(Unsafe2Safe):
    rows = 0

    def __call__(self, batch, rank=None):
        type(self).rows += len(batch["image"])
        return super().__call__(batch, rank)


def _bytes(ds):
    return list(ds.cast_column("image", datasets.Image(decode=False)))


def test_a_rerun_after_a_crash_does_only_the_missing_chunks(photos, tmp_path):
    straight = anonymize_to_disk(photos, Unsafe2Safe.from_preset("lite"), str(tmp_path / "straight"), batch_size=1, chunk_rows=2)
    assert not (tmp_path / "straight.parts").exists() and len(straight) == 5

    out = str(tmp_path / "safe")
    with pytest.raises(KeyboardInterrupt):
        anonymize_to_disk(photos, _CrashAfter.from_preset("lite"), out, batch_size=1, chunk_rows=2)
    done = sorted(p.name for p in (tmp_path / "safe.parts" / "_").iterdir())
    assert done[0] == "chunk-000000" and "chunk-000001" not in done  # chunk 0 whole, chunk 1 died in flight
    assert not (tmp_path / "safe").exists()  # the output appears only once complete

    resumed = anonymize_to_disk(photos, _Counting.from_preset("lite"), out, batch_size=1, chunk_rows=2)
    assert _Counting.rows == 3  # chunks 1 and 2 only
    assert _bytes(resumed) == _bytes(straight)  # the same rows, order and bytes as an uninterrupted run
    assert not (tmp_path / "safe.parts").exists()


def test_parts_of_other_settings_are_never_mixed_in(photos, tmp_path):
    out = str(tmp_path / "safe")
    with pytest.raises(KeyboardInterrupt):
        anonymize_to_disk(photos, _CrashAfter.from_preset("lite"), out, batch_size=1, chunk_rows=2)
    _Counting.rows = 0
    other = anonymize_to_disk(photos, _Counting.from_preset("lite", seed=7), out, batch_size=1, chunk_rows=2)
    assert _Counting.rows == 5  # another seed: every chunk redone
    assert all(a["seed"] != -1 for a in other["anonymization"])
    reference = anonymize_to_disk(photos, Unsafe2Safe.from_preset("lite", seed=7), str(tmp_path / "ref"), batch_size=1, chunk_rows=5)
    assert _bytes(other) == _bytes(reference)  # chunking changes nothing either


def test_a_dataset_dict_with_an_empty_split(photos, tmp_path):
    dd = datasets.DatasetDict({"train": photos, "test": photos.select([])})
    safe = anonymize_to_disk(dd, Unsafe2Safe.from_preset("lite"), str(tmp_path / "safe"), chunk_rows=3)
    assert sorted(safe) == ["test", "train"] and len(safe["train"]) == 5 and len(safe["test"]) == 0
    assert safe["test"].features == safe["train"].features


def _folder(root, n):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 16), (i * 4 % 256, 90, 200 - i)).save(root / f"img_{i:03d}.png")
    return root


def _metadata_only(cls):
    return cls.from_preset("lite", inspector={"faces": False, "text": False})  # fast; resume does not depend on detectors


def _crash(source, out, chunk_rows, batches):
    _CrashAfter.calls, _CrashAfter.limit = 0, batches
    try:
        with pytest.raises(KeyboardInterrupt):
            anonymize_to_disk(source, _metadata_only(_CrashAfter), out, batch_size=chunk_rows, chunk_rows=chunk_rows)
    finally:
        _CrashAfter.limit = 2


def test_another_chunk_size_starts_over_instead_of_mixing(tmp_path, caplog):
    from hf_unsafe2safe.sources import load_source

    source = load_source(str(_folder(tmp_path / "photos", 60)), split="train")
    out = str(tmp_path / "safe")
    _crash(source, out, chunk_rows=10, batches=3)  # chunks 0-2 of 10 rows saved
    assert len(list((tmp_path / "safe.parts" / "_").iterdir())) == 3
    with caplog.at_level("WARNING", logger="hf_unsafe2safe.pipeline"):
        safe = anonymize_to_disk(source, _metadata_only(Unsafe2Safe), out, chunk_rows=25)
    assert len(safe) == 60
    assert any("--chunk-rows" in r.getMessage() for r in caplog.records)
    reference = anonymize_to_disk(source, _metadata_only(Unsafe2Safe), str(tmp_path / "ref"), chunk_rows=60)
    assert _bytes(safe) == _bytes(reference)


def test_a_resume_says_how_many_chunks_it_reused(tmp_path, caplog):
    from hf_unsafe2safe.sources import load_source

    source = load_source(str(_folder(tmp_path / "photos", 30)), split="train")
    out = str(tmp_path / "safe")
    _crash(source, out, chunk_rows=10, batches=2)
    with caplog.at_level("WARNING", logger="hf_unsafe2safe.pipeline"):
        safe = anonymize_to_disk(source, _metadata_only(Unsafe2Safe), out, batch_size=10, chunk_rows=10)
    assert len(safe) == 30 and any("resuming: 2 of 3 chunks" in r.getMessage() for r in caplog.records)


def test_a_changed_folder_starts_over_instead_of_mixing(tmp_path, caplog):
    from hf_unsafe2safe.sources import folder_manifest, load_source

    root = _folder(tmp_path / "photos", 60)
    out = str(tmp_path / "safe")
    _crash(load_source(str(root), split="train"), out, chunk_rows=10, batches=3)
    for i in (3, 17, 25, 40, 59):  # five source images deleted before the rerun
        (root / f"img_{i:03d}.png").unlink()
    current = load_source(str(root), split="train")
    with caplog.at_level("WARNING", logger="hf_unsafe2safe.pipeline"):
        safe = anonymize_to_disk(current, _metadata_only(Unsafe2Safe), out, chunk_rows=10)
    assert any("input data" in r.getMessage() for r in caplog.records)
    assert len(safe) == 55
    # every output row is the anonymized version of the file now at that position, read straight from disk
    from PIL import Image
    import io

    for rel, row in zip(folder_manifest(current, root), _bytes(safe)):
        expected = np.asarray(Image.open(root / rel).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")), expected)


def test_an_edited_file_changes_the_key(tmp_path):
    import os

    from hf_unsafe2safe.pipeline import resume_key
    from hf_unsafe2safe.sources import load_source

    root = _folder(tmp_path / "photos", 3)
    anonymize = _metadata_only(Unsafe2Safe)
    before = resume_key(load_source(str(root), split="train"), anonymize, 10)
    assert resume_key(load_source(str(root), split="train"), anonymize, 10) == before  # stable when nothing changed
    st = os.stat(root / "img_001.png")
    os.utime(root / "img_001.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert resume_key(load_source(str(root), split="train"), anonymize, 10)["input"] != before["input"]


def test_chunks_written_by_several_map_workers_join_in_row_order(photos, tmp_path):
    """Each chunk keeps the Arrow files map wrote (one per worker with num_proc); the joined output equals what a
    plain datasets.map over the whole dataset gives, row for row, and loads with load_from_disk."""
    anonymize = Unsafe2Safe.from_preset("lite")
    prepared = anonymize.prepare(photos)
    reference = prepared.map(anonymize, batched=True, batch_size=1, features=anonymize.output_features(photos.features))
    out = str(tmp_path / "safe")
    anonymize_to_disk(photos, anonymize, out, batch_size=1, num_proc=2, chunk_rows=3)
    assert _bytes(datasets.load_from_disk(out)) == _bytes(reference)


def test_time_left_in_words():
    from hf_unsafe2safe.pipeline import time_left

    assert time_left(10.0, 0, 100) is None and time_left(10.0, 100, 100) is None
    assert time_left(10.0, 50, 100) == "under a minute"
    assert time_left(60.0, 10, 100) == "9 min"
    assert time_left(2000.0, 2000, 100_000) == "27 h 13 min"


def test_each_chunk_title_says_how_long_the_whole_run_still_needs(photos, tmp_path):
    """A 100k-photo folder runs 50 chunks, each with its own bar: from the second one on, the title tells the time
    left in all. As a user sees it: the command in a fresh process, its progress bars on stderr (this test process
    runs with TQDM_DISABLE, which tqdm reads once, at import)."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, row in enumerate(photos.cast_column("image", datasets.Image(decode=False))):
        data = row["image"]["bytes"]
        suffix = "png" if data.startswith(b"\x89PNG") else "jpg"
        (folder / f"{i}.{suffix}").write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    run = subprocess.run([sys.executable, "-m", "hf_unsafe2safe.cli", "anonymize", str(folder), "--output", str(tmp_path / "safe"), "--chunk-rows", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    titles = [line.split(":")[0] for line in run.stderr.replace("\r", "\n").splitlines() if " chunk " in line]
    first = [t for t in titles if "chunk 1/3" in t]
    later = [t for t in titles if "chunk 2/3" in t or "chunk 3/3" in t]
    assert first and all("left in all" not in t for t in first), titles
    assert later and all("left in all" in t for t in later), titles
