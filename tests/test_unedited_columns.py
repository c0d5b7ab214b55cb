"""Image columns besides `image_column` are never published unedited without being named: Unsafe2Safe edits one image
column, so a second one (a thumbnail, a gallery, a crop) is refused unless it is removed or declared safe."""

import datasets
import numpy as np
import pytest
from conftest import encode

from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.cli import main


def _two_images(astronaut, second="thumb", nested=False):
    photo, _ = astronaut
    face = encode(photo, "PNG")
    mask = encode(np.zeros((8, 8), np.uint8), "PNG")
    feature = [datasets.Image()] if nested else datasets.Image()
    cell = [{"bytes": face, "path": None}] if nested else {"bytes": face if second == "thumb" else mask, "path": None}
    features = datasets.Features({"image": datasets.Image(), second: feature, "label": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": [{"bytes": face, "path": None}], second: [cell], "label": ["x"]}, features=features)


def test_a_second_image_column_is_refused_by_name(astronaut):
    ds = _two_images(astronaut)
    anonymize = Unsafe2Safe.from_preset("lite")
    with pytest.raises(ValueError, match=r"\['thumb'\].*published unedited.*remove_columns.*unedited_columns"):
        anonymize.prepare(ds)
    with pytest.raises(ValueError, match="thumb"):
        anonymize_dataset(ds, anonymize)


def test_images_nested_in_a_list_count(astronaut):
    ds = _two_images(astronaut, second="gallery", nested=True)
    with pytest.raises(ValueError, match="gallery"):
        Unsafe2Safe.from_preset("lite").prepare(ds)


def test_plain_map_without_prepare_refuses_too(astronaut):
    """`ds.map(anonymize)` on the decoded dataset: the other column arrives as PIL images and is refused."""
    ds = _two_images(astronaut)
    with pytest.raises(ValueError, match="thumb"):
        ds.map(Unsafe2Safe.from_preset("lite"), batched=True)


def test_a_column_declared_unedited_passes_through_byte_for_byte(astronaut):
    ds = _two_images(astronaut, second="mask")
    anonymize = Unsafe2Safe.from_preset("lite", unedited_columns=["mask"])
    out = anonymize_dataset(ds, anonymize).cast_column("mask", datasets.Image(decode=False)).cast_column("image", datasets.Image(decode=False))
    source = ds.cast_column("mask", datasets.Image(decode=False)).cast_column("image", datasets.Image(decode=False))
    assert out[0]["mask"]["bytes"] == source[0]["mask"]["bytes"]
    assert out[0][C.ANONYMIZATION]["status"] == C.STATUS_EDITED and out[0]["image"]["bytes"] != source[0]["image"]["bytes"]
    # and the plain map accepts it as well
    ds.map(anonymize, batched=True, features=anonymize.output_features(ds.features))


def test_unedited_columns_is_validated():
    with pytest.raises(ValueError, match="unedited_columns"):
        Unsafe2Safe.from_preset("lite", unedited_columns=["image"])
    with pytest.raises(ValueError, match="unedited_columns"):
        Unsafe2Safe.from_preset("lite", unedited_columns="mask")


def test_command_line_refuses_then_drops_or_keeps(astronaut, tmp_path, capsys):
    saved = tmp_path / "src"
    _two_images(astronaut).save_to_disk(str(saved))
    with pytest.raises(SystemExit, match=r"thumb.*--drop-columns"):
        main(["anonymize", str(saved), "--output", str(tmp_path / "a"), "--image-column", "image"])
    assert main(["anonymize", str(saved), "--output", str(tmp_path / "b"), "--drop-columns", "thumb"]) == 0
    dropped = datasets.load_from_disk(str(tmp_path / "b"))
    assert "thumb" not in dropped.column_names and dropped[0]["label"] == "x" and dropped[0][C.ANONYMIZATION]["status"] == C.STATUS_EDITED
    assert main(["anonymize", str(saved), "--output", str(tmp_path / "c"), "--image-column", "image", "--set", 'unedited_columns=["thumb"]']) == 0
    assert "thumb" in datasets.load_from_disk(str(tmp_path / "c")).column_names
    with pytest.raises(SystemExit, match="nope"):
        main(["anonymize", str(saved), "--output", str(tmp_path / "d"), "--drop-columns", "thumb,nope"])
