"""Shared by every evaluation: getting preprocess rows from a raw dataset or a Parquet output.

A raw dataset is detected and cropped by the preprocess job first. Evaluation does not import that
job (job packages do not import each other): the caller passes it in as ``prepare``, and the
``facebatch evaluate`` command (:mod:`facebatch.evaluation.cli`) does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq

from ..inference import InputSpec, model_input


def is_parquet_source(src: str) -> bool:
    p = Path(src)
    return p.suffix == ".parquet" or (p.is_dir() and (any(p.glob("part-*.parquet")) or any(p.glob("*.parquet"))))


def add_common_arguments(p: argparse.ArgumentParser, model_help: str, formats: str, outputs: str,
                         splits: bool = True) -> None:
    """The options every ``facebatch evaluate KIND`` takes."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--input", required=True, help="raw dataset (detected and cropped here) or preprocess Parquet")
    p.add_argument("--format", default=None, help=f"format of a raw dataset ({formats})")
    p.add_argument("--output", required=True, help=f"folder for {outputs}")
    p.add_argument("--labels", default=None, help="labels file when it is not where the format expects it")
    if splits:
        p.add_argument("--split", action="append", default=None, help="only rows of this split (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--address", default=None, help="Ray address for preprocessing a raw dataset")
    p.add_argument("--degrade", default=None, metavar="SPEC",
                   help="degrade each source image before detection, e.g. scale=0.5 (downscale, antialiased), "
                        "jpeg=30 (re-encode), blur=1.5 (Gaussian sigma, px); combine with commas. Needs a raw "
                        "dataset; the SPEC is written into metrics.json")


def check_degrade(src: str, degrade: str | None) -> dict | None:
    """The parsed ``--degrade`` for metrics.json (None without one); a clear error for Parquet input."""
    from ..degrade import Degradation
    d = Degradation.parse(degrade)
    if d.is_identity:
        return None
    if is_parquet_source(src):
        raise ValueError(f"--degrade applies to source images before detection, but --input {src} is a "
                         "preprocess output (crops already cut); pass the raw dataset with --format")
    return d.to_dict()


class PrepareRaw(Protocol):
    """Detect and crop the raw dataset ``src`` (format ``fmt``) into a preprocess Parquet output at
    ``output``, one row per image (per face with ``all_faces``), each image degraded by ``degrade``
    first. :func:`facebatch.evaluation.cli.preprocess_raw` runs the preprocess job."""

    def __call__(self, src: str, output: str, fmt: str, *, labels: str | None, limit: int | None, crop_size: int,
                 all_faces: bool, degrade: str | None, address: str | None) -> None: ...


def load_rows(src: str, fmt: str | None, outdir: Path, labels: str | None = None, address: str | None = None,
              crop_size: int = 256, splits: list[str] | None = None, limit: int | None = None,
              all_faces: bool = False, degrade: str | None = None, prepare: PrepareRaw | None = None) -> list[dict]:
    """Rows of a preprocess output; a raw dataset is first preprocessed (detect + crop) by ``prepare`` into
    ``outdir/preprocess`` (one row per face with ``all_faces``; each source image degraded by
    ``degrade`` first, labels moved with it)."""
    check_degrade(src, degrade)
    if not is_parquet_source(src):
        if not fmt:
            raise ValueError(f"--input {src} is not a preprocess Parquet output, so --format is needed")
        if prepare is None:
            raise ValueError(f"--input {src} is a raw dataset: it must be detected and cropped first. Use "
                             "`facebatch evaluate`, the functions of facebatch.evaluation.cli, or pass "
                             "prepare=facebatch.evaluation.cli.preprocess_raw")
        pre = outdir / "preprocess"
        prepare(src, str(pre), fmt, labels=labels, limit=limit, crop_size=crop_size, all_faces=all_faces,
                degrade=degrade, address=address)
        src = str(pre)
    rows = pq.read_table(src).to_pylist()
    rows.sort(key=lambda r: (r["path"], r["face_index"] if r["face_index"] is not None else -1))
    if splits:
        rows = [r for r in rows if r["split"] in splits]
    if limit:  # the first N images (all their faces)
        keep = set(sorted({r["path"] for r in rows})[:limit])
        rows = [r for r in rows if r["path"] in keep]
    if not rows:
        raise ValueError(f"no rows to evaluate in {src}" + (f" for splits {splits}" if splits else ""))
    return rows


def write_model_json(info: dict, meta: dict, path: Path, leave_out=("history",)) -> Path:
    """model.json: the model's file info and its meta, without the bulky ``leave_out`` entries."""
    path.write_text(json.dumps({k: v for k, v in info.items() if k != "meta"} | {
        "meta": {k: v for k, v in meta.items() if k not in leave_out}}, indent=2, default=str))
    return path


def has_crop(row: dict) -> bool:
    return row["status"] == "ok" and row["crop"] is not None


def row_batches(rows: list[dict], spec: InputSpec, batch_size: int = 64):
    """``(indices, x)`` batches of model input (the one input contract) for the rows that have a crop."""
    idx = [i for i, r in enumerate(rows) if has_crop(r)]
    for j in range(0, len(idx), batch_size):
        sel = idx[j:j + batch_size]
        yield sel, model_input([rows[i]["crop"] for i in sel], spec)


def labelled_face_rows(rows: list[dict]) -> list[dict]:
    """One row per labelled image: the detected face its keypoint labels belong to (box holds the
    points' centre, best overlap; :func:`facebatch.geometry.match_labelled_face`), not simply the
    largest. An image where no detected face matches keeps one row without a crop (it counts as
    failed, with the reason in ``error``)."""
    from ..geometry import match_labelled_face
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        if r["keypoints"] is not None:
            by_path.setdefault(r["path"], []).append(r)
    out = []
    for path, group in by_path.items():
        faces = [r for r in group if has_crop(r) and r["box"] is not None]
        pts = np.asarray(group[0]["keypoints"], np.float32).reshape(-1, 2)
        k = match_labelled_face([r["box"] for r in faces], pts)
        if k is not None:
            out.append(faces[k])
        elif faces:
            out.append({**faces[0], "crop": None, "status": "no_face",
                        "error": f"none of {len(faces)} detected face(s) holds the labelled points' centre"})
        else:
            out.append(group[0])
    return out


def fallback_crop_box(row: dict) -> list[float]:
    """For inputs without a face: the centred square of the whole image (a naive guess that still counts)."""
    w, h = row.get("width") or 1, row.get("height") or 1
    s = float(min(w, h))
    return [(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2]
