"""Image decoding that never raises for bad content: bytes in, RGB uint8 (or a status) out, in
full (:func:`decode_image`) or at the reduced JPEG scale a detector needs (:func:`decode_scaled`).

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
    d, mode = _decode(data, max_pixels)
    return DecodeResult(d.image, d.status, d.error, d.width, d.height, mode, d.fmt)


# ---- decoding at reduced scale ---------------------------------------------------------------------
#
# A 12 MP phone JPEG costs ~144 ms to decode in full and ~23 ms at 1/4 scale inside libjpeg. A
# detector only looks at ``max_side`` pixels (640), so :func:`decode_scaled` asks libjpeg for the
# largest of 1/8, 1/4, 1/2, 1/1 that still has a longer side of at least ``max_side``. Face crops
# are then cut from that image when the face's crop square still holds ``crop_size`` (256) pixels
# there; otherwise the photo is decoded again at the scale that does (see :func:`crop_scale`).
#
# Scale factors are exact integers (libjpeg's scaled IDCT maps output pixel ``i`` to original
# pixels ``[i*s, (i+1)*s)``), so a point ``p`` in the reduced image is ``p * s`` in the original,
# after EXIF orientation (orientation is applied to the reduced image, which commutes with an
# integer scale).

SCALES = (8, 4, 2, 1)


@dataclass
class Scaled:
    """A decoded image at ``1/scale`` of the original; ``width``/``height`` are the original's
    (after EXIF orientation). ``image`` is set only when ``status == "ok"``."""

    image: np.ndarray | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    scale: int = 1
    fmt: str | None = None


def decode_scaled(data: bytes, max_side: int | None = 640, max_pixels: int = DEFAULT_MAX_PIXELS,
                  scale: int | None = None) -> Scaled:
    """Decode ``data`` to RGB at a reduced scale, with the checks of :func:`decode_image` (never
    raises for bad content).

    Args:
        data: the file's bytes.
        max_side: the decoded longer side is kept at least this (JPEG only; other formats decode
            in full). ``None``: full size.
        max_pixels: images whose header declares more pixels give ``too_large``.
        scale: ask for exactly this draft scale (1, 2, 4, 8) instead of deriving it from ``max_side``.
    """
    return _decode(data, max_pixels, max_side, scale)[0]


def crop_scale(box, width: int, height: int, current: int, crop_size: int = 256, margin: float = 0.2,
               fmt: str | None = "JPEG") -> int:
    """The coarsest draft scale (<= ``current``) at which a face's crop square (``box`` in original
    pixels grown by ``margin``) still spans ``crop_size`` pixels."""
    if current <= 1 or fmt != "JPEG":
        return current
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    for s in SCALES:
        if s <= current and side / s >= crop_size:
            return s
    return 1


def _failed(status: str, error: str, size: tuple[int, int] | None = None, fmt: str | None = None) -> Scaled:
    w, h = size if size else (None, None)
    return Scaled(None, status, error, w, h, 1, fmt)


def _decode(data, max_pixels: int, max_side: int | None = None, scale: int | None = None) -> tuple[Scaled, str | None]:
    """The one decoder behind :func:`decode_image` and :func:`decode_scaled`: ``(result, Pillow mode
    as stored)``. Without ``max_side`` and ``scale`` it decodes in full and reads no EXIF before."""
    if data is None or len(data) == 0:
        return _failed(STATUS_EMPTY_FILE, "file is empty (0 bytes)"), None
    size: tuple[int, int] | None = None
    mode = fmt = None
    data = bytes(data)
    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as e:
        # Pillow's global limit fired; re-open without it so that only max_pixels decides.
        im = _open_unchecked(data)
        if im is None:
            return _failed(STATUS_TOO_LARGE, f"header declares a decompression bomb: {e}"), None
    except Exception as e:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        return _failed(STATUS_DECODE_ERROR, f"cannot identify image: {type(e).__name__}: {e}"), None
    try:
        mode, fmt = im.mode, im.format
        w, h = size = im.size  # as stored: getexif() could decode a PNG, so no orientation yet
        if w <= 0 or h <= 0:
            return _failed(STATUS_DECODE_ERROR, f"header declares an empty image {w}x{h}", size, fmt), mode
        if w * h > max_pixels:
            return _failed(STATUS_TOO_LARGE, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}",
                           size, fmt), mode
        want = scale
        if want is None and max_side and max(w, h) > max_side:
            want = max(s for s in SCALES if s == 1 or max(w, h) // s >= max_side)
        s, orient = 1, 1
        if want and want > 1 and fmt == "JPEG":
            try:
                orient = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:
                orient = 1
            im.draft(im.mode, (max(1, w // want), max(1, h // want)))
            s = max(1, int(round(w / im.size[0])))
        im.load()  # decode now, inside the try: truncated or corrupt data raises here
        missing_end = _missing_end_marker(data, fmt)
        if missing_end:
            return _failed(STATUS_DECODE_ERROR, f"truncated file: {missing_end}", size, fmt), mode
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:
            pass  # unreadable EXIF: keep the stored orientation
        rgb = _to_rgb(im)
    except MemoryError as e:
        return _failed(STATUS_TOO_LARGE, f"out of memory while decoding: {e}", size, fmt), mode
    except Exception as e:
        return _failed(STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}", size, fmt), mode
    finally:
        im.close()
    hr, wr = rgb.shape[:2]
    if s == 1:
        W, H = wr, hr
    else:
        W, H = (h, w) if orient in (5, 6, 7, 8) and (wr, hr) != (-(-w // s), -(-h // s)) else (w, h)
    return Scaled(rgb, STATUS_OK, None, int(W), int(H), s, fmt), mode


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
