"""Image I/O: safe decoding with clear per-row errors, pass-through, and encoding in the source format."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from .metadata import STRIPPERS, MetadataError, MetadataFindings, read_findings

logger = logging.getLogger(__name__)

# modes whose pixels we edit as they are; the rest are converted to the mode named here first
_EDIT_MODE = {"P": "RGBA", "PA": "RGBA", "1": "L", "RGBX": "RGB", "La": "LA", "RGBa": "RGBA"}
# formats whose edited result is written losslessly (quality settings do not apply)
_LOSSLESS_SAVE = {"PNG": {}, "TIFF": {"compression": "tiff_lzw"}, "BMP": {}, "GIF": {}}
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L"}
# formats that a dataset's readers cannot open with Pillow alone (`datasets`' Image feature decodes with plain
# Pillow): rows from them are written in the format named here, edited or not
_WRITE_AS = {"HEIF": "JPEG"}
# ISO media brands of HEIC/HEIF stills and sequences (the `ftyp` box's major brand)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_PLUGINS_REGISTERED: bool | None = None  # None: not tried yet
_PLUGINS_LOCK = threading.Lock()


def _is_heif(data: bytes) -> bool:
    """Whether ``data`` is a HEIC/HEIF file by its ``ftyp`` box."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def register_plugins() -> bool:
    """Let Pillow open HEIC/HEIF (phone photos) through pillow-heif's plugin; idempotent. True when the plugin is
    in place (False: pillow-heif is not installed). pillow-heif applies the file's own rotation (irot/imir) when it
    decodes and sets the EXIF orientation to 1. The row threads decode at once: a thread that finds another one
    registering waits for it."""
    global _PLUGINS_REGISTERED
    with _PLUGINS_LOCK:
        if _PLUGINS_REGISTERED is None:
            try:
                import pillow_heif
            except ImportError:  # without it a HEIC file is an invalid_input row that says why
                _PLUGINS_REGISTERED = False
            else:
                pillow_heif.register_heif_opener()
                _PLUGINS_REGISTERED = True
        return _PLUGINS_REGISTERED


def open_bytes(data: bytes):
    """``Image.open`` on ``data``. A HEIC/HEIF file Pillow does not know is tried again once pillow-heif's plugin is
    registered: registering on the first such file spares every run without one the plugin's import."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if not _is_heif(data) or not register_plugins():
            raise
        return Image.open(io.BytesIO(data))


def upright(img, orientation: int):
    """The image as displayed for an EXIF orientation (pixels only; the EXIF itself is not rewritten)."""
    from PIL import Image

    T = Image.Transpose
    method = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    return img if method is None else img.transpose(method)


def read_orientation(img) -> int:
    """EXIF orientation 1..8 (1 when absent, malformed or out of range)."""
    try:
        value = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a malformed tag means "not rotated"
        return 1
    return value if 1 <= value <= 8 else 1


class InvalidImage(ValueError):
    """The row's image cannot be read: the row gets status invalid_input with this message."""


@dataclass
class DecodedImage:
    """One source image: its file, what the header and metadata say, and its pixels on first use."""

    data: bytes  # the source file, untouched
    format: str  # PIL format name of the source (JPEG, PNG, ...)
    mode: str  # PIL mode of the source pixels
    opened: "object"  # the PIL image as opened (stored orientation; pixels not necessarily loaded)
    orientation: int  # EXIF orientation of the source (1 = stored upright)
    metadata: MetadataFindings = field(default_factory=MetadataFindings)
    sha256: str = ""
    _shown: "object" = None

    @property
    def image(self):
        """The PIL image in display orientation (EXIF rotation applied), source mode; decodes on first use.

        Raises InvalidImage when the pixel data is truncated or corrupt.
        """
        if self._shown is None:
            from PIL import Image

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    self.opened.load()
            except Exception as err:  # truncated or corrupt pixel data
                raise InvalidImage(f"image data could not be decoded: {describe_error(err)}") from err
            # rotate the pixels only: Pillow's exif_transpose also rewrites the EXIF, which fails on bad tags
            self._shown = upright(self.opened, self.orientation)
        return self._shown

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, known without decoding the pixels."""
        w, h = self.opened.size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


def image_bytes(value) -> tuple[bytes | None, str | None]:
    """The file bytes of an image cell: ``{"bytes", "path"}`` (undecoded column), a path, or raw bytes.

    Returns ``(None, reason)`` for a PIL image (already decoded: the original file is gone) or ``None``.
    """
    if value is None:
        return None, "image is missing (None)"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"]), None
        if value.get("path"):
            return _read_path(value["path"]), None
        return None, "image cell has neither bytes nor path"
    if isinstance(value, str):
        return _read_path(value), None
    return None, None


def open_cell(value):
    """An image cell (bytes, path, ``{"bytes", "path"}`` or PIL) as a loaded PIL image in display orientation,
    or None when it is missing or unreadable (for previews and evaluation, which show or skip such rows)."""
    try:
        data, _ = image_bytes(value)
        img = value if data is None else open_bytes(data)
        if img is None or not hasattr(img, "load"):
            return None
        img.load()
        return upright(img, read_orientation(img))
    except Exception:  # noqa: BLE001 - unreadable: the caller shows a placeholder or skips the row
        return None


def _read_path(path: str) -> bytes:
    from datasets.utils.file_utils import xopen

    with xopen(path, "rb") as f:
        return f.read()


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Open ``data``, read its header and metadata and decode its pixels.

    Raises InvalidImage with a message a user can act on.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImage("image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_bytes(data)
    except Image.DecompressionBombError as err:
        raise InvalidImage(f"decompression bomb refused by Pillow: {err}") from err
    except UnidentifiedImageError as err:
        if _is_heif(data) and not register_plugins():
            raise InvalidImage("HEIC/HEIF image: reading it needs the `heic` extra (pip install 'hf_unsafe2safe[heic]', pillow-heif)") from err
        raise InvalidImage(f"not a readable image: Pillow recognises no image format (file starts with {data[:8]!r})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage(f"not a readable image: {describe_error(err)}") from err
    w, h = img.size
    if w * h > max_pixels:
        raise InvalidImage(f"image has {w}x{h} = {w * h} pixels, above max_image_pixels={max_pixels} (decompression-bomb guard)")
    if w < 1 or h < 1:
        raise InvalidImage(f"image has an empty size {w}x{h}")
    fmt = img.format or "PNG"
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and fmt != "MPO":
        raise InvalidImage(f"{fmt} image has {frames} frames; multi-frame images are not supported")
    metadata = read_findings(img)
    source = DecodedImage(
        data=data,
        format="JPEG" if fmt == "MPO" else fmt,
        mode=img.mode,
        opened=img,
        orientation=read_orientation(img),
        metadata=metadata,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    source.image  # noqa: B018 - decode now, so that corrupt data is reported here, before any stage runs
    return source


def describe_error(err: Exception) -> str:
    """The error as text without object addresses, so that the same input gives the same row."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(err).__name__}: {err}")


