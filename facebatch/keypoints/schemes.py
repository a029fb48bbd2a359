"""Keypoint schemes (``ibug68``, ``kaggle15``), their flip permutations, and coordinate conventions.

Conventions used by the whole ``facebatch.keypoints`` package:

* Points are ``(K, 2)`` float arrays of ``(x, y)``; ``NaN`` marks a missing point.
* Pixel coordinates are *pixel-index* coordinates: the centre of pixel ``(col, row)`` is at
  ``(col, row)``, so an image of width ``W`` spans ``[-0.5, W - 0.5]`` and a horizontal flip maps
  ``x -> W - 1 - x``.
* Unit ("norm") coordinates are ``u = (x + 0.5) / W``: ``[0, 1]`` spans the crop exactly and a
  horizontal flip maps ``u -> 1 - u``. See :func:`to_unit` / :func:`from_unit`.
* "Left" and "right" in point names are the SUBJECT's: the subject's left eye is on the
  IMAGE's right (larger ``x``) in a frontal, un-mirrored photo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scheme:
    """A keypoint layout.

    Attributes:
        name: registry name (``"ibug68"``, ``"kaggle15"``).
        point_names: one name per point, in output order.
        flip_perm: after a horizontal image flip, new point ``k`` is old point ``flip_perm[k]``.
        eye_outer: indices of the (subject's right, subject's left) outer eye corners, used for
            inter-ocular normalisation.
    """

    name: str
    point_names: tuple[str, ...]
    flip_perm: tuple[int, ...]
    eye_outer: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.point_names)
        if sorted(self.flip_perm) != list(range(n)):
            raise ValueError(f"{self.name}: flip_perm must be a permutation of 0..{n - 1}")
        if any(self.flip_perm[self.flip_perm[k]] != k for k in range(n)):
            raise ValueError(f"{self.name}: flip_perm must be an involution (swap pairs)")

    @property
    def n_points(self) -> int:
        return len(self.point_names)

    def index(self, point_name: str) -> int:
        return self.point_names.index(point_name)


def _perm_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


# iBUG 300-W, 0-based. Image-left first: 0 is the jaw end on the image left, 36-41 the eye on the
# image left (the subject's right eye), 42-47 the eye on the image right (the subject's left eye).
_IBUG_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # jaw 0-16, 8 = chin
    + [(17 + i, 26 - i) for i in range(5)]  # brows 17-21 <-> 26-22
    + [(31, 35), (32, 34)]  # nostrils (27-30 bridge and 33 stay)
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips (51, 57 stay)
    + [(60, 64), (61, 63), (65, 67)]  # inner lips (62, 66 stay)
)
_IBUG_NAMES = tuple(
    [f"jaw_{i:02d}" for i in range(17)]
    + [f"brow_r_{i}" for i in range(5)] + [f"brow_l_{i}" for i in range(5)]  # subject's right, left
    + [f"nose_bridge_{i}" for i in range(4)] + [f"nostril_{i}" for i in range(5)]
    + [f"eye_r_{i}" for i in range(6)] + [f"eye_l_{i}" for i in range(6)]
    + [f"lip_outer_{i:02d}" for i in range(12)] + [f"lip_inner_{i}" for i in range(8)]
)
IBUG68 = Scheme("ibug68", _IBUG_NAMES, _perm_from_pairs(68, _IBUG_PAIRS), eye_outer=(36, 45))

_KAGGLE_NAMES = (
    "left_eye_center", "right_eye_center",
    "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner",
    "left_eyebrow_inner_end", "left_eyebrow_outer_end",
    "right_eyebrow_inner_end", "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner", "mouth_right_corner",
    "mouth_center_top_lip", "mouth_center_bottom_lip",
)
KAGGLE15 = Scheme("kaggle15", _KAGGLE_NAMES,
                  _perm_from_pairs(15, [(0, 1), (2, 4), (3, 5), (6, 8), (7, 9), (11, 12)]),
                  eye_outer=(5, 3))

SCHEMES: dict[str, Scheme] = {s.name: s for s in (IBUG68, KAGGLE15)}


def get_scheme(name: str | Scheme) -> Scheme:
    """Look a scheme up by name (a :class:`Scheme` is returned as is).

    Args:
        name: ``"ibug68"`` or ``"kaggle15"``.
    """
    if isinstance(name, Scheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown keypoint scheme {name!r}; known: {sorted(SCHEMES)}") from None


# kaggle15 point <- iBUG 68 indices (averaged). Subject's left = iBUG 42-47 (image right).
IBUG68_TO_KAGGLE15: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("left_eye_center", (42, 43, 44, 45, 46, 47)),
    ("right_eye_center", (36, 37, 38, 39, 40, 41)),
    ("left_eye_inner_corner", (42,)),
    ("left_eye_outer_corner", (45,)),
    ("right_eye_inner_corner", (39,)),
    ("right_eye_outer_corner", (36,)),
    ("left_eyebrow_inner_end", (22,)),
    ("left_eyebrow_outer_end", (26,)),
    ("right_eyebrow_inner_end", (21,)),
    ("right_eyebrow_outer_end", (17,)),
    ("nose_tip", (30,)),
    ("mouth_left_corner", (54,)),
    ("mouth_right_corner", (48,)),
    ("mouth_center_top_lip", (51,)),
    ("mouth_center_bottom_lip", (57,)),
)


def ibug68_to_kaggle15(pts68: np.ndarray) -> np.ndarray:
    """Convert iBUG-68 points to the Kaggle 15-point layout.

    =========================  ==============================  =====================
    kaggle15 point             iBUG 68 (0-based)               image side (frontal)
    =========================  ==============================  =====================
    left_eye_center            mean of 42-47                   right
    right_eye_center           mean of 36-41                   left
    left_eye_inner_corner      42                              right
    left_eye_outer_corner      45                              right
    right_eye_inner_corner     39                              left
    right_eye_outer_corner     36                              left
    left_eyebrow_inner_end     22                              right
    left_eyebrow_outer_end     26                              right
    right_eyebrow_inner_end    21                              left
    right_eyebrow_outer_end    17                              left
    nose_tip                   30                              centre
    mouth_left_corner          54                              right
    mouth_right_corner         48                              left
    mouth_center_top_lip       51 (outer lip, top centre)      centre
    mouth_center_bottom_lip    57 (outer lip, bottom centre)   centre
    =========================  ==============================  =====================

    A missing (NaN) source point gives a missing target point; an eye centre is missing if any
    of its six eye points is.

    Args:
        pts68: ``(..., 68, 2)`` points.

    Returns:
        ``(..., 15, 2)`` float array in the same units.
    """
    pts68 = np.asarray(pts68)
    if not np.issubdtype(pts68.dtype, np.floating):
        pts68 = pts68.astype(np.float32)
    if pts68.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) points, got shape {pts68.shape}")
    cols = [pts68[..., list(idx), :].mean(axis=-2) for _, idx in IBUG68_TO_KAGGLE15]
    return np.stack(cols, axis=-2)


def to_unit(points: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Pixel-index coordinates of a ``W x H`` crop to unit coordinates ``(x + 0.5) / W``.

    Args:
        points: ``(..., 2)`` pixel coordinates.
        size: ``(W, H)`` or a single side for a square crop.
    """
    w, h = (size, size) if np.isscalar(size) else size
    return (np.asarray(points, dtype=np.float32) + 0.5) / np.asarray([w, h], dtype=np.float32)


