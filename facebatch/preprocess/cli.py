"""Preprocess images into face crops in Parquet, on Ray Data (local Ray or a cluster).

Lists the inputs, reads and decodes them in Ray tasks, detects faces in a pool of
detector actors, crops each chosen face to a square and writes Parquet parts with one
row per input (one per face with --all-faces), each with a status. Bad inputs keep a
row with the error; rows in equal rows out is checked at the end. A summary (counts by
status, images/s, wall time) is printed and saved as OUTPUT/_summary.json; the resolved
config and versions go to OUTPUT/_config.json and into every Parquet file's metadata.

examples:
  facebatch preprocess --input ../shared/data/udacity68 --format udacity68 --output out/udacity68
  facebatch preprocess --input s3://bucket/photos --format folder --output s3://bucket/faces --no-crops
  facebatch preprocess --input manifest.parquet --output out/x --resume
"""
from __future__ import annotations

import argparse
import json
import sys

from ..commands.detect import add_detector_arguments
from ..detection import DetectorConfig
from .config import PROGRESS_MODES, PreprocessConfig
from .rows import CropConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..formats.sources import FORMATS
    p.add_argument("--input", required=True,
                   help="a folder, an s3://bucket/prefix, or a manifest (.parquet/.csv with a 'path' column)")
    p.add_argument("--format", default="folder", choices=FORMATS,
                   help="how labels are found: folder (none), classes (folder per class), manifest, "
                        "csv (path + 0/1 label columns), udacity68, kaggle15, genki, celeba")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix for the Parquet parts")
    p.add_argument("--labels", default=None, help="labels file when not where the format expects it (udacity68 CSV)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    c = p.add_argument_group("crops")
    d = CropConfig()
    c.add_argument("--crop-size", type=int, default=d.crop_size, help="side of the square face crop in pixels")
    c.add_argument("--margin", type=float, default=d.margin,
                   help="grow the square by this fraction of the face box's larger side on each side")
    c.add_argument("--all-faces", action="store_true", help="one row per face (default: only the largest face)")
    c.add_argument("--no-crops", action="store_true", help="do not store crop images (privacy or size)")
    add_detector_arguments(p)
    r = p.add_argument_group("run")
    cfg = PreprocessConfig(input="", output="")
    r.add_argument("--shard-size", type=int, default=cfg.shard_size, help="inputs per output part")
    r.add_argument("--max-pixels", type=int, default=cfg.max_pixels, help="larger images get status too_large")
    r.add_argument("--val-fraction", type=float, default=cfg.val_fraction,
                   help="share of persons in the 'val' split where the dataset defines none")
    r.add_argument("--max-failure-rate", type=float, default=cfg.max_failure_rate,
                   help="exit with status 3 when more than this share of inputs fail to read or decode")
    r.add_argument("--resume", action="store_true", help="skip parts that a previous run finished")
    r.add_argument("--limit", type=int, default=None, help="only the first N inputs (sorted), for a trial run")
    r.add_argument("--workers", type=int, default=None, help="detection actors (default: from the cluster's CPUs/GPUs)")
    r.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per detection actor (default: from the cluster)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per detection actor (0 = CPU)")
    r.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    r.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="auto: a bar in a terminal, a line every --log-every seconds otherwise")
    r.add_argument("--log-every", type=float, default=cfg.log_every, help="seconds between progress lines")
    r.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)  # benchmarks only


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    from ..commands.detect import detector_options
    return PreprocessConfig(
        input=args.input, output=args.output, format=args.format, labels=args.labels,
        detector=DetectorConfig(backend=args.backend, **detector_options(args)),
        crop=CropConfig(crop_size=args.crop_size, margin=args.margin, all_faces=args.all_faces,
                        keep_crops=not args.no_crops),
        shard_size=args.shard_size, max_pixels=args.max_pixels, val_fraction=args.val_fraction,
        max_failure_rate=args.max_failure_rate, resume=args.resume, limit=args.limit, workers=args.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        s3_endpoint_url=args.s3_endpoint_url, progress=args.progress, log_every=args.log_every)


def print_summary(s: dict, stream=sys.stdout) -> None:
    print("\n== facebatch preprocess summary ==", file=stream)
    print(f"inputs {s['inputs']}  rows {s['rows']}  (rows in files {s['rows_in_files']}, check {s['rows_check']})", file=stream)
    print("by status: " + ", ".join(f"{k} {v}" for k, v in s["status_counts"].items()), file=stream)
    print(f"wall {s['wall_s']} s  processing {s['processing_s']} s  images/s {s['images_per_s']}  "
          f"shards {s['shards']} (skipped on resume: {s['shards_skipped_resume']})", file=stream)
    print("stage seconds (summed over workers): " + json.dumps(s["stage_s"]), file=stream)
    print(f"summary: {s['output'].rstrip('/')}/_summary.json", file=stream)


def run(args: argparse.Namespace) -> int:
    from .pipeline import run_preprocess
    cfg = config_from_args(args)
    summary = run_preprocess(cfg, address=args.address, random_weights=args.random_weights)
    print_summary(summary)
    if summary["failure_rate"] > cfg.max_failure_rate:
        print(f"facebatch preprocess: {summary['failed']} of {summary['inputs']} inputs failed "
              f"({summary['failure_rate']:.1%}), above --max-failure-rate {cfg.max_failure_rate:.1%}", file=sys.stderr)
        return 3
    return 0


def preprocess(argv: list[str]) -> int:
    """Python entry: ``preprocess(["--input", ..., "--output", ...])``; same as the command."""
    from ..cli import main
    return main(["preprocess", *argv])
