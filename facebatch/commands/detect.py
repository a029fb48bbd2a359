"""Detect faces in a few images on this machine and print one JSON line per image.

For whole folders or buckets use ``facebatch preprocess``, which runs on Ray. Each line
holds the path, the image size and the faces (box, score, 5 landmarks: image-left eye,
image-right eye, nose, image-left mouth corner, image-right mouth corner).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..detection import DetectorConfig, create_detector
from ..detection.options import add_detector_arguments, detector_config_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    add_detector_arguments(p)


def detect(images: list[str], config: DetectorConfig | str = "mobilenet", **options) -> list[dict]:
    """Detect faces in image files; returns one dict per file (bad files get an ``error``).

    ``config`` and ``options`` are :func:`~facebatch.detection.create_detector`'s."""
    from ..imaging import decode_image
    det = create_detector(config, **options)
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
    for row in detect(args.images, detector_config_from_args(args)):
        print(json.dumps(row), flush=True)
    return 0
