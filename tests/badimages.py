"""Writers of bad and awkward image inputs, for the decoder's tests and the job's end-to-end tests.

Each writer puts one file into a directory and returns a :class:`BadInput` with the status that
``facebatch.imaging.decode_image`` must give and, for decodable images built from real faces, the
number of faces a detector should find. Real faces come from ``$FACEBATCH_DATA`` (default
``facebatch.paths.data_dir()``); :func:`load_faces` returns ``None`` when that data is absent, and
the writers then fall back to synthetic pictures (``faces=None``: no face expectation).
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facebatch.imaging import STATUS_DECODE_ERROR, STATUS_EMPTY_FILE, STATUS_OK, STATUS_TOO_LARGE
from facebatch.paths import data_dir

# Two aligned CelebA crops (178x218) of different people, one clear face each; udacity68 fallback.
FACE_FILES = (
    ("celeba6k/train_dataset/celeb_1/000351.jpg", "celeba6k/train_dataset/celeb_10/007253.jpg"),
    ("udacity68/training/Abdel_Aziz_Al-Hakim_00.jpg", "udacity68/training/Luis_Fonsi_21.jpg"),
)
NO_DATA_REASON = ("real face images not found under $FACEBATCH_DATA (default ../shared/data); "
                  "set FACEBATCH_DATA to the folder holding celeba6k/ or udacity68/")


@dataclass(frozen=True)
class BadInput:
    """One written input and what is expected of it."""

    name: str
    path: Path
    status: str                             # expected decode_image status
    faces: int | None = None                # faces a detector should find (None: no expectation)
    size: tuple[int, int] | None = None     # expected (width, height) after EXIF orientation
    mode: str | None = None                 # expected orig_mode
    note: str = ""


# --- real faces --------------------------------------------------------------------------------

def load_faces(root: Path | None = None) -> list[np.ndarray] | None:
    """Two RGB face images of different people from the shared data, or ``None`` when absent."""
    root = Path(root) if root is not None else data_dir()
    for pair in FACE_FILES:
        paths = [root / p for p in pair]
        if all(p.is_file() for p in paths):
            return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return None


def synthetic_picture(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """An RGB picture with no face: smooth gradients plus a bright top-left square (so that
    rotations and flips are visible)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * xx / width, 255 * yy / height, 128 + 60 * np.sin(xx / 9 + yy / 13)], axis=2)
    rgb[: height // 4, : width // 4] = (250, 240, 20)
    rng = np.random.default_rng(seed)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int = 95, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def _pick(face: np.ndarray | None) -> tuple[np.ndarray, int | None]:
    return (face, 1) if face is not None else (synthetic_picture(), None)


def _size(rgb: np.ndarray) -> tuple[int, int]:
    return rgb.shape[1], rgb.shape[0]


# --- raw PNG ------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG from an already-compressed IDAT stream (any header may be claimed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for ``(H, W)``, RGB for ``(H, W, 3)``) from uint16 values."""
    v = np.asarray(values, dtype=">u2")
    h, w = v.shape[:2]
    rows = v.reshape(h, -1).tobytes()
    stride = len(rows) // h
    scan = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(h))
    return raw_png(w, h, 16, 0 if v.ndim == 2 else 2, zlib.compress(scan))


# --- writers: undecodable -----------------------------------------------------------------------

def corrupt_jpeg(directory: Path, face: np.ndarray | None = None) -> BadInput:
    """A real JPEG with 64 bytes in the middle of its scan data replaced by a stray SOI marker and
    random garbage. (Random bytes alone are usually tolerated by libjpeg; the marker is not.)"""
    data = _jpeg(_pick(face)[0])
    sos = data.find(b"\xff\xda")
    mid = sos + (len(data) - sos) // 2
    garbage = b"\xff\xd8" + np.random.default_rng(0).integers(0, 256, 62, dtype=np.uint8).tobytes()
    path = Path(directory) / "corrupt.jpg"
    path.write_bytes(data[:mid] + garbage + data[mid + 64:])
    return BadInput("corrupt_jpeg", path, STATUS_DECODE_ERROR, note="garbage in the scan data")


