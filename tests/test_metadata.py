"""Identifying metadata is removed losslessly: container segments go, pixel data is never re-encoded.

Files are built with Pillow (and a few hand-made segments), run through the real lite transform or the
strippers in ``hf_unsafe2safe.utils.metadata``, and checked with independent container parsers.
"""

import io
import struct

import numpy as np
import pytest
from imagegen import (
    APP1,
    APP2,
    APP13,
    APP14,
    CODING_MARKERS,
    COM,
    astronaut,
    call_rows,
    cell,
    encode,
    gradient,
    insert_png_chunk,
    jpeg_header,
    make_dataset,
    pixels,
    png_chunks,
    run_map,
    webp_chunks,
)
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.utils.metadata import MetadataError, strip_jpeg

ORIENTATION, ARTIST, MAKE, MODEL, GPS_IFD, EXIF_IFD, BODY_SERIAL = 0x0112, 0x013B, 0x010F, 0x0110, 0x8825, 0x8769, 0xA431

XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    b"<dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
    b'<?xpacket end="w"?>'
)
# strings that identify the photographer, the camera or the place, and must not survive in any output byte
SECRETS = (b"Jane Doe", b"SN123", b"dc:creator")


@pytest.fixture(scope="module")
def anonymize():
    return Unsafe2Safe.from_preset("lite")


def identifying_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ARTIST] = "Jane Doe"
    exif[MAKE] = "Canon"
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    exif.get_ifd(EXIF_IFD)[BODY_SERIAL] = "SN123"
    return exif


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _row(rows):
    (row,) = rows
    return row


def _status(row) -> str:
    return row[C.ANONYMIZATION]["status"]


# ---- JPEG -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gps_jpeg():
    icc = srgb_icc()
    data = encode(gradient(), "JPEG", quality=90, exif=identifying_exif().tobytes(), xmp=XMP, icc_profile=icc)
    # Pillow really wrote every piece
    with Image.open(io.BytesIO(data)) as img:
        exif = img.getexif()
        assert exif[ARTIST] == "Jane Doe" and exif.get_ifd(GPS_IFD)[1] == "N"
        assert exif.get_ifd(EXIF_IFD)[BODY_SERIAL] == "SN123"
        assert b"Jane Doe" in (img.info["xmp"] if isinstance(img.info["xmp"], bytes) else img.info["xmp"].encode())
        assert img.info["icc_profile"] == icc
    return data, icc


@pytest.fixture(scope="module")
def gps_jpeg_row(anonymize, gps_jpeg):
    data, _ = gps_jpeg
    _, rows = run_map(anonymize, make_dataset([data], id=["gps"]))
    return _row(rows)


def test_identifying_metadata_alone_flags_a_safe_image(gps_jpeg_row):
    row = gps_jpeg_row
    assert row[C.PRIVACY_FLAG] is True
    assert _status(row) == C.STATUS_EDITED
    assert row[C.ANONYMIZATION]["editor"] == "metadata-strip"
    assert row[C.ANONYMIZATION]["error"] is None
    assert row[C.PRIVACY_REGIONS] == []  # nothing in the pixels
    assert {"location_time", "private_belongings"} <= set(row[C.PRIVACY_CATEGORIES])
    review = " ".join(item["item"] for item in row[C.PRIVACY_REVIEW])
    assert "GPS" in review and "BodySerialNumber" in review and "Artist" in review
    assert {"exif:GPSInfo", "exif:BodySerialNumber", "exif:Artist", "exif:Make", "xmp"} <= set(row[C.METADATA_REMOVED])


def test_identifying_metadata_is_gone_from_the_output(gps_jpeg_row, gps_jpeg):
    _, icc = gps_jpeg
    out = gps_jpeg_row["image"]["bytes"]
    for secret in SECRETS:
        assert secret not in out, secret
    with Image.open(io.BytesIO(out)) as img:
        exif = img.getexif()
        assert not exif.get_ifd(GPS_IFD) and GPS_IFD not in exif
        assert ARTIST not in exif and MAKE not in exif and not exif.get_ifd(EXIF_IFD)
        assert "xmp" not in img.info and "XML:com.adobe.xmp" not in img.info
        assert img.info.get("icc_profile") == icc  # colour management is not identifying: kept
    markers = [marker for marker, _ in jpeg_header(out)[0]]
    assert APP1 not in markers


