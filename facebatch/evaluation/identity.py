"""Evaluate identity embeddings: closed-set top-1 against a gallery, and verification on unseen people.

    facebatch evaluate identity --model attributes --input out/celeba6k --output out/eval-identity
    facebatch evaluate identity --model M.pt --input ../shared/data/celeba6k --format celeba --output DIR

MODEL is ``identity`` (the shipped recognition network: its chips are aligned in the original photos,
from the detected faces, as annotate does), a shipped name (``attributes``: its LDA embedding) or a
model file with an identity embedding (multitask; seed003_cnn uses its penultimate 512-d layer). SRC is a raw dataset with identities (--format
celeba, classes or csv; detected and cropped into OUTDIR/preprocess) or a preprocess Parquet
output, with the preprocess splits: celeba6k's ``test`` is its test_dataset folder (6 images of
each of the 200 people), ``val`` is a hashed 10% of the people (their train_dataset images) and
``train`` is the rest.

Protocol (all numbers from unit-length embeddings and cosine similarity):

* ``top1`` (closed set): a :class:`~facebatch.attributes.gallery.Gallery` of per-person centroids
  is enrolled from the embeddings of every ``train``-split image (all people with train rows),
  and every ``test``-split image of a person in that gallery is classified as the nearest
  centroid. Test images of people not in the gallery are left out (``n_probe_excluded``);
  images where no face was found count as wrong. ``top1_classifier`` is the same probes
  classified by the model's own class head (margin head or seed003 logits) when it has one.
* ``verification_accuracy``: LFW-style, on balanced same/different pairs (up to 6,000) of the
  ``val``-split images of people the model was not trained on (the model file's identity list;
  all val people when it has none), 10-fold cross-validated threshold
  (:func:`~facebatch.attributes.metrics.verification_accuracy`). Images without a face cannot be
  paired and are left out (``verification_failed``). ``verification_threshold`` (mean fold
  threshold) is a starting point for ``facebatch enroll --match --threshold``.
* The operating point at a stated false-accept rate (``--far``, default 0.01) on the same pairs
  (:func:`~facebatch.attributes.metrics.tar_at_far`): ``verification_threshold_at_far`` is the
  lowest cosine threshold at which at most that share of the different-person pairs is accepted,
  ``verification_tar_at_far`` the share of same-person pairs accepted there, and
  ``verification_at_far`` the counts. This is the gallery's ``unknown`` threshold that
  ``tools/release_model.py --identity-eval`` stores in a released model.

Writes OUTDIR/metrics.json, predictions.csv (test probes: truth, prediction, similarity),
model.json, and with verification pairs roc.csv (far, tar, threshold, false_accepts,
true_accepts at every threshold) and roc.png (FAR on a log axis, the operating point marked).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..attributes.gallery import Gallery
from ..attributes.metrics import (make_pairs, pair_similarity, tar_at_far, top1_accuracy, verification_accuracy,
                                  verification_roc)
from ..identity.meta import is_identity_model
from ..inference import AnalyzerConfig, AttributeHead
from ..jsonsafe import json_safe
from .attributes import embed_rows
from .common import (PrepareRaw, add_common_arguments, check_degrade, has_crop, load_rows, row_batches,
                     write_model_json)


def classifier_predictions(head: AttributeHead, rows: list[dict], batch_size: int = 64) -> np.ndarray | None:
    """Class index per row from the model's own identity head (-1 without a crop), or None."""
    if not head.meta.get("identities"):
        return None
    pred = np.full(len(rows), -1, np.int64)
    with torch.inference_mode():
        for sel, x in row_batches(rows, head.input, batch_size):
            out = head.model(x)
            if isinstance(out, dict):
                if "identity_logits" not in out:
                    return None
                out = out["identity_logits"]
            pred[sel] = out.argmax(1).numpy()
    return pred


