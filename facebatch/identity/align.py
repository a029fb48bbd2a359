"""Aligned face chips as dlib makes them (``get_face_chip_details`` + ``extract_image_chip``), in numpy.

dlib (``dlib/image_transforms/interpolation.h``) fits a least-squares similarity transform
(Umeyama, ``find_similarity_transform``) from template landmark positions in the chip to the
face's landmarks, keeps its rotation and scale as a rectangle and an angle, and samples the chip
with bilinear interpolation (truncated to uint8; samples whose 2x2 neighbourhood leaves the
image are black). When the chip is more than about 2x smaller than its source region dlib first
shrinks the image with its ``pyramid_down<2>`` (a 5-tap [1 4 6 4 1] filter) and samples the
pyramid level; that is reproduced too.

Landmark orders:

* ``points5`` (:func:`face_chip`): dlib's 5-point shape model, i.e. iBUG-68 points
  ``[45, 42, 36, 39, 33]``: the image-right eye's outer and inner corner, the image-left eye's
  outer and inner corner, the bottom of the nose.
* :func:`chip_from_ibug68`: 68 iBUG points, by default reduced to those five (the alignment dlib's
  descriptor is usually paired with); ``method="mean_face"`` uses dlib's 68-point template.
* :func:`chip_from_retinaface`: RetinaFace's five landmarks (image-left eye centre, image-right
  eye centre, nose tip, image-left and image-right mouth corner). Their template
  (:data:`RETINAFACE_TEMPLATE`) is taken from dlib's own mean face (the 68-point template in the
  same chip frame as the 5-point one): eye centres = the mean of each eye's six points, nose tip
  = point 30, mouth corners = points 48 and 54. It is a derived template, not one dlib trained with.
"""
from __future__ import annotations

import math

import numpy as np

IBUG68_TO_DLIB5 = (45, 42, 36, 39, 33)

# get_face_chip_details: the 5-point template in the unit square of an unpadded chip
DLIB5_TEMPLATE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                           [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                           [0.4901123135679, 0.6277975316475]])
# get_face_chip_details: dlib's mean face, points 17..67
_MEAN_X = [0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004,
           0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737,
           0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751,
           0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
           0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127,
           0.42689]
_MEAN_Y = [0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915,
           0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326,
           0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423,
           0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
           0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182,
           0.831803, 0.824182]
MEAN_FACE68 = np.full((68, 2), np.nan)
MEAN_FACE68[17:] = np.stack([_MEAN_X, _MEAN_Y], axis=1)
# the points dlib fits for 68-point shapes: 27..54 and 60..64 (no brows, no lower lip)
MEAN_FACE_USED = np.array([i for i in range(17, 68) if not (55 <= i <= 59 or 65 <= i <= 67 or i <= 26)])
RETINAFACE_TEMPLATE = np.stack([MEAN_FACE68[36:42].mean(0), MEAN_FACE68[42:48].mean(0),
                                MEAN_FACE68[30], MEAN_FACE68[48], MEAN_FACE68[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``dst ~ c*R @ src + t`` (Umeyama 1991, eqs. 34-43, as dlib's
    ``find_similarity_transform``): returns ``(c*R (2x2), t (2,))``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    var_s = ((src - ms) ** 2).sum(1).mean()
    cov = (dst - md).T @ (src - ms) / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    det = np.linalg.det(cov)
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1, 1] = -1  # numpy sorts singular values in decreasing order: flip the smaller one
    r = u @ s @ vt
    c = np.trace(np.diag(d) @ s) / var_s if var_s != 0 else 1.0
    m = c * r
    return m, md - m @ ms


def chip_details(points: np.ndarray, template: np.ndarray, size: int = 150,
                 padding: float = 0.25) -> tuple[np.ndarray, float]:
    """dlib's ``chip_details``: the chip's source rectangle ``(left, top, right, bottom)`` in image
    pixels and its rotation angle, for ``points`` that correspond to unit-square ``template`` points."""
    chip_pts = (padding + np.asarray(template, np.float64)) / (2 * padding + 1) * size
    m, t = similarity_transform(chip_pts, points)
    p = m @ np.array([1.0, 0.0])
    angle, scale = math.atan2(p[1], p[0]), math.hypot(p[0], p[1])
    cx, cy = m @ np.array([size / 2.0, size / 2.0]) + t
    half = (size * scale - 1) / 2  # centered_drect(p, w, h) spans w-1
    return np.array([cx - half, cy - half, cx + half, cy + half]), angle


def _rect_down(rect: np.ndarray) -> np.ndarray:
    """pyramid_down<2>::rect_down: ``p/2 - (1.25, 0.75)`` on both corners."""
    return rect / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])


