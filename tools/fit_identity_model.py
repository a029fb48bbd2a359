"""Fit and measure the shipped ``identity`` model (facebatch/release/identity.json + identity.npz).

The network is dlib's metric ResNet as published (no training here). Fitted on **fitting people
only**, in closed form:

* the alignment (``keypoints68``: dlib's five points from our 68; ``retinaface``: the detector's
  five landmarks), chosen by verification accuracy on the fitting people;
* the embedding map: dlib compares descriptors by L2 distance, facebatch by cosine similarity of
  unit vectors. The raw 128-d descriptor is centred on the fitting faces' mean, rotated onto its
  127 strongest principal axes, and given a 128th coordinate that puts it on the unit sphere of
  radius ``R`` (``sqrt(R^2 - |c|^2)``); then ``1 - cos = (d^2 + ds^2) / 2R^2``, which ranks pairs as
  dlib's L2 distance ``d`` does (``ds``, the lift's difference, is small);
* the ``unknown`` threshold: the lowest cosine whose false-accept rate is <= ``--far`` (1e-3) on
  all same-person and 400k random different-person pairs of the fitting faces.

Fitting people: celeba6k's people the attributes model was trained on (its ``identities``),
celeba5k's people with two or more photos, udacity68's people whose by-person split is ``train``.
Held out (measured, never fitted on): celeba6k's other 32 people, udacity68's ``val`` people
(10-fold verification accuracy, TAR at FAR 1e-2 and 1e-3) and celeba6k closed-set top-1 (all 200
people: train_dataset photos enrolled, test_dataset photos probed).

    python tools/fit_identity_model.py --out facebatch/release/identity.json

Faces are detected by the MobileNet detector with the keypoints68 model (what annotate runs);
raw descriptors are cached in ``--cache`` so a rerun only refits.
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
from facebatch.attributes.metrics import (make_pairs, pair_similarity, tar_at_far, verification_accuracy,  # noqa: E402
                                          verification_roc)
from facebatch.formats.base import assign_split  # noqa: E402
from facebatch.formats.udacity68 import person_of  # noqa: E402
from facebatch.identity.project import fit_projection, project  # noqa: E402
from facebatch.provenance import provenance  # noqa: E402

ALIGNS = ("keypoints68", "retinaface")
FIT_SETS = ("c6_fit", "c5k", "ud_train")


def celeba6k(data: Path, known: set[str]) -> dict[str, list[tuple[Path, str]]]:
    out: dict[str, list] = {"c6_fit": [], "c6_unseen": [], "c6_gallery": [], "c6_probe": []}
    for part in ("train_dataset", "test_dataset"):
        for d in sorted((data / "celeba6k" / part).iterdir()):
            for f in sorted(d.glob("*.jpg")):
                out["c6_gallery" if part == "train_dataset" else "c6_probe"].append((f, d.name))
                if part == "train_dataset":
                    out["c6_fit" if d.name in known else "c6_unseen"].append((f, d.name))
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
    out: dict[str, list] = {"ud_train": [], "ud_val": []}
    for n in names:
        p = person_of(n)
        out[f"ud_{assign_split(p)}"].append((data / "udacity68" / "training" / n, f"u_{p}"))
    return out


def collect(items, analyzer, head, batch: int = 16) -> dict:
    """Raw descriptors of the largest face of each item, for both alignments."""
    from facebatch.identity import chip_from_ibug68, chip_from_retinaface
    from facebatch.imaging import decode_image
    chips: dict[str, list] = {a: [] for a in ALIGNS}
    labels, files = [], []
    for k in range(0, len(items), batch):
        chunk = items[k:k + batch]
        imgs = [decode_image(p.read_bytes()).image for p, _ in chunk]
        for (p, lab), img, r in zip(chunk, imgs, analyzer.analyze(imgs, max_faces=1, attributes=False)):
            if r:
                chips["keypoints68"].append(chip_from_ibug68(img, np.reshape(r[0].keypoints68, (68, 2))))
                chips["retinaface"].append(chip_from_retinaface(img, np.reshape(r[0].landmarks, (5, 2))))
                labels.append(lab)
                files.append(str(p))
    out = {"labels": np.asarray(labels), "files": np.asarray(files), "n_items": len(items)}
    for a in ALIGNS:
        out[a] = head.raw_descriptors(np.stack(chips[a]))
    return out


def verification(emb, labels, fars=(0.01, 0.001)) -> dict:
    lab = np.unique(labels, return_inverse=True)[1]
    pairs, same = make_pairs(lab)
    m = verification_accuracy(emb, lab, pairs=pairs)
    sim = pair_similarity(emb, pairs)
    out = {"people": int(lab.max() + 1), "faces": len(lab), "pairs": len(pairs),
           "verification_accuracy": round(float(m["accuracy"]), 4)}
    for far in fars:
        out[f"tar_at_far_{far:g}"] = round(float(tar_at_far(sim, same, far)["tar"]), 4)
    return out


def fitting_pairs(labels, n_diff: int = 400_000, seed: int = 0):
    """All same-person pairs and ``n_diff`` random different-person pairs."""
    lab = np.unique(labels, return_inverse=True)[1]
    same_pairs = [(i, j) for p in np.unique(lab) for ix in [np.flatnonzero(lab == p)]
                  for a, i in enumerate(ix) for j in ix[a + 1:]]
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(lab), n_diff), rng.integers(0, len(lab), n_diff)
    keep = lab[a] != lab[b]
    pairs = np.concatenate([np.asarray(same_pairs), np.stack([a[keep], b[keep]], 1)])
    return pairs, lab[pairs[:, 0]] == lab[pairs[:, 1]]


def plot_roc(rocs: dict, point: tuple[float, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, roc in rocs.items():
        ax.plot(np.maximum(roc["far"], 1e-5), roc["tar"], label=name)
    ax.plot([point[0]], [point[1]], "ko", label=f"stored threshold (fitting people)")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false-accept rate")
    ax.set_ylabel("true-accept rate")
    ax.set_title("identity (dlib ResNet): verification ROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("FACEBATCH_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--far", type=float, default=1e-3, help="false-accept rate of the stored threshold")
    p.add_argument("--radius", type=float, default=1.0, help="radius R of the lift (see the module doc)")
    p.add_argument("--cache", default="out/identity_cache", help="folder for cached raw descriptors")
    p.add_argument("--out", default=None, help="identity json to write (its .npz beside it); none: only measure")
    p.add_argument("--metrics", default="out/identity_metrics.json")
    p.add_argument("--roc", default="docs/roc-identity.png")
    a = p.parse_args(argv)
    t0 = time.time()
    data, cache = Path(a.data), Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    from facebatch.inference import FaceAnalyzer
    from facebatch.inference.identity import IdentityHead
    from facebatch.modelio import read_model_file, resolve_model_path
    known = set(read_model_file(resolve_model_path("attributes"))["meta"]["identities"])
    sets = {**celeba6k(data, known), "c5k": celeba5k(data), **udacity(data)}
    head = IdentityHead(str(ROOT / "facebatch" / "release" / "identity.json"), project=False)
    analyzer = None
    raw: dict[str, dict] = {}
    for name in ("c6_unseen", "ud_val", "c6_gallery", "c6_probe", *FIT_SETS):
        f = cache / f"{name}.npz"
        if not f.is_file():
            if name == "c6_fit":  # a subset of c6_gallery
                g = raw["c6_gallery"]
                keep = np.isin(g["labels"], sorted(known))
                np.savez(f, **{k: v[keep] for k, v in g.items() if k != "n_items"}, n_items=len(sets[name]))
            else:
                analyzer = analyzer or FaceAnalyzer.load(attributes=None,
                                                         weights_path=str(data / "weights" / "mobilenet0.25_Final.pth"))
                t = time.time()
                np.savez(f, **collect(sets[name], analyzer, head))
                print(f"{name}: {len(sets[name])} images, {time.time() - t:.0f} s", flush=True)
        raw[name] = dict(np.load(f))
    fit_lab = np.concatenate([raw[s]["labels"] for s in FIT_SETS])
    metrics: dict = {"dat_sha256": head.model.source_sha256, "radius": a.radius,
                     "fit_sets": {s: {"images": int(raw[s]["n_items"]), "faces": len(raw[s]["labels"]),
                                      "people": len(set(raw[s]["labels"]))} for s in FIT_SETS},
                     "alignment_on_fitting_people": {}}
    for align in ALIGNS:  # choose the alignment on the fitting people (celeba6k's trained people)
        fit = np.concatenate([raw[s][align] for s in FIT_SETS])
        proj = fit_projection(fit, a.radius)
        m = verification(project(raw["c6_fit"][align], **proj), raw["c6_fit"]["labels"])
        metrics["alignment_on_fitting_people"][align] = m
    align = max(ALIGNS, key=lambda x: metrics["alignment_on_fitting_people"][x]["verification_accuracy"])
    fit = np.concatenate([raw[s][align] for s in FIT_SETS])
    proj = fit_projection(fit, a.radius)
    emb = {k: project(v[align], **proj) for k, v in raw.items()}
    pairs, same = fitting_pairs(fit_lab)
    sim = pair_similarity(np.concatenate([emb[s] for s in FIT_SETS]), pairs)
    op = tar_at_far(sim, same, a.far)
    thr = float(op["threshold"])
    metrics.update({"align": align, "threshold": round(thr, 4),
                    "fit_operating_point": {k: op[k] for k in ("far", "tar", "n_same", "n_diff")}})
    for name in ("c6_unseen", "ud_val"):
        m = verification(emb[name], raw[name]["labels"])
        lab = np.unique(raw[name]["labels"], return_inverse=True)[1]
        hp, hs = make_pairs(lab)
        s = pair_similarity(emb[name], hp)
        m["at_stored_threshold"] = {"tar": round(float((s[hs] >= thr).mean()), 4),
                                    "far": round(float((s[~hs] >= thr).mean()), 5)}
        m["no_face"] = int(raw[name]["n_items"]) - len(lab)
        metrics[name] = m
    g = Gallery.from_embeddings(emb["c6_gallery"], raw["c6_gallery"]["labels"])
    names = np.asarray([n for n, _ in g.match(emb["c6_probe"], -1.0)])
    n_probe = int(raw["c6_probe"]["n_items"])
    metrics["c6_top1"] = {"people": len(g), "probes": n_probe, "no_face": n_probe - len(names),
                          "top1": round(float((names == raw["c6_probe"]["labels"]).sum() / n_probe), 4)}
    metrics["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(metrics, indent=1), flush=True)
    Path(a.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(a.metrics).write_text(json.dumps(metrics, indent=1))
    rocs = {"fitting people": verification_roc(sim, same)}
    for name, label in (("c6_unseen", "celeba6k, 32 unseen people"), ("ud_val", "udacity68 val people")):
        lab = np.unique(raw[name]["labels"], return_inverse=True)[1]
        hp, hs = make_pairs(lab)
        rocs[label] = verification_roc(pair_similarity(emb[name], hp), hs)
    plot_roc(rocs, (op["far"], op["tar"]), ROOT / a.roc)
    if a.out:
        out = Path(a.out)
        np.savez(out.with_suffix(".npz"), **{k: np.asarray(v, np.float32) for k, v in proj.items()})
        meta = {"name": out.stem, "model": "dlib_resnet_v1", "dat_sha256": head.model.source_sha256,
                "source": "face_recognition_models 0.3.0: dlib_face_recognition_resnet_model_v1.dat (CC0)",
                "align": align, "embedding_dim": 128, "projection": out.with_suffix(".npz").name,
                "verification_threshold": round(thr, 4), "verification_far": a.far,
                "verification_tar": round(float(op["tar"]), 4),
                "command": "python tools/fit_identity_model.py --out facebatch/release/identity.json",
                "metrics": metrics, "fitted": dt.date.today().isoformat(), "provenance": provenance()}
        out.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {out} and {out.with_suffix('.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
