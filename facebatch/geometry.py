"""Face geometry: choosing a face, square crops with a margin, moving keypoints into a crop. Pure numpy/Pillow."""
from __future__ import annotations

import numpy as np
from PIL import Image


def square_crop_box(box, margin: float) -> tuple[int, int, int, int]:
    """A square around ``box`` (x1, y1, x2, y2), each side grown by ``margin`` times the larger side.

    Integer pixel bounds, so the crop and the keypoint transform agree exactly; the square
    may extend past the image (those pixels are filled black).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side = max(1, int(round(side)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    return left, top, left + side, top + side


def crop_square(image: np.ndarray, crop_box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Cut ``crop_box`` out of an RGB image (black outside it) and resize to ``size x size``."""
    pil = Image.fromarray(image)
    crop = pil.crop(crop_box)  # Pillow fills out-of-bounds pixels with zeros
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.BILINEAR, reducing_gap=None if crop.size[0] < size else 2.0)
    return np.asarray(crop)


def points_to_crop(points: np.ndarray, crop_box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(K, 2)`` original-image points into the crop: ``(pixels of the resized crop, [0, 1] normalised)``.

    Pixel coordinates use the continuous convention (a point at the crop's left edge is 0,
    at its right edge ``size``); NaN stays NaN.
    """
    left, top, right, _ = crop_box
    side = float(right - left)
    norm = (np.asarray(points, np.float32) - np.array([left, top], np.float32)) / side
    return (norm * size).astype(np.float32), norm.astype(np.float32)


def points_from_crop(norm: np.ndarray, crop_box) -> np.ndarray:
    """Inverse of :func:`points_to_crop`: ``[0, 1]`` crop coordinates back to original pixels."""
    left, top, right, _ = crop_box
    return np.asarray(norm, np.float32) * float(right - left) + np.array([left, top], np.float32)


def order_faces_by_area(faces: list) -> list:
    """Faces largest first (the default choice, as the seed projects did); stable for ties."""
    return sorted(faces, key=lambda f: -f.area)
