"""Kaggle Facial Keypoints CSV: 30 coordinate columns plus ``Image`` (96x96 grey, space-separated).

``left``/``right`` are the *subject's* sides, as in the competition: ``left_eye_center`` lies on
the image's right half of a frontal face.
"""
from __future__ import annotations

import csv
import io
import math
from typing import IO, Iterator

import numpy as np
from PIL import Image

KAGGLE15_NAMES = (
    "left_eye_center", "right_eye_center",
    "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner",
    "left_eyebrow_inner_end", "left_eyebrow_outer_end",
    "right_eyebrow_inner_end", "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner", "mouth_right_corner",
    "mouth_center_top_lip", "mouth_center_bottom_lip",
)
KAGGLE15_COLUMNS = tuple(f"{n}_{axis}" for n in KAGGLE15_NAMES for axis in ("x", "y"))

# iBUG-68 (0-based) points averaged to approximate each Kaggle point. iBUG numbers the subject's
# right side first (36-41 right eye, 17-21 right brow, 48 right mouth corner).
IBUG68_TO_KAGGLE15: dict[str, tuple[int, ...]] = {
    "left_eye_center": (42, 43, 44, 45, 46, 47),
    "right_eye_center": (36, 37, 38, 39, 40, 41),
    "left_eye_inner_corner": (42,),
    "left_eye_outer_corner": (45,),
    "right_eye_inner_corner": (39,),
    "right_eye_outer_corner": (36,),
    "left_eyebrow_inner_end": (22,),
    "left_eyebrow_outer_end": (26,),
    "right_eyebrow_inner_end": (21,),
    "right_eyebrow_outer_end": (17,),
    "nose_tip": (30,),
    "mouth_left_corner": (54,),
    "mouth_right_corner": (48,),
    "mouth_center_top_lip": (51,),
    "mouth_center_bottom_lip": (57,),
}


def ibug68_to_kaggle15(points: np.ndarray) -> np.ndarray:
    """Approximate the 15 Kaggle points ``(15, 2)`` from 68 iBUG points ``(68, 2)``."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) iBUG points, got {pts.shape}")
    return np.stack([pts[list(IBUG68_TO_KAGGLE15[n])].mean(axis=0) for n in KAGGLE15_NAMES])


def grey_to_png(values: str, where: str) -> bytes:
    """Space-separated grey values of a square image -> PNG bytes (mode ``L``)."""
    try:
        arr = np.array(values.split(), dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"{where}: Image column holds a non-number: {e}") from None
    side = math.isqrt(arr.size)
    if arr.size == 0 or side * side != arr.size:
        raise ValueError(f"{where}: Image column has {arr.size} values; expected a square "
                         f"image such as 96x96 = 9216")
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8).reshape(side, side)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return buf.getvalue()


def iter_kaggle15_rows(f: IO[str], name: str) -> Iterator[tuple[int, np.ndarray | None, bytes]]:
    """Yield ``(row_index, keypoints or None, png_bytes)`` for each data row (0-based index).

    Keypoints are ``(15, 2)`` float32 in the order of :data:`KAGGLE15_NAMES`, NaN where the cell is
    empty (never filled); ``None`` when the file has no coordinate columns (Kaggle's test.csv).
    """
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{name}: empty file; expected a Kaggle facial-keypoints CSV")
    cols = {c.strip(): i for i, c in enumerate(header)}
    if "Image" not in cols:
        raise ValueError(f"{name}: no 'Image' column; is this the Kaggle facial-keypoints CSV?")
    present = [c for c in KAGGLE15_COLUMNS if c in cols]
    if present and len(present) != len(KAGGLE15_COLUMNS):
        missing = [c for c in KAGGLE15_COLUMNS if c not in cols]
        raise ValueError(f"{name}: missing keypoint columns {missing}")
    idx = [cols[c] for c in KAGGLE15_COLUMNS] if present else []
    img_i = cols["Image"]
    for row_i, row in enumerate(reader):
        if not row:
            continue
        where = f"{name}: data row {row_i} (line {row_i + 2})"
        if len(row) != len(header):
            raise ValueError(f"{where}: {len(row)} fields, header has {len(header)}")
        kp = None
        if idx:
            try:
                vals = [float(row[i]) if row[i].strip() else math.nan for i in idx]
            except ValueError as e:
                raise ValueError(f"{where}: bad coordinate: {e}") from None
            kp = np.asarray(vals, dtype=np.float32).reshape(len(KAGGLE15_NAMES), 2)
        yield row_i, kp, grey_to_png(row[img_i], where)
