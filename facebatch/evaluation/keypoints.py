"""Evaluate a keypoint model: metrics.json (fixed keys), predictions.csv, evaluation.csv, curves, picture grids.

The face scored in each image is the detected face the labelled points belong to (its box holds
their centre, best overlap), as 300-W does by giving the face box, not simply the largest face:
in a photo with several people the labelled one is evaluated. Images where no detected face
matches the labels (or none was found) are not dropped: they are predicted with the model's
mean shape placed in the centred square of the whole image, and count against the model.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ..inference import KeypointHead
from ..keypoints.metrics import (FACE_FRAME_PX, mae_px, nme_interocular, pck, per_point_table, rmse_norm,
                                 write_table_csv)
from ..keypoints.schemes import convert_scheme
from .common import (PrepareRaw, add_common_arguments, check_degrade, fallback_crop_box, has_crop, labelled_face_rows,
                     load_rows, row_batches, write_model_json)

METRIC_KEYS = ("n_images", "failed", "nme_interocular", "rmse_norm", "mae_px", "pck_5px", "pck_10px", "pck_15px")


def predict_rows(head: KeypointHead, rows: list[dict], batch_size: int = 64) -> np.ndarray:
    """Unit-crop predictions ``(N, K, 2)`` for rows with a crop; NaN for the others."""
    out = np.full((len(rows), head.scheme.n_points, 2), np.nan, np.float32)
    for sel, x in row_batches(rows, head.input, batch_size):
        out[sel] = head.predict(x)
    return out


def evaluate_keypoints(model_name: str, src: str, fmt: str | None, outdir: str, labels: str | None = None,
                       splits: list[str] | None = None, limit: int | None = None, address: str | None = None,
                       n_pictures: int = 16, degrade: str | None = None, prepare: PrepareRaw | None = None) -> dict:
    """Run the evaluation and write its files into ``outdir``; returns the metrics. ``prepare``: how a raw
    dataset is detected and cropped first (see :func:`.common.load_rows`)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    head = KeypointHead.load(model_name)
    info, meta, scheme = head.info, head.meta, head.scheme
    rows = labelled_face_rows(load_rows(src, fmt, out, labels=labels, address=address, splits=splits, limit=limit,
                                        all_faces=True, degrade=degrade, prepare=prepare))
    if not rows:
        raise ValueError(f"no labelled keypoints in {src}; evaluation needs a keypoint format (udacity68, kaggle15)")
    unit = predict_rows(head, rows)
    failed = np.array([not has_crop(r) for r in rows])
    if failed.any():
        mean_shape = np.nanmean(unit[~failed], axis=0) if (~failed).any() else np.full(unit.shape[1:], 0.5, np.float32)
        unit[failed] = mean_shape
    boxes = np.array([r["crop_box"] if not f else fallback_crop_box(r) for r, f in zip(rows, failed)], np.float32)
    side = (boxes[:, 2] - boxes[:, 0])[:, None, None]
    pred_orig = unit * side + boxes[:, None, :2]
    tgt_orig = np.stack([convert_scheme(np.asarray(r["keypoints"], np.float32).reshape(-1, 2)[None],
                                        r["keypoint_scheme"], scheme.name)[0] for r in rows])
    tgt_unit = (tgt_orig - boxes[:, None, :2]) / side
    metrics = {
        "n_images": len(rows), "failed": int(failed.sum()),
        "nme_interocular": nme_interocular(pred_orig, tgt_orig, scheme),
        "rmse_norm": rmse_norm(unit, tgt_unit),
        "mae_px": mae_px(unit * FACE_FRAME_PX, tgt_unit * FACE_FRAME_PX),
        **{f"pck_{int(k)}px": v for k, v in pck(unit * FACE_FRAME_PX, tgt_unit * FACE_FRAME_PX).items()},
    }
    if degrade:
        metrics["degrade"] = check_degrade(src, degrade)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_table_csv(per_point_table(unit * FACE_FRAME_PX, tgt_unit * FACE_FRAME_PX, scheme), out / "evaluation.csv")
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "status", "failed"] + [f"{a}{k}" for k in range(scheme.n_points) for a in ("x", "y")])
        for r, fl, p in zip(rows, failed, pred_orig):
            w.writerow([r["path"], r["status"], int(fl)] + [f"{v:.2f}" for v in p.reshape(-1)])
    write_model_json(info, meta, out / "model.json", leave_out=("history",))
    from .pictures import keypoint_grid, plot_curves
    keypoint_grid(rows, failed, unit, tgt_unit, scheme, out / "samples.png", n=n_pictures)
    if meta.get("history"):
        plot_curves(meta["history"], out / "curves.png")
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "shipped model name (keypoints68, keypoints15) or a model file", "udacity68, kaggle15",
                         "metrics.json, predictions.csv, evaluation.csv, plots")


def run(args: argparse.Namespace, prepare: PrepareRaw | None = None) -> int:
    m = evaluate_keypoints(args.model, args.input, args.format, args.output, labels=args.labels,
                           splits=args.split, limit=args.limit, address=args.address, degrade=args.degrade,
                           prepare=prepare)
    print(json.dumps(m, indent=2))
    return 0
