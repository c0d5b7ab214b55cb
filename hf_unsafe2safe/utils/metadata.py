"""Lossless removal of identifying metadata: container segments are dropped, pixel data is never re-encoded.

JPEG: APP1 (EXIF, XMP), APP3..APP13 (maker blocks, IPTC/Photoshop), APP15, COM and anything after the
first EOI (MPF/MPO secondary images, maker trailers) are dropped; APP0 (JFIF), APP2 ICC_PROFILE, APP14
(Adobe, needed to decode CMYK/YCCK) and every coding segment are kept byte for byte.
PNG: eXIf, tEXt, zTXt, iTXt (holds XMP) and tIME chunks are dropped.
WebP: EXIF and XMP chunks are dropped and the VP8X flags fixed.
When the image is stored rotated (EXIF Orientation != 1), a minimal EXIF holding only Orientation is
written back, so the image still displays the right way up.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

# EXIF tags worth naming in the report and in the privacy review
_IFD0_OWNER = {0x013B: "Artist", 0x8298: "Copyright", 0x9C9D: "XPAuthor"}
_EXIF_SERIAL = {0xA431: "BodySerialNumber", 0xA435: "LensSerialNumber", 0xA420: "ImageUniqueID"}
_EXIF_OWNER = {0xA430: "CameraOwnerName"}
_EXIF_TIME = {0x9003: "DateTimeOriginal", 0x9004: "DateTimeDigitized"}
_IFD0_TIME = {0x0132: "DateTime"}
_IFD0_DEVICE = {0x010F: "Make", 0x0110: "Model"}
_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112

# XMP properties that name people, places or devices
_XMP_IDENTIFYING = (
    b"dc:creator",
    b"photoshop:City",
    b"photoshop:State",
    b"photoshop:Country",
    b"Iptc4xmpCore:Location",
    b"Iptc4xmpExt:LocationShown",
    b"exif:GPSLatitude",
    b"xmpRights:Owner",
    b"aux:SerialNumber",
    b"exifEX:BodySerialNumber",
    b"photoshop:AuthorsPosition",
)


@dataclass
class MetadataFindings:
    """What identifying metadata a file carried, as detector labels and human-readable names."""

    labels: list[str] = field(default_factory=list)  # taxonomy labels, e.g. metadata:gps
    removed: list[str] = field(default_factory=list)  # what was removed, e.g. exif:GPSInfo, xmp, comment
    items: list[str] = field(default_factory=list)  # privacy-review items, e.g. "EXIF GPS position"


def read_findings(image) -> MetadataFindings:
    """Inspect a PIL image (opened, not necessarily loaded) for identifying metadata.

    Metadata that cannot be parsed is treated as identifying (fail closed); it is removed all the same.
    """
    try:
        return _read_findings(image)
    except Exception:  # noqa: BLE001 - malformed tags of any kind
        return MetadataFindings(
            labels=["metadata:unreadable"], removed=["metadata (unreadable)"], items=["file metadata that could not be parsed"]
        )


def _read_findings(image) -> MetadataFindings:
    found = MetadataFindings()
    exif = image.getexif()
    if exif:
        gps = exif.get_ifd(_GPS_IFD)
        if gps:
            found.labels.append("metadata:gps")
            found.items.append("GPS position stored in the file's EXIF")
            found.removed.append("exif:GPSInfo")
        sub = exif.get_ifd(_EXIF_IFD)
        serials = [name for tag, name in _EXIF_SERIAL.items() if sub.get(tag)]
        if serials:
            found.labels.append("metadata:device_serial")
            found.items.append("device identifiers in EXIF (" + ", ".join(serials) + ")")
            found.removed.extend(f"exif:{s}" for s in serials)
        owners = [name for tag, name in _IFD0_OWNER.items() if exif.get(tag)]
        owners += [name for tag, name in _EXIF_OWNER.items() if sub.get(tag)]
        if owners:
            found.labels.append("metadata:owner")
            found.items.append("author or owner named in EXIF (" + ", ".join(owners) + ")")
            found.removed.extend(f"exif:{o}" for o in owners)
        others = [name for tag, name in {**_IFD0_TIME, **_IFD0_DEVICE}.items() if exif.get(tag)]
        others += [name for tag, name in _EXIF_TIME.items() if sub.get(tag)]
        found.removed.extend(f"exif:{o}" for o in others)
        # a TIFF's IFD0 is its image structure, not metadata; elsewhere any other tag counts
        if image.format != "TIFF" and set(exif) - {_ORIENTATION} and not found.removed:
            found.removed.append("exif")
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if xmp:
        raw = xmp.encode() if isinstance(xmp, str) else bytes(xmp)
        found.removed.append("xmp")
        hits = [key.decode() for key in _XMP_IDENTIFYING if key in raw]
        if hits:
            found.labels.append("metadata:xmp_iptc")
            found.items.append("XMP metadata naming people, places or devices (" + ", ".join(hits) + ")")
    if "photoshop" in image.info or "iptc" in image.info:
        found.removed.append("iptc")
        found.labels.append("metadata:xmp_iptc")
        found.items.append("IPTC/Photoshop metadata block")
    if image.info.get("comment"):
        found.removed.append("comment")
    for key in ("Author", "Comment", "Description", "Title", "Software", "Creation Time", "Copyright"):
        if isinstance(image.info.get(key), str):
            found.removed.append(f"text:{key}")
    named = [key for key in ("Author", "Copyright") if isinstance(image.info.get(key), str)]
    if named:
        found.labels.append("metadata:owner")
        found.items.append("author or owner named in the file's text chunks (" + ", ".join(named) + ")")
    if found.labels:
        found.labels = list(dict.fromkeys(found.labels))
    return found


def orientation_exif(orientation: int) -> bytes:
    """TIFF-structured EXIF holding only the Orientation tag (no 'Exif\\0\\0' prefix)."""
    # little-endian TIFF header, one IFD with one SHORT entry, no next IFD
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack(
        "<HHIHH", _ORIENTATION, 3, 1, orientation, 0
    ) + struct.pack("<I", 0)


class MetadataError(ValueError):
    """The container could not be parsed for lossless metadata removal."""


def strip_jpeg(data: bytes, orientation: int = 1) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise MetadataError("not a JPEG (no SOI marker)")
    out = [b"\xff\xd8"]
    pos = 2
    n = len(data)
    wrote_orientation = orientation == 1
    while pos < n:
        if data[pos] != 0xFF:
            raise MetadataError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI: drop every trailer after it
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        if pos + 4 > n:
            raise MetadataError("JPEG segment header cut short")
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if end > n:
            raise MetadataError("JPEG segment runs past the end of the file")
        payload = data[pos + 4 : end]
        keep = True
        if marker == 0xE1 or 0xE3 <= marker <= 0xED or marker in (0xEF, 0xFE):
            keep = False
        elif marker == 0xE2 and not payload.startswith(b"ICC_PROFILE\x00"):
            keep = False
        if not wrote_orientation and marker not in (0xE0,):
            exif = b"Exif\x00\x00" + orientation_exif(orientation)
            out.append(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
            wrote_orientation = True
        if keep:
            out.append(data[pos:end])
        pos = end
        if marker == 0xDA:  # start of scan: copy entropy-coded data up to the next real marker
            scan_end = _scan_end(data, pos)
            out.append(data[pos:scan_end])
            pos = scan_end
    raise MetadataError("JPEG ended without EOI")


def _scan_end(data: bytes, pos: int) -> int:
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            raise MetadataError("JPEG scan data runs to the end of the file (truncated)")
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos


_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_DROP = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def strip_png(data: bytes, orientation: int = 1) -> bytes:
    if not data.startswith(_PNG_SIG):
        raise MetadataError("not a PNG (bad signature)")
    out = [_PNG_SIG]
    pos = len(_PNG_SIG)
    while pos < len(data):
        if pos + 8 > len(data):
            raise MetadataError("PNG chunk header cut short")
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise MetadataError(f"PNG chunk {kind!r} runs past the end of the file")
        if kind not in _PNG_DROP:
            out.append(data[pos:end])
        if kind == b"IHDR" and orientation != 1:
            out.append(_png_chunk(b"eXIf", orientation_exif(orientation)))
        pos = end
        if kind == b"IEND":
            return b"".join(out)
    raise MetadataError("PNG ended without IEND")


def strip_webp(data: bytes, orientation: int = 1) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MetadataError("not a WebP (bad RIFF header)")
    chunks = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > len(data):
            raise MetadataError(f"WebP chunk {kind!r} runs past the end of the file")
        chunks.append((kind, data[pos + 8 : pos + 8 + size]))
        pos = end
    kept = []
    for kind, body in chunks:
        if kind in (b"EXIF", b"XMP "):
            continue
        if kind == b"VP8X":
            flags = body[0] & ~0x0C  # clear the EXIF (0x08) and XMP (0x04) bits
            if orientation != 1:
                flags |= 0x08
            body = bytes([flags]) + body[1:]
        kept.append((kind, body))
    if orientation != 1 and any(k == b"VP8X" for k, _ in kept):
        kept.append((b"EXIF", orientation_exif(orientation)))
    payload = b"".join(k + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"") for k, b in kept)
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


STRIPPERS = {"JPEG": strip_jpeg, "MPO": strip_jpeg, "PNG": strip_png, "WEBP": strip_webp}