def truncated_jpeg(directory: Path, face: np.ndarray | None = None, keep: float = 0.6) -> BadInput:
    """The first ``keep`` fraction of a real JPEG's bytes."""
    data = _jpeg(_pick(face)[0])
    path = Path(directory) / "truncated.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    return BadInput("truncated_jpeg", path, STATUS_DECODE_ERROR, note=f"first {keep:.0%} of the bytes")


def zero_byte(directory: Path) -> BadInput:
    path = Path(directory) / "empty.jpg"
    path.write_bytes(b"")
    return BadInput("zero_byte", path, STATUS_EMPTY_FILE)


def text_as_jpg(directory: Path) -> BadInput:
    path = Path(directory) / "notes.jpg"
    path.write_text("This is a text file with an image extension.\n" * 20)
    return BadInput("text_as_jpg", path, STATUS_DECODE_ERROR)


def decompression_bomb(directory: Path, width: int = 100_000, height: int = 100_000) -> BadInput:
    """A PNG whose IHDR (valid CRC) claims ``width x height`` RGB pixels; the IDAT holds 1 MiB of
    compressed zeros, so decoding would try to allocate tens of GB."""
    path = Path(directory) / "bomb.png"
    path.write_bytes(raw_png(width, height, 8, 2, zlib.compress(bytes(1 << 20), 9)))
    return BadInput("decompression_bomb", path, STATUS_TOO_LARGE, size=(width, height), mode="RGB")


def jpeg_bomb(directory: Path, width: int = 60_000, height: int = 60_000) -> BadInput:
    """A real small JPEG whose SOF0 header is patched to claim ``width x height``."""
    data = bytearray(_jpeg(synthetic_picture(64, 48)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path = Path(directory) / "bomb.jpg"
    path.write_bytes(bytes(data))
    return BadInput("jpeg_bomb", path, STATUS_TOO_LARGE, size=(width, height), mode="RGB")


# --- writers: decodable but awkward --------------------------------------------------------------

def png_as_jpg(directory: Path, face: np.ndarray | None = None) -> BadInput:
    rgb, faces = _pick(face)
    path = Path(directory) / "really_png.jpg"
    Image.fromarray(rgb).save(path, format="PNG")
    return BadInput("png_as_jpg", path, STATUS_OK, faces, _size(rgb), "RGB", "PNG bytes, .jpg name")


def cmyk_jpeg(directory: Path, face: np.ndarray | None = None) -> BadInput:
    rgb, faces = _pick(face)
    path = Path(directory) / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    return BadInput("cmyk_jpeg", path, STATUS_OK, faces, _size(rgb), "CMYK")


def grey_jpeg(directory: Path, face: np.ndarray | None = None) -> BadInput:
    rgb, faces = _pick(face)
    path = Path(directory) / "grey.jpg"
    Image.fromarray(rgb).convert("L").save(path, format="JPEG", quality=95)
    return BadInput("grey_jpeg", path, STATUS_OK, faces, _size(rgb), "L")


def grey16_png(directory: Path, face: np.ndarray | None = None) -> BadInput:
    """16-bit grey PNG holding ``grey8 * 257`` (decodes back to exactly ``grey8``)."""
    rgb, faces = _pick(face)
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16)
    path = Path(directory) / "grey16.png"
    path.write_bytes(png16(grey * 257))
    return BadInput("grey16_png", path, STATUS_OK, faces, _size(rgb), "I;16")


def rgb16_png(directory: Path, face: np.ndarray | None = None) -> BadInput:
    """16-bit-per-channel RGB PNG holding ``rgb8 * 257``."""
    rgb, faces = _pick(face)
    path = Path(directory) / "rgb16.png"
    path.write_bytes(png16(rgb.astype(np.uint16) * 257))
    return BadInput("rgb16_png", path, STATUS_OK, faces, _size(rgb), "RGB")


def rgba_png(directory: Path, face: np.ndarray | None = None, border: int = 8) -> BadInput:
    """RGBA PNG: opaque inside, a fully transparent ``border`` (whose hidden pixels are black)."""
    rgb, faces = _pick(face)
    h, w = rgb.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    alpha[border:-border, border:-border] = 255
    rgba = np.dstack([rgb, alpha])
    rgba[alpha == 0, :3] = 0
    path = Path(directory) / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return BadInput("rgba_png", path, STATUS_OK, faces, (w, h), "RGBA", f"transparent {border}px border")


def la_png(directory: Path, face: np.ndarray | None = None, border: int = 8) -> BadInput:
    """Grey + alpha PNG with a transparent border."""
    rgb, faces = _pick(face)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.zeros_like(grey)
    alpha[border:-border, border:-border] = 255
    path = Path(directory) / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(path)
    return BadInput("la_png", path, STATUS_OK, faces, _size(rgb), "LA")


def palette_png(directory: Path, face: np.ndarray | None = None) -> BadInput:
    """Palette (P) PNG, 256 colours, with one palette entry marked transparent."""
    rgb, faces = _pick(face)
    p = Image.fromarray(rgb).quantize(256)
    path = Path(directory) / "palette.png"
    p.save(path, transparency=0)
    return BadInput("palette_png", path, STATUS_OK, faces, _size(rgb), "P")


# EXIF orientation -> the transpose that *stores* an upright picture so that exif_transpose undoes it
_STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def exif_rotated(directory: Path, face: np.ndarray | None = None, orientation: int = 6) -> BadInput:
    """An upright picture stored turned, with the EXIF Orientation tag that turns it back."""
    rgb, faces = _pick(face)
    stored = Image.fromarray(rgb).transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = Path(directory) / f"exif_orientation{orientation}.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return BadInput(f"exif_rotated_{orientation}", path, STATUS_OK, faces, _size(rgb), "RGB",
                    f"stored {stored.size[0]}x{stored.size[1]}, Orientation={orientation}")