def write_roc_csv(roc: dict, path: Path) -> Path:
    """One row per threshold of :func:`~facebatch.attributes.metrics.verification_roc`
    (accept iff similarity >= threshold; the first row, ``inf``, accepts nothing)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["far", "tar", "threshold", "false_accepts", "true_accepts"])
        for far, tar, t, fa, ta in zip(roc["far"], roc["tar"], roc["threshold"], roc["n_false_accept"],
                                       roc["n_true_accept"]):
            w.writerow([f"{far:.6g}", f"{tar:.6g}", "inf" if np.isinf(t) else f"{t:.6f}", int(fa), int(ta)])
    return path


def save_roc_png(roc: dict, point: dict, auc: float, title: str, path: Path) -> Path:
    """The ROC with FAR on a log axis (FAR 0 drawn at half of one false accept) and the
    operating point at the stated FAR marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    floor = 0.5 / roc["n_diff"]
    fig, ax = plt.subplots(figsize=(6, 4.8))
    ax.step(np.maximum(roc["far"], floor), roc["tar"], where="post", lw=1.5, label="ROC")
    ax.axvline(point["far_target"], color="grey", ls=":", lw=1, label=f"FAR {point['far_target']:g}")
    ax.plot([max(point["far"], floor)], [point["tar"]], "o", color="C3", ms=8,
            label=f"cosine >= {point['threshold']:.3f}: TAR {point['tar']:.3f}, FAR {point['far']:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor * 0.8, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel(f"false-accept rate ({roc['n_diff']} different-person pairs; log)")
    ax.set_ylabel(f"true-accept rate ({roc['n_same']} same-person pairs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}\nAUC {auc:.3f}, TAR {point['tar']:.3f} @ FAR {point['far_target']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def embed_rows_in_photos(analyzer, rows: list[dict], batch_size: int = 16) -> np.ndarray:
    """Unit embeddings ``(N, d)`` of rows from an identity model, made from each row's original photo
    and its detected face (box, landmarks) as annotate makes them (NaN rows without a face or whose
    photo cannot be read again)."""
    from ..detection import Face
    from ..imaging import decode_image
    from ..storage import filesystem
    out = None
    todo = [i for i, r in enumerate(rows) if has_crop(r)]
    for k in range(0, len(todo), batch_size):
        idx, images, faces = [], [], []
        for i in todo[k:k + batch_size]:
            r = rows[i]
            try:
                fs, p = filesystem(r["path"])
                with fs.open(p, "rb") as f:
                    img = decode_image(f.read()).image
            except OSError:
                img = None
            if img is None:
                continue
            idx.append(i)
            images.append(img)
            faces.append([Face(box=np.asarray(r["box"], np.float64), score=float(r["score"]),
                               landmarks=np.asarray(r["landmarks"], np.float64).reshape(5, 2))])
        res = analyzer.analyze(images, faces=faces, keypoints=False, attributes=False, identity=False, embedding=True)
        for i, fr in zip(idx, res):
            e = np.asarray(fr[0].embedding, np.float32)
            if out is None:
                out = np.full((len(rows), len(e)), np.nan, np.float32)
            out[i] = e
    return out if out is not None else np.full((len(rows), 1), np.nan, np.float32)


def _closed_set(info: dict, meta: dict, rows: list[dict], emb: np.ndarray, failed: np.ndarray, split: np.ndarray,
                ident: np.ndarray, gallery_splits, probe_splits, src: str,
                head: AttributeHead | None = None) -> tuple[dict, np.ndarray, list, np.ndarray]:
    """Top-1 of the probe images against a gallery enrolled from the gallery splits (and the model's
    own class head where it has one); returns ``(metrics, probe row indices, predicted names, similarities)``."""
    gal = np.isin(split, gallery_splits) & ~failed
    if not gal.any():
        raise ValueError(f"no {'/'.join(gallery_splits)} rows with a face in {src} to enroll a gallery from")
    gallery = Gallery.from_embeddings(emb[gal], ident[gal], model_name=info["model"], model_hash=info["sha256"])
    names = {n: i for i, n in enumerate(gallery.names)}
    in_probe = np.isin(split, probe_splits)
    probe = in_probe & np.isin(ident, gallery.names)
    metrics: dict = {"top1": None, "n_probe": int(probe.sum()), "probe_failed": int((probe & failed).sum()),
                     "n_probe_excluded": int((in_probe & ~probe).sum()), "gallery_persons": len(gallery),
                     "gallery_images": int(gal.sum())}
    p_idx = np.flatnonzero(probe)
    pred_names, sims = [""] * len(p_idx), np.full(len(p_idx), np.nan)
    if not len(p_idx):
        return metrics, p_idx, pred_names, sims
    ok = ~failed[p_idx]
    pred = np.full(len(p_idx), -1)
    if ok.any():
        s = gallery.similarities(emb[p_idx[ok]])
        pred[ok] = s.argmax(1)
        sims[ok] = s.max(1)
    truth = np.array([names[n] for n in ident[p_idx]])
    metrics["top1"] = top1_accuracy(truth, pred, failed[p_idx])
    pred_names = [gallery.names[k] if k >= 0 else "" for k in pred]
    cls = classifier_predictions(head, [rows[i] for i in p_idx]) if head is not None else None
    if cls is not None:
        classes = meta["identities"]
        cls_names = np.array([classes[k] if k >= 0 else "" for k in cls])
        metrics["top1_classifier"] = float(np.mean((cls_names == ident[p_idx]) & ~failed[p_idx]))
    return metrics, p_idx, pred_names, sims


def _verification(emb: np.ndarray, failed: np.ndarray, split: np.ndarray, ident: np.ndarray, trained: set,
                  verification_splits, n_pairs: int, seed: int, far: float) -> tuple[dict, dict | None, dict | None]:
    """Verification on pairs of the verification splits' people outside ``trained``; returns
    ``(metrics, ROC or None, operating point at ``far`` or None)``."""
    ver = np.isin(split, verification_splits) & ~np.isin(ident, sorted(trained))
    metrics = {"verification_accuracy": None, "verification_persons": int(len(set(ident[ver]))),
               "verification_images": int((ver & ~failed).sum()), "verification_failed": int((ver & failed).sum()),
               "verification_far": float(far), "verification_tar_at_far": None, "verification_threshold_at_far": None}
    v_idx = np.flatnonzero(ver & ~failed)
    if len(set(ident[v_idx])) < 2:
        metrics["verification_note"] = (f"fewer than two people of split(s) {list(verification_splits)} outside "
                                        "the model's training identities")
        return metrics, None, None
    try:
        pairs, same = make_pairs(ident[v_idx], n_pairs, seed)
    except ValueError as exc:  # nobody with two images
        metrics["verification_note"] = str(exc)
        return metrics, None, None
    v = verification_accuracy(emb[v_idx], ident[v_idx], pairs=pairs, seed=seed, n_folds=min(10, max(2, len(pairs) // 2)))
    metrics.update({"verification_accuracy": v["accuracy"], "verification_accuracy_std": v["accuracy_std"],
                    "verification_threshold": v["threshold"], "verification_roc_auc": v["roc_auc"],
                    "verification_pairs": v["n_pairs"], "verification_folds": v["n_folds"]})
    sim = pair_similarity(emb[v_idx], pairs)
    roc, point = verification_roc(sim, same), tar_at_far(sim, same, far)
    metrics.update({"verification_tar_at_far": point["tar"], "verification_threshold_at_far": point["threshold"],
                    "verification_at_far": point})
    return metrics, roc, point


def write_probe_csv(rows: list[dict], failed: np.ndarray, p_idx: np.ndarray, pred_names: list, sims: np.ndarray,
                    path: Path) -> Path:
    """predictions.csv: one row per probe image (truth, predicted person, similarity to that centroid)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split", "identity", "failed", "predicted", "similarity"])
        for k, i in enumerate(p_idx):
            w.writerow([rows[i]["path"], rows[i]["split"], rows[i]["identity"], int(failed[i]), pred_names[k],
                        "" if np.isnan(sims[k]) else f"{sims[k]:.5f}"])
    return path


def evaluate_identity(model_name: str, src: str, fmt: str | None, outdir: str, labels: str | None = None,
                      limit: int | None = None, address: str | None = None, gallery_splits=("train",),
                      probe_splits=("test",), verification_splits=("val",), n_pairs: int = 6000, seed: int = 0,
                      degrade: str | None = None, far: float = 0.01, prepare: PrepareRaw | None = None) -> dict:
    """Run the identity evaluation and write its files into ``outdir``; returns the metrics.

    ``far``: the false-accept rate at which the verification threshold and TAR are reported.
    ``prepare``: how a raw dataset is detected and cropped first (see :func:`.common.load_rows`).
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"--far must be a rate in [0, 1], got {far}")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(src, fmt, out, labels=labels, address=address, limit=limit, degrade=degrade, prepare=prepare)
    rows = [r for r in rows if (r["face_index"] or 0) <= 0 and r["identity"] is not None]
    if not rows:
        raise ValueError(f"no rows with an identity in {src}; identity evaluation needs celeba, classes or csv data")
    if is_identity_model(model_name):  # a recognition network on chips aligned in the original photos
        if degrade:
            raise ValueError("--degrade applies to stored crops; an identity model reads the original photos")
        fa = AnalyzerConfig(keypoints="keypoints68", attributes=None, identity=model_name).build()
        head, desc = None, fa.embedding_head.describe()
        info, meta = {"model": desc["model"], "sha256": desc["dat_sha256"], "path": desc["path"]}, desc
        emb = embed_rows_in_photos(fa, rows)
    else:
        head = AttributeHead.load(model_name)
        info, meta = head.info, head.meta
        emb = embed_rows(head, rows)
    failed = np.isnan(emb).any(axis=1)
    split = np.array([r["split"] for r in rows])
    ident = np.array([r["identity"] for r in rows])
    metrics, p_idx, pred_names, sims = _closed_set(info, meta, rows, emb, failed, split, ident, gallery_splits,
                                                   probe_splits, src, head=head)
    ver, roc, point = _verification(emb, failed, split, ident, set(meta.get("identities") or []),
                                    verification_splits, n_pairs, seed, far)
    metrics.update(ver)
    metrics["protocol"] = {"gallery_splits": list(gallery_splits), "probe_splits": list(probe_splits),
                           "verification_splits": list(verification_splits), "n_pairs_requested": n_pairs, "seed": seed}
    metrics = json_safe(metrics)
    if degrade:
        metrics["degrade"] = check_degrade(src, degrade)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_probe_csv(rows, failed, p_idx, pred_names, sims, out / "predictions.csv")
    if roc is not None:
        write_roc_csv(roc, out / "roc.csv")
        save_roc_png(roc, point, metrics["verification_roc_auc"],
                     f"{Path(model_name).stem} ({info['model']}): verification on {metrics['verification_persons']} "
                     "unseen people", out / "roc.png")
    write_model_json(info, meta, out / "model.json", leave_out=("history", "identities"))
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "shipped model name (attributes) or a model file", "celeba, classes, csv",
                         "metrics.json and predictions.csv", splits=False)
    p.add_argument("--pairs", type=int, default=6000, help="verification pairs to sample (half same, half different)")
    p.add_argument("--far", type=float, default=0.01,
                   help="false-accept rate at which to report the verification threshold and TAR (default 0.01)")


def run(args: argparse.Namespace, prepare: PrepareRaw | None = None) -> int:
    m = evaluate_identity(args.model, args.input, args.format, args.output, labels=args.labels,
                          limit=args.limit, address=args.address, n_pairs=args.pairs, degrade=args.degrade,
                          far=args.far, prepare=prepare)
    print(json.dumps(m, indent=2))
    return 0
