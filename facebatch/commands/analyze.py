"""Analyze a few photos on this machine (no Ray) and print one JSON line per image.

    facebatch analyze photo.jpg group.png
    facebatch analyze --gallery people.npz --embeddings photo.jpg
    facebatch analyze --only detect *.jpg

The quick look before a big run: the same FaceAnalyzer that ``annotate`` and ``serve`` use.
Each line holds the path, status (ok, no_face, or why the file could not be read), the image
size after EXIF orientation, and per face (largest first): box (x1, y1, x2, y2), score,
landmarks (5 x, y pairs: image-left eye, image-right eye, nose, image-left mouth corner,
image-right mouth corner), face_size, keypoints68 (68 x, y pairs) and keypoints15, one score
and a ``_label`` per attribute (at the threshold stored in the model file), identity and
identity_similarity with --gallery. All coordinates are pixels of the oriented image.
Embeddings are biometric data: printed only with --embeddings. A last line on stderr gives
the models used and the time spent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..detection.options import add_detector_arguments, detector_config_from_args
from ..inference.config import AnalyzerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--only", choices=("detect",), default=None,
                   help="detect: boxes, scores and landmarks only (no keypoint or attribute model)")
    p.add_argument("--keypoints", default="keypoints68",
                   help="keypoint model: shipped name (keypoints68, keypoints15), model file, or none")
    p.add_argument("--attributes", default="attributes",
                   help="attribute/identity model: shipped name (attributes), model file, or none")
    p.add_argument("--gallery", default=None, help="identity gallery from `facebatch enroll` (.npz)")
    p.add_argument("--embeddings", action="store_true", help="print each face's identity embedding")
    p.add_argument("--max-faces", type=int, default=None, help="only the largest N faces of each image")
    add_detector_arguments(p)


def analyze_files(paths: list[str], analyzer, embeddings: bool = False, max_faces: int | None = None,
                  batch: int = 16):
    """Yield one record per file (path, status, error, width, height, faces), in order."""
    from ..imaging import decode_image
    for j in range(0, len(paths), batch):
        part = paths[j:j + batch]
        decoded = [decode_image(Path(p).read_bytes()) for p in part]
        ok = [k for k, d in enumerate(decoded) if d.ok]
        results = dict(zip(ok, analyzer.analyze([decoded[k].image for k in ok], max_faces=max_faces,
                                                embedding=embeddings)))
        for k, (p, d) in enumerate(zip(part, decoded)):
            rec = {"path": p, "status": d.status, "error": d.error, "width": d.width, "height": d.height}
            if d.ok:
                faces = [f.to_dict(embedding=embeddings) for f in results[k]]
                if not faces:
                    rec.update(status="no_face", error="no face found above the score threshold")
                rec["faces"] = faces
            yield rec


def run(args: argparse.Namespace) -> int:
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no such image file: {p}")
    if args.max_faces is not None and args.max_faces < 1:
        raise ValueError(f"--max-faces must be at least 1, got {args.max_faces}")
    detect_only = args.only == "detect"
    cfg = AnalyzerConfig(keypoints=None if detect_only else args.keypoints,
                         attributes=None if detect_only else args.attributes,
                         gallery=None if detect_only else args.gallery, detector=detector_config_from_args(args))
    t0 = time.perf_counter()
    fa = cfg.build()
    t1 = time.perf_counter()
    n = 0
    for rec in analyze_files(args.images, fa, args.embeddings, args.max_faces):
        print(json.dumps(rec), flush=True)
        n += 1
    d = fa.describe()
    models = {k: (v or {}).get("name") for k, v in d.items() if k in ("keypoints", "attributes")}
    print(f"facebatch analyze: {n} image(s) in {time.perf_counter() - t1:.2f} s (models loaded in {t1 - t0:.2f} s; "
          f"detector {d['detector']['backend']}, keypoints {models['keypoints']}, attributes {models['attributes']})",
          file=sys.stderr)
    return 0