def _area(rect: np.ndarray) -> float:
    w, h = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
    return 0.0 if w <= 0 or h <= 0 else w * h


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` on an RGB uint8 image: [1 4 6 4 1]^2 filter, every other pixel,
    integer arithmetic; ``(H-3)//2 x (W-3)//2`` out (empty at 8 px or less)."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + img.shape[2:], np.uint8)
    x = img.astype(np.int32)
    nc, nr = (w - 3) // 2, (h - 3) // 2
    k = (1, 4, 6, 4, 1)
    rows = sum(k[j] * x[:, j:j + 2 * nc:2] for j in range(5))
    return (sum(k[j] * rows[j:j + 2 * nr:2] for j in range(5)) // 256).astype(np.uint8)


def _rotate(center: np.ndarray, p: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    d = p - center
    return center + np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])


def bilinear(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` at float coordinates: truncated to uint8, 0 where the 2x2
    neighbourhood is not inside the image. Weights in float32 (dlib: double): a pixel can differ
    by one grey level where the double result lies within float32 rounding of an integer."""
    h, w = img.shape[:2]
    out = np.zeros(xs.shape + (3,), np.uint8)
    if h < 2 or w < 2:
        return out
    left, top = np.floor(xs), np.floor(ys)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    li, ti = left[ok].astype(np.intp), top[ok].astype(np.intp)
    lr = (xs[ok] - left[ok]).astype(np.float32)[:, None]
    tb = (ys[ok] - top[ok]).astype(np.float32)[:, None]
    tl, tr = img[ti, li].astype(np.float32), img[ti, li + 1].astype(np.float32)
    bl, br = img[ti + 1, li].astype(np.float32), img[ti + 1, li + 1].astype(np.float32)
    top_row = tl + lr * (tr - tl)
    v = top_row + tb * (bl + lr * (br - bl) - top_row)
    out[ok] = np.clip(v, 0, 255).astype(np.uint8)  # assign_pixel: static_cast (truncation)
    return out


def extract_chip(image: np.ndarray, rect: np.ndarray, angle: float, size: int = 150) -> np.ndarray:
    """dlib's ``extract_image_chip(img, chip_details(rect, angle, size x size))`` with bilinear interpolation."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    rect = np.asarray(rect, np.float64)
    center = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2])
    depth, r, grow = 0, _rect_down(rect), 2.0
    while _area(r) > size * size:
        r, depth, grow = _rect_down(r), depth + 1, grow * 2 + 2
    corners = np.array([_rotate(center, np.array(p), angle) for p in
                        ((rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3]))])
    lo, hi = corners.min(0) - grow, corners.max(0) + grow
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [w - 1, h - 1])  # intersect with the image,
    bl_, bt, br_, bb = (math.floor(v + 0.5) for v in (lo[0], lo[1], hi[0], hi[1]))  # rounded to ints
    if br_ < bl_ or bb < bt:
        return np.zeros((size, size, 3), np.uint8)
    src = img[bt:bb + 1, bl_:br_ + 1]
    rect = rect - np.array([bl_, bt, bl_, bt], np.float64)
    for _ in range(depth):
        src, rect = pyramid_down2(src), _rect_down(rect)
    center = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2])
    tl = _rotate(center, rect[[0, 1]], angle)
    ex = (_rotate(center, rect[[2, 1]], angle) - tl) / (size - 1)  # chip column step
    ey = (_rotate(center, rect[[0, 3]], angle) - tl) / (size - 1)  # chip row step
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xs = tl[0] + cols * ex[0] + rows * ey[0]
    ys = tl[1] + cols * ex[1] + rows * ey[1]
    if src.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    return bilinear(src, xs, ys)


def face_chip(image: np.ndarray, points5: np.ndarray, size: int = 150, padding: float = 0.25,
              template: np.ndarray = DLIB5_TEMPLATE) -> np.ndarray:
    """dlib's ``get_face_chip(img, shape, size, padding)`` for a 5-point shape in dlib's order
    (iBUG ``[45, 42, 36, 39, 33]``); ``image`` RGB uint8 ``(H, W, 3)``, returns ``(size, size, 3)`` uint8."""
    pts = np.asarray(points5, np.float64)
    if pts.shape != (len(template), 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected {len(template)} finite (x, y) points, got shape {pts.shape}")
    rect, angle = chip_details(pts, template, size, padding)
    return extract_chip(image, rect, angle, size)


def chip_from_ibug68(image: np.ndarray, points68: np.ndarray, size: int = 150, padding: float = 0.25,
                     method: str = "five") -> np.ndarray:
    """A chip from 68 iBUG landmarks: ``method="five"`` aligns on points ``[45, 42, 36, 39, 33]``
    with dlib's 5-point template, ``"mean_face"`` on dlib's 68-point mean face (points 27-54, 60-64)."""
    pts = np.asarray(points68, np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) iBUG landmarks, got shape {pts.shape}")
    if method == "five":
        return face_chip(image, pts[list(IBUG68_TO_DLIB5)], size, padding)
    if method == "mean_face":
        return face_chip(image, pts[MEAN_FACE_USED], size, padding, MEAN_FACE68[MEAN_FACE_USED])
    raise ValueError(f"unknown method {method!r}; choose 'five' or 'mean_face'")


def chip_from_retinaface(image: np.ndarray, landmarks5: np.ndarray, size: int = 150,
                         padding: float = 0.25) -> np.ndarray:
    """A chip from RetinaFace's five landmarks (image-left eye, image-right eye, nose tip,
    image-left and image-right mouth corner), aligned on :data:`RETINAFACE_TEMPLATE`."""
    return face_chip(image, landmarks5, size, padding, RETINAFACE_TEMPLATE)
