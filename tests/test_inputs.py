"""Bad and unusual inputs: every row gets a clear status of its own, one row out per row in, in order.

Everything runs the real lite transform (RetinaFace + PP-OCR + metadata) on real files built with
Pillow or by hand; nothing is mocked.
"""

import io
import struct

import numpy as np
import pytest
from imagegen import (
    astronaut,
    astronaut_landscape,
    call_rows,
    cell,
    encode,
    fits_float,
    gradient,
    make_dataset,
    pixels,
    png_bomb,
    png_chunks,
    reach_mask,
    run_map,
    tiff_exif,
)
from PIL import Image, ImageOps

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.inspection.base import box_iou
from hf_unsafe2safe.editing.lite import FALLBACK_CELLS, RegionEditor
from hf_unsafe2safe.editing.stage import RegionEdit, WholeImageFallback


@pytest.fixture(scope="module")
def anonymize():
    return Unsafe2Safe.from_preset("lite")


def _status(row) -> str:
    return row[C.ANONYMIZATION]["status"]


def _error(row) -> str:
    return row[C.ANONYMIZATION]["error"] or ""


def _labels(row) -> list[str]:
    return [region["label"] for region in row[C.PRIVACY_REGIONS]]


# ---- unreadable rows -----------------------------------------------------------------------------


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _bad_rows():
    """(id, image cell or bytes, expected status, a word the error must contain)."""
    face_jpeg = encode(astronaut(), "JPEG", quality=90)
    face_png = encode(astronaut(128), "PNG")
    return [
        ("good_first", encode(gradient(), "JPEG", quality=90), C.STATUS_PASSED, None),
        ("truncated_jpeg", face_jpeg[: len(face_jpeg) // 2], C.STATUS_INVALID, "truncated"),
        ("zero_bytes", b"", C.STATUS_INVALID, "empty"),
        ("not_an_image", b"hello", C.STATUS_INVALID, "not a readable image"),
        ("none", None, C.STATUS_INVALID, "missing"),
        ("truncated_png", face_png[: len(face_png) // 2], C.STATUS_INVALID, "truncated"),
        ("missing_file", {"bytes": None, "path": "/nonexistent/u2s-tests/photo.png"}, C.STATUS_INVALID, "No such file"),
        ("animated_gif", _animated_gif(), C.STATUS_INVALID, "frames"),
        ("good_last", encode(gradient(64, 48), "PNG"), C.STATUS_PASSED, None),
    ]


BAD_IDS = [r[0] for r in _bad_rows() if r[2] == C.STATUS_INVALID]


@pytest.fixture(scope="module")
def bad_run(anonymize):
    spec = _bad_rows()
    ds = make_dataset([r[1] for r in spec], id=[r[0] for r in spec])
    out, rows = run_map(anonymize, ds, batch_size=4)
    return spec, ds, out, {row["id"]: row for row in rows}, rows


def test_bad_inputs_do_not_stop_the_run_and_keep_one_row_each_in_order(anonymize, bad_run):
    spec, ds, out, _, rows = bad_run
    assert len(out) == len(spec)
    assert [row["id"] for row in rows] == [r[0] for r in spec]
    assert out.features == anonymize.output_features(ds.features)
    assert [_status(row) for row in rows] == [r[2] for r in spec]


@pytest.mark.parametrize("row_id", BAD_IDS)
def test_bad_input_is_invalid_with_an_explanation(bad_run, row_id):
    spec, _, _, by_id, _ = bad_run
    keyword = next(r[3] for r in spec if r[0] == row_id)
    row = by_id[row_id]
    assert _status(row) == C.STATUS_INVALID
    assert row["image"] is None  # nothing unreadable is published
    assert keyword.lower() in _error(row).lower(), _error(row)
    assert row[C.PRIVACY_FLAG] is True  # fail closed: an image we could not inspect counts as flagged
    assert row[C.ANONYMIZATION]["editor"] == "none"
    assert row[C.ANONYMIZATION]["caption_source"] == C.CAPTION_NONE
    assert row[C.PRIVACY_REGIONS] == [] and row[C.PRIVATE_CAPTION] is None and row[C.PUBLIC_CAPTION] is None


def test_good_rows_around_bad_ones_keep_their_bytes(bad_run):
    spec, _, _, by_id, _ = bad_run
    for row_id in ("good_first", "good_last"):
        source = next(r[1] for r in spec if r[0] == row_id)
        assert _status(by_id[row_id]) == C.STATUS_PASSED
        assert by_id[row_id]["image"]["bytes"] == source
        assert by_id[row_id][C.ANONYMIZATION]["error"] is None


def test_every_kind_of_image_cell_is_read(anonymize, tmp_path):
    """Raw bytes, {"bytes"}, {"path"}, a plain path and a decoded PIL image all give the same safe row."""
    source = encode(gradient(), "PNG")
    path = tmp_path / "safe.png"
    path.write_bytes(source)
    decoded = Image.open(io.BytesIO(source))
    decoded.load()
    rows = call_rows(anonymize, [source, cell(source), {"bytes": None, "path": str(path)}, str(path), decoded])
    assert [_status(r) for r in rows] == [C.STATUS_PASSED] * 5
    for row in rows[:4]:
        assert row["image"]["bytes"] == source
    # a decoded image lost its file: it comes back as a lossless PNG of the same pixels
    assert np.array_equal(pixels(rows[4]["image"]["bytes"]), pixels(source))
    assert len({r[C.ANONYMIZATION]["seed"] for r in rows[:4]}) == 1  # same file, same seed


def test_a_cell_with_neither_bytes_nor_path_is_invalid(anonymize):
    (row,) = call_rows(anonymize, [{"bytes": None, "path": None}])
    assert _status(row) == C.STATUS_INVALID and row["image"] is None
    assert "neither bytes nor path" in _error(row)


# ---- decompression bombs -------------------------------------------------------------------------


def test_decompression_bomb_is_refused_before_decoding(anonymize):
    bomb = png_bomb(20_000, 20_000)  # 400 megapixels declared, under 100 KB on disk
    assert len(bomb) < 100_000
    chunks = png_chunks(bomb)  # a well-formed PNG, not garbage
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">II", chunks[0][1][:8]) == (20_000, 20_000)
    (row,) = call_rows(anonymize, [cell(bomb)])
    assert _status(row) == C.STATUS_INVALID and row["image"] is None
    assert "bomb" in _error(row).lower() or "pixels" in _error(row).lower(), _error(row)


def test_image_above_max_image_pixels_is_refused(anonymize):
    # 100 megapixels: under Pillow's own hard limit, above the default max_image_pixels (89,478,485)
    big = png_bomb(10_000, 10_000)
    assert anonymize.config.max_image_pixels < 10_000 * 10_000
    ds = make_dataset([big, encode(gradient(), "PNG")], id=["big", "small"])
    _, rows = run_map(anonymize, ds)
    assert [_status(r) for r in rows] == [C.STATUS_INVALID, C.STATUS_PASSED]
    assert rows[0]["image"] is None
    assert "pixels" in _error(rows[0]) and "max_image_pixels" in _error(rows[0]), _error(rows[0])


def test_max_image_pixels_override_is_honoured_at_the_boundary():
    strict = Unsafe2Safe.from_preset("lite", max_image_pixels=64 * 64)
    at_limit, over = encode(gradient(64, 64), "PNG"), encode(gradient(65, 64), "PNG")
    rows = call_rows(strict, [cell(at_limit), cell(over)])
    assert _status(rows[0]) == C.STATUS_PASSED and rows[0]["image"]["bytes"] == at_limit
    assert _status(rows[1]) == C.STATUS_INVALID and rows[1]["image"] is None
    assert "pixels" in _error(rows[1]) and str(64 * 64) in _error(rows[1]), _error(rows[1])


# ---- unusual but valid images --------------------------------------------------------------------


def _gray16() -> Image.Image:
    ramp = np.linspace(0, 65535, 96, dtype=np.float64)[None, :] * np.linspace(0.2, 1.0, 64)[:, None]
    img = Image.fromarray(np.round(ramp).astype(np.uint16))
    assert img.mode == "I;16"
    return img


def _palette_with_transparency() -> bytes:
    pal = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return encode(pal, "PNG", transparency=0)


def _rgba() -> Image.Image:
    img = gradient().convert("RGBA")
    img.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))))
    return img


