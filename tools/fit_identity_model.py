"""Fit and measure the shipped ``identity`` model (facebatch/release/identity.json).

The network is dlib's metric ResNet as published (no training here). What is fitted is the
``unknown`` threshold: the lowest cosine similarity whose false-accept rate is <= ``--far``
(1e-3) on pairs of **fitting people** only:

* celeba6k's people the attributes model was trained on (its ``identities``), all their photos;
* celeba5k's people with two or more photos (CelebA person ids);
* udacity68's people whose by-person split (``assign_split``) is ``train``.

It is then measured on people it was not fitted on: celeba6k's other people (the 32 "unseen"
ones of the attribute release), udacity68's ``val`` people (10-fold verification accuracy, TAR at
FAR 1e-2 and 1e-3), and celeba6k closed-set top-1 (all 200 people: train_dataset photos enrolled,
test_dataset photos probed). Writes the json, docs/roc-identity.png and a metrics json.

    python tools/fit_identity_model.py --align keypoints68 --out facebatch/release/identity.json
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from facebatch.attributes.gallery import Gallery  # noqa: E402
from facebatch.attributes.metrics import (make_pairs, pair_similarity, tar_at_far, top1_accuracy,  # noqa: E402
                                          verification_accuracy, verification_roc)
from facebatch.formats.base import assign_split  # noqa: E402
from facebatch.formats.udacity68 import person_of  # noqa: E402
from facebatch.imaging import decode_image  # noqa: E402
from facebatch.provenance import provenance  # noqa: E402


def celeba6k(data: Path, known: set[str]) -> dict[str, list[tuple[Path, str]]]:
    out: dict[str, list] = {"fit": [], "unseen": [], "gallery": [], "probe": []}
    for part in ("train_dataset", "test_dataset"):
        for d in sorted((data / "celeba6k" / part).iterdir()):
            for f in sorted(d.glob("*.jpg")):
                out["gallery" if part == "train_dataset" else "probe"].append((f, d.name))
                if part == "train_dataset":
                    out["fit" if d.name in known else "unseen"].append((f, d.name))
    return out


def celeba5k(data: Path) -> list[tuple[Path, str]]:
    ids: dict[str, list[str]] = {}
    for line in (data / "celeba5k" / "identity_CelebA.txt").read_text().split("\n"):
        if line.strip():
            f, p = line.split()
            ids.setdefault(p, []).append(f)
    return [(data / "celeba5k" / "images" / f, f"c5k_{p}") for p, fs in sorted(ids.items()) if len(fs) >= 2
            for f in sorted(fs) if (data / "celeba5k" / "images" / f).is_file()]


def udacity(data: Path) -> dict[str, list[tuple[Path, str]]]:
    with open(data / "udacity68" / "training_frames_keypoints.csv") as fh:
        names = sorted(r[0] for r in list(csv.reader(fh))[1:])
    out: dict[str, list] = {"train": [], "val": []}
    for n in names:
        p = person_of(n)
        out[assign_split(p)].append((data / "udacity68" / "training" / n, f"u_{p}"))
    return out


def embed_items(fa, items, batch: int = 16, log_every: float = 30.0):
    """Embeddings (largest face) and labels of the items with a face; count of misses."""
    embs, labels, missed, t0, last = [], [], 0, time.time(), time.time()
    for k in range(0, len(items), batch):
        chunk = items[k:k + batch]
        imgs = [decode_image(p.read_bytes()).image for p, _ in chunk]
        res = fa.analyze(imgs, max_faces=1, attributes=False, identity=False)
        for (p, lab), r in zip(chunk, res):
            if r:
                embs.append(r[0].embedding)
                labels.append(lab)
            else:
                missed += 1
        if time.time() - last > log_every:
            last = time.time()
            print(f"  {k + len(chunk)}/{len(items)} images, {time.time() - t0:.0f} s", flush=True)
    return np.asarray(embs, np.float32), np.asarray(labels), missed


def verification(emb, labels, fars=(0.01, 0.001)) -> dict:
    lab = np.unique(labels, return_inverse=True)[1]
    m = verification_accuracy(emb, lab)
    pairs, same = make_pairs(lab)
    sim = pair_similarity(emb, pairs)
    out = {"people": int(lab.max() + 1), "faces": len(lab), "pairs": len(pairs),
           "verification_accuracy": round(float(m["accuracy"]), 4)}
    for far in fars:
        op = tar_at_far(sim, same, far)
        out[f"tar_at_far_{far:g}"] = round(float(op["tar"]), 4)
    return out


def fit_threshold(emb, labels, far: float, n_diff: int = 400_000, seed: int = 0) -> dict:
    """All same-person pairs and ``n_diff`` random different-person pairs of the fitting faces."""
    lab = np.unique(labels, return_inverse=True)[1]
    same_pairs = np.array([(i, j) for p in np.unique(lab) for ix in [np.flatnonzero(lab == p)]
                           for a, i in enumerate(ix) for j in ix[a + 1:]])
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(lab), n_diff), rng.integers(0, len(lab), n_diff)
    keep = lab[a] != lab[b]
    pairs = np.concatenate([same_pairs, np.stack([a[keep], b[keep]], 1)])
    same = lab[pairs[:, 0]] == lab[pairs[:, 1]]
    sim = pair_similarity(emb, pairs)
    op = tar_at_far(sim, same, far)
    roc = verification_roc(sim, same)
    return {"threshold": float(op["threshold"]), "far": float(op["far"]), "tar": float(op["tar"]),
            "same_pairs": int(same.sum()), "diff_pairs": int((~same).sum()), "roc": roc}


def plot_roc(rocs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, roc in rocs.items():
        ax.plot(np.maximum(roc["far"], 1e-5), roc["tar"], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("true-accept rate")
    ax.set_title("identity: ROC on people-disjoint pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEBATCH_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--align", choices=("keypoints68", "retinaface"), default="keypoints68")
    p.add_argument("--far", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="identity json to write (none: only measure)")
    p.add_argument("--metrics", default="out/identity_metrics.json")
    p.add_argument("--roc", default="docs/roc-identity.png")
    p.add_argument("--quick", action="store_true", help="held-out measurements only (no fitting sets)")
    a = p.parse_args(argv)
    from facebatch.inference import FaceAnalyzer
    from facebatch.modelio import read_model_file, resolve_model_path
    data = Path(a.data)
    t0 = time.time()
    from facebatch.inference.identity import IdentityHead
    spec = ROOT / "out" / "identity_fit_spec.json"  # the network as shipped, with no threshold yet
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(json.dumps({"name": "identity", "align": a.align}))
    head = IdentityHead(str(spec))
    fa = FaceAnalyzer.load(attributes=None, weights_path=str(data / "weights" / "mobilenet0.25_Final.pth"))
    fa = FaceAnalyzer(fa.detector, fa.keypoints, heads=[head])
    known = set(read_model_file(resolve_model_path("attributes"))["meta"]["identities"])
    c6, ud = celeba6k(data, known), udacity(data)
    metrics: dict = {"align": a.align, "dat_sha256": head.model.source_sha256}
    cache: dict[str, tuple] = {}

    def emb(name, items):
        if name not in cache:
            t = time.time()
            print(f"{name}: {len(items)} images", flush=True)
            cache[name] = embed_items(fa, items)
            print(f"{name}: {len(cache[name][1])} faces, {cache[name][2]} without a face, {time.time() - t:.0f} s",
                  flush=True)
        return cache[name]

    e, lab, miss = emb("celeba6k_unseen", c6["unseen"])
    metrics["celeba6k_unseen"] = {**verification(e, lab), "no_face": miss}
    e, lab, miss = emb("udacity68_val", ud["val"])
    metrics["udacity68_val"] = {**verification(e, lab), "no_face": miss}
    print(json.dumps(metrics, indent=1), flush=True)
    if a.quick:
        return 0
    ge, gl, _ = emb("celeba6k_gallery", c6["gallery"])
    pe, pl, pmiss = emb("celeba6k_probe", c6["probe"])
    g = Gallery.from_embeddings(ge, gl)
    names = [n for n, _ in g.match(pe, -1.0)]
    people = sorted(set(gl))
    metrics["celeba6k_top1"] = {"people": len(people), "probes": len(pl) + pmiss, "no_face": pmiss,
                                "top1": round(float(np.mean(np.asarray(names) == pl)) * len(pl) / (len(pl) + pmiss), 4)}
    fit_sets = {"celeba6k_fit": [x for x in c6["gallery"] if x[1] in known], "celeba5k": celeba5k(data),
                "udacity68_train": ud["train"]}
    parts = [emb(k, v) for k, v in fit_sets.items()]
    fe = np.concatenate([x[0] for x in parts])
    fl = np.concatenate([x[1] for x in parts])
    fit = fit_threshold(fe, fl, a.far)
    thr = fit.pop("threshold")
    fit_roc = fit.pop("roc")
    metrics["fit"] = {**fit, "threshold": round(thr, 4), "far_target": a.far,
                      "sets": {k: len(v) for k, v in fit_sets.items()}, "people": int(len(np.unique(fl)))}
    # held-out TAR/FAR at the fitted threshold
    for name in ("celeba6k_unseen", "udacity68_val"):
        e, lab, _ = cache[name]
        l2 = np.unique(lab, return_inverse=True)[1]
        pairs, same = make_pairs(l2)
        sim = pair_similarity(e, pairs)
        metrics[name]["at_fitted_threshold"] = {"tar": round(float((sim[same] >= thr).mean()), 4),
                                                "far": round(float((sim[~same] >= thr).mean()), 5)}
    metrics["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(metrics, indent=1), flush=True)
    Path(a.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(a.metrics).write_text(json.dumps(metrics, indent=1))
    rocs = {"fitting people (threshold)": fit_roc}
    for name in ("celeba6k_unseen", "udacity68_val"):
        e, lab, _ = cache[name]
        l2 = np.unique(lab, return_inverse=True)[1]
        pairs, same = make_pairs(l2)
        rocs[name] = verification_roc(pair_similarity(e, pairs), same)
    plot_roc(rocs, ROOT / a.roc)
    if a.out:
        meta = {"name": "identity", "model": "dlib_resnet_v1", "dat_sha256": head.model.source_sha256,
                "source": "face_recognition_models 0.3.0: dlib_face_recognition_resnet_model_v1.dat (CC0)",
                "align": a.align, "embedding_dim": 128, "verification_threshold": round(thr, 4),
                "verification_far": a.far, "verification_tar": round(metrics["fit"]["tar"], 4),
                "metrics": metrics,
                "fitted": dt.date.today().isoformat(), "provenance": provenance()}
        Path(a.out).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
