"""Keypoint-aware augmentation: image and points move together (synthetic blobs and real faces)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.keypoints.augment import (NO_AUGMENT, AugmentConfig, augment, color_jitter, crop_matrix,
                                         gaussian_blur, hflip, invert, transform_points, warp_affine)
from facebatch.keypoints.schemes import IBUG68, KAGGLE15, ibug68_to_kaggle15


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def _blobs(points: np.ndarray, size: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w))
    for x, y in points:
        if np.isfinite(x):
            img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _centroid(img: np.ndarray, p: np.ndarray, r: int = 4) -> np.ndarray:
    x0, y0 = np.round(p).astype(int)
    win = img[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1]
    win = np.clip(win - 0.1 * win.max(), 0, None)
    return np.array([(xs * win).sum(), (ys * win).sum()]) / win.sum()


def test_warp_identity_and_tensor_path():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    assert np.array_equal(warp_affine(img, np.eye(3)[:2], (30, 20)), img)
    t = torch.from_numpy(img.transpose(2, 0, 1)).float() / 255
    m = crop_matrix((3, 2, 23, 18), (40, 32))
    out_t = warp_affine(t, m, (40, 32))
    out_u = warp_affine(img, m, (40, 32))
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (3, 32, 40) and out_u.shape == (32, 40, 3)
    assert np.abs(out_t.numpy().transpose(1, 2, 0) * 255 - out_u).max() <= 0.51
    grey = warp_affine(img[..., 0], m, (40, 32))
    assert grey.shape == (32, 40) and grey.dtype == np.uint8


def test_blobs_follow_points_through_random_augmentation():
    """Blobs drawn at the points are found at the transformed points: checks matrix, flip and pixel convention."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(5) * 16.0 + 28, np.arange(3) * 20.0 + 40)  # well apart, off-grid
    pts = (np.stack([gx.ravel(), gy.ravel()], -1) + rng.uniform(-3, 3, (15, 2))).astype(np.float32)
    pts[7] = np.nan
    img = _blobs(pts, (120, 120))
    cfg = AugmentConfig(rotate_deg=30, scale=(0.8, 1.25), shift=0.05, brightness=0, contrast=0, saturation=0,
                        blur_p=0)
    flips = 0
    for _ in range(12):
        res = augment(img, pts, KAGGLE15, rng, cfg, out_size=(100, 90), crop_box=(10, 15, 110, 105))
        flips += res.flipped
        assert res.image.shape == (90, 100) and np.isnan(res.points[KAGGLE15.flip_perm[7] if res.flipped else 7]).all()
        src = np.array(KAGGLE15.flip_perm) if res.flipped else np.arange(15)
        np.testing.assert_allclose(res.points, transform_points(pts[src], res.matrix), atol=1e-4)
        for k, p in enumerate(res.points):
            if np.isfinite(p).all() and 6 <= p[0] < 94 and 6 <= p[1] < 84:
                assert np.linalg.norm(_centroid(res.image, p) - p) < 0.6, (k, res.params)
    assert 0 < flips < 12


def test_hflip_semantics():
    img = np.zeros((10, 20, 3), np.uint8)
    img[4, 3] = 255  # the subject's right eye sits on the image left
    pts = np.full((15, 2), np.nan, np.float32)
    pts[KAGGLE15.index("right_eye_center")] = (3, 4)
    out, fp = hflip(img, pts, KAGGLE15)
    assert out[4, 16].max() == 255  # 20 - 1 - 3
    np.testing.assert_allclose(fp[KAGGLE15.index("left_eye_center")], (16, 4))
    assert np.isnan(fp[KAGGLE15.index("right_eye_center")]).all()
    out_t, _ = hflip(torch.from_numpy(img.transpose(2, 0, 1)).float(), pts, KAGGLE15)
    assert out_t[0, 4, 16] == 255


def test_deterministic_and_photometric():
    img = np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    pts = np.full((68, 2), 20.0, np.float32)
    a = augment(img, pts, IBUG68, np.random.default_rng(5))
    b = augment(img, pts, IBUG68, np.random.default_rng(5))
    c = augment(img, pts, IBUG68, np.random.default_rng(6))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.points, b.points) and a.params == b.params
    assert a.params != c.params
    same = augment(img, pts, IBUG68, np.random.default_rng(0), NO_AUGMENT)
    assert np.array_equal(same.image, img) and np.array_equal(same.points, pts)
    assert np.array_equal(color_jitter(img), img)
    assert abs(color_jitter(img, brightness=0.5).mean() - img.mean() / 2) < 1.0
    grey = color_jitter(img, saturation=0.0).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
    blurred = gaussian_blur(img, 1.5)
    assert blurred.dtype == np.uint8 and blurred.std() < img.std() / 2 and abs(blurred.mean() - img.mean()) < 2


