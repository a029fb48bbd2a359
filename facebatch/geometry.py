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


def box_iou(a, b) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_labelled_face(boxes, points) -> int | None:
    """Which detected face the labelled ``(K, 2)`` points belong to (NaN points ignored), as
    300-W evaluation does by giving the face box: among the boxes that hold the points' centre,
    the one overlapping the points' extent most; ``None`` when no box holds the centre."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    if not len(pts) or not len(boxes):
        return None
    cx, cy = pts.mean(0)
    extent = (*pts.min(0), *pts.max(0))
    best, best_iou = None, -1.0
    for i, b in enumerate(boxes):
        if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]:
            iou = box_iou(b, extent)
            if iou > best_iou:
                best, best_iou = i, iou
    return best
