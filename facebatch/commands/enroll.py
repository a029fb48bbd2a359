"""Enroll people into a face gallery (.npz), or match faces against one.

    facebatch enroll --input PEOPLE/ --output gallery.npz [--model identity]
    facebatch enroll --match PHOTOS/ --gallery gallery.npz [--threshold 0.5] [--output matches.csv]

--input holds one sub-folder per person (the folder name is the person's name) with one or
more photos each. Every photo is decoded, its largest face detected, cut and embedded with
MODEL (``identity``, the shipped recognition network: 128-d; or a model file with an identity
embedding) through
:class:`~facebatch.inference.FaceAnalyzer`, in this process (no Ray job: a gallery is a
handful of photos per person). Each person's centroid is stored in an open-set
:class:`~facebatch.attributes.gallery.Gallery` with the model's name and weights hash.
Photos where no face is found (or that cannot be read) are reported and skipped.

--match takes a folder of photos (or a single file): the largest face of each is embedded with
the same model (the gallery refuses another one) and given the nearest person, or ``unknown``
when the cosine similarity is below --threshold (default: the gallery's threshold if it has
one, else the model's ``verification_threshold`` if recorded, else 0.5; `facebatch evaluate
identity` reports a fitted one). Matches are printed as JSON lines and, with --output, written
as CSV. For whole buckets use ``facebatch annotate --gallery``.

The same as Python functions: :func:`enroll` and :func:`match`.
"""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..formats.base import IMAGE_EXTENSIONS
from ..detection import DetectorConfig
from ..detection.options import add_detector_arguments, detector_config_from_args
from ..inference.config import AnalyzerConfig

DEFAULT_THRESHOLD = 0.5
BATCH = 16  # photos decoded and analyzed together (bounded memory for big folders)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (*IMAGE_EXTENSIONS, ".gif")
                  and not p.name.startswith("."))


def _embed_files(analyzer, paths: list[Path]) -> list[dict]:
    """Per file: path, status, error and the largest face's embedding (None without a face)."""
    from ..imaging import decode_image
    out = []
    for j in range(0, len(paths), BATCH):
        part = paths[j:j + BATCH]
        decoded = [decode_image(p.read_bytes()) for p in part]
        ok = [k for k, d in enumerate(decoded) if d.ok]
        faces = analyzer.analyze([decoded[k].image for k in ok], max_faces=1, keypoints=False,
                                 attributes=False, identity=False, embedding=True)
        by_index = dict(zip(ok, faces))
        for k, (p, d) in enumerate(zip(part, decoded)):
            f = by_index.get(k) or []
            status = d.status if not d.ok else ("ok" if f else "no_face")
            error = d.error if not d.ok else (None if f else "no face found above the score threshold")
            out.append({"path": str(p), "status": status, "error": error,
                        "embedding": np.asarray(f[0].embedding, np.float32) if f else None})
    return out


def _analyzer(model: str, gallery: str | None = None, threshold: float | None = None,
              detector: DetectorConfig | str = "mobilenet", device: str | None = None,
              weights_path: str | None = None, **options):
    from ..identity.meta import identity_meta, is_identity_model
    det = DetectorConfig(backend=detector) if isinstance(detector, str) else detector
    aligned = is_identity_model(model) and identity_meta(model).get("align", "keypoints68") == "keypoints68"
    cfg = AnalyzerConfig(keypoints="keypoints68" if aligned else None, attributes=None, identity=model,
                         gallery=gallery, identity_threshold=threshold, detector=replace(det, **options), device=device)
    return cfg.build(weights_path=weights_path)


def _model_metadata(head) -> tuple[str, dict]:
    """``(model name, gallery metadata)`` of the head that made the embeddings."""
    info = getattr(head, "info", None)
    if info is not None:  # an attributes model file's embedding
        return info["model"], {"model_file": Path(info["path"]).name, "model_file_sha256": info["sha256"],
                               "input_size": head.input.size}
    d = head.describe()
    return d["model"], {"model_file": d["name"], "model_file_sha256": d["dat_sha256"], "align": d["align"]}


