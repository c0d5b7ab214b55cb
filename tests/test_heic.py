"""HEIC/HEIF, the format phones save photos in: read through pillow-heif's Pillow plugin, inspected and edited like
any photo, and written as JPEG (PNG where it has transparency), so that a dataset's readers open every row with
plain Pillow. The files here are real HEIC files, written by pillow-heif's own encoder (libheif + x265)."""

import io
import subprocess
import sys

import numpy as np
import pytest
from imagegen import astronaut, call_rows, cell, gradient
from PIL import Image

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C

pillow_heif = pytest.importorskip("pillow_heif")


def heic(img: Image.Image, orientation: int = 1, gps: bool = False, **params) -> bytes:
    """``img`` saved as HEIC by pillow-heif, with an EXIF orientation and a GPS position when asked."""
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if gps:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2] = "N", (48.0, 8.0, 30.0)
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, format="HEIF", quality=92, exif=exif.tobytes(), **params)
    data = buf.getvalue()
    assert data[4:12] == b"ftypheic"
    return data


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def python(code: str, *args: str) -> str:
    """What a fresh Python prints running ``code`` with ``args`` (the test fails on a non-zero exit)."""
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def lite():
    return Unsafe2Safe.from_preset("lite")


def test_a_phone_photo_with_a_face_and_a_gps_position_is_edited_and_written_as_jpeg_without_them(lite):
    source = heic(astronaut(512), gps=True)
    (row,) = call_rows(lite, [cell(source)])
    assert row[C.ANONYMIZATION]["status"] == C.STATUS_EDITED
    assert "people" in row[C.PRIVACY_CATEGORIES] and "location_time" in row[C.PRIVACY_CATEGORIES]
    assert "exif:GPSInfo" in row[C.METADATA_REMOVED]
    out = row["image"]["bytes"]
    assert out[:2] == b"\xff\xd8"  # JPEG
    safe = opened(out)
    assert safe.format == "JPEG" and safe.size == (512, 512) and not safe.getexif().get_ifd(0x8825)
    before = np.asarray(opened(source).convert("RGB"))
    face = next(r["box"] for r in row[C.PRIVACY_REGIONS] if r["category"] == "people")
    x0, y0, x1, y1 = face
    assert psnr(np.asarray(safe)[y0:y1, x0:x1], before[y0:y1, x0:x1]) < 25  # the face was edited
    assert psnr(np.asarray(safe)[:120, :120], before[:120, :120]) > 35  # elsewhere (the flag) the same photo


def test_a_phone_photo_with_nothing_to_edit_passes_as_a_jpeg_of_the_same_pixels(lite):
    source = heic(gradient(320, 240))
    (row,) = call_rows(lite, [cell(source)])
    assert row[C.ANONYMIZATION]["status"] == C.STATUS_PASSED and row[C.METADATA_REMOVED] == ["reencoded"]
    out = opened(row["image"]["bytes"])
    assert out.format == "JPEG" and out.size == (320, 240)
    assert psnr(np.asarray(out), np.asarray(opened(source).convert("RGB"))) > 40


def test_a_rotated_phone_photo_is_seen_and_written_upright_once(lite):
    """pillow-heif stores the EXIF orientation as the file's own rotation (irot) and applies it when it decodes,
    setting the EXIF tag to 1: lite must not rotate a second time."""
    source = heic(astronaut(256).resize((320, 240)), orientation=6)
    shown = opened(source)
    assert shown.size == (240, 320) and shown.getexif().get(0x0112, 1) == 1  # what the plugin does
    (row,) = call_rows(lite, [cell(source)])
    out = opened(row["image"]["bytes"])
    assert out.size == (240, 320) and out.getexif().get(0x0112, 1) == 1


def test_a_phone_image_with_transparency_is_written_as_png_keeping_it(lite):
    rgba = gradient(160, 120).convert("RGBA")
    alpha = np.full((120, 160), 255, np.uint8)
    alpha[:, :40] = 0
    rgba.putalpha(Image.fromarray(alpha))
    (row,) = call_rows(lite, [cell(heic(rgba))])
    out = opened(row["image"]["bytes"])
    assert out.format == "PNG" and out.mode == "RGBA"
    assert (np.asarray(out)[:, :40, 3] == 0).all() and (np.asarray(out)[:, 60:, 3] == 255).all()


