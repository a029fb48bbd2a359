"""Evaluate the people stage: how well faces are grouped into persons, in one night and in two.

    facebatch evaluate people --input ../shared/data/celeba6k --format folder-per-person --output OUT
    facebatch evaluate people --input ../shared/data/udacity68/training --format name-prefix --output OUT

Truth: ``folder-per-person`` takes each photo's person from the folder it is in (celeba6k's
``train_dataset/celeb_N`` and ``test_dataset/celeb_N`` are the same person); ``name-prefix``
from its file name without a trailing ``_NN`` (udacity68's video frames). The largest face of
every photo is detected and embedded with the ``identity`` model through
:class:`~facebatch.inference.FaceAnalyzer` in this process (cached in ``OUT/faces.parquet``:
``--reuse`` skips it), put through the people stage's quality gate and grouped by the stage's
own night (:func:`facebatch.people.night.run_night`) with the same parameters.

Metrics (pure functions below, on one label per face; a face in no person counts as a person of
its own): pairwise precision/recall/F over same-cluster pairs; BCubed precision/recall/F (per
face: the share of its cluster that is its person, and of its person that is in its cluster);
persons found (clusters of at least ``min_faces``) against the number of true persons. They are
given for ``all`` photos (no face and gated faces as singletons) and for the ``clusterable``
faces. ``--nights 0.7`` also runs two nights (70% of each person's photos, then the rest) and
reports stability: the share of night-1 faces in a person that keep their id, and the share of
night-2 faces that joined a known person of their own. Writes ``OUT/metrics.json`` and
``OUT/predictions.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

FORMATS = ("folder-per-person", "name-prefix")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---- metrics (pure) -----------------------------------------------------------------------------

def _prf(p: float, r: float) -> dict:
    return {"precision": p, "recall": r, "f": 0.0 if p + r == 0 else 2 * p * r / (p + r)}


def pairwise_prf(pred: Sequence[Hashable], truth: Sequence[Hashable]) -> dict:
    """Precision/recall/F over pairs of faces put in one cluster vs pairs of one person."""
    pairs = lambda c: sum(n * (n - 1) // 2 for n in c.values())  # noqa: E731
    both = pairs(Counter(zip(pred, truth)))
    pp, tp = pairs(Counter(pred)), pairs(Counter(truth))
    return _prf(both / pp if pp else 1.0, both / tp if tp else 1.0)


def bcubed_prf(pred: Sequence[Hashable], truth: Sequence[Hashable]) -> dict:
    """BCubed precision/recall/F (Bagga & Baldwin 1998; Amigo et al. 2009)."""
    n = len(pred)
    if n == 0:
        return _prf(1.0, 1.0)
    pc, tc, both = Counter(pred), Counter(truth), Counter(zip(pred, truth))
    p = sum(both[(a, b)] / pc[a] for a, b in zip(pred, truth)) / n
    r = sum(both[(a, b)] / tc[b] for a, b in zip(pred, truth)) / n
    return _prf(p, r)


def clustering_metrics(pred: Sequence[Hashable], truth: Sequence[Hashable], min_faces: int = 2) -> dict:
    """Pairwise and BCubed P/R/F, persons found (clusters with ``>= min_faces`` faces) and true persons."""
    found = sum(1 for c in Counter(pred).values() if c >= min_faces)
    r = lambda d: {k: round(v, 4) for k, v in d.items()}  # noqa: E731
    return {"faces": len(pred), "pairwise": r(pairwise_prf(pred, truth)), "bcubed": r(bcubed_prf(pred, truth)),
            "persons_found": found, "persons_true": len(set(truth))}


def singletons(person: np.ndarray) -> np.ndarray:
    """Labels with every face in no person (``< 0``) made a cluster of its own."""
    person = np.asarray(person, np.int64)
    return np.where(person >= 0, person, -1 - np.arange(len(person)))


# ---- data ---------------------------------------------------------------------------------------

def labelled_photos(src: str, fmt: str) -> list[tuple[str, str]]:
    """``(path, person)`` of every image under ``src`` (sorted), by the ``fmt`` rule (module doc)."""
    root = Path(src)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"--input {src} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXT and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--input {src} holds no images ({', '.join(IMAGE_EXT)})")
    if fmt == "folder-per-person":
        return [(str(p), p.parent.name) for p in files]
    return [(str(p), re.sub(r"_\d+$", "", p.stem)) for p in files]


def embed_photos(photos: list[tuple[str, str]], batch: int = 16) -> list[dict]:
    """The largest face of each photo: box, score, face_size, keypoints68, embedding (None: no face)."""
    from PIL import Image

    from ..inference import FaceAnalyzer
    fa = FaceAnalyzer.load(identity="identity", attributes=None)
    out = []
    for i in range(0, len(photos), batch):
        part = photos[i:i + batch]
        images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in part]
        for (path, person), faces in zip(part, fa.analyze(images, max_faces=1, attributes=False)):
            f = faces[0] if faces else None
            out.append({"path": path, "person": person, "box": f.box if f else None,
                        "score": f.score if f else None, "face_size": f.face_size if f else None,
                        "keypoints68": f.keypoints68 if f else None, "embedding": f.embedding if f else None})
    return out


# ---- the evaluation -----------------------------------------------------------------------------

def evaluate_people(src: str, fmt: str, output: str, threshold: float | None = None, min_faces: int = 2,
                    k: int = 10, nights: float | None = 0.7, reuse: bool = False, seed: int = 0) -> dict:
    """Embed, gate and group the photos of ``src``; write and return the metrics (module doc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..people import QualityGate
    from ..people.live import embeddings, points
    from ..people.night import NO_PERSON, Params, run_night
    from ..people.quality import gate
    from ..people.stage import resolve_threshold
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "faces.parquet"
    if reuse and cache.exists():
        t = pq.read_table(cache)
    else:
        t = pa.Table.from_pylist(embed_photos(labelled_photos(src, fmt)))
        pq.write_table(t, cache)
    thr = resolve_threshold(threshold)
    emb, has = embeddings(t)
    truth = np.asarray(t["person"].to_pylist(), object)
    reason = gate(t.num_rows, QualityGate(), has, np.asarray(t["face_size"].to_pylist(), float),
                  np.asarray(t["score"].to_pylist(), float), points(t, "keypoints68", 136))
    reason[~has] = "no_face"
    ok = np.equal(reason, None)
    p = Params(threshold=thr, min_faces=min_faces, k=k)
    n = t.num_rows
    one = run_night(emb, ok, np.full(n, NO_PERSON), np.ones(n, bool), {}, 1, p).person
    labels = singletons(one)
    m = {"input": src, "format": fmt, "photos": n, "no_face": int((~has).sum()),
         "gated": {str(r): int(c) for r, c in Counter(reason[has & ~ok]).items()}, "threshold": thr,
         "k": k, "min_faces": min_faces,
         "one_night": {"all": clustering_metrics(labels, truth, min_faces),
                       "clusterable": clustering_metrics(labels[ok], truth[ok], min_faces)}}
    if nights:
        m["two_nights"] = two_nights(emb, ok, truth, p, nights, seed)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "person", "person_id", "gate"])
        w.writerows(zip(t["path"].to_pylist(), truth, [int(x) if x >= 0 else "" for x in one],
                        [r or "" for r in reason]))
    return m