def test_jpeg_metadata_removal_is_lossless(gps_jpeg_row, gps_jpeg):
    source, _ = gps_jpeg
    out = gps_jpeg_row["image"]["bytes"]
    assert len(out) < len(source)
    assert np.array_equal(pixels(out), pixels(source))
    src_segments, src_sos = jpeg_header(source)
    out_segments, out_sos = jpeg_header(out)
    # every coding segment (quantisation, Huffman tables, frame header) byte for byte, in order
    assert [s for s in out_segments if s[0] in CODING_MARKERS] == [s for s in src_segments if s[0] in CODING_MARKERS]
    # and the scan (entropy-coded data up to EOI) is the same bytes: nothing was re-encoded
    assert out[out_sos:] == source[src_sos:]
    assert source.endswith(out[out_sos:])


def test_rotated_jpeg_keeps_its_orientation_through_pass_through(anonymize):
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    source = encode(gradient(), "JPEG", quality=90, exif=exif.tobytes())
    row = _row(call_rows(anonymize, [cell(source)]))
    assert _status(row) == C.STATUS_PASSED and row[C.PRIVACY_FLAG] is False
    assert row[C.METADATA_REMOVED] == []
    out = row["image"]["bytes"]
    with Image.open(io.BytesIO(out)) as img:
        assert img.getexif()[ORIENTATION] == 6
        assert ImageOps.exif_transpose(img).size == (96, 128)  # still shown upright
    assert np.array_equal(pixels(out), pixels(source))
    assert out[jpeg_header(out)[1] :] == source[jpeg_header(source)[1] :]


@pytest.mark.parametrize("fmt, params", [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_orientation_is_written_back_when_the_rest_of_the_exif_goes(anonymize, fmt, params):
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[ARTIST] = "Jane Doe"
    source = encode(gradient(), fmt, exif=exif.tobytes(), **params)
    row = _row(call_rows(anonymize, [cell(source)]))
    assert _status(row) == C.STATUS_EDITED and row[C.ANONYMIZATION]["editor"] == "metadata-strip"
    assert "exif:Artist" in row[C.METADATA_REMOVED]
    out = row["image"]["bytes"]
    assert b"Jane Doe" not in out
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == fmt
        assert dict(img.getexif()) == {ORIENTATION: 6}
        assert ImageOps.exif_transpose(img).size == (96, 128)
    assert np.array_equal(pixels(out), pixels(source))


@pytest.mark.parametrize(
    "fmt, params", [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80})]
)
def test_plain_safe_image_passes_through_byte_identical(anonymize, fmt, params):
    source = encode(gradient(), fmt, **params)
    _, rows = run_map(anonymize, make_dataset([source]))
    row = _row(rows)
    assert _status(row) == C.STATUS_PASSED and row[C.PRIVACY_FLAG] is False
    assert row[C.METADATA_REMOVED] == []
    assert row["image"]["bytes"] == source


@pytest.mark.parametrize("compression", ["raw", "tiff_deflate"])
def test_plain_safe_tiff_passes_through_byte_identical(anonymize, compression):
    source = encode(gradient(), "TIFF", compression=compression)
    row = _row(call_rows(anonymize, [cell(source)]))
    assert _status(row) == C.STATUS_PASSED  # holds today
    assert np.array_equal(pixels(row["image"]["bytes"]), pixels(source))  # holds today
    assert row[C.METADATA_REMOVED] == []
    assert row["image"]["bytes"] == source


def test_a_flagged_face_photo_loses_its_metadata_too(anonymize):
    source = encode(astronaut(256), "JPEG", quality=92, exif=identifying_exif().tobytes(), xmp=XMP)
    row = _row(call_rows(anonymize, [cell(source)]))
    assert _status(row) == C.STATUS_EDITED and row[C.ANONYMIZATION]["editor"] == "lite"  # pixels rewritten
    assert {"people", "location_time", "private_belongings"} <= set(row[C.PRIVACY_CATEGORIES])
    assert {"exif:GPSInfo", "exif:BodySerialNumber", "exif:Artist", "xmp"} <= set(row[C.METADATA_REMOVED])
    out = row["image"]["bytes"]
    for secret in SECRETS:
        assert secret not in out, secret
    with Image.open(io.BytesIO(out)) as img:
        assert not img.getexif() and "xmp" not in img.info