UNUSUAL = {
    "cmyk_jpeg": lambda: encode(gradient().convert("CMYK"), "JPEG", quality=90),
    "gray16_png": lambda: encode(_gray16(), "PNG"),
    "palette_png_with_transparency": _palette_with_transparency,
    "one_pixel_png": lambda: encode(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG"),
    "one_pixel_jpeg": lambda: encode(Image.new("RGB", (1, 1), (200, 30, 40)), "JPEG"),
    "rgba_png": lambda: encode(_rgba(), "PNG"),
    "gray_jpeg": lambda: encode(gradient().convert("L"), "JPEG", quality=90),
    "gray_alpha_png": lambda: encode(_rgba().convert("LA"), "PNG"),
    "bilevel_png": lambda: encode(gradient().convert("1"), "PNG"),
    "one_pixel_wide_png": lambda: encode(gradient(1, 256), "PNG"),
    "one_pixel_high_png": lambda: encode(gradient(256, 1), "PNG"),
    "lzw_tiff": lambda: encode(gradient(), "TIFF", compression="tiff_lzw"),
    "bmp": lambda: encode(gradient(), "BMP"),
    "single_frame_gif": lambda: encode(gradient().convert("P"), "GIF"),
}


@pytest.fixture(scope="module")
def unusual_run(anonymize):
    blobs = {name: build() for name, build in UNUSUAL.items()}
    ds = make_dataset(list(blobs.values()), id=list(blobs))
    _, rows = run_map(anonymize, ds, batch_size=4)
    return blobs, {row["id"]: row for row in rows}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_image_is_processed_at_its_size(unusual_run, name):
    blobs, by_id = unusual_run
    source = blobs[name]
    row = by_id[name]
    with Image.open(io.BytesIO(source)) as src:
        src_format, src_mode, src_size = src.format, src.mode, src.size
    assert _status(row) in (C.STATUS_PASSED, C.STATUS_EDITED), _error(row)
    assert row[C.ANONYMIZATION]["error"] is None
    data = row["image"]["bytes"]
    with Image.open(io.BytesIO(data)) as out:
        out.load()  # decodes completely
        assert out.size == src_size
        assert out.format == src_format
    if _status(row) == C.STATUS_PASSED:
        # nothing found: the source file itself (these carry no metadata), so the same mode and pixels
        assert data == source
        assert np.array_equal(pixels(data), pixels(source)) and Image.open(io.BytesIO(data)).mode == src_mode
    else:
        assert row[C.PRIVACY_REGIONS], "edited without a region"


# ---- faces ---------------------------------------------------------------------------------------


def test_exif_rotated_face_is_found_and_the_output_is_upright(anonymize):
    display = astronaut_landscape()  # 240 x 180 as it should be shown
    stored = display.transpose(Image.Transpose.ROTATE_90)  # stored sideways (180 x 240) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with the tag that says "rotate 90 degrees clockwise to show"
    rotated = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(rotated)) as probe:
        assert probe.size == (180, 240) and ImageOps.exif_transpose(probe).size == (240, 180)
    upright = encode(display, "PNG")
    rot_row, up_row = call_rows(anonymize, [cell(rotated), cell(upright)])

    assert rot_row[C.PRIVACY_FLAG] is True and _status(rot_row) == C.STATUS_EDITED
    assert "face" in _labels(rot_row) and "people" in rot_row[C.PRIVACY_CATEGORIES]
    # regions are in display coordinates: the same place as in the upright copy
    rot_face = next(r["box"] for r in rot_row[C.PRIVACY_REGIONS] if r["label"] == "face")
    up_face = next(r["box"] for r in up_row[C.PRIVACY_REGIONS] if r["label"] == "face")
    assert box_iou(rot_face, up_face) > 0.5, (rot_face, up_face)

    data = rot_row["image"]["bytes"]
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "JPEG"
        assert out.size == (240, 180)  # stored upright now ...
        assert out.getexif().get(0x0112, 1) == 1  # ... and no tag rotates it again
        assert ImageOps.exif_transpose(out).size == (240, 180)
    before = np.asarray(display, dtype=np.float64)
    after = pixels(data).astype(np.float64)
    x0, y0, x1, y1 = rot_face
    assert np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean() > 15  # the face was rewritten
    outside = ~reach_mask(before.shape, rot_row[C.PRIVACY_REGIONS], anonymize.config.editor)
    assert np.abs(after - before)[outside].mean() < 3  # the rest only went through JPEG again
    (again,) = call_rows(anonymize, [cell(data)])
    assert "face" not in _labels(again)  # the detector no longer finds a face in the output


