"""Builders of small, real test images (as file bytes) and parsers of the containers they come in.

Plain functions, no fixtures and no mocks: the tests import them with ``from imagegen import ...``
(pytest puts ``tests/`` on ``sys.path``, as for ``conftest``).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# ---- images ------------------------------------------------------------------------------------


def encode(img, fmt: str = "PNG", **params) -> bytes:
    """The bytes of ``img`` (PIL image or numpy array) saved by Pillow as ``fmt``."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def gradient(width: int = 128, height: int = 96) -> Image.Image:
    """A smooth RGB ramp: no face, no text, no edge a detector could take for either."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([x / max(1, width - 1) * 200 + 20, y / max(1, height - 1) * 200 + 20, (x + y) / max(1, width + height - 2) * 150 + 60], -1)
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def astronaut(size: int = 256) -> Image.Image:
    """skimage's astronaut photo (Eileen Collins: one real, frontal face), resized to ``size`` x ``size``."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)


def astronaut_landscape() -> Image.Image:
    """A 240 x 180 (wider than tall) crop of the astronaut photo around her face."""
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((40, 0, 440, 300)).resize((240, 180), Image.Resampling.LANCZOS)


def pixels(data: bytes) -> np.ndarray:
    """The decoded pixels of an image file, as stored (no EXIF rotation), in the file's own mode."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img).copy()


# ---- running the transform the way users do -------------------------------------------------------


def cell(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


def make_dataset(blobs, **columns):
    """A ``datasets.Dataset`` whose ``image`` column holds these files.

    Each item is file bytes, ``None`` (a missing image) or a ready ``{"bytes", "path"}`` cell.
    """
    import datasets

    cells = [b if isinstance(b, dict) else cell(b) for b in blobs]
    features = datasets.Features({"image": datasets.Image(), **{name: datasets.Value("string") for name in columns}})
    return datasets.Dataset.from_dict({"image": cells, **columns}, features=features)


def run_map(anonymize, ds, batch_size: int = 4):
    """``prepare`` + ``map`` as documented; returns the mapped dataset and its rows (image as file bytes)."""
    import datasets

    out = anonymize.prepare(ds).map(anonymize, batched=True, batch_size=batch_size, features=anonymize.output_features(ds.features))
    rows = out.cast_column("image", datasets.Image(decode=False)).to_list()
    return out, rows


def call_rows(anonymize, cells) -> list[dict]:
    """Call the transform on one batch of image cells and return the output as one dict per row."""
    out = anonymize({"image": list(cells)})
    return [{key: values[i] for key, values in out.items()} for i in range(len(cells))]


# ---- hand-built files Pillow will not write ---------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of ``width`` x ``height``: tens of KB on disk, huge once decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * min(500, height - y)) for y in range(0, height, 500)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def insert_png_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """``data`` with one more chunk right after IHDR."""
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    return data[:ihdr_end] + _png_chunk(kind, body) + data[ihdr_end:]


def tiff_exif(entries, extra: bytes = b"") -> bytes:
    """Raw little-endian TIFF EXIF with one IFD of ``(tag, type, count, 4-byte value field)`` entries.

    ``extra`` is appended after the IFD (at offset 8 + 2 + 12 * len(entries) + 4) for out-of-line values.
    """
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in sorted(entries):
        out += struct.pack("<HHI", tag, typ, count) + value
    return out + struct.pack("<I", 0) + extra


def fits_float(array: np.ndarray) -> bytes:
    """A FITS file (BITPIX -32) that Pillow reads as a mode "F" image equal to ``array``.

    FITS stores the bottom row first, so the rows are written flipped.
    """
    h, w = array.shape
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2", f"NAXIS1  = {w:>20}", f"NAXIS2  = {h:>20}", "END"]
    header = "".join(card.ljust(80) for card in cards).encode("ascii")
    header = header.ljust(2880 * -(-len(header) // 2880), b" ")
    body = np.ascontiguousarray(array[::-1], dtype=">f4").tobytes()
    return header + body.ljust(2880 * -(-len(body) // 2880), b"\x00")


# ---- container parsers (independent of the library's own) ------------------------------------------

SOS, EOI, COM, APP1, APP2, APP13, APP14 = 0xDA, 0xD9, 0xFE, 0xE1, 0xE2, 0xED, 0xEE
CODING_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xC4, 0xDB, 0xDD}


def jpeg_header(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The segments before the first SOS as ``(marker, whole segment)``, and the offset of that SOS."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    pos, segments = 2, []
    while True:
        assert data[pos] == 0xFF, f"marker expected at {pos}"
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == SOS:
            return segments, pos
        segments.append((marker, data[pos : pos + 2 + length]))
        pos += 2 + length


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", "not a WebP"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8, "RIFF size does not match the file"
    pos, chunks = 12, []
    while pos + 8 <= len(data):
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks.append((data[pos : pos + 4], data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


# ---- where the editor may have touched pixels -------------------------------------------------------


def reach_mask(shape, regions, editor_config, margin: int = 3) -> np.ndarray:
    """True wherever a region edit may reach: each box grown by ``dilation``, then ``feather`` + ``margin`` px."""
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    for region in regions:
        x0, y0, x1, y1 = region["box"]
        dx = int(np.ceil((x1 - x0) * editor_config.dilation)) + editor_config.feather + margin
        dy = int(np.ceil((y1 - y0) * editor_config.dilation)) + editor_config.feather + margin
        mask[max(0, y0 - dy) : min(h, y1 + dy), max(0, x0 - dx) : min(w, x1 + dx)] = True
    return mask


def assert_rewritten_only_inside_regions(source: bytes, out: dict, row: int, editor_config, min_inside: float = 5.0) -> None:
    """Row ``row`` of a transform output: pixels outside its regions' blend mask equal the source exactly, and
    pixels fully inside moved by more than ``min_inside`` grey levels on average (a diffusion edit composited)."""
    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.editing.compositing import region_mask
    from hf_unsafe2safe.inspection.base import Region

    before = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), np.int16)
    after = np.asarray(Image.open(io.BytesIO(out["image"][row]["bytes"])).convert("RGB"), np.int16)
    assert before.shape == after.shape
    regions = [Region(r["label"], r["category"], tuple(r["box"]), r["score"], r["source"]) for r in out[C.PRIVACY_REGIONS][row]]
    weight = region_mask((before.shape[1], before.shape[0]), regions, editor_config.dilation, editor_config.feather)
    assert weight.max() == 1
    assert np.array_equal(before[weight == 0], after[weight == 0])  # outside the regions: the source, exactly
    assert np.abs(before[weight == 1] - after[weight == 1]).mean() > min_inside  # inside: rewritten
