"""The ``facebatch`` command line. Each subcommand is also a Python function.

    facebatch analyze IMAGE...           faces, keypoints, attributes (identity) of a few images, JSON (no Ray)
    facebatch detect IMAGE...            detect faces in a few images, print JSON (no Ray)
    facebatch preprocess ...             Ray Data job: images -> detected, cropped faces in Parquet
    facebatch train keypoints|attributes Ray Train job: Parquet -> keypoint or attribute model
    facebatch evaluate keypoints|attributes|identity ...  metrics, predictions and pictures for a model
    facebatch enroll ...                 people folders -> identity gallery; --match photos against it
    facebatch forget --annotations DST (--path GLOB | --person NAME_OR_ID)   erase photos' faces everywhere

Run ``facebatch SUBCOMMAND --help`` for the options of each.

Exit status: 0 done; 1 an unexpected error; 2 bad usage (options, inputs, credentials); 3 too many
inputs failed (``--max-failure-rate``); 75 try again later (inputs failed on a transient storage
error, a storage outage or lost node stopped the run, or another run holds the output's lock);
130 interrupted. See :mod:`facebatch.batch.errors`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "analyze": "facebatch.commands.analyze",
    "detect": "facebatch.commands.detect",
    "preprocess": "facebatch.preprocess.cli",
    "train": "facebatch.training.cli",
    "evaluate": "facebatch.evaluation.cli",
    "enroll": "facebatch.commands.enroll",
    "annotate": "facebatch.annotate.cli",
    "serve": "facebatch.serve.cli",
    "people": "facebatch.commands.people",
    "forget": "facebatch.annotate.forget",
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``facebatch`` parser; ``only`` builds just that subcommand's parser (the others' modules
    are not imported, so e.g. ``facebatch annotate`` starts without torch in the driver)."""
    parser = argparse.ArgumentParser(
        prog="facebatch", formatter_class=_Formatter,
        description="Turn image collections into face data: batched RetinaFace detection, "
                    "preprocessing to Parquet on Ray Data, keypoint and attribute models on Ray Train.",
        epilog="Without --address (or $RAY_ADDRESS) Ray jobs start an embedded local Ray on 127.0.0.1.\n"
               "Data and weights: $FACEBATCH_DATA, $FACEBATCH_WEIGHTS_DIR (see README).")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"facebatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        mod = importlib.import_module(modname)
        doc = (mod.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc,
                           formatter_class=_Formatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``facebatch [-v] COMMAND [options]``; returns the exit code."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    chosen = next((t for t in tokens if not t.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in SUBCOMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options (argparse cannot mix them with a nargs="*" positional)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .raycluster import local_ray_env, resolve_address
    if resolve_address(getattr(args, "address", None)) is None:
        local_ray_env()  # before anything imports ray
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Bad options or inputs: say what is wrong; the traceback only with -v (for debugging).
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(f"facebatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Commands with resumable state (preprocess, annotate, train) say how to resume themselves.
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(f"\nfacebatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Errors that know their exit status (facebatch.batch.errors: JobFailed 75 or 1, the output
        # lock held by another run 75); anything else is a bug: traceback, exit 1.
        status = getattr(exc, "exit_status", None)
        if not isinstance(status, int):
            raise
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(f"facebatch {args.command}: error: {exc}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
