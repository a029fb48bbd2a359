"""Pictures for evaluations: sample grids (truth green, prediction red, error lines) and training curves."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def keypoint_grid(rows, failed, pred_unit, tgt_unit, scheme, path: Path, n: int = 16, size: int = 192) -> Path:
    """A grid of faces: labels in green, predictions in red, a yellow line for each difference."""
    idx = [i for i in range(len(rows)) if not failed[i]]
    if len(idx) > n:
        idx = [idx[int(k)] for k in np.linspace(0, len(idx) - 1, n)]
    cols = 4
    grid = Image.new("RGB", (cols * size, max(1, -(-len(idx) // cols)) * size), "black")
    for k, i in enumerate(idx):
        img = Image.open(io.BytesIO(rows[i]["crop"])).convert("RGB").resize((size, size))
        d = ImageDraw.Draw(img)
        for (tx, ty), (px, py) in zip(tgt_unit[i] * size, pred_unit[i] * size):
            if np.isfinite([tx, ty]).all():
                d.line([tx, ty, px, py], fill=(255, 255, 0))
                d.ellipse([tx - 2, ty - 2, tx + 2, ty + 2], fill=(0, 255, 0))
            d.ellipse([px - 2, py - 2, px + 2, py + 2], outline=(255, 0, 0))
        d.text((3, 3), Path(rows[i]["path"]).name[:28], fill=(255, 255, 255))
        grid.paste(img, ((k % cols) * size, (k // cols) * size))
    grid.save(path)
    return path


def plot_curves(history: list[dict], path: Path) -> Path:
    from ..plots import plot_history
    return plot_history(history, path, "val")
