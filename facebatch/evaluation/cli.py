"""Evaluate a model: `facebatch evaluate keypoints|attributes|identity --model M --input SRC --output DIR`.

keypoints writes OUTDIR/metrics.json with n_images, failed, nme_interocular, rmse_norm,
mae_px, pck_5px, pck_10px, pck_15px, plus predictions.csv, evaluation.csv (per point),
samples.png (truth green, prediction red) and curves.png (from the model's training history).
attributes writes OUTDIR/metrics.json with one object per attribute (n, failed, accuracy,
balanced_accuracy, precision, recall_pos, recall_neg, f1, roc_auc, confusion), predictions.csv
and confusion_<attribute>.png. identity writes top1 (gallery of train-split people, test-split
probes) and verification_accuracy (pairs of val-split people unseen in training).

A raw dataset is detected and cropped by the preprocess job first (:func:`preprocess_raw`). This
module, the top layer, wires the two jobs together: the evaluation modules do not import preprocess.
From Python, :func:`evaluate_keypoints`, :func:`evaluate_attributes` and :func:`evaluate_identity`
here take raw datasets too; those of the evaluation modules take ``prepare=preprocess_raw``.
"""
from __future__ import annotations

import argparse
import importlib

KINDS = {"keypoints": "facebatch.evaluation.keypoints", "attributes": "facebatch.evaluation.attributes",
         "identity": "facebatch.evaluation.identity", "people": "facebatch.evaluation.people"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, modname in KINDS.items():
        mod = importlib.import_module(modname)
        doc = (mod.__doc__ or "").strip()
        sp = sub.add_parser(kind, help=doc.splitlines()[0], description=doc)
        mod.add_arguments(sp)
        sp.set_defaults(_kind_run=mod.run)


def preprocess_raw(src: str, output: str, fmt: str, *, labels: str | None = None, limit: int | None = None,
                   crop_size: int = 256, all_faces: bool = False, degrade: str | None = None,
                   address: str | None = None) -> None:
    """Detect and crop a raw dataset into a preprocess Parquet output at ``output``, with the preprocess
    job (the same rows and splits `facebatch preprocess` writes); see :class:`.common.PrepareRaw`."""
    from ..preprocess.config import PreprocessConfig
    from ..preprocess.pipeline import run_preprocess
    from ..preprocess.rows import CropConfig
    run_preprocess(PreprocessConfig(input=src, output=output, format=fmt, labels=labels, limit=limit,
                                    crop=CropConfig(crop_size=crop_size, all_faces=all_faces), progress="auto",
                                    degrade=degrade), address=address)


def evaluate_keypoints(*args, **kwargs) -> dict:
    """:func:`facebatch.evaluation.keypoints.evaluate_keypoints`, raw datasets preprocessed first."""
    from .keypoints import evaluate_keypoints as evaluate
    return evaluate(*args, prepare=preprocess_raw, **kwargs)


def evaluate_attributes(*args, **kwargs) -> dict:
    """:func:`facebatch.evaluation.attributes.evaluate_attributes`, raw datasets preprocessed first."""
    from .attributes import evaluate_attributes as evaluate
    return evaluate(*args, prepare=preprocess_raw, **kwargs)


def evaluate_identity(*args, **kwargs) -> dict:
    """:func:`facebatch.evaluation.identity.evaluate_identity`, raw datasets preprocessed first."""
    from .identity import evaluate_identity as evaluate
    return evaluate(*args, prepare=preprocess_raw, **kwargs)


def run(args: argparse.Namespace) -> int:
    return args._kind_run(args, prepare=preprocess_raw)
