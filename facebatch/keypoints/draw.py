"""Draw keypoints with labels on an image (Pillow), for checking labels and predictions by eye."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schemes import Scheme, get_scheme


def _as_pil(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def draw_keypoints(image: np.ndarray | Image.Image, points: np.ndarray,
                   scheme: Scheme | str | None = None, labels: Sequence[str] | None = None,
                   scale: float = 1.0, color: tuple[int, int, int] = (0, 255, 0),
                   label_color: tuple[int, int, int] = (255, 255, 0), radius: int = 2,
                   font_size: int = 10, extra_points: np.ndarray | None = None,
                   extra_color: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    """Return an RGB copy of ``image`` with points (and their labels) drawn on it.

    Args:
        image: ``HxWx3``/``HxW`` uint8 array, a CHW float array in [0, 1], or a PIL image.
        points: ``(K, 2)`` pixel coordinates of ``image``; NaN points are skipped.
        scheme: if given (and ``labels`` is not), points are labelled with the scheme's names.
        labels: one label per point; default the point's index.
        scale: enlarge the image first (labels stay readable on small crops).
        color, label_color, radius, font_size: drawing style.
        extra_points: optional second set (e.g. predictions) drawn in ``extra_color``, unlabelled.
    """
    img = _as_pil(image)
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    if labels is None:
        labels = get_scheme(scheme).point_names if scheme is not None else [str(i) for i in range(len(points))]
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)

    def _xy(p: np.ndarray) -> tuple[float, float]:
        # pixel-index coords -> PIL coords of the (scaled) image
        return (p[0] + 0.5) * scale - 0.5, (p[1] + 0.5) * scale - 0.5

    if extra_points is not None:
        for p in np.asarray(extra_points, dtype=np.float64):
            if np.all(np.isfinite(p)):
                x, y = _xy(p)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=extra_color)
    for p, label in zip(np.asarray(points, dtype=np.float64), labels):
        if not np.all(np.isfinite(p)):
            continue
        x, y = _xy(p)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
        draw.text((x + radius + 1, y - font_size // 2), label, fill=label_color, font=font)
    return img


def save_keypoints_png(path: str | os.PathLike, image: np.ndarray | Image.Image, points: np.ndarray,
                       **kwargs) -> str:
    """Draw with :func:`draw_keypoints` and save as PNG; returns the path.

    Args:
        path: output file (``.png``).
        image, points, kwargs: as for :func:`draw_keypoints`.
    """
    draw_keypoints(image, points, **kwargs).save(path, format="PNG")
    return os.fspath(path)