# ---- PNG ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_png():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "shot at 12 Elm Street")
    info.add_text("Description", "a compressed description", zip=True)  # zTXt
    info.add_itxt("Software", "PhotoTool 3", lang="en")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    exif = Image.Exif()
    exif[MAKE] = "Canon"
    exif[MODEL] = "EOS 5D"
    data = encode(gradient(), "PNG", pnginfo=info, exif=exif.tobytes())
    data = insert_png_chunk(data, b"tIME", struct.pack(">HBBBBB", 2024, 5, 17, 10, 30, 0))
    kinds = [kind for kind, _ in png_chunks(data)]
    assert {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"} <= set(kinds)
    return data


def test_png_text_and_exif_chunks_are_removed_losslessly(anonymize, text_png):
    row = _row(call_rows(anonymize, [cell(text_png)]))
    # the XMP names its creator: that alone flags the image, and removing the metadata is the edit
    assert row[C.PRIVACY_FLAG] is True and _status(row) == C.STATUS_EDITED
    assert row[C.ANONYMIZATION]["editor"] == "metadata-strip" and row[C.PRIVACY_REGIONS] == []
    removed = set(row[C.METADATA_REMOVED])
    assert {"exif:Make", "exif:Model", "text:Comment", "text:Description", "text:Software", "xmp"} <= removed
    out = row["image"]["bytes"]
    src_chunks, out_chunks = png_chunks(text_png), png_chunks(out)
    assert [kind for kind, _ in out_chunks] == [kind for kind, _ in src_chunks if kind in (b"IHDR", b"IDAT", b"IEND")]
    assert [c for c in out_chunks if c[0] == b"IDAT"] == [c for c in src_chunks if c[0] == b"IDAT"]
    assert b"Elm Street" not in out and b"Jane Doe" not in out and b"Canon" not in out
    with Image.open(io.BytesIO(out)) as img:
        assert not img.getexif() and not img.text
    assert np.array_equal(pixels(out), pixels(text_png))


# ---- WebP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"lossless": True}, {"quality": 80}], ids=["lossless", "lossy"])
def test_webp_exif_and_xmp_are_removed_losslessly(anonymize, params):
    source = encode(gradient(), "WEBP", exif=identifying_exif().tobytes(), xmp=XMP, **params)
    src_chunks = webp_chunks(source)
    assert {b"VP8X", b"EXIF", b"XMP "} <= {kind for kind, _ in src_chunks}
    row = _row(call_rows(anonymize, [cell(source)]))
    assert _status(row) == C.STATUS_EDITED and row[C.ANONYMIZATION]["editor"] == "metadata-strip"
    assert {"exif:GPSInfo", "exif:BodySerialNumber", "exif:Artist", "xmp"} <= set(row[C.METADATA_REMOVED])
    out = row["image"]["bytes"]
    for secret in SECRETS:
        assert secret not in out, secret
    out_chunks = webp_chunks(out)  # also checks the RIFF size
    kinds = [kind for kind, _ in out_chunks]
    assert b"EXIF" not in kinds and b"XMP " not in kinds
    vp8x = dict(out_chunks).get(b"VP8X")
    if vp8x is not None:
        assert vp8x[0] & 0x0C == 0  # the EXIF and XMP flags are cleared
    bitstream = [c for c in src_chunks if c[0] in (b"VP8 ", b"VP8L", b"ALPH")]
    assert [c for c in out_chunks if c[0] in (b"VP8 ", b"VP8L", b"ALPH")] == bitstream  # not re-encoded
    with Image.open(io.BytesIO(out)) as img:
        assert not img.getexif() and "xmp" not in img.info
    assert np.array_equal(pixels(out), pixels(source))


# ---- strip_jpeg on its own ------------------------------------------------------------------------


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _iptc_block() -> bytes:
    """A Photoshop APP13 payload holding one IPTC IIM record: 2:80 By-line = "Jane Doe"."""
    record = b"\x1c\x02\x50" + struct.pack(">H", 8) + b"Jane Doe"
    return b"Photoshop 3.0\x00" + b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(record)) + record


