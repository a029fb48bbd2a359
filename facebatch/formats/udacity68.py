"""Udacity facial-keypoints CSV: a file-name column, then 136 columns ``x0, y0, ..., x67, y67``."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

N_POINTS = 68


def read_udacity68_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Map each image file name to its ``(68, 2)`` float32 keypoints (pixels of the original image).

    Raises:
        ValueError: naming the file and line when a row does not have 1 + 136 fields.
    """
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != 1 + 2 * N_POINTS:
            raise ValueError(f"{path}: expected a header of 137 columns (name + 136 coordinates), "
                             f"got {0 if header is None else len(header)}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 1 + 2 * N_POINTS:
                raise ValueError(f"{path}:{lineno}: expected 137 fields, got {len(row)}")
            vals = [float(v) if v.strip() else float("nan") for v in row[1:]]
            out[row[0]] = np.asarray(vals, dtype=np.float32).reshape(N_POINTS, 2)
    return out


def person_of(filename: str) -> str:
    """The person in a Udacity/YouTube-Faces file name: the part before the trailing ``_NN``.

    300-W files in the same layout (``300w_train``) name no person: a split there is by photo.
    ``lfpw_image_0001`` is one photo (kept whole); ``helen_NAME_K`` and ``afw_NAME_K`` are face ``K``
    of photo ``NAME``, so the faces of one photo stay on one side of a split.
    """
    stem = Path(filename).stem
    if stem.startswith("lfpw_"):
        return stem
    head, sep, tail = stem.rpartition("_")
    return head if sep and tail.isdigit() else stem