def test_flagged_face_is_changed_inside_and_exact_outside_its_regions(anonymize):
    source = encode(astronaut(256), "PNG")
    (row,) = call_rows(anonymize, [cell(source)])
    assert row[C.PRIVACY_FLAG] is True and _status(row) == C.STATUS_EDITED
    assert row[C.ANONYMIZATION]["editor"] == "lite"
    assert "face" in _labels(row)
    data = row["image"]["bytes"]
    assert data != source
    with Image.open(io.BytesIO(data)) as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGB", (256, 256))  # lossless, as the source
    before, after = pixels(source), pixels(data)
    for region in row[C.PRIVACY_REGIONS]:
        if region["label"] == "face":
            x0, y0, x1, y1 = region["box"]
            changed = np.any(after[y0:y1, x0:x1] != before[y0:y1, x0:x1], axis=-1)
            assert changed.mean() > 0.8, f"only {changed.mean():.0%} of the face box changed"
    reach = reach_mask(before.shape, row[C.PRIVACY_REGIONS], anonymize.config.editor)
    assert reach.mean() < 0.5  # the check below covers most of the image
    assert np.array_equal(after[~reach], before[~reach])  # every pixel out of reach is the source's
    (again,) = call_rows(anonymize, [cell(data)])
    assert "face" not in _labels(again)


