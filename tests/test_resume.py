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
