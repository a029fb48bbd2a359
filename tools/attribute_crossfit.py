"""Attribute accuracy on people never seen, with thresholds that never saw them either (2-fold cross-fit).

    python tools/attribute_crossfit.py MODEL --heldout out/celeba5k --fit out/celeba6k out/genki4k --output out/crossfit

A release fits its decision thresholds on every validation split, held-out people included; to
report a figure on those people that their own labels did not tune, the held-out ``val`` people
(celeba5k's, by CelebA person id) are hashed into two folds. For each fold the thresholds are
fitted again exactly as training's export does (:func:`facebatch.training.attribute_task.fit_thresholds`:
bagged balanced-accuracy thresholds over full and degraded copies) on the ``--fit`` outputs'
``val`` splits plus the *other* fold, and the fold is scored with them. The two folds' decisions
are pooled into one set of metrics per attribute (and a summary as `facebatch evaluate` writes
it), saved as OUTPUT/metrics.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from facebatch import schema as S
from facebatch.attributes.metrics import binary_metrics
from facebatch.attributes.models import multitask_outputs
from facebatch.evaluation.attributes import attribute_summary
from facebatch.formats.base import assign_split
from facebatch.modelio import load_model
from facebatch.training.attribute_task import fit_thresholds, labelled_crops


def write_folds(heldout: str, out: Path) -> list[Path]:
    """The held-out output's ``val`` rows, split in two by a hash of the person."""
    t = pq.read_table(heldout)
    t = t.filter(pc.equal(t[S.SPLIT], "val"))
    fold = np.array([assign_split(f"fold:{p}", 0.5) == "val" for p in t[S.PERSON].to_pylist()])
    paths = []
    for k, sel in enumerate((fold, ~fold)):
        d = out / f"fold{k}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(t.filter(sel), d / "part-00000.parquet")
        paths.append(d)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("model", help="attribute model file or shipped name")
    ap.add_argument("--heldout", required=True, help="preprocess output whose val people are reported (celeba5k)")
    ap.add_argument("--fit", nargs="+", required=True, help="preprocess outputs whose val splits always fit thresholds")
    ap.add_argument("--output", required=True, help="folder for the folds and metrics.json")
    args = ap.parse_args(argv)
    model, info = load_model(args.model)
    meta = info["meta"]
    attrs, size, flip = list(meta["attributes"]), int(meta["input_size"]), bool(meta.get("flip_test"))
    degrade = (meta.get("task_options") or {}).get("threshold_degrade") or []
    out = Path(args.output)
    folds = write_folds(args.heldout, out)
    scores, preds, labels = {a: [] for a in attrs}, {a: [] for a in attrs}, []
    fitted = []
    for k, fold in enumerate(folds):
        thr, _, _ = fit_thresholds(model, list(args.fit) + [str(folds[1 - k])], ["val"], attrs, size, flip=flip,
                                   degrade=degrade)
        fitted.append(thr)
        with torch.inference_mode():
            for x, labs in labelled_crops([str(fold)], ["val"], size):
                out_k = multitask_outputs(model.eval(), x, flip)
                labels += labs
                for a in attrs:
                    s = torch.sigmoid(out_k[a].float()).numpy()
                    scores[a].append(s)
                    preds[a].append(s >= thr[a])
        print(f"fold {k}: {pq.read_metadata(fold / 'part-00000.parquet').num_rows} faces scored", file=sys.stderr)
    metrics = {}
    for a in attrs:
        sel = np.array([lab.get(a) is not None for lab in labels])
        y = np.array([lab[a] for lab in labels if lab.get(a) is not None], np.int64)
        s, p = np.concatenate(scores[a])[sel], np.concatenate(preds[a])[sel]
        m = binary_metrics(y, p.astype(float), threshold=0.5)  # each face decided by its own fold's threshold
        m["roc_auc"] = binary_metrics(y, s)["roc_auc"]
        metrics[a] = m
    metrics["summary"] = attribute_summary({a: metrics[a] for a in attrs}, labels)
    metrics["summary"]["mean_accuracy_at_p50"] = float(np.mean([
        binary_metrics(np.array([lab[a] for lab in labels if lab.get(a) is not None], np.int64),
                       np.concatenate(scores[a])[np.array([lab.get(a) is not None for lab in labels])])["accuracy"]
        for a in attrs]))
    metrics["folds"] = {"thresholds": fitted, "fit": list(args.fit), "heldout": args.heldout, "model": str(info["path"])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    s = metrics["summary"]
    print(json.dumps({"smile": metrics.get("smile", {}).get("accuracy"),
                      "eyeglasses_balanced": metrics.get("eyeglasses", {}).get("balanced_accuracy"), **s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
