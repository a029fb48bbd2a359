"""Enroll people into a face gallery (.npz), or match faces against one.

    facebatch enroll --input PEOPLE/ --output gallery.npz [--model attributes]
    facebatch enroll --match PHOTOS/ --gallery gallery.npz [--threshold 0.5] [--output matches.csv]

--input holds one sub-folder per person (the folder name is the person's name) with one or
more photos each. Every photo is detected and cropped (the preprocess job, format
``classes``, on Ray), embedded with MODEL (a shipped name or a model file with an identity
embedding), and each person's centroid is stored in an open-set
:class:`~facebatch.attributes.gallery.Gallery` with the model's name and weights hash.
Photos where no face is found are reported and skipped.

--match takes a folder of photos (or a single file): each face is embedded with the same model
(the gallery refuses another one) and given the nearest person, or ``unknown`` when the cosine
similarity is below --threshold (default: the gallery's threshold if it has one, else the
model's ``verification_threshold`` if recorded, else 0.5; `facebatch evaluate identity`
reports a fitted one). Matches are printed as JSON lines and, with --output, written as CSV.

The same as Python functions: :func:`enroll` and :func:`match`.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_THRESHOLD = 0.5


def _preprocess(src: str, fmt: str, work: Path, address: str | None, crop_size: int) -> list[dict]:
    import pyarrow.parquet as pq
    from ..preprocess.config import PreprocessConfig
    from ..preprocess.pipeline import run_preprocess
    from ..preprocess.rows import CropConfig
    out = work / "preprocess"
    run_preprocess(PreprocessConfig(input=str(src), output=str(out), format=fmt, progress="none",
                                    crop=CropConfig(crop_size=crop_size)), address=address)
    rows = pq.read_table(str(out)).to_pylist()
    rows = [r for r in rows if (r["face_index"] or 0) <= 0]
    rows.sort(key=lambda r: r["path"])
    return rows


class _WorkDir:
    def __init__(self, work_dir: str | None) -> None:
        self.keep = work_dir is not None
        self.path = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="facebatch-enroll-"))

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def enroll(input_dir: str, output: str, model: str = "attributes", address: str | None = None,
           work_dir: str | None = None, crop_size: int = 256, threshold: float | None = None) -> dict:
    """Build and save a gallery from a folder with one sub-folder per person; returns a summary
    (``gallery`` path, ``people``, ``images``, ``no_face`` paths)."""
    from ..attributes.gallery import Gallery
    from ..attributes.models import state_dict_sha256
    from ..evaluation.attributes import embed_rows, load_attribute_model
    net, info = load_attribute_model(model)
    if not Path(input_dir).is_dir():
        raise FileNotFoundError(f"--input {input_dir} is not a folder (one sub-folder per person expected)")
    with _WorkDir(work_dir) as work:
        rows = _preprocess(input_dir, "classes", work, address, crop_size)
    ok = [r for r in rows if r["status"] == "ok" and r["crop"] is not None]
    if not ok:
        raise ValueError(f"no face found in any photo under {input_dir}")
    emb = embed_rows(net, info, ok)
    meta = {"model_file": Path(info["path"]).name, "model_file_sha256": info["sha256"],
            "input_size": info["meta"]["input_size"], "source": str(input_dir)}
    if threshold is not None:
        meta["threshold"] = float(threshold)
    gallery = Gallery.from_embeddings(emb, [r["identity"] for r in ok], model_name=info["model"],
                                      model_hash=state_dict_sha256(net), **meta)
    path = gallery.save(output)
    no_face = [r["path"] for r in rows if r["status"] != "ok" or r["crop"] is None]
    return {"gallery": str(path), "people": len(gallery), "images": len(ok), "no_face": no_face,
            "counts": dict(zip(gallery.names, map(int, gallery.counts)))}


def match(images: str, gallery: str, model: str = "attributes", threshold: float | None = None,
          address: str | None = None, work_dir: str | None = None, crop_size: int = 256) -> list[dict]:
    """Nearest enrolled person (or ``unknown``) for the face in each photo of a folder or file."""
    from ..attributes.gallery import UNKNOWN, Gallery
    from ..attributes.models import state_dict_sha256
    from ..evaluation.attributes import embed_rows, load_attribute_model
    net, info = load_attribute_model(model)
    g = Gallery.load(gallery, expected_model_hash=state_dict_sha256(net))
    if threshold is None:
        threshold = g.metadata.get("threshold") or info["meta"].get("verification_threshold") or DEFAULT_THRESHOLD
    src = Path(images)
    if not src.exists():
        raise FileNotFoundError(f"--match {images} not found")
    with _WorkDir(work_dir) as work:
        if src.is_file():  # the folder format reads folders: link the one file into one
            one = work / "single"
            one.mkdir(exist_ok=True)
            (one / src.name).symlink_to(src.resolve())
            src = one
        rows = _preprocess(str(src), "folder", work, address, crop_size)
    emb = embed_rows(net, info, rows)
    out = []
    for r, e in zip(rows, emb):
        if r["status"] != "ok" or r["crop"] is None or not np.isfinite(e).all():
            out.append({"path": r["path"], "status": r["status"], "person": UNKNOWN, "similarity": None})
            continue
        name, sim = g.match(e, float(threshold))[0]
        out.append({"path": r["path"], "status": r["status"], "person": name, "similarity": round(sim, 5)})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default=None, help="folder with one sub-folder of photos per person (enroll)")
    p.add_argument("--output", default=None, help="gallery file to write (.npz; enroll) or matches CSV (--match)")
    p.add_argument("--model", default="attributes", help="shipped model name or model file with an identity embedding")
    p.add_argument("--match", default=None, metavar="PHOTOS", help="folder of photos (or one file) to identify")
    p.add_argument("--gallery", default=None, help="gallery .npz to match against (with --match)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity below which a face is 'unknown' (stored in the gallery when enrolling)")
    p.add_argument("--crop-size", type=int, default=256, help="side of the face crops made before embedding")
    p.add_argument("--work-dir", default=None, help="keep the preprocess output here (default: a temporary folder)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local Ray)")


def run(args: argparse.Namespace) -> int:
    if args.match:
        if not args.gallery:
            raise ValueError("--match needs --gallery GALLERY.npz")
        res = match(args.match, args.gallery, args.model, args.threshold, args.address, args.work_dir, args.crop_size)
        for r in res:
            print(json.dumps(r))
        if args.output:
            with open(args.output, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["path", "status", "person", "similarity"])
                w.writeheader()
                w.writerows(res)
        return 0
    if not args.input or not args.output:
        raise ValueError("enroll needs --input PEOPLE_DIR and --output GALLERY.npz (or --match PHOTOS --gallery G)")
    summary = enroll(args.input, args.output, args.model, args.address, args.work_dir, args.crop_size, args.threshold)
    print(json.dumps(summary, indent=2))
    return 0
