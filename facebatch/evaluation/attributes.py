"""Evaluate an attribute model: metrics.json per attribute, predictions.csv, confusion-matrix PNGs.

    facebatch evaluate attributes --model attributes --input ../shared/data/genki4k --format genki --output out/eval-genki
    facebatch evaluate attributes --model M.pt --input out/celeba6k --split test --output out/eval-celeba

MODEL is a shipped name (``attributes``) or a model file. SRC is a raw dataset (detected and
cropped first, into OUTDIR/preprocess; give --format celeba, genki or csv) or a preprocess
Parquet output. OUTDIR/metrics.json holds one object per attribute that the model predicts
and the labels hold (``{"smile": {...}, "eyeglasses": {...}}``), each with exactly ``n, failed,
accuracy, balanced_accuracy, precision, recall_pos, recall_neg, f1, roc_auc, confusion``
(``confusion`` = ``[[tn, fp], [fn, tp]]``; undefined values are null) and, with two or more
attributes, ``summary``: mean accuracy and balanced accuracy over them at the model's thresholds,
the majority-class floor and, for probability scores, the mean accuracy of deciding at
``p >= 0.5`` (``mean_accuracy_at_p50``: the accuracy-optimal rule for calibrated probabilities;
the stored thresholds are fitted for balanced accuracy instead), drawn in attributes.png. Images where no face was
found are not dropped: they count as wrong (``failed``). Also written: predictions.csv (label,
score, prediction per attribute and image), confusion_<attribute>.png and model.json.
Decisions: sigmoid >= the threshold fitted on the validation split at export (multitask,
``meta["thresholds"]``; 0.5 where a file has none), softmax >= 0.5 (seed CNNs), reconstruction error <=
the fitted threshold (seed002 autoencoder; the score is the negated error).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ..attributes.metrics import BINARY_KEYS, binary_metrics
from ..inference import AttributeHead
from ..jsonsafe import json_safe
from .common import (PrepareRaw, add_common_arguments, check_degrade, has_crop, load_rows, row_batches,
                     write_model_json)


def embed_rows(head: AttributeHead, rows: list[dict], batch_size: int = 64) -> np.ndarray:
    """Unit embeddings ``(N, d)`` of rows (NaN rows where there is no crop)."""
    out = None
    for sel, x in row_batches(rows, head.input, batch_size):
        e = head.embed(x)
        if out is None:
            out = np.full((len(rows), e.shape[1]), np.nan, np.float32)
        out[sel] = e
    return out if out is not None else np.full((len(rows), 1), np.nan, np.float32)


def score_rows(head: AttributeHead, rows: list[dict], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Scores per attribute ``{attr: (N,)}``, NaN where there is no crop (thresholds: ``head.thresholds``)."""
    scores = {a: np.full(len(rows), np.nan) for a in head.attributes}
    for sel, x in row_batches(rows, head.input, batch_size):
        for a, s in head.scores(x).items():
            scores[a][sel] = s
    return scores