def enroll(input_dir: str, output: str, model: str = "identity", threshold: float | None = None,
           **detector) -> dict:
    """Build and save a gallery from a folder with one sub-folder per person; returns a summary
    (``gallery`` path, ``people``, ``images``, ``no_face`` paths with their status).

    ``**detector``: ``detector`` (a :class:`~facebatch.detection.DetectorConfig` or a backend name),
    ``DetectorConfig`` fields that replace its own, ``device`` and ``weights_path``."""
    from ..attributes.gallery import Gallery
    from ..attributes.models import state_dict_sha256
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--input {input_dir} is not a folder (one sub-folder per person expected)")
    people = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not people:
        raise ValueError(f"--input {input_dir} has no sub-folders; put each person's photos in a folder named "
                         "after them")
    fa = _analyzer(model, **detector)
    rows, names = [], []
    for person in people:
        r = _embed_files(fa, _photos(person))
        rows += r
        names += [person.name] * len(r)
    ok = [k for k, r in enumerate(rows) if r["embedding"] is not None]
    if not ok:
        raise ValueError(f"no face found in any photo under {input_dir}")
    head = fa.embedding_head
    model_name, meta = _model_metadata(head)
    meta["source"] = str(input_dir)
    if threshold is not None:
        meta["threshold"] = float(threshold)
    gallery = Gallery.from_embeddings(np.stack([rows[k]["embedding"] for k in ok]), [names[k] for k in ok],
                                      model_name=model_name, model_hash=state_dict_sha256(head.model), **meta)
    path = gallery.save(output)
    no_face = [{"path": r["path"], "status": r["status"], "error": r["error"]} for r in rows if r["embedding"] is None]
    return {"gallery": str(path), "people": len(gallery), "images": len(ok), "no_face": no_face,
            "counts": dict(zip(gallery.names, map(int, gallery.counts)))}


def match(images: str, gallery: str, model: str = "identity", threshold: float | None = None,
          **detector) -> list[dict]:
    """Nearest enrolled person (or ``unknown``) for the largest face in each photo of a folder or file
    (``**detector`` as :func:`enroll`)."""
    from ..attributes.gallery import UNKNOWN
    src = Path(images)
    if not src.exists():
        raise FileNotFoundError(f"--match {images} not found")
    fa = _analyzer(model, gallery=gallery, threshold=threshold, **detector)
    paths = [src] if src.is_file() else _photos(src)
    out = []
    for r in _embed_files(fa, paths):
        if r["embedding"] is None:
            out.append({"path": r["path"], "status": r["status"], "person": UNKNOWN, "similarity": None})
            continue
        name, sim = fa.gallery.match(r["embedding"], float(fa.identity_threshold))[0]
        out.append({"path": r["path"], "status": r["status"], "person": name, "similarity": round(sim, 5)})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default=None, help="folder with one sub-folder of photos per person (enroll)")
    p.add_argument("--output", default=None, help="gallery file to write (.npz; enroll) or matches CSV (--match)")
    p.add_argument("--model", default="identity",
                   help="identity model: identity (the shipped recognition network, 128-d), or a model file / "
                        "shipped name with an identity embedding (e.g. attributes, its 167-d LDA embedding)")
    p.add_argument("--match", default=None, metavar="PHOTOS", help="folder of photos (or one file) to identify")
    p.add_argument("--gallery", default=None, help="gallery .npz to match against (with --match)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity below which a face is 'unknown' (stored in the gallery when enrolling)")
    add_detector_arguments(p)
    old = p.add_argument_group("accepted for compatibility, no longer used (enroll runs in this process)")
    old.add_argument("--crop-size", type=int, default=None, help="the crop frame now comes from the model file")
    old.add_argument("--work-dir", default=None, help="no preprocess output is written any more")
    old.add_argument("--address", default=None, help="no Ray job is started any more")


def run(args: argparse.Namespace) -> int:
    import sys
    for opt in ("crop_size", "work_dir", "address"):
        if getattr(args, opt, None) is not None:
            print(f"facebatch enroll: note: --{opt.replace('_', '-')} is no longer used (enroll runs in this "
                  "process through FaceAnalyzer)", file=sys.stderr)
    if args.match:
        if not args.gallery:
            raise ValueError("--match needs --gallery GALLERY.npz")
        res = match(args.match, args.gallery, args.model, args.threshold, detector=detector_config_from_args(args))
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
    summary = enroll(args.input, args.output, args.model, args.threshold, detector=detector_config_from_args(args))
    print(json.dumps(summary, indent=2))
    return 0