def no_face(directory: Path, width: int = 320, height: int = 240) -> BadInput:
    """Smooth coloured noise: decodes fine, holds no face."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    path = Path(directory) / "no_face.jpg"
    path.write_bytes(_jpeg(rgb))
    return BadInput("no_face", path, STATUS_OK, 0, (width, height), "RGB")


def two_faces(directory: Path, faces: list[np.ndarray]) -> BadInput:
    """Two real faces of different people pasted side by side (needs real data)."""
    a, b = faces[0], faces[1]
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + b.shape[1], 3), 255, np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    path = Path(directory) / "two_faces.jpg"
    path.write_bytes(_jpeg(canvas))
    return BadInput("two_faces", path, STATUS_OK, 2, _size(canvas), "RGB")


def write_all(directory: Path, faces: list[np.ndarray] | None | bool = True) -> list[BadInput]:
    """Write every input into ``directory``. ``faces=True`` loads real faces when available;
    pass ``None`` for synthetic pictures only (``two_faces`` is then left out)."""
    if faces is True:
        faces = load_faces()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    face = faces[0] if faces else None
    out = [
        corrupt_jpeg(directory, face), truncated_jpeg(directory, face), zero_byte(directory),
        text_as_jpg(directory), decompression_bomb(directory), jpeg_bomb(directory),
        png_as_jpg(directory, face), cmyk_jpeg(directory, face), grey_jpeg(directory, face),
        grey16_png(directory, face), rgb16_png(directory, face), rgba_png(directory, face),
        la_png(directory, face), palette_png(directory, face), exif_rotated(directory, face, 6),
        exif_rotated(directory, face, 3), exif_rotated(directory, face, 8), no_face(directory),
    ]
    if faces:
        out.append(two_faces(directory, faces))
    return out