def test_mixed_batch_good_corrupt_face_in_one_batch(anonymize):
    face = encode(astronaut(200), "PNG")
    good = encode(gradient(), "JPEG", quality=90)
    corrupt = encode(astronaut(200), "JPEG")[:700]
    ds = make_dataset([good, corrupt, face], id=["good", "corrupt", "face"])
    out, rows = run_map(anonymize, ds, batch_size=4)  # all three in one batch
    assert len(out) == 3 and [r["id"] for r in rows] == ["good", "corrupt", "face"]
    assert [_status(r) for r in rows] == [C.STATUS_PASSED, C.STATUS_INVALID, C.STATUS_EDITED]
    assert [r[C.PRIVACY_FLAG] for r in rows] == [False, True, True]
    assert rows[0]["image"]["bytes"] == good
    assert rows[1]["image"] is None and _error(rows[1])
    assert "face" in _labels(rows[2]) and rows[2]["image"]["bytes"] != face


# ---- shape of the dataset ------------------------------------------------------------------------


def test_empty_batch_gives_every_added_column_empty(anonymize):
    out = anonymize({"image": []})
    assert out["image"] == []
    for name in C.ADDED_COLUMNS:
        assert out[name] == [], name


def test_empty_dataset_maps_to_zero_rows_with_the_output_features(anonymize):
    """datasets.map returns a 0-row dataset unchanged without calling the function; anonymize_dataset
    (the documented whole-dataset helper) gives it the output schema."""
    import datasets

    from hf_unsafe2safe import anonymize_dataset

    ds = datasets.Dataset.from_dict({"image": [], "id": []}, features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}))
    out = anonymize_dataset(ds, anonymize)
    assert len(out) == 0
    expected = anonymize.output_features(ds.features)
    assert set(out.column_names) == set(expected)
    for name in C.ADDED_COLUMNS:
        assert out.features[name] == expected[name], name


def test_missing_image_column_is_a_key_error_naming_it(anonymize):
    ds = make_dataset([encode(gradient(), "PNG")]).rename_column("image", "picture")
    with pytest.raises(KeyError, match="'image'.*picture"):
        anonymize.prepare(ds)
    with pytest.raises(KeyError, match="'image'.*picture"):
        anonymize.output_features(ds.features)
    with pytest.raises(KeyError, match="'image'.*picture"):
        anonymize({"picture": [cell(encode(gradient(), "PNG"))]})


# ---- failing closed ------------------------------------------------------------------------------


