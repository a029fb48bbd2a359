"""decode_image on every bad input (synthetic and from real faces), conversions, limits, helpers."""
from __future__ import annotations

import hashlib
import io
import resource
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

import badimages
from facebatch import imaging
from facebatch.imaging import (
    STATUS_DECODE_ERROR, STATUS_EMPTY_FILE, STATUS_OK, STATUS_TOO_LARGE, STATUSES, decode_image,
    encode_jpeg, sha256_bytes,
)
from facebatch.paths import data_dir


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, badimages.BadInput]:
    items = badimages.write_all(tmp_path_factory.mktemp("bad_synthetic"), faces=None)
    return {b.name: b for b in items}


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    f = badimages.load_faces()
    if f is None:
        pytest.skip(badimages.NO_DATA_REASON)
    return f


@pytest.fixture(scope="module")
def real(tmp_path_factory, faces) -> dict[str, badimages.BadInput]:
    items = badimages.write_all(tmp_path_factory.mktemp("bad_real"), faces=faces)
    return {b.name: b for b in items}


def _decode(b: badimages.BadInput, **kw) -> imaging.DecodeResult:
    return decode_image(b.path.read_bytes(), **kw)


def _check_expected(b: badimages.BadInput) -> imaging.DecodeResult:
    r = _decode(b)
    assert r.status == b.status, (b.name, r.error)
    assert r.status in STATUSES
    if b.status == STATUS_OK:
        assert r.error is None and r.image is not None
        assert r.image.dtype == np.uint8 and r.image.ndim == 3 and r.image.shape[2] == 3
        assert r.image.flags["C_CONTIGUOUS"]
        assert (r.width, r.height) == (r.image.shape[1], r.image.shape[0])
    else:
        assert r.image is None and r.error
    if b.size is not None:
        assert (r.width, r.height) == b.size, b.name
    if b.mode is not None:
        assert r.orig_mode == b.mode, b.name
    return r


SYNTHETIC_NAMES = [
    "corrupt_jpeg", "truncated_jpeg", "zero_byte", "text_as_jpg", "decompression_bomb", "jpeg_bomb",
    "png_as_jpg", "cmyk_jpeg", "grey_jpeg", "grey16_png", "rgb16_png", "rgba_png", "la_png",
    "palette_png", "exif_rotated_6", "exif_rotated_3", "exif_rotated_8", "no_face",
]


@pytest.mark.parametrize("name", SYNTHETIC_NAMES)
def test_synthetic_inputs_give_expected_status(synthetic, name):
    _check_expected(synthetic[name])


def test_every_real_face_input_gives_expected_status(real):
    assert "two_faces" in real
    for b in real.values():
        _check_expected(b)


def test_error_messages_say_what_happened(synthetic):
    assert "empty" in _decode(synthetic["zero_byte"]).error
    assert "truncated" in _decode(synthetic["truncated_jpeg"]).error
    assert "identify" in _decode(synthetic["text_as_jpg"]).error
    assert "max_pixels" in _decode(synthetic["decompression_bomb"]).error