def to_rgb8(img) -> np.ndarray:
    """An RGB uint8 array for the detectors, whatever the source mode."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / 257.0 if arr.max() > 255 else arr
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
        from PIL import Image

        rgba = img.convert("RGBA")
        # transparent pixels are composited on white so hidden content stays out of the detectors' way
        # as it would for a viewer
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return np.asarray(canvas.convert("RGB"))
    return np.asarray(img.convert("RGB"))


def to_edit_array(img) -> tuple[np.ndarray, str]:
    """Pixels in the mode we edit in (the source mode wherever numpy can hold it)."""
    mode = _EDIT_MODE.get(img.mode, img.mode)
    work = img if mode == img.mode else img.convert(mode)
    return np.array(work), mode


def from_edit_array(arr: np.ndarray, mode: str):
    from PIL import Image

    h, w = arr.shape[:2]
    return Image.frombytes(mode, (w, h), np.ascontiguousarray(arr).tobytes())


def encode(img, source: DecodedImage, jpeg_quality: int) -> bytes:
    """Encode an edited image in the source's format (lossless where the format is, JPEG at ``jpeg_quality``); a
    HEIC/HEIF source as JPEG (``_WRITE_AS``), or as PNG where it has transparency (JPEG would show what lies under
    the transparent pixels)."""
    fmt = _WRITE_AS.get(source.format, source.format)
    if source.format in _WRITE_AS and img.has_transparency_data:
        fmt = "PNG"
    params: dict = {}
    icc = source.image.info.get("icc_profile")
    if fmt == "JPEG":
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        params = {"quality": jpeg_quality, "subsampling": 0, "optimize": True}
    elif fmt == "WEBP":
        lossless = source.data[12:16] == b"VP8L"
        params = {"lossless": True} if lossless else {"quality": jpeg_quality, "method": 4}
    elif fmt in _LOSSLESS_SAVE:
        params = dict(_LOSSLESS_SAVE[fmt])
    if icc and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["icc_profile"] = icc
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **params)
    except (OSError, KeyError, ValueError):
        # a format Pillow cannot write, or a mode the format cannot hold: a lossless container that can
        # (PNG for the common modes; TIFF holds float, CMYK, LAB, YCbCr)
        buf = io.BytesIO()
        fmt = "PNG" if img.mode in _PNG_MODES else "TIFF"
        img.save(buf, format=fmt, **_LOSSLESS_SAVE[fmt], **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def pass_through(source: DecodedImage, jpeg_quality: int) -> tuple[bytes, bool]:
    """The source bytes with identifying metadata removed losslessly.

    Returns ``(bytes, reencoded)``; ``reencoded`` is True for formats whose metadata we cannot drop at the
    container level and that carried some: those are re-written losslessly (same pixels); and for the formats of
    ``_WRITE_AS`` (HEIC), written as JPEG at ``jpeg_quality`` without any metadata, rotation applied.
    """
    if source.format in _WRITE_AS:
        return encode(source.image, source, jpeg_quality), True
    stripper = STRIPPERS.get(source.format)
    if stripper is not None:
        try:
            return stripper(source.data, source.orientation), False
        except MetadataError as err:
            logger.warning("lossless metadata removal failed (%s); re-encoding without metadata", err)
    elif not source.metadata.removed:
        return source.data, False
    from PIL import Image

    opened = Image.open(io.BytesIO(source.data))
    opened.load()
    # a plain copy with a fresh info dict: some writers (TIFF) copy XMP/IPTC from the file they came from
    pixels = opened.copy()
    pixels.info = {k: v for k, v in opened.info.items() if k in ("icc_profile", "transparency", "dpi")}
    fmt = source.format if source.format in _LOSSLESS_SAVE else "PNG"
    buf = io.BytesIO()
    pixels.save(buf, format=fmt, **_LOSSLESS_SAVE.get(fmt, {}))
    return buf.getvalue(), True