def _float_face() -> np.ndarray:
    return np.asarray(astronaut(200).convert("L"), dtype=np.float32) / 255.0


class _FailingEditor(RegionEditor):
    """A real lite editor whose region edit (and optionally its fallback) raises: fault injection."""

    def __init__(self, config, fail_fallback: bool):
        super().__init__(config)
        self.fail_fallback = fail_fallback

    def edit(self, pixels, regions):
        raise RuntimeError("editor crashed")

    def fallback(self, pixels):
        if self.fail_fallback:
            raise MemoryError("fallback crashed too")
        return super().fallback(pixels)


class _FaultyPipeline(Unsafe2Safe):
    """The lite pipeline with a failing editor plugged in through the public build_component hook."""

    fail_fallback = False

    def build_component(self, name, rank=None):
        if name == "region_editor":
            return RegionEdit(_FailingEditor(self.config.editor, self.fail_fallback))
        if name == "fallback":
            return WholeImageFallback(_FailingEditor(self.config.editor, self.fail_fallback))
        return super().build_component(name, rank)


def test_flagged_image_whose_edit_fails_gets_the_whole_image_fallback():
    source = encode(astronaut(200), "PNG")
    (row,) = call_rows(_FaultyPipeline(), [cell(source)])
    assert _status(row) == C.STATUS_FALLBACK and row[C.PRIVACY_FLAG] is True
    assert "region edit failed" in _error(row) and "editor crashed" in _error(row)
    before, after = pixels(source).astype(np.float64), pixels(row["image"]["bytes"]).astype(np.float64)
    assert before.shape == after.shape
    assert np.abs(before - after).mean() > 10  # the whole image changed, not only the face
    cell_px = int(np.ceil(max(before.shape[:2]) / FALLBACK_CELLS))
    assert np.all(after[:cell_px, :cell_px] == after[0, 0])  # pixelated into big cells


def test_flagged_image_is_emptied_when_even_the_fallback_fails():
    pipeline = _FaultyPipeline()
    pipeline.fail_fallback = True
    face, plain = encode(astronaut(200), "PNG"), encode(gradient(64, 48), "PNG")
    rows = call_rows(pipeline, [cell(face), cell(plain)])
    assert _status(rows[0]) == C.STATUS_FAILED and rows[0]["image"] is None
    assert "fallback crashed too" in _error(rows[0])
    assert _status(rows[1]) == C.STATUS_PASSED and rows[1]["image"]["bytes"] == plain  # the batch goes on


def test_float_image_with_a_face_is_edited_not_dropped(anonymize):
    (row,) = call_rows(anonymize, [cell(fits_float(_float_face()))])
    assert _status(row) == C.STATUS_EDITED, _error(row)
    assert row["image"] is not None


def _exif_with_mistyped_tag() -> bytes:
    """EXIF Orientation 6 plus XResolution stored as ASCII instead of RATIONAL (a firmware-style mistake)."""
    return b"Exif\x00\x00" + tiff_exif([(0x0112, 3, 1, bytes([6, 0, 0, 0])), (0x011A, 2, 4, b"72\x00\x00")])


def test_rotated_jpeg_with_malformed_exif_does_not_abort_the_batch(anonymize):
    odd = encode(gradient(), "JPEG", quality=90, exif=_exif_with_mistyped_tag())
    with Image.open(io.BytesIO(odd)) as probe:  # Pillow opens and decodes it fine
        probe.load()
        assert probe.getexif()[0x0112] == 6
    good, face = encode(gradient(64, 48), "PNG"), encode(astronaut(200), "PNG")
    ds = make_dataset([good, odd, face], id=["good", "odd", "face"])
    _, rows = run_map(anonymize, ds)
    assert [r["id"] for r in rows] == ["good", "odd", "face"]
    assert _status(rows[0]) == C.STATUS_PASSED and _status(rows[2]) == C.STATUS_EDITED
    assert _status(rows[1]) in C.STATUSES
    if rows[1]["image"] is not None:  # displayed upright (96 x 128), like any viewer shows the source
        with Image.open(io.BytesIO(rows[1]["image"]["bytes"])) as out:
            assert ImageOps.exif_transpose(out).size == (96, 128)
