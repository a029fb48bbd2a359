"""Which celeba5k people (CelebA ids) are celeba6k celebrities, found by face recognition.

    python tools/celeba_overlap.py --celeba5k out/celeba5k --celeba6k out/celeba6k --output out/overlap

Both inputs are `facebatch preprocess` outputs. Every ok face is embedded with the shipped
``identity`` model, aligned in the original photo from the RetinaFace landmarks (as `facebatch
evaluate identity` does). Each celeba6k folder gets the normalised mean of its photos' embeddings
(its centroid), each celeba5k person (1-6 photos) the normalised mean of theirs; a person's best
folder is the centroid with the highest cosine.

The shipped threshold is fitted on single photo pairs and is far too low for "mean of k photos
vs best of 200 centroids" (averaging pulls every cosine up), so the match threshold is calibrated
per photo count k on celeba6k itself: celeba6k's test photos, halved in size like celeba5k's
(89x109 vs 178x218, JPEG q75), are the probes (every set of k of a person's 6), the centroids are
made from the train_dataset photos; the threshold is the (1 - FAR) quantile of a probe's best
cosine to the 199 other people's centroids. A celeb folder is one person, so when several celeba5k
people are above threshold for the same folder (East Asian folders attract many look-alikes: the
dlib network separates them less well), none of them is counted as a match: they are listed as
``ambiguous`` (at most one of them each can be that person). Counts at the shipped threshold too.

Writes OUTPUT/overlap.json, OUTPUT/scores.csv (per celeba5k person: best and second folder) and
OUTPUT/embeddings_*.npz (reused by a later run over the same rows).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facebatch.evaluation.common import has_crop, load_rows
from facebatch.evaluation.identity import embed_rows_in_photos
from facebatch.identity.meta import identity_meta
from facebatch.inference import AnalyzerConfig


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed(fa, name: str, rows: list[dict], cache: Path) -> np.ndarray:
    """Unit embeddings of the rows (NaN without a face), cached by the rows' paths."""
    paths = np.array([r["path"] for r in rows])
    if cache.is_file():
        with np.load(cache) as z:
            if np.array_equal(z["paths"], paths):
                return z["emb"]
    t = time.time()
    emb = embed_rows_in_photos(fa, rows)
    print(f"{name}: embedded {int((~np.isnan(emb).any(1)).sum())}/{len(rows)} faces in {time.time() - t:.0f} s", flush=True)
    np.savez(cache, paths=paths, emb=emb)
    return emb


def half_size(rows: list[dict], folder: Path) -> list[dict]:
    """The rows' photos at half size (as celeba5k's are), saved in ``folder``, box and landmarks halved."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        dst = folder / f"{r['identity']}_{Path(r['path']).name}"
        if not dst.is_file():
            with Image.open(r["path"]) as im:
                im.convert("RGB").resize((im.width // 2, im.height // 2)).save(dst, quality=75)
        out.append({**r, "path": str(dst), "box": [v / 2 for v in r["box"]],
                    "landmarks": [v / 2 for v in r["landmarks"]]})
    return out


def groups(rows: list[dict], emb: np.ndarray) -> dict[str, np.ndarray]:
    """Embeddings of each person's photos with a face."""
    g = defaultdict(list)
    for r, e in zip(rows, emb):
        if not np.isnan(e).any():
            g[r["identity"]].append(e)
    return {p: np.stack(v) for p, v in sorted(g.items())}


def calibrate(probes: dict, centroids: np.ndarray, folders: list[str], far: float) -> dict:
    """Per photo count k: best cosine of every k-photo mean to the other people's centroids (the null)
    and to the own one; the threshold is the null's (1 - far) quantile."""
    out = {}
    for k in range(1, 7):
        null, own = [], []
        for i, p in enumerate(folders):
            for pick in itertools.combinations(range(len(probes[p])), k):
                s = centroids @ unit(probes[p][list(pick)].mean(0))
                own.append(s[i])
                null.append(np.delete(s, i).max())
        thr = float(np.quantile(null, 1 - far))
        out[k] = {"threshold": round(thr, 4), "n_probes": len(null), "null_max": round(float(np.max(null)), 4),
                  "tar": round(float(np.mean(np.array(own) > thr)), 3), "own_median": round(float(np.median(own)), 4)}
    return out