def from_unit(unit: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Inverse of :func:`to_unit`.

    Args:
        unit: ``(..., 2)`` unit coordinates.
        size: ``(W, H)`` or a single side for a square crop.
    """
    w, h = (size, size) if np.isscalar(size) else size
    return np.asarray(unit, dtype=np.float32) * np.asarray([w, h], dtype=np.float32) - 0.5


def flip_points(points: np.ndarray, width: int, scheme: Scheme | str) -> np.ndarray:
    """Points after a horizontal flip of a ``width``-pixel-wide image (mirror, then permute).

    Args:
        points: ``(..., K, 2)`` pixel coordinates.
        width: image width in pixels.
        scheme: the layout, for the left/right permutation.
    """
    scheme = get_scheme(scheme)
    out = np.array(points, dtype=np.float32, copy=True)
    out[..., 0] = (width - 1) - out[..., 0]
    return out[..., list(scheme.flip_perm), :]


def image_to_unit(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Pixel coordinates of the original image to unit coordinates of a crop box.

    Matches :func:`facebatch.keypoints.augment.crop_matrix` followed by :func:`to_unit`.

    Args:
        points: ``(..., 2)`` pixel-index coordinates of the original image.
        box: ``(x0, y0, x1, y1)`` crop box edges in the original image (like a PIL crop box).
    """
    x0, y0, x1, y1 = map(float, box)
    return ((np.asarray(points, dtype=np.float64) + 0.5 - [x0, y0]) / [x1 - x0, y1 - y0]).astype(np.float32)


def unit_to_image(unit: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Inverse of :func:`image_to_unit`.

    Args:
        unit: ``(..., 2)`` unit coordinates of the crop.
        box: ``(x0, y0, x1, y1)`` crop box edges in the original image.
    """
    x0, y0, x1, y1 = map(float, box)
    return (np.asarray(unit, dtype=np.float64) * [x1 - x0, y1 - y0] + [x0, y0] - 0.5).astype(np.float32)


def convert_scheme(points: np.ndarray, source: str, target: str) -> np.ndarray:
    """``(N, K, 2)`` points from ``source`` layout to ``target`` (ibug68 -> kaggle15 is the only conversion)."""
    if source == target:
        return points
    if (source, target) == ("ibug68", "kaggle15"):
        return ibug68_to_kaggle15(points)
    raise ValueError(f"cannot convert {source} keypoints to {target}")
