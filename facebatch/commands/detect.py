"""Detect faces in a few images on this machine and print one JSON line per image.

For whole folders or buckets use ``facebatch preprocess``, which runs on Ray. Each line
holds the path, the image size and the faces (box, score, 5 landmarks: image-left eye,
image-right eye, nose, image-left mouth corner, image-right mouth corner).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..detection import BACKENDS, DetectorConfig, create_detector


def add_detector_arguments(p: argparse.ArgumentParser) -> None:
    """Detector options shared by every command that detects faces."""
    d = DetectorConfig()
    g = p.add_argument_group("detector")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="mobilenet: RetinaFace-MobileNet-0.25 (fast); resnet50: retina-face's ResNet-50")
    g.add_argument("--score-threshold", type=float, default=d.score_threshold, help="minimum face score")
    g.add_argument("--nms-iou", type=float, default=d.nms_iou, help="NMS IoU threshold")
    g.add_argument("--max-side", type=int, default=d.max_side,
                   help="images with a longer side are downscaled for detection (results map back)")
    g.add_argument("--min-side", type=int, default=d.min_side,
                   help="images whose longer side is shorter are upscaled to it for detection, as --upscale says "
                        "(results map back)")
    g.add_argument("--upscale", choices=("retry", "always", "never"), default=d.upscale,
                   help="small images: retry = a second, upscaled look where nothing was found (found faces keep "
                        "the boxes the models were trained on); always = upscale every small image (better for "
                        "thumbnails of tiny faces); never")
    g.add_argument("--device", default=d.device, help="torch device for detection: cpu or cuda")
    g.add_argument("--detect-batch-size", type=int, default=d.batch_size, help="images per forward pass")
    g.add_argument("--weights-dir", default=None,
                   help="folder searched first for weights (then $FACEBATCH_WEIGHTS_DIR, the user cache, $FACEBATCH_DATA/weights)")


def detector_options(args: argparse.Namespace) -> dict:
    return dict(score_threshold=args.score_threshold, nms_iou=args.nms_iou, max_side=args.max_side,
                min_side=args.min_side, upscale=args.upscale, device=args.device, batch_size=args.detect_batch_size, weights_dir=args.weights_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    add_detector_arguments(p)


def detect(images: list[str], backend: str = "mobilenet", **options) -> list[dict]:
    """Detect faces in image files; returns one dict per file (bad files get an ``error``)."""
    from ..imaging import decode_image
    det = create_detector(backend, **options)
    out = []
    for path in images:
        res = decode_image(Path(path).read_bytes())
        row = {"path": path, "status": res.status, "error": res.error, "width": res.width, "height": res.height}
        if res.image is not None:
            row["faces"] = [f.to_dict() for f in det.detect([res.image])[0]]
        out.append(row)
    return out


def run(args: argparse.Namespace) -> int:
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no such image file: {p}")
    for row in detect(args.images, args.backend, **detector_options(args)):
        print(json.dumps(row), flush=True)
    return 0
