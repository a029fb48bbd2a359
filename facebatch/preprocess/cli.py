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
import traceback

from ..detection.options import add_detector_arguments, detector_config_from_args
from .config import PROGRESS_MODES, PreprocessConfig
from .rows import CropConfig
from ..batch.shards import RETRY_ON_RESUME


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
                   help="exit with status 3 when more than this share of inputs fail to read or decode "
                        "(any failure is also warned about in the summary; inputs that failed on a transient "
                        "storage error make it 75 instead: rerun with --resume)")
    r.add_argument("--resume", action="store_true",
                   help="skip parts a previous run finished whose inputs are unchanged; redo parts whose inputs "
                        "changed and parts with read_error/detect_error rows")
    r.add_argument("--limit", type=int, default=None, help="only the first N inputs (sorted, N >= 1), for a trial run")
    r.add_argument("--splits", default=None, metavar="SPLIT[,SPLIT]",
                   help="only inputs of these splits (train, val, test; val is a hashed share of persons), "
                        "e.g. --splits val to evaluate on the validation people without detecting the rest")
    r.add_argument("--workers", type=int, default=None, help="detection actors (default: from the cluster's CPUs/GPUs)")
    r.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per detection actor (default: from the cluster)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per detection actor (0 = CPU)")
    r.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
    r.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="auto: a bar in a terminal, a line every --log-every seconds otherwise")
    r.add_argument("--log-every", type=float, default=cfg.log_every,
                   help="seconds between progress lines; a line also comes when nothing finished, saying what the job waits for")
    r.add_argument("--retry-seconds", type=float, default=cfg.retry_s,
                   help="retry transient storage errors (connection refused/reset, timeouts, 5xx, SlowDown) "
                        "with backoff for this long per read or write")
    r.add_argument("--degrade", default=None, metavar="SPEC",
                   help="degrade every image before detection (robustness checks), e.g. scale=0.5,jpeg=30,blur=1.5; "
                        "sizes, boxes and labels are then in the degraded image's pixels")
    r.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)  # benchmarks only


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        input=args.input, output=args.output, format=args.format, labels=args.labels,
        detector=detector_config_from_args(args),
        crop=CropConfig(crop_size=args.crop_size, margin=args.margin, all_faces=args.all_faces,
                        keep_crops=not args.no_crops),
        shard_size=args.shard_size, max_pixels=args.max_pixels, val_fraction=args.val_fraction,
        max_failure_rate=args.max_failure_rate, resume=args.resume, limit=args.limit, workers=args.workers,
        splits=tuple(s.strip() for s in args.splits.split(",")) if args.splits is not None else None,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        s3_endpoint_url=args.s3_endpoint_url, progress=args.progress, log_every=args.log_every,
        retry_s=args.retry_seconds, degrade=args.degrade)


def print_summary(s: dict, stream=sys.stdout) -> None:
    print("\n== facebatch preprocess summary ==", file=stream)
    print(f"inputs {s['inputs']}  rows {s['rows']}  (rows in files {s['rows_in_files']}, check {s['rows_check']})", file=stream)
    print("by status: " + ", ".join(f"{k} {v}" for k, v in s["status_counts"].items()), file=stream)
    sk = s.get("skipped") or {}
    if sk.get("count"):
        print(f"skipped by the lister: {sk['count']} files (" + ", ".join(f"{k} {v}" for k, v in sk["by_reason"].items())
              + "), e.g. " + ", ".join(sk["examples"][:3]), file=stream)
    else:
        print("skipped by the lister: 0 files", file=stream)
    print(f"wall {s['wall_s']} s  processing {s['processing_s']} s  images/s {s['images_per_s']}  "
          f"shards {s['shards']} (skipped on resume: {s['shards_skipped_resume']})"
          + (f"  storage retries {s['retries']}" if s.get("retries") else ""), file=stream)
    if s.get("failed"):
        retryable = sum(v for k, v in s["status_counts"].items() if k in RETRY_ON_RESUME)
        print(f"WARNING: {s['failed']} of {s['inputs']} inputs failed ({s['failure_rate']:.1%})"
              + (f"; {retryable} could succeed on a retry: rerun with --resume" if retryable else ""), file=stream)
    print("stage seconds (summed over workers): " + json.dumps(s["stage_s"]), file=stream)
    print(f"summary: {s['output'].rstrip('/')}/_summary.json", file=stream)


def run(args: argparse.Namespace) -> int:
    """Run the job; expected failures print one line (``-v``: with the traceback), no raw traceback.
    Exit status (:mod:`facebatch.batch.errors`): 0 clean; 75 inputs failed on a transient storage
    error or the run stopped on a storage outage or lost node (rerun with --resume); 3 too many
    permanent failures; 2 bad options/inputs/storage; 130 Ctrl-C; 1 anything else."""
    from ..batch.check import OutputCheckError
    from ..batch.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TEMPFAIL, JobFailed
    from ..batch.summary import exit_status, retry_hint
    from .pipeline import Interrupted, run_preprocess
    verbose = getattr(args, "verbose", False)
    try:
        cfg = config_from_args(args)
        summary = run_preprocess(cfg, address=args.address, random_weights=args.random_weights)
    except (ValueError, FileNotFoundError, PermissionError):
        if verbose:
            traceback.print_exc()
        raise  # the top-level command prints the one-line error, exit 2
    except (JobFailed, OutputCheckError) as exc:
        if verbose:
            traceback.print_exc()
        print(f"facebatch preprocess: error: {exc}", file=sys.stderr)
        return exc.exit_status if isinstance(exc, JobFailed) else EXIT_ERROR
    except KeyboardInterrupt as exc:
        if verbose:
            traceback.print_exc()
        msg = str(exc) if isinstance(exc, Interrupted) else "interrupted; rerun the same command with --resume"
        print(f"\nfacebatch preprocess: {msg}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(summary)
    status = exit_status(summary, cfg.max_failure_rate)
    if status == EXIT_TEMPFAIL:
        print(f"facebatch preprocess: {retry_hint(summary, 'rerun the same command with --resume')}", file=sys.stderr)
    elif status:
        print(f"facebatch preprocess: {summary['failed']} of {summary['inputs']} inputs failed "
              f"({summary['failure_rate']:.1%}), above --max-failure-rate {cfg.max_failure_rate:.1%}", file=sys.stderr)
    return status


def preprocess(argv: list[str]) -> int:
    """Python entry: ``preprocess(["--input", ..., "--output", ...])``; same as the command."""
    from ..cli import main
    return main(["preprocess", *argv])