def test_a_folder_of_phone_photos_is_anonymized_and_every_row_opens_with_plain_pillow(tmp_path):
    """The command line on a folder of .HEIC and .heif files beside a JPEG: no invalid_input row, and the saved
    dataset decodes in a fresh Python that has not registered the HEIF plugin."""
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(heic(astronaut(400), gps=True))
    (folder / "IMG_0002.heif").write_bytes(heic(gradient(300, 200)))
    astronaut(300).save(folder / "IMG_0003.jpg", quality=92)
    out = tmp_path / "safe"
    python("import sys; from hf_unsafe2safe.cli import main; sys.exit(main(sys.argv[1:]))", "anonymize", str(folder), "--output", str(out))
    check = (
        "import sys, datasets\n"
        "ds = datasets.load_from_disk(sys.argv[1])['train']\n"
        "assert 'pillow_heif' not in sys.modules\n"
        "print([(row['image'].format, row['image'].size, row['anonymization']['status']) for row in ds])\n"
    )
    assert python(check, str(out)).strip() == "[('JPEG', (400, 400), 'edited'), ('JPEG', (300, 200), 'passed'), ('JPEG', (300, 300), 'edited')]"


def test_the_plugin_is_imported_only_when_a_heic_file_comes():
    """A run without HEIC files does not pay for pillow-heif's import; the first one registers the plugin."""
    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from hf_unsafe2safe.utils.images import decode\n"
        "buf = io.BytesIO(); Image.new('RGB', (32, 24), (200, 10, 10)).save(buf, 'JPEG')\n"
        "decode(buf.getvalue(), 10**8)\n"
        "print('pillow_heif' in sys.modules)\n"
        "decode(open(sys.argv[1], 'rb').read(), 10**8)\n"
        "print('pillow_heif' in sys.modules)\n"
    )

    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".heic") as f:
        f.write(heic(gradient(64, 48)))
        f.flush()
        assert python(code, f.name).split() == ["False", "True"]


def test_a_phone_photo_counts_its_pixels_in_the_batch_memory_bound():
    """`max_batch_pixels` groups rows by their header's size; a HEIC row counted as 0 pixels would let a batch of
    12-MP phone photos be decoded all at once."""
    from hf_unsafe2safe.transform import header_pixels

    assert header_pixels(heic(gradient(320, 240))) == 320 * 240


def test_without_the_extra_a_phone_photo_is_an_invalid_row_that_names_it(tmp_path):
    """In a Python where pillow-heif cannot be imported (``sys.modules`` entry None, as for a missing package), a
    HEIC row is `invalid_input`, its image emptied, with an error that says what to install."""
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic(astronaut(200)))
    code = (
        "import sys\n"
        "sys.modules['pillow_heif'] = None\n"
        "from hf_unsafe2safe import Unsafe2Safe\n"
        "out = Unsafe2Safe.from_preset('lite')({'image': [{'bytes': open(sys.argv[1], 'rb').read(), 'path': None}]})\n"
        "print(out['anonymization'][0]['status'], '|', out['anonymization'][0]['error'], '|', out['image'][0])\n"
    )
    status, error, image = (part.strip() for part in python(code, str(path)).split("|"))
    assert status == C.STATUS_INVALID and image == "None"
    assert error == "HEIC/HEIF image: reading it needs the `heic` extra (pip install 'hf_unsafe2safe[heic]', pillow-heif)"


def test_a_broken_phone_photo_says_it_is_unreadable_not_that_the_extra_is_missing(lite):
    """With pillow-heif installed, a HEIC header with no image behind it and a file cut in half are unreadable
    rows whose error says why (what libheif reports), never a call to install what is installed."""
    whole = heic(gradient(100, 80))
    rows = call_rows(lite, [cell(b"\x00\x00\x00\x18ftypheic" + bytes(64)), cell(whole[: len(whole) // 2])])
    errors = [row[C.ANONYMIZATION]["error"] for row in rows]
    assert [row[C.ANONYMIZATION]["status"] for row in rows] == [C.STATUS_INVALID] * 2
    assert errors[0].startswith("not a readable image") and "Unexpected end of file" in errors[1]
    assert not any("extra" in e for e in errors)