# ---------------------------------------------------------------- real faces
@pytest.fixture(scope="module")
def face(udacity_root):
    labels = read_udacity68_csv(udacity_root / "training_frames_keypoints.csv")
    name = "Emmy_Rossum_20.jpg" if "Emmy_Rossum_20.jpg" in labels else sorted(labels)[100]
    image = np.asarray(Image.open(udacity_root / "training" / name).convert("RGB"))
    pts = labels[name]
    lo, hi = pts.min(0), pts.max(0)
    c, s = (lo + hi) / 2, (hi - lo).max() * 1.3
    return image, pts, (c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2)


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ [0.299, 0.587, 0.114]


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Plain numpy bilinear sampling at pixel-index coordinates (independent of the torch warp)."""
    h, w = img.shape
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


TEXTURED = (36, 39, 42, 45, 30, 48, 54)  # eye corners, nose tip, mouth corners


def test_real_face_patches_follow_keypoints(face):
    """Around each transformed landmark the augmented image shows the original landmark's patch.

    The reference patch is sampled from the original image with numpy, mapping the output-pixel
    grid back through the linear part of the matrix; the best match within +-3 px must be at the
    transformed point itself.
    """
    image, pts, box = face
    src_grey = _grey(image)
    rng = np.random.default_rng(3)
    cfg = AugmentConfig(flip_p=0.5, rotate_deg=20, scale=(0.85, 1.15), shift=0.08, blur_p=0.0)
    r, search = 7, 3
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    scores, flips = [], 0
    for _ in range(8):
        res = augment(image, pts, IBUG68, rng, cfg, out_size=128, crop_box=box)
        flips += res.flipped
        aug = _grey(res.image)
        a_inv = np.linalg.inv(res.matrix[:, :2])
        for k in TEXTURED:
            src_k = IBUG68.flip_perm[k] if res.flipped else k
            p, q = pts[src_k], res.points[k]
            sx = p[0] + a_inv[0, 0] * ox + a_inv[0, 1] * oy
            sy = p[1] + a_inv[1, 0] * ox + a_inv[1, 1] * oy
            ref = _bilinear(src_grey, sx, sy)
            ncc = {(dx, dy): _ncc(ref, _bilinear(aug, q[0] + dx + ox, q[1] + dy + oy))
                   for dx in range(-search, search + 1) for dy in range(-search, search + 1)}
            best = max(ncc, key=ncc.get)
            assert max(abs(best[0]), abs(best[1])) <= 1, (k, best, ncc[best], ncc[(0, 0)], res.params)
            scores.append(ncc[(0, 0)])
    assert 0 < flips < 8
    assert np.median(scores) > 0.9 and min(scores) > 0.7, scores


def test_real_face_flip_keeps_subject_sides(face):
    """After a flip the subject's left eye (by the permutation) is where the mirrored right eye was."""
    image, pts, box = face
    w = image.shape[1]
    flipped, fp = hflip(image, pts, IBUG68)
    k15, f15 = ibug68_to_kaggle15(pts), ibug68_to_kaggle15(fp)
    le, re = KAGGLE15.index("left_eye_center"), KAGGLE15.index("right_eye_center")
    np.testing.assert_allclose(f15[le], [w - 1 - k15[re, 0], k15[re, 1]], atol=1e-4)
    assert f15[le, 0] > f15[re, 0] and fp[45, 0] > fp[36, 0]  # subject's left stays on the image right
    oy, ox = np.mgrid[-8:9, -8:9]
    g, gf = _grey(image), _grey(flipped)
    mirrored_right_eye = _bilinear(g, k15[re, 0] - ox, k15[re, 1] + oy)
    assert _ncc(_bilinear(gf, f15[le, 0] + ox, f15[le, 1] + oy), mirrored_right_eye) > 0.99
    # the same through augment() with a forced flip and nothing else
    res = augment(image, pts, IBUG68, np.random.default_rng(0), AugmentConfig(
        flip_p=1.0, rotate_deg=0, scale=(1, 1), shift=0, brightness=0, contrast=0, saturation=0, blur_p=0))
    assert res.flipped and np.array_equal(res.image, flipped)
    np.testing.assert_allclose(res.points, fp, atol=1e-4)


def test_inverse_matrix_maps_back(face):
    image, pts, box = face
    res = augment(image, pts, IBUG68, np.random.default_rng(9), out_size=96, crop_box=box)
    back = transform_points(res.points, invert(res.matrix))
    src = np.array(IBUG68.flip_perm) if res.flipped else np.arange(68)
    np.testing.assert_allclose(back, pts[src], atol=1e-3)


def test_downscale_and_occluder_change_pixels_not_points(face):
    """Resolution loss blurs the face (less high-frequency energy) and an occluder paints a flat
    box; neither moves the points, and both are off unless asked for."""
    image, pts, box = face
    base = AugmentConfig(flip_p=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=0.0,
                         saturation=0.0, blur_p=0.0)
    plain = augment(image, pts, IBUG68, np.random.default_rng(5), base, out_size=128, crop_box=box)
    assert plain.params["downscale"] == 1.0 and "occluder" not in plain.params
    cfg = AugmentConfig(**{**base.__dict__, "downscale_p": 1.0, "downscale": (0.3, 0.3)})
    low = augment(image, pts, IBUG68, np.random.default_rng(5), cfg, out_size=128, crop_box=box)
    np.testing.assert_allclose(low.points, plain.points)

    def detail(img):  # mean absolute Laplacian of the grey image
        g = _grey(img)
        return np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()
    assert detail(low.image) < 0.6 * detail(plain.image)
    assert abs(float(_grey(low.image).mean()) - float(_grey(plain.image).mean())) < 3  # same face, just softer

    cfg = AugmentConfig(**{**base.__dict__, "occlude_p": 1.0, "occlude_size": (0.3, 0.3)})
    occ = augment(image, pts, IBUG68, np.random.default_rng(5), cfg, out_size=128, crop_box=box)
    x0, y0, x1, y1 = occ.params["occluder"]
    assert (x1 - x0, y1 - y0) == (38, 38)
    patch = occ.image[y0:y1, x0:x1]
    assert patch.std() == 0 and not np.array_equal(patch, plain.image[y0:y1, x0:x1])
    outside = np.ones(occ.image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(occ.image[outside], plain.image[outside])
    np.testing.assert_allclose(occ.points, plain.points)
