"""Image decoding that never raises for bad content: bytes in, RGB uint8 (or a status) out.

Conversion rules (documented choices):

* EXIF orientation is applied (``ImageOps.exif_transpose``); ``width``/``height`` are the size
  *after* orientation for decoded images, and the stored (header) size when decoding failed or
  was refused (EXIF is not read before decoding: for PNG, ``getexif()`` decodes the pixels).
  A broken EXIF block is ignored (the image is used as stored).
* Grey ``L``/``1`` is replicated to three channels; ``P`` goes through its palette.
* Images with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) are composited on white,
  so transparent regions become white rather than whatever colour the hidden pixels hold.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``) and 32-bit ``I`` are read as 0..65535 and scaled
  down with ``round(v / 257)`` (full range kept, not clipped at 255). 16-bit RGB PNGs are already
  reduced to 8 bits by Pillow.
* ``CMYK`` (including Adobe-inverted JPEGs) and other modes use Pillow's ``convert("RGB")``.
* Animated or multi-frame files give their first frame.

The pixel limit is checked from the header (``Image.open`` is lazy) before any pixel data is
decoded, and independently of the global ``PIL.Image.MAX_IMAGE_PIXELS``; Pillow's own bomb
error (raised by ``open`` above twice that global) is also reported as ``too_large``.
Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed here, and a
JPEG without an end-of-image marker or a PNG without ``IEND`` is rejected even when Pillow
decoded it (that happens when only the last bytes are missing).
Garbage *inside* JPEG entropy-coded data is often tolerated by libjpeg (it decodes to a damaged
picture without an error); that cannot be detected here.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

STATUS_OK = "ok"
STATUS_EMPTY_FILE = "empty_file"
STATUS_DECODE_ERROR = "decode_error"
STATUS_TOO_LARGE = "too_large"
STATUS_READ_ERROR = "read_error"  # for callers that fail to fetch the bytes; not set by decode_image
STATUSES = (STATUS_OK, STATUS_EMPTY_FILE, STATUS_DECODE_ERROR, STATUS_TOO_LARGE, STATUS_READ_ERROR)

DEFAULT_MAX_PIXELS = 50_000_000  # about 8200 x 6100; a decoded RGB image of this size is 150 MB

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class DecodeResult:
    """Outcome of :func:`decode_image`; ``image`` is set only when ``status == "ok"``."""

    image: np.ndarray | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    orig_mode: str | None = None
    orig_format: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def _fail(status: str, error: str, size: tuple[int, int] | None = None, mode: str | None = None,
          fmt: str | None = None) -> DecodeResult:
    w, h = size if size else (None, None)
    return DecodeResult(None, status, error, w, h, mode, fmt)


def _missing_end_marker(data: bytes, fmt: str | None) -> str | None:
    """Pillow decodes a JPEG cut just before its EOI marker (or a PNG without IEND) without an
    error when the pixel data happens to be complete; such files are still truncated."""
    if fmt in ("JPEG", "MPO"):
        sos = data.find(b"\xff\xda")
        if sos < 0 or data.rfind(b"\xff\xd9") < sos:
            return "JPEG has no end-of-image marker after its scan data"
    elif fmt == "PNG" and data.rfind(b"IEND\xaeB`\x82") < 0:
        return "PNG has no IEND chunk"
    return None


def _open_unchecked(data: bytes) -> Image.Image | None:
    """Open lazily like ``Image.open`` but without its check against the global
    ``MAX_IMAGE_PIXELS`` (the caller applies its own limit). ``None`` when no plugin accepts."""
    Image.init()
    prefix = data[:16]
    for fmt_id in Image.ID:
        factory, accept = Image.OPEN[fmt_id]
        try:
            ok = accept is None or accept(prefix)
            if isinstance(ok, str) or not ok:
                continue
            return factory(io.BytesIO(data), "")
        except Exception:
            continue
    return None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any Pillow image to an RGB uint8 ``(H, W, 3)`` array (see the module's rules)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """Decode image bytes (format sniffed from content) to RGB uint8; never raises for bad content.

    Args:
        data: the file's bytes.
        max_pixels: images whose header declares more pixels give ``too_large`` without decoding.
    """
    if data is None or len(data) == 0:
        return _fail(STATUS_EMPTY_FILE, "file is empty (0 bytes)")
    size: tuple[int, int] | None = None
    mode = fmt = None
    data = bytes(data)
    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as e:
        # Pillow's global limit fired; re-open without it so that only max_pixels decides.
        im = _open_unchecked(data)
        if im is None:
            return _fail(STATUS_TOO_LARGE, f"header declares a decompression bomb: {e}")
    except Exception as e:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        return _fail(STATUS_DECODE_ERROR, f"cannot identify image: {type(e).__name__}: {e}")
    try:
        mode, fmt = im.mode, im.format
        w, h = size = im.size  # as stored: getexif() could decode a PNG, so no orientation yet
        if w <= 0 or h <= 0:
            return _fail(STATUS_DECODE_ERROR, f"header declares an empty image {w}x{h}", size, mode, fmt)
        if w * h > max_pixels:
            return _fail(STATUS_TOO_LARGE, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}",
                         size, mode, fmt)
        im.load()  # decode now, inside the try: truncated or corrupt data raises here
        missing_end = _missing_end_marker(data, fmt)
        if missing_end:
            return _fail(STATUS_DECODE_ERROR, f"truncated file: {missing_end}", size, mode, fmt)
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:
            pass  # unreadable EXIF: keep the stored orientation
        rgb = _to_rgb(im)
    except MemoryError as e:
        return _fail(STATUS_TOO_LARGE, f"out of memory while decoding: {e}", size, mode, fmt)
    except Exception as e:
        return _fail(STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}", size, mode, fmt)
    finally:
        im.close()
    h2, w2 = rgb.shape[:2]
    return DecodeResult(rgb, STATUS_OK, None, w2, h2, mode, fmt)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an ``(H, W, 3)`` (or ``(H, W)`` grey) uint8 array as JPEG bytes."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"encode_jpeg expects uint8 HxWx3 or HxW, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
