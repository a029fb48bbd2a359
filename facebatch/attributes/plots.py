"""Confusion-matrix PNGs drawn with Pillow (matplotlib is not a dependency of facebatch)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _text_center(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill) -> None:
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - (r - l) / 2 - l, xy[1] - (b - t) / 2 - t), text, font=font, fill=fill)


def save_confusion_png(confusion: Sequence[Sequence[int]], path: str | os.PathLike,
                       labels: Sequence[str] = ("no", "yes"), title: str = "", cell: int = 120) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) as a PNG.

    Each cell shows the count and the share of its true-class row; the shade follows that share.

    Args:
        confusion: square matrix of counts, e.g. ``binary_metrics(...)["confusion"]``
            (``[[tn, fp], [fn, tp]]``).
        path: output file.
        labels: class names in matrix order.
        title: text above the matrix.
        cell: cell size in pixels.
    """
    k = len(confusion)
    if k == 0 or any(len(r) != k for r in confusion) or len(labels) != k:
        raise ValueError("confusion must be square and match labels")
    left, top, pad = 110, 70 if title else 45, 20
    w, h = left + k * cell + pad, top + k * cell + 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    f_big, f_small = _font(max(12, cell // 6)), _font(14)
    if title:
        _text_center(d, (w / 2, 18), title, f_small, "black")
    _text_center(d, (left + k * cell / 2, top - 28), "predicted", f_small, "black")
    _text_center(d, (left + k * cell / 2, top + k * cell + 35), "rows: true class", f_small, "gray")
    for i in range(k):
        row_total = sum(confusion[i]) or 1
        _text_center(d, (left - 50, top + i * cell + cell / 2), f"true {labels[i]}", f_small, "black")
        _text_center(d, (left + i * cell + cell / 2, top - 10), str(labels[i]), f_small, "black")
        for j in range(k):
            share = confusion[i][j] / row_total
            shade = int(255 - 200 * share)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            d.rectangle(box, fill=(shade, shade, 255), outline="black")
            ink = "white" if share > 0.55 else "black"
            cx, cy = box[0] + cell / 2, box[1] + cell / 2
            _text_center(d, (cx, cy - 10), str(int(confusion[i][j])), f_big, ink)
            _text_center(d, (cx, cy + 18), f"{100 * share:.1f}%", f_small, ink)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