@pytest.fixture(scope="module")
def iptc_jpeg():
    icc = srgb_icc()
    base = encode(gradient(), "JPEG", quality=90, comment=b"taken by Jane Doe", icc_profile=icc)
    data = base[:2] + _segment(APP13, _iptc_block()) + base[2:] + b"MAKERTRAILER SN123 Jane Doe"
    with Image.open(io.BytesIO(data)) as img:  # Pillow sees every piece
        assert "photoshop" in img.info and img.info["comment"] == b"taken by Jane Doe"
    return data, base, icc


def test_strip_jpeg_drops_iptc_comment_and_trailer(iptc_jpeg):
    data, base, icc = iptc_jpeg
    out = strip_jpeg(data)
    segments, sos = jpeg_header(out)
    markers = [marker for marker, _ in segments]
    assert APP13 not in markers and COM not in markers and APP1 not in markers
    assert out.endswith(b"\xff\xd9") and b"MAKERTRAILER" not in out  # nothing after EOI
    for secret in SECRETS:
        assert secret not in out, secret
    # JFIF APP0 and the ICC profile stay, so do the coding segments; the scan is untouched
    assert markers[0] == 0xE0 and APP2 in markers
    src_segments, src_sos = jpeg_header(data)
    assert [s for s in segments if s[0] in CODING_MARKERS] == [s for s in src_segments if s[0] in CODING_MARKERS]
    assert out[sos:] == base[jpeg_header(base)[1] :]
    with Image.open(io.BytesIO(out)) as img:
        assert img.info.get("icc_profile") == icc
        assert "photoshop" not in img.info and "comment" not in img.info
    assert np.array_equal(pixels(out), pixels(data))


def test_iptc_and_comment_are_reported_by_the_transform(anonymize, iptc_jpeg):
    data, _, _ = iptc_jpeg
    row = _row(call_rows(anonymize, [cell(data)]))
    assert row[C.PRIVACY_FLAG] is True and _status(row) == C.STATUS_EDITED
    assert row[C.ANONYMIZATION]["editor"] == "metadata-strip"
    assert {"iptc", "comment"} <= set(row[C.METADATA_REMOVED])
    assert "private_belongings" in row[C.PRIVACY_CATEGORIES]
    assert row["image"]["bytes"] == strip_jpeg(data)


def test_strip_jpeg_keeps_a_progressive_jpeg_intact():
    exif = identifying_exif()
    data = encode(gradient(), "JPEG", quality=90, progressive=True, exif=exif.tobytes())
    out = strip_jpeg(data)
    assert data.count(b"\xff\xda") > 1  # several scans
    assert out.count(b"\xff\xda") == data.count(b"\xff\xda")
    assert APP1 not in [m for m, _ in jpeg_header(out)[0]]
    assert b"Jane Doe" not in out and b"SN123" not in out
    assert out[jpeg_header(out)[1] :] == data[jpeg_header(data)[1] :]  # every scan and table between them
    assert np.array_equal(pixels(out), pixels(data))


def test_strip_jpeg_keeps_adobe_segment_of_a_cmyk_jpeg():
    data = encode(gradient().convert("CMYK"), "JPEG", quality=90, exif=identifying_exif().tobytes())
    assert APP14 in [m for m, _ in jpeg_header(data)[0]]
    out = strip_jpeg(data)
    assert APP14 in [m for m, _ in jpeg_header(out)[0]] and APP1 not in [m for m, _ in jpeg_header(out)[0]]
    with Image.open(io.BytesIO(out)) as img:
        assert img.mode == "CMYK"
    assert np.array_equal(pixels(out), pixels(data))


def test_strip_jpeg_writes_only_the_orientation_back():
    data = encode(gradient(), "JPEG", quality=90, exif=identifying_exif().tobytes())
    out = strip_jpeg(data, orientation=8)
    with Image.open(io.BytesIO(out)) as img:
        assert dict(img.getexif()) == {ORIENTATION: 8}
    assert np.array_equal(pixels(out), pixels(data))


@pytest.mark.parametrize(
    "data, message",
    [(b"\x89PNG\r\n\x1a\n", "SOI"), (None, "truncated|end")],
    ids=["not_a_jpeg", "cut_in_the_scan"],
)
def test_strip_jpeg_refuses_what_it_cannot_parse(data, message):
    if data is None:
        whole = encode(gradient(), "JPEG", quality=90)
        data = whole[: len(whole) - 40]
    with pytest.raises(MetadataError, match=message):
        strip_jpeg(data)
