"""Annotate every new or changed photo in a folder or bucket: faces, keypoints, attributes, identity.

The FaceAnalyzer (detector + keypoints68 + attributes; the identity model with --gallery or
--embeddings) run at scale on
Ray Data. Incremental by default: the listing is diffed against DST/_state/manifest.parquet and
only new and changed objects are processed; deleted ones are recorded. Each run writes
DST/dt=YYYY-MM-DD/run=RUN_ID/part-*.parquet (one row per face, per image without a face and
per failed input), _summary.json and then _SUCCESS; the state is replaced after that. A killed
run is finished by running the same command again. Read the live view with
facebatch.annotations.read_latest(DST); columns are in docs/ANNOTATIONS.md.

examples:
  facebatch annotate --input s3://photos/incoming --output s3://photos-annotations
  facebatch annotate --input ../shared/data/udacity68/training --output out/ann --report
  facebatch annotate --input photos/ --output out/ann --dry-run
"""
from __future__ import annotations

import argparse
import json
import sys

from ..detection.options import add_detector_arguments, detector_config_from_args
from ..inference.config import AnalyzerConfig
from .config import DECODE_MODES, AnnotateConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = AnnotateConfig(input="", output="")
    a = d.analyzer
    p.add_argument("--input", required=True,
                   help="a folder, an s3://bucket/prefix, or a manifest (.parquet/.csv with a 'path' column)")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix (DST)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    m = p.add_argument_group("models")
    m.add_argument("--keypoints", default=a.keypoints, help="keypoint model: shipped name, model file, or none")
    m.add_argument("--attributes", default=a.attributes, help="attribute model: shipped name, file, or none")
    m.add_argument("--gallery", default=None, help="an `enroll` gallery (same identity model): fills identity and "
                                                    "identity_similarity")
    m.add_argument("--people", action="store_true",
                   help="after the run, group the faces of the whole collection into persons in DST/_people/ "
                        "(ids stable night after night; implies --embeddings; see `facebatch people`)")
    m.add_argument("--min-faces", type=int, default=d.min_faces,
                   help="with --people: the smallest group of faces that becomes a person")
    m.add_argument("--embeddings", action="store_true",
                   help="store each face's identity embedding (128 numbers from the identity model; biometric data; "
                        "off by default)")
    m.add_argument("--identity", default="identity", metavar="MODEL",
                   help="identity model, run only when --gallery or --embeddings asks for it: identity (the shipped "
                        "recognition network) or a model file with an embedding")
    m.add_argument("--head", action="append", default=[], metavar="NAME",
                   help="another analyzer head by registered name or module:name (repeatable); its declared "
                        "outputs become columns")
    m.add_argument("--crops", action="store_true", help="store each face's 256 px JPEG crop (off by default)")
    f = m.add_mutually_exclusive_group()
    f.add_argument("--all-faces", dest="all_faces", action="store_true", default=True,
                   help="one row per face, largest first (default)")
    f.add_argument("--largest-face", dest="all_faces", action="store_false", help="only the largest face per photo")
    add_detector_arguments(p)
    r = p.add_argument_group("run")
    r.add_argument("--full", action="store_true", help="ignore earlier runs and redo every listed object")
    r.add_argument("--max-reannotate", type=int, default=None, metavar="N",
                   help="re-annotate at most N stale objects (annotated by other model versions) this run, after "
                        "the new and changed ones; the rest are left for later runs (default: all)")
    r.add_argument("--dry-run", action="store_true", help="list what would be processed and deleted, then exit")
    r.add_argument("--report", action="store_true", help="write report.html into the run folder")
    r.add_argument("--workers", type=int, default=None, help="analyzer actors (default: from the cluster's CPUs/GPUs)")
    r.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per analyzer actor (default: from the cluster)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per analyzer actor (0 = CPU)")
    r.add_argument("--max-failure-rate", type=float, default=d.max_failure_rate,
                   help="exit with status 3 when more than this share of processed inputs failed (inputs that "
                        "failed on a transient storage error make it 75 instead: rerun)")
    r.add_argument("--shard-size", type=int, default=d.shard_size,
                   help="inputs per part file at most (fewer on small runs, so that every worker gets an equal share)")
    r.add_argument("--max-pixels", type=int, default=d.max_pixels, help="larger images get status too_large")
    r.add_argument("--decode", choices=DECODE_MODES, default=d.decode,
                   help="draft: decode JPEGs at the smallest scale detection needs; full: always full size")
    r.add_argument("--lock-ttl", type=float, default=d.lock_ttl_s, help="seconds the output lock lives unless renewed")
    r.add_argument("--retry-seconds", type=float, default=d.retry_s,
                   help="how long transient storage errors are retried per read or write")
    r.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")