def two_nights(emb: np.ndarray, ok: np.ndarray, truth: np.ndarray, p, first: float = 0.7, seed: int = 0) -> dict:
    """Night 1 on a ``first`` share of each person's photos, night 2 on all (module doc)."""
    from ..people.night import NO_PERSON, run_night
    rng = np.random.default_rng(seed)
    night1 = np.zeros(len(truth), bool)
    for person in np.unique(truth):  # exactly round(first * n) of each person's photos, drawn at random
        idx = rng.permutation(np.flatnonzero(truth == person))
        night1[idx[:int(round(first * len(idx)))]] = True
    a = run_night(emb, ok & night1, np.full(len(truth), NO_PERSON), night1, {}, 1, p)
    b = run_night(emb, ok, a.person, ~night1, {}, a.next_id, p)
    had = night1 & (a.person >= 0)
    major = {pid: Counter(truth[a.person == pid]).most_common(1)[0][0] for pid in np.unique(a.person[had])}
    late = ~night1 & ok
    joined = late & np.isin(b.person, list(major))
    right = sum(major[int(pid)] == tr for pid, tr in zip(b.person[joined], truth[joined]))
    labels = singletons(b.person)
    return {"night1_faces": int((night1 & ok).sum()), "night2_faces": int(late.sum()),
            "kept_id": round(float(np.mean(b.person[had] == a.person[had])) if had.any() else 1.0, 4),
            "night2_joined_known": int(joined.sum()), "night2_joined_own_person": round(right / max(1, joined.sum()), 4),
            "night2_new_persons": len(b.created), "night2_merges": len(b.merged),
            "after_night2": {"all": clustering_metrics(labels, truth, p.min_faces),
                             "clusterable": clustering_metrics(labels[ok], truth[ok], p.min_faces)}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="folder of photos with known persons")
    p.add_argument("--format", default="folder-per-person", choices=FORMATS,
                   help="where each photo's person comes from: its folder, or its file name less a trailing _NN")
    p.add_argument("--output", required=True, help="folder for metrics.json, predictions.csv, faces.parquet")
    p.add_argument("--threshold", type=float, default=None,
                   help="edge threshold (default: the identity model's verification_threshold)")
    p.add_argument("--min-faces", type=int, default=2, help="smallest group that is a person")
    p.add_argument("--k", type=int, default=10, help="neighbours per face in the graph")
    p.add_argument("--nights", type=float, default=0.7,
                   help="share of each person's photos in night 1 of the two-night run (0: skip it)")
    p.add_argument("--reuse", action="store_true", help="reuse OUTPUT/faces.parquet instead of embedding again")


def run(args: argparse.Namespace, prepare=None) -> int:
    m = evaluate_people(args.input, args.format, args.output, threshold=args.threshold, min_faces=args.min_faces,
                        k=args.k, nights=args.nights or None, reuse=args.reuse)
    print(json.dumps(m, indent=2))
    return 0
