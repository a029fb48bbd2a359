"""Keypoint metrics in numpy. Missing targets (NaN) are masked out of every metric, never filled.

All functions take ``pred`` and ``target`` of shape ``(N, K, 2)`` (``(K, 2)`` is read as one
image). A point counts as missing when either target coordinate is NaN; a NaN in ``pred`` where
the target is present is a model failure and propagates into the result.

Frames: :func:`nme_interocular` wants pixels of the original image; :func:`rmse_norm` unit
coordinates of the crop; :func:`mae_px` and :func:`pck` pixels of a 96x96 face frame (as seed
001 reported them). Convert with :func:`facebatch.keypoints.schemes.from_unit` /
:func:`~facebatch.keypoints.schemes.unit_to_image`.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from .schemes import Scheme, get_scheme

PCK_THRESHOLDS_PX = (5.0, 10.0, 15.0)
FACE_FRAME_PX = 96  # seed 001's metrics are in pixels of a 96x96 face frame


def _prep(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"pred and target must both be (N, K, 2); got {p.shape} and {t.shape}")
    valid = np.isfinite(t).all(axis=-1)  # (N, K)
    return p, t, valid


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    n = int(mask.sum())
    return float(np.where(mask, values, 0.0).sum() / n) if n else float("nan")


def point_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Euclidean error per point, ``(N, K)``; NaN where the target is missing.

    Args:
        pred, target: ``(N, K, 2)`` in the same units.
    """
    p, t, valid = _prep(pred, target)
    diff = np.where(valid[..., None], p - t, np.nan)
    return np.sqrt((diff ** 2).sum(-1))


def nme_interocular(pred: np.ndarray, target: np.ndarray, scheme: Scheme | str,
                    per_image: bool = False) -> float | np.ndarray:
    """Normalised mean error: per image, mean point error / outer-eye-corner distance; mean over images.

    Images whose target lacks an outer eye corner, or has no present point, are left out.

    Args:
        pred, target: ``(N, K, 2)`` pixels of the original image.
        scheme: layout giving the outer eye corner indices.
        per_image: return the ``(N,)`` per-image values (NaN where left out) instead of the mean.
    """
    scheme = get_scheme(scheme)
    p, t, valid = _prep(pred, target)
    i, j = scheme.eye_outer
    iod = np.sqrt(((t[:, i] - t[:, j]) ** 2).sum(-1))  # NaN if a corner is missing
    err = np.sqrt((np.where(valid[..., None], p - t, 0.0) ** 2).sum(-1))
    n = valid.sum(1)
    ok = (n > 0) & np.isfinite(iod) & (iod > 0)
    per = np.full(len(p), np.nan)
    per[ok] = (np.where(valid, err, 0.0).sum(1)[ok] / n[ok]) / iod[ok]
    if per_image:
        return per
    return float(per[ok].mean()) if ok.any() else float("nan")


def rmse_norm(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared coordinate error over present points (x and y each count once).

    Args:
        pred, target: ``(N, K, 2)`` unit coordinates of the crop (``[0, 1]``).
    """
    p, t, valid = _prep(pred, target)
    m = np.repeat(valid[..., None], 2, axis=-1)
    return float(np.sqrt(_masked_mean((p - t) ** 2, m)))


def mae_px(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute coordinate error (x and y each count once) over present points.

    Args:
        pred, target: ``(N, K, 2)`` pixels of the 96x96 face frame.
    """
    p, t, valid = _prep(pred, target)
    m = np.repeat(valid[..., None], 2, axis=-1)
    return _masked_mean(np.abs(p - t), m)


def pck(pred: np.ndarray, target: np.ndarray,
        thresholds: Sequence[float] = PCK_THRESHOLDS_PX) -> dict[float, float]:
    """Fraction of present points whose Euclidean error is at most each threshold.

    Args:
        pred, target: ``(N, K, 2)`` pixels of the 96x96 face frame.
        thresholds: distances in pixels.
    """
    _, _, valid = _prep(pred, target)
    err = point_errors(pred, target)
    return {float(th): _masked_mean((err <= th).astype(np.float64), valid) for th in thresholds}


def per_point_table(pred: np.ndarray, target: np.ndarray, scheme: Scheme | str,
                    thresholds: Sequence[float] = PCK_THRESHOLDS_PX) -> list[dict]:
    """One row per point plus a final ``all`` row: ``point, n, mae_px, rmse_px, mean_error_px, pck@T``.

    Args:
        pred, target: ``(N, K, 2)`` pixels of the 96x96 face frame.
        scheme: layout for the point names.
        thresholds: PCK thresholds in pixels.
    """
    scheme = get_scheme(scheme)
    p, t, valid = _prep(pred, target)
    if p.shape[1] != scheme.n_points:
        raise ValueError(f"{scheme.name} has {scheme.n_points} points, arrays have {p.shape[1]}")
    err = point_errors(p, t)
    absd = np.abs(p - t)

    def row(name: str, sel: np.ndarray) -> dict:
        m = valid & sel
        m2 = np.repeat(m[..., None], 2, axis=-1)
        r = {"point": name, "n": int(m.sum()), "mae_px": _masked_mean(absd, m2),
             "rmse_px": float(np.sqrt(_masked_mean(absd ** 2, m2))), "mean_error_px": _masked_mean(err, m)}
        for th in thresholds:
            r[f"pck@{th:g}"] = _masked_mean((err <= th).astype(np.float64), m)
        return r

    cols = np.arange(p.shape[1])[None, :].repeat(len(p), 0)
    rows = [row(name, cols == k) for k, name in enumerate(scheme.point_names)]
    rows.append(row("all", np.ones_like(valid)))
    return rows


def write_table_csv(rows: list[dict], path: str | os.PathLike) -> str:
    """Write :func:`per_point_table` rows as CSV (e.g. ``evaluation.csv``); returns the path.

    Args:
        rows: dicts with the same keys.
        path: output file.
    """
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return os.fspath(path)
