"""Keypoint schemes: flip permutations, the iBUG-68 -> Kaggle-15 mapping (also on real faces), drawing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.keypoints.augment import crop_matrix, transform_points
from facebatch.keypoints.draw import draw_keypoints, save_keypoints_png
from facebatch.keypoints.schemes import (IBUG68, IBUG68_TO_KAGGLE15, KAGGLE15, Scheme, flip_points, from_unit,
                                         get_scheme, ibug68_to_kaggle15, image_to_unit, to_unit, unit_to_image)

KAGGLE_ORDER = [
    "left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end", "left_eyebrow_outer_end",
    "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip", "mouth_left_corner",
    "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip"]


def test_scheme_basics():
    assert IBUG68.n_points == 68 and KAGGLE15.n_points == 15
    assert list(KAGGLE15.point_names) == KAGGLE_ORDER
    assert [n for n, _ in IBUG68_TO_KAGGLE15] == KAGGLE_ORDER
    for s in (IBUG68, KAGGLE15):
        assert all(s.flip_perm[s.flip_perm[k]] == k for k in range(s.n_points))
        i, j = s.eye_outer
        assert s.flip_perm[i] == j
    assert get_scheme("kaggle15") is KAGGLE15 and get_scheme(IBUG68) is IBUG68
    with pytest.raises(ValueError, match="unknown keypoint scheme"):
        get_scheme("nope")
    with pytest.raises(ValueError, match="involution"):
        Scheme("bad", ("a", "b", "c"), (1, 2, 0), (0, 1))
    # every kaggle left/right pair swaps with its namesake
    for k, name in enumerate(KAGGLE15.point_names):
        partner = KAGGLE15.point_names[KAGGLE15.flip_perm[k]]
        assert partner == name.replace("left", "@").replace("right", "left").replace("@", "right")
    # iBUG pairs: jaw ends, outer eye corners, mouth corners; nose tip and lip centres stay
    assert (IBUG68.flip_perm[0], IBUG68.flip_perm[36], IBUG68.flip_perm[48]) == (16, 45, 54)
    assert all(IBUG68.flip_perm[k] == k for k in (8, 27, 30, 33, 51, 57, 62, 66))


def test_ibug68_to_kaggle15_table_and_nan():
    pts = np.stack([np.arange(68), 100 + np.arange(68)], -1).astype(np.float32)
    out = ibug68_to_kaggle15(pts)
    assert out.shape == (15, 2)
    np.testing.assert_allclose(out[0], [44.5, 144.5])  # left eye centre: mean of 42..47
    np.testing.assert_allclose(out[1], [38.5, 138.5])  # right eye centre: mean of 36..41
    expect = [42, 45, 39, 36, 22, 26, 21, 17, 30, 54, 48, 51, 57]
    np.testing.assert_allclose(out[2:, 0], expect)
    batch = ibug68_to_kaggle15(np.stack([pts, pts + 1]))
    assert batch.shape == (2, 15, 2)
    np.testing.assert_allclose(batch[1], out + 1)
    pts[42] = np.nan
    out = ibug68_to_kaggle15(pts)
    missing = {k for k in range(15) if np.isnan(out[k]).any()}
    assert missing == {0, 2}  # left eye centre and left inner corner; nothing else filled or lost
    with pytest.raises(ValueError):
        ibug68_to_kaggle15(np.zeros((15, 2)))


def test_flip_and_unit_conventions():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 50, size=(68, 2)).astype(np.float32)
    np.testing.assert_allclose(flip_points(flip_points(pts, 50, IBUG68), 50, IBUG68), pts, atol=1e-5)
    f = flip_points(pts, 50, IBUG68)
    np.testing.assert_allclose(f[45], [49 - pts[36, 0], pts[36, 1]], atol=1e-5)
    # unit coordinates: flip is u -> 1 - u, and conversions round-trip
    u, uf = to_unit(pts, 50), to_unit(flip_points(pts, 50, IBUG68), 50)
    np.testing.assert_allclose(uf[:, 0], 1 - u[list(IBUG68.flip_perm), 0], atol=1e-6)
    np.testing.assert_allclose(from_unit(to_unit(pts, (50, 40)), (50, 40)), pts, atol=1e-4)
    # crop box <-> unit agrees with the augmentation crop matrix
    box = (10.0, -5.0, 74.0, 59.0)
    via_matrix = to_unit(transform_points(pts, crop_matrix(box, 96)), 96)
    np.testing.assert_allclose(image_to_unit(pts, box), via_matrix, atol=1e-5)
    np.testing.assert_allclose(unit_to_image(image_to_unit(pts, box), box), pts, atol=1e-4)


@pytest.fixture(scope="module")
def labels(udacity_root):
    return read_udacity68_csv(udacity_root / "training_frames_keypoints.csv")


def test_kaggle_left_is_image_right_on_real_faces(labels):
    """The subject's left eye/brow/mouth corner lies at larger x than the right one in real frames."""
    names = sorted(labels)[::10]
    k = ibug68_to_kaggle15(np.stack([labels[n] for n in names]))
    idx = KAGGLE15.index
    for left, right in [("left_eye_center", "right_eye_center"), ("left_eye_outer_corner", "right_eye_outer_corner"),
                        ("left_eyebrow_outer_end", "right_eyebrow_outer_end"),
                        ("mouth_left_corner", "mouth_right_corner")]:
        frac = np.mean(k[:, idx(left), 0] > k[:, idx(right), 0])
        assert frac > 0.97, (left, frac)
    # eyes above nose tip above mouth (image y grows downwards)
    assert np.mean(k[:, 0, 1] < k[:, idx("nose_tip"), 1]) > 0.97
    assert np.mean(k[:, idx("nose_tip"), 1] < k[:, idx("mouth_center_bottom_lip"), 1]) > 0.97
    assert np.mean(k[:, idx("mouth_center_top_lip"), 1] < k[:, idx("mouth_center_bottom_lip"), 1]) > 0.97


def test_draw_writes_png(tmp_path, labels, udacity_root):
    name = "Emmy_Rossum_20.jpg" if "Emmy_Rossum_20.jpg" in labels else sorted(labels)[0]
    image = np.asarray(Image.open(udacity_root / "training" / name).convert("RGB"))
    pts = ibug68_to_kaggle15(labels[name])
    out = save_keypoints_png(tmp_path / "kp15.png", image, pts, scheme=KAGGLE15, scale=2.0, radius=3,
                             extra_points=labels[name])
    drawn = Image.open(out)
    assert drawn.format == "PNG" and drawn.size == (image.shape[1] * 2, image.shape[0] * 2)
    x, y = ((pts[KAGGLE15.index("nose_tip")] + 0.5) * 2 - 0.5).round().astype(int)
    assert drawn.getpixel((int(x), int(y))) == (0, 255, 0)  # the point is drawn where it belongs
    # NaN points are skipped; CHW float input works
    pts[0] = np.nan
    img = draw_keypoints(image.transpose(2, 0, 1) / 255.0, pts, scheme="kaggle15")
    assert img.size == (image.shape[1], image.shape[0])