def config_from_args(args: argparse.Namespace) -> AnnotateConfig:
    wants_identity = bool(args.gallery or args.embeddings or args.people)  # only when an output needs it
    analyzer = AnalyzerConfig(keypoints=args.keypoints, attributes=args.attributes, gallery=args.gallery,
                              identity=args.identity if wants_identity else None, heads=tuple(args.head),
                              detector=detector_config_from_args(args))
    return AnnotateConfig(
        input=args.input, output=args.output, analyzer=analyzer, embeddings=args.embeddings, crops=args.crops,
        people=args.people, min_faces=args.min_faces,
        all_faces=args.all_faces, decode=args.decode,
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        shard_size=args.shard_size, max_pixels=args.max_pixels, max_failure_rate=args.max_failure_rate,
        full=args.full, max_reannotate=args.max_reannotate, dry_run=args.dry_run, report=args.report,
        s3_endpoint_url=args.s3_endpoint_url,
        lock_ttl_s=args.lock_ttl, retry_s=args.retry_seconds)


def print_summary(s: dict, stream=sys.stdout) -> None:
    print("\n== facebatch annotate summary ==", file=stream)
    print(f"run {s['run_id']}  listed {s['listed']}: new {s['new']}, changed {s['changed']}, retried {s['retried']}, "
          f"unchanged {s['unchanged']}, deleted {s['deleted']}", file=stream)
    if s.get("stale") or s.get("erased"):
        print(f"stale (other model versions) {s.get('stale', 0)}: re-annotated {s.get('reannotated', 0)}, "
              f"left for later runs {s.get('stale_left', 0)}; erased (skipped) {s.get('erased', 0)}", file=stream)
    print(f"processed {s['processed']}  rows {s['rows']}  faces {s['faces']}  failed {s['failed']}", file=stream)
    if s["status_counts"]:
        print("by status: " + ", ".join(f"{k} {v}" for k, v in s["status_counts"].items()), file=stream)
    print(f"wall {s['wall_s']} s  images/s {s['images_per_s']}  steady {s['steady_images_per_s']}", file=stream)
    print(f"start-up: {json.dumps(s['startup_s'])}", file=stream)
    print(f"run folder: {s['run_folder']}", file=stream)


def run(args: argparse.Namespace) -> int:
    """Exit status (:mod:`facebatch.batch.errors`): 0 clean; 75 inputs failed on a transient storage
    error, the run stopped on a storage outage or lost node, or another run holds the lock (rerun
    later); 3 too many permanent failures; 1 other errors; 2 bad usage and 130 Ctrl-C (top level)."""
    from ..batch.errors import EXIT_TEMPFAIL
    from ..batch.summary import exit_status, retry_hint
    from .lock import LockHeld
    from .pipeline import JobFailed, run_annotate
    cfg = config_from_args(args)
    ray_was_up = _ray_initialized()
    try:
        summary = run_annotate(cfg, address=args.address)
    except LockHeld as exc:  # another run is writing this output: try again later
        print(f"facebatch annotate: error: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except JobFailed as exc:  # nothing was committed, the same command finishes it
        if getattr(args, "verbose", False):
            import traceback
            traceback.print_exc()
        print(f"facebatch annotate: error: {exc}", file=sys.stderr)
        return exc.exit_status
    if not ray_was_up:  # committed: end the Ray this command started now (a failed run leaves it to exit)
        _stop_ray()
    if summary.get("dry_run"):
        print(f"dry run: listed {summary['listed']}; would process {len(summary['would_process'])} "
              f"(new {summary['new']}, changed {summary['changed']}, retried {summary['retried']}, "
              f"stale {summary.get('reannotated', 0)} of {summary.get('stale', 0)}), "
              f"unchanged {summary['unchanged']}, deleted {summary['deleted']}")
        for p in summary["would_process"]:
            print(f"process {p}")
        for p in summary["would_delete"]:
            print(f"deleted {p}")
        return 0
    print_summary(summary)
    status = exit_status(summary, cfg.max_failure_rate)
    if status == EXIT_TEMPFAIL:
        print(f"facebatch annotate: {retry_hint(summary, 'run the same command again')}", file=sys.stderr)
    elif status:
        print(f"facebatch annotate: {summary['failed']} of {summary['processed']} inputs failed "
              f"({summary['failure_rate']:.1%}), above --max-failure-rate {cfg.max_failure_rate:.1%}", file=sys.stderr)
    return status


def _ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _stop_ray() -> None:
    """Shut down the Ray this command started (or disconnect from the cluster it joined) once the
    run is committed: at interpreter exit Ray would first sleep half a second for worker logs.
    Ray that was already up when the command started (a caller's session) is left alone."""
    if _ray_initialized():
        try:
            sys.modules["ray"].shutdown()
        except Exception as exc:  # the run is committed; say so and let the exit clean up
            print(f"[facebatch] Ray shutdown: {type(exc).__name__}: {exc}", file=sys.stderr)


def annotate(argv: list[str]) -> int:
    """Python entry: ``annotate(["--input", ..., "--output", ...])``; same as the command."""
    from ..cli import main
    return main(["annotate", *argv])