def test_truncation_is_never_accepted(synthetic):
    data = Image.open(synthetic["no_face"].path)
    buf = io.BytesIO()
    data.save(buf, format="JPEG", quality=90)
    full = buf.getvalue()
    for keep in (len(full) - 1, len(full) - 2, len(full) - 10, len(full) // 2, len(full) // 3, 700):
        r = decode_image(full[:keep])
        assert r.status == STATUS_DECODE_ERROR, keep
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_never_raises_on_prefixes_and_noise():
    buf = io.BytesIO()
    Image.fromarray(badimages.synthetic_picture(48, 32)).save(buf, format="PNG")
    png = buf.getvalue()
    rng = np.random.default_rng(0)
    inputs = [png[:n] for n in range(0, len(png), max(1, len(png) // 40))] + [png[:-1], png[:-12]]
    inputs += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 7, 100, 5000)]
    inputs += [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM" + bytes(60)]
    for data in inputs:
        r = decode_image(data)
        assert r.status in STATUSES
        assert (r.status == STATUS_OK) == (data == png), len(data)


def test_bomb_is_rejected_fast_without_allocating(synthetic, monkeypatch):
    data = synthetic["decompression_bomb"].path.read_bytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our limit must not depend on it
    decode_image(synthetic["png_as_jpg"].path.read_bytes())  # warm up Pillow's plugins
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; peak so far
    t0 = time.perf_counter()
    r = decode_image(data)
    elapsed = time.perf_counter() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert r.status == STATUS_TOO_LARGE and (r.width, r.height) == (100_000, 100_000)
    assert elapsed < 0.5 and grown < 50 * 1024


def test_pixel_limit_is_max_pixels_not_global(synthetic, monkeypatch):
    b = synthetic["png_as_jpg"]
    w, h = b.size
    assert decode_image(b.path.read_bytes(), max_pixels=w * h).status == STATUS_OK
    r = decode_image(b.path.read_bytes(), max_pixels=w * h - 1)
    assert r.status == STATUS_TOO_LARGE and (r.width, r.height) == (w, h)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would call this a bomb
    assert decode_image(b.path.read_bytes()).status == STATUS_OK


def test_grey_and_16bit_scaled_not_clipped(synthetic):
    grey = _decode(synthetic["grey_jpeg"]).image
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    src = np.asarray(Image.fromarray(badimages.synthetic_picture()).convert("L"))
    g16 = _decode(synthetic["grey16_png"]).image
    assert np.array_equal(g16[..., 0], src) and np.array_equal(g16[..., 2], src)
    assert g16.max() < 255 or src.max() == 255  # not saturated by clipping
    rgb16 = _decode(synthetic["rgb16_png"]).image
    assert np.array_equal(rgb16, badimages.synthetic_picture())


def test_mode_I_32bit_is_read_as_16bit_range():
    vals = (np.arange(64 * 8, dtype=np.int32).reshape(8, 64) * 128)  # 0..65408
    buf = io.BytesIO()
    Image.fromarray(vals, mode="I").save(buf, format="TIFF")
    r = decode_image(buf.getvalue())
    assert r.status == STATUS_OK and r.orig_mode == "I"
    assert np.array_equal(r.image[..., 1], np.rint(vals / 257).astype(np.uint8))


def test_alpha_is_composited_on_white(synthetic):
    src = badimages.synthetic_picture()
    for name in ("rgba_png", "la_png"):
        img = _decode(synthetic[name]).image
        assert (img[:8] == 255).all() and (img[:, -8:] == 255).all(), name  # transparent border
    rgba = _decode(synthetic["rgba_png"]).image
    assert np.array_equal(rgba[8:-8, 8:-8], src[8:-8, 8:-8])
    pal = _decode(synthetic["palette_png"]).image
    assert pal.shape == src.shape and np.abs(pal.astype(int) - src).mean() < 12


def test_cmyk_colours_survive(synthetic):
    img = _decode(synthetic["cmyk_jpeg"]).image
    assert np.abs(img.astype(int) - badimages.synthetic_picture()).mean() < 8


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_brings_picture_upright(synthetic, orientation):
    b = synthetic[f"exif_rotated_{orientation}"]
    stored = Image.open(b.path)
    if orientation in (6, 8):
        assert stored.size == b.size[::-1]
    img = _decode(b).image
    assert np.abs(img.astype(int) - badimages.synthetic_picture()).mean() < 6
    assert img[5, 5, 2] < 80 and img[5, 5, 0] > 200  # the yellow square is back top-left


def test_png_bytes_named_jpg_are_sniffed(synthetic):
    r = _decode(synthetic["png_as_jpg"])
    assert r.orig_format == "PNG" and np.array_equal(r.image, badimages.synthetic_picture())


def test_real_face_conversions(real, faces):
    face = faces[0]
    up = _decode(real["exif_rotated_6"]).image
    assert up.shape == face.shape and np.abs(up.astype(int) - face).mean() < 6
    assert np.abs(_decode(real["cmyk_jpeg"]).image.astype(int) - face).mean() < 8
    two = _decode(real["two_faces"]).image
    assert two.shape[1] == faces[0].shape[1] + faces[1].shape[1]


def test_real_dataset_samples_decode():
    root = data_dir()
    files = sorted((root / "udacity68" / "training").glob("*.jpg"))[:10]
    files += [root / "genki4k" / "files" / f for f in ("file0001.jpg", "file2346.jpg", "file3975.jpg")]
    if not all(f.is_file() for f in files) or len(files) < 13:
        pytest.skip(badimages.NO_DATA_REASON)
    for f in files:
        r = decode_image(f.read_bytes())
        assert r.status == STATUS_OK, (f, r.error)
        assert Image.open(f).size == (r.width, r.height)
    grey = decode_image(files[-1].read_bytes())  # GENKI has two greyscale JPEGs
    assert grey.orig_mode == "L" and np.array_equal(grey.image[..., 0], grey.image[..., 1])


def test_encode_jpeg_roundtrip_and_validation():
    rgb = badimages.synthetic_picture(64, 48)
    data = encode_jpeg(rgb, quality=95)
    r = decode_image(data)
    assert r.status == STATUS_OK and r.orig_format == "JPEG" and r.image.shape == rgb.shape
    assert np.abs(r.image.astype(int) - rgb).mean() < 4
    assert len(encode_jpeg(rgb, quality=30)) < len(data)
    with pytest.raises(ValueError):
        encode_jpeg(rgb.astype(np.float32))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4, 4), np.uint8))


def test_sha256_bytes():
    assert sha256_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_empty_inputs():
    assert decode_image(b"").status == STATUS_EMPTY_FILE
    assert decode_image(bytearray()).status == STATUS_EMPTY_FILE
    assert decode_image(memoryview(encode_jpeg(np.zeros((4, 4, 3), np.uint8)))).status == STATUS_OK