def evaluate_attributes(model_name: str, src: str, fmt: str | None, outdir: str, labels: str | None = None,
                        splits: list[str] | None = None, limit: int | None = None, address: str | None = None,
                        degrade: str | None = None, prepare: PrepareRaw | None = None) -> dict:
    """Run the evaluation and write its files into ``outdir``; returns the metrics. ``prepare``: how a raw
    dataset is detected and cropped first (see :func:`.common.load_rows`)."""
    from ..attributes.plots import save_confusion_png
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    head = AttributeHead.load(model_name)
    info, meta, attrs = head.info, head.meta, head.attributes
    if not attrs:
        raise ValueError(f"{info['path']} predicts no binary attribute (an identity model: use `evaluate identity`)")
    rows = load_rows(src, fmt, out, labels=labels, address=address, splits=splits, limit=limit, degrade=degrade,
                     prepare=prepare)
    rows = [r for r in rows if (r["face_index"] or 0) <= 0]
    lab = [json.loads(r["attributes"]) if r["attributes"] else {} for r in rows]
    present = [a for a in attrs if any(x.get(a) is not None for x in lab)]
    if not present:
        raise ValueError(f"no labels for the model's attributes {attrs} in {src}")
    failed = np.array([not has_crop(r) for r in rows])
    scores, thr = score_rows(head, rows), head.thresholds
    metrics, at_p50 = {}, []
    for a in present:
        sel = np.array([x.get(a) is not None for x in lab])
        y = np.array([x[a] for x in lab if x.get(a) is not None], np.int64)
        m = binary_metrics(y, scores[a][sel], failed[sel], threshold=thr[a])
        assert tuple(m) == BINARY_KEYS
        metrics[a] = json_safe(m)
        at_p50.append(binary_metrics(y, scores[a][sel], failed[sel], threshold=0.5)["accuracy"])
        save_confusion_png(m["confusion"], out / f"confusion_{a}.png", labels=("no", "yes"),
                           title=f"{a}: {Path(info['path']).name}, n={m['n']}, failed={m['failed']}")
    if len(present) > 1:
        metrics["summary"] = attribute_summary({a: metrics[a] for a in present}, lab)
        if head.probabilities:  # what a decision at p >= 0.5 would score (accuracy-optimal for calibrated scores)
            metrics["summary"]["mean_accuracy_at_p50"] = float(np.mean(at_p50))
        plot_attribute_accuracy({a: metrics[a] for a in present}, metrics["summary"], out / "attributes.png",
                                title=f"{Path(info['path']).name} on {src}")
    if degrade:
        metrics["degrade"] = check_degrade(src, degrade)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "status", "failed"] + [f"{a}_{k}" for a in attrs for k in ("label", "score", "pred")])
        for i, r in enumerate(rows):
            cells = []
            for a in attrs:
                s = scores[a][i]
                cells += ["" if lab[i].get(a) is None else int(lab[i][a]),
                          "" if failed[i] else f"{s:.5f}", "" if failed[i] else int(s >= thr[a])]
            w.writerow([r["path"], r["split"], r["status"], int(failed[i])] + cells)
    write_model_json(info, meta, out / "model.json", leave_out=("history", "identities"))
    return metrics


def attribute_summary(per: dict[str, dict], labels: list[dict]) -> dict:
    """Means over the evaluated attributes: accuracy and balanced accuracy at the model's
    thresholds, and the accuracy of always answering each attribute's majority class (the floor
    any attribute model must clear; about 0.80 on CelebA)."""
    majority = []
    for a in per:
        y = np.array([x[a] for x in labels if x.get(a) is not None], np.float64)
        majority.append(max(y.mean(), 1 - y.mean()) if len(y) else np.nan)
    acc = [per[a]["accuracy"] for a in per]
    bal = [per[a]["balanced_accuracy"] for a in per]
    mean = lambda v: float(np.nanmean(np.asarray(v, np.float64))) if len(v) else None  # noqa: E731
    return {"n_attributes": len(per), "mean_accuracy": mean(acc), "mean_balanced_accuracy": mean(bal),
            "mean_majority_accuracy": mean(majority)}


def plot_attribute_accuracy(per: dict[str, dict], summary: dict, path: Path, title: str = "") -> Path:
    """One horizontal bar pair per attribute (accuracy, balanced accuracy) with the majority-class
    floor marked; sorted by balanced accuracy, the weakest at the top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted(per, key=lambda a: -(per[a]["balanced_accuracy"] or 0))
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.24 * len(names)))
    ax.barh(y - 0.2, [per[a]["accuracy"] or 0 for a in names], 0.4, label="accuracy")
    ax.barh(y + 0.2, [per[a]["balanced_accuracy"] or 0 for a in names], 0.4, label="balanced accuracy")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0.4, 1.0)
    ax.axvline(summary["mean_accuracy"], color="C0", ls="--", lw=1)
    ax.axvline(summary["mean_balanced_accuracy"], color="C1", ls="--", lw=1)
    ax.set_title(f"{title}\nmean accuracy {summary['mean_accuracy']:.3f}, balanced {summary['mean_balanced_accuracy']:.3f}"
                 f" (majority class {summary['mean_majority_accuracy']:.3f})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "shipped model name (attributes) or a model file", "celeba, genki, csv",
                         "metrics.json, predictions.csv, confusion PNGs")


def run(args: argparse.Namespace, prepare: PrepareRaw | None = None) -> int:
    m = evaluate_attributes(args.model, args.input, args.format, args.output, labels=args.labels,
                            splits=args.split, limit=args.limit, address=args.address, degrade=args.degrade,
                            prepare=prepare)
    print(json.dumps(m, indent=2))
    return 0
