"""The detector's command-line options, shared by every command that detects faces.

    add_detector_arguments(parser)            # the "detector" argument group
    cfg = detector_config_from_args(args)     # -> DetectorConfig

Torch-free, like :mod:`.config`: job drivers build their parsers without importing torch.
"""
from __future__ import annotations

import argparse

from .backends import backend_names, backend_spec
from .config import UPSCALE_MODES, DetectorConfig


def add_detector_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``detector`` argument group (every :class:`DetectorConfig` option a user sets)."""
    d = DetectorConfig()
    g = p.add_argument_group("detector")
    g.add_argument("--backend", choices=backend_names(), default=d.backend,
                   help="; ".join(f"{n}: {backend_spec(n).description}" for n in backend_names()))
    g.add_argument("--score-threshold", type=float, default=d.score_threshold, help="minimum face score")
    g.add_argument("--nms-iou", type=float, default=d.nms_iou, help="NMS IoU threshold")
    g.add_argument("--max-side", type=int, default=d.max_side,
                   help="images with a longer side are downscaled for detection (results map back)")
    g.add_argument("--min-side", type=int, default=d.min_side,
                   help="images whose longer side is shorter are upscaled to it for detection, as --upscale says "
                        "(results map back)")
    g.add_argument("--upscale", choices=UPSCALE_MODES, default=d.upscale,
                   help="small images: retry = a second, upscaled look where nothing was found (found faces keep "
                        "the boxes the models were trained on); always = upscale every small image (better for "
                        "thumbnails of tiny faces); never")
    g.add_argument("--device", default=d.device, help="torch device for detection: cpu or cuda")
    g.add_argument("--detect-batch-size", type=int, default=d.batch_size, help="images per forward pass")
    g.add_argument("--weights-dir", default=None,
                   help="folder searched first for weights (then $FACEBATCH_WEIGHTS_DIR, the user cache, $FACEBATCH_DATA/weights)")


def detector_config_from_args(args: argparse.Namespace) -> DetectorConfig:
    """The :class:`DetectorConfig` that :func:`add_detector_arguments`'s options give."""
    return DetectorConfig(backend=args.backend, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
                          max_side=args.max_side, min_side=args.min_side, upscale=args.upscale,
                          device=args.device, batch_size=args.detect_batch_size, weights_dir=args.weights_dir)


__all__ = ["add_detector_arguments", "detector_config_from_args"]
