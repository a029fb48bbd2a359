"""Shared by every evaluation: getting preprocess rows from a raw dataset or a Parquet output."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from ..inference import InputSpec, model_input


def is_parquet_source(src: str) -> bool:
    p = Path(src)
    return p.suffix == ".parquet" or (p.is_dir() and (any(p.glob("part-*.parquet")) or any(p.glob("*.parquet"))))


def load_rows(src: str, fmt: str | None, outdir: Path, labels: str | None = None, address: str | None = None,
              crop_size: int = 256, splits: list[str] | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a preprocess output; a raw dataset is first preprocessed (detect + crop) into ``outdir/preprocess``."""
    if not is_parquet_source(src):
        if not fmt:
            raise ValueError(f"--input {src} is not a preprocess Parquet output, so --format is needed")
        from ..preprocess.config import PreprocessConfig
        from ..preprocess.pipeline import run_preprocess
        from ..preprocess.rows import CropConfig
        pre = outdir / "preprocess"
        run_preprocess(PreprocessConfig(input=src, output=str(pre), format=fmt, labels=labels, limit=limit,
                                        crop=CropConfig(crop_size=crop_size), progress="auto"), address=address)
        src = str(pre)
    rows = pq.read_table(src).to_pylist()
    rows.sort(key=lambda r: (r["path"], r["face_index"] if r["face_index"] is not None else -1))
    if splits:
        rows = [r for r in rows if r["split"] in splits]
    if limit:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"no rows to evaluate in {src}" + (f" for splits {splits}" if splits else ""))
    return rows


def has_crop(row: dict) -> bool:
    return row["status"] == "ok" and row["crop"] is not None


def row_batches(rows: list[dict], spec: InputSpec, batch_size: int = 64):
    """``(indices, x)`` batches of model input (the one input contract) for the rows that have a crop."""
    idx = [i for i, r in enumerate(rows) if has_crop(r)]
    for j in range(0, len(idx), batch_size):
        sel = idx[j:j + batch_size]
        yield sel, model_input([rows[i]["crop"] for i in sel], spec)


def fallback_crop_box(row: dict) -> list[float]:
    """For inputs without a face: the centred square of the whole image (a naive guess that still counts)."""
    w, h = row.get("width") or 1, row.get("height") or 1
    s = float(min(w, h))
    return [(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2]
