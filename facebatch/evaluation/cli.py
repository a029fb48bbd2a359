"""Evaluate a model: `facebatch evaluate keypoints|attributes|identity --model M --input SRC --output DIR`.

keypoints writes OUTDIR/metrics.json with n_images, failed, nme_interocular, rmse_norm,
mae_px, pck_5px, pck_10px, pck_15px, plus predictions.csv, evaluation.csv (per point),
samples.png (truth green, prediction red) and curves.png (from the model's training history).
attributes writes OUTDIR/metrics.json with one object per attribute (n, failed, accuracy,
balanced_accuracy, precision, recall_pos, recall_neg, f1, roc_auc, confusion), predictions.csv
and confusion_<attribute>.png. identity writes top1 (gallery of train-split people, test-split
probes) and verification_accuracy (pairs of val-split people unseen in training).
"""
from __future__ import annotations

import argparse
import importlib

KINDS = {"keypoints": "facebatch.evaluation.keypoints", "attributes": "facebatch.evaluation.attributes",
         "identity": "facebatch.evaluation.identity"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, modname in KINDS.items():
        mod = importlib.import_module(modname)
        doc = (mod.__doc__ or "").strip()
        sp = sub.add_parser(kind, help=doc.splitlines()[0], description=doc)
        mod.add_arguments(sp)
        sp.set_defaults(_kind_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return args._kind_run(args)