def histogram(scores: np.ndarray, mark: float | None = None, width: float = 0.02) -> None:
    counts, edges = np.histogram(scores, np.arange(np.floor(scores.min() / width) * width, scores.max() + width, width))
    for n, a in zip(counts, edges):
        tag = "  <- shipped threshold" if mark is not None and a <= mark < a + width else ""
        print(f"  [{a:5.2f}, {a + width:5.2f})  {n:5d}  {'#' * int(np.ceil(60 * n / counts.max()))}{tag}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--celeba5k", default="out/celeba5k", help="preprocess output of celeba5k (CelebA ids)")
    ap.add_argument("--celeba6k", default="out/celeba6k", help="preprocess output of celeba6k (celeb_N folders)")
    ap.add_argument("--output", default="out/overlap", help="output folder")
    ap.add_argument("--far", type=float, default=0.001, help="false-match rate per celeba5k person (default 0.001)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # also onnxruntime's thread count (facebatch.runtime)
    t0, out = time.time(), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shipped = float(identity_meta("identity")["verification_threshold"])
    fa = AnalyzerConfig(keypoints=None, attributes=None, identity="identity").build()
    rows5 = [r for r in load_rows(args.celeba5k, None, out) if has_crop(r) and r["identity"] is not None]
    rows6 = [r for r in load_rows(args.celeba6k, None, out) if has_crop(r) and r["identity"] is not None]
    g5 = groups(rows5, embed(fa, "celeba5k", rows5, out / "embeddings_celeba5k.npz"))
    g6 = groups(rows6, emb6 := embed(fa, "celeba6k", rows6, out / "embeddings_celeba6k.npz"))
    half = half_size([r for r in rows6 if r["split"] == "test"], out / "halfsize")
    probes = groups(half, embed(fa, "celeba6k test, half size", half, out / "embeddings_celeba6k_half.npz"))
    non_test = groups([r for r in rows6 if r["split"] != "test"], emb6[[r["split"] != "test" for r in rows6]])
    folders = list(g6)
    cal = calibrate(probes, unit(np.stack([non_test[f].mean(0) for f in folders])), folders, args.far)
    split5 = {r["identity"]: r["split"] for r in rows5}
    split6 = {r["identity"]: r["split"] for r in rows6 if r["split"] != "test"}

    people = list(g5)
    k = np.array([len(g5[p]) for p in people])
    sim = unit(np.stack([g5[p].mean(0) for p in people])) @ unit(np.stack([g6[f].mean(0) for f in folders])).T
    order = np.argsort(-sim, axis=1)
    best, second = sim[np.arange(len(people)), order[:, 0]], sim[np.arange(len(people)), order[:, 1]]
    thr = np.array([cal[min(n, 6)]["threshold"] for n in k])

    above = defaultdict(list)  # folder -> [celeba5k person, split, score] above threshold with it as best folder
    for i in np.flatnonzero(best > thr):
        above[folders[order[i, 0]]].append([people[i], split5[people[i]], round(float(best[i]), 4)])
    crowded = {f: v for f, v in above.items() if len(v) > 1}
    unique = np.isin(people, [v[0][0] for v in above.values() if len(v) == 1])

    def summary(is_match: np.ndarray) -> dict:
        m = {p: [folders[order[i, 0]], round(float(best[i]), 4)] for i, p in enumerate(people) if is_match[i]}
        cross = Counter(f"{split5[p]}/{split6[f]}" for p, (f, _) in m.items())
        return {"n_matched": len(m), "by_split": {s: sum(split5[p] == s for p in m) for s in ("train", "val")},
                "celeba5k_split/celeba6k_split": dict(sorted(cross.items())),
                "n_val_people_matching_celeba6k_train": cross.get("val/train", 0),
                "n_celeba6k_folders_matched": len({f for f, _ in m.values()}), "matches": m}

    result = {"threshold": {"shipped": shipped, "calibrated_by_photo_count": cal, "far": args.far},
              "n_celeba5k_people": len(people),
              "n_celeba5k_people_by_split": dict(Counter(split5[p] for p in people)),
              "n_celeba5k_people_by_photo_count": {int(n): int(c) for n, c in sorted(Counter(k).items())},
              "expected_false_matches": round(args.far * len(people), 1),
              **summary(unique),
              "ambiguous": {"n_people": sum(map(len, crowded.values())),
                            "n_val_people_with_celeba6k_train_folder": sum(s == "val" and split6[f] == "train"
                                                                           for f, v in crowded.items() for _, s, _ in v),
                            "folders": crowded},
              "at_shipped_threshold": {k_: v for k_, v in summary(best > shipped).items() if k_ != "matches"},
              "celeba6k_folder_split": dict(sorted(split6.items(), key=lambda kv: int(kv[0].split("_")[-1]))),
              "best": {p: [folders[order[i, 0]], round(float(best[i]), 4), float(thr[i])] for i, p in enumerate(people)}}

    print(f"threshold per photo count (calibrated, FAR {args.far}; shipped {shipped}):")
    for n, c in cal.items():
        print(f"  k={n}: {c}  celeba5k people with k photos: {int((k == n).sum())}")
    print("best cosine of each celeba5k person to a celeba6k centroid:")
    histogram(best, mark=shipped)
    print("the same minus the calibrated threshold for the person's photo count:")
    histogram(best - thr)
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["celeba5k_person", "split", "photos", "best_folder", "folder_split", "best", "threshold",
                    "second_folder", "second", "matched", "ambiguous"])
        for i, p in enumerate(people):
            b, s = folders[order[i, 0]], folders[order[i, 1]]
            w.writerow([p, split5[p], k[i], b, split6[b], f"{best[i]:.4f}", thr[i], s, f"{second[i]:.4f}",
                        int(unique[i]), int(best[i] > thr[i] and not unique[i])])
    result["runtime_s"] = round(time.time() - t0, 1)
    (out / "overlap.json").write_text(json.dumps(result, indent=1))
    brief = {k_: v for k_, v in result.items() if k_ not in ("threshold", "celeba6k_folder_split", "best")}
    brief["ambiguous"] = {**{k_: v for k_, v in result["ambiguous"].items() if k_ != "folders"},
                          "people_per_folder": {f: len(v) for f, v in crowded.items()}}
    print(json.dumps(brief))
    print(f"wrote {out / 'overlap.json'} and {out / 'scores.csv'} in {result['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
