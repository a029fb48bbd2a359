"""Keypoint metrics against hand-computed values; missing targets are excluded, never filled."""
from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest

from facebatch.keypoints.metrics import (mae_px, nme_interocular, pck, per_point_table, point_errors, rmse_norm,
                                         write_table_csv)
from facebatch.keypoints.schemes import KAGGLE15, Scheme

TOY = Scheme("toy", ("eye_r", "eye_l", "nose"), (1, 0, 2), eye_outer=(0, 1))
NAN = np.nan


@pytest.fixture
def arrays():
    # image 1: eye_r off by (3, 4) -> 5 px, eye_l exact, nose missing in the target
    # image 2: errors 2, 10, 0
    target = np.array([[[0, 0], [10, 0], [NAN, NAN]],
                       [[0, 0], [0, 20], [1, 1]]], dtype=np.float64)
    pred = np.array([[[3, 4], [10, 0], [99, 99]],
                     [[0, 2], [6, 28], [1, 1]]], dtype=np.float64)
    return pred, target


def test_point_errors_and_nme(arrays):
    pred, target = arrays
    err = point_errors(pred, target)
    np.testing.assert_allclose(err, [[5, 0, NAN], [2, 10, 0]])
    # image 1: mean(5, 0) / 10 = 0.25; image 2: mean(2, 10, 0) / 20 = 0.2
    assert nme_interocular(pred, target, TOY) == pytest.approx(0.225)
    np.testing.assert_allclose(nme_interocular(pred, target, TOY, per_image=True), [0.25, 0.2])


def test_nme_skips_images_without_eye_corners(arrays):
    pred, target = arrays
    target = np.concatenate([target, [[[NAN, 0], [5, 5], [1, 1]]]])
    pred = np.concatenate([pred, [[[0, 0], [50, 50], [40, 40]]]])
    per = nme_interocular(pred, target, TOY, per_image=True)
    assert np.isnan(per[2])
    assert nme_interocular(pred, target, TOY) == pytest.approx(0.225)


def test_mae_rmse_pck(arrays):
    pred, target = arrays
    # absolute coordinate errors of present points: 3,4, 0,0, 0,2, 6,8, 0,0 -> 23 / 10
    assert mae_px(pred, target) == pytest.approx(2.3)
    assert rmse_norm(pred, target) == pytest.approx(math.sqrt(129 / 10))
    # Euclidean errors 5, 0, 2, 10, 0
    assert pck(pred, target, thresholds=(1, 5, 10)) == pytest.approx({1.0: 0.4, 5.0: 0.8, 10.0: 1.0})
    assert set(pck(pred, target)) == {5.0, 10.0, 15.0}
    # a single (K, 2) image works too
    assert mae_px(pred[1], target[1]) == pytest.approx(16 / 6)


def test_missing_everywhere_and_nan_predictions(arrays):
    pred, target = arrays
    empty = np.full_like(target, NAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" and friends
        assert math.isnan(mae_px(pred, empty)) and math.isnan(rmse_norm(pred, empty))
        assert math.isnan(nme_interocular(pred, empty, TOY)) and math.isnan(pck(pred, empty)[5.0])
    bad = pred.copy()
    bad[1, 0] = NAN  # a model that outputs NaN for a present point is not silently excused
    assert math.isnan(mae_px(bad, target)) and math.isnan(nme_interocular(bad, target, TOY))
    with pytest.raises(ValueError):
        mae_px(pred[:, :2], target)


def test_per_point_table_and_csv(arrays, tmp_path):
    pred, target = arrays
    rows = per_point_table(pred, target, TOY, thresholds=(5,))
    assert [r["point"] for r in rows] == ["eye_r", "eye_l", "nose", "all"]
    eye_r, eye_l, nose, total = rows
    assert eye_r["n"] == 2 and eye_r["mae_px"] == pytest.approx((3 + 4 + 0 + 2) / 4)
    assert eye_r["mean_error_px"] == pytest.approx(3.5) and eye_r["pck@5"] == pytest.approx(1.0)
    assert eye_l["rmse_px"] == pytest.approx(math.sqrt((36 + 64) / 4)) and eye_l["pck@5"] == pytest.approx(0.5)
    assert nose["n"] == 1 and nose["mae_px"] == 0.0
    assert total["n"] == 5 and total["mae_px"] == pytest.approx(2.3)
    path = write_table_csv(rows, tmp_path / "evaluation.csv")
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert back[0].keys() == rows[0].keys() and float(back[-1]["mae_px"]) == pytest.approx(2.3)
    with pytest.raises(ValueError):
        per_point_table(pred, target, KAGGLE15)
