"""People stage speed: 100k synthetic faces around 10k centres, then a night adding 1% more.

    python bench/people_bench.py                 # writes the people-bench block of docs/BENCHMARKS.md
    python bench/people_bench.py --faces 20000 --no-write

Targets (issue 22): the first night (every face clustered) <= 60 s on 2 cores; a night adding 1%
more faces <= 10% of that. Measured twice over:

* ``core``: :func:`facebatch.people.night.run_night` on arrays (the kNN graph in blocks, Chinese
  whispers, merges): the algorithm alone, median of ``--repeat`` runs;
* ``stage``: :func:`facebatch.people.run_people` on an annotate-layout folder of Parquet runs (read
  the live view, gate, cluster, write ``_people/``): what a nightly run pays, median of runs.

Embeddings: unit vectors around random unit centres with per-face noise so that two faces of a
centre have cosine ~0.9 (the identity model's same-person median is about that); the edge
threshold is the shipped identity model's ``verification_threshold`` (``--threshold`` to set one).
The graph is the same computation real faces get; real collections have more edges between
different people (more work for the whispers, not for the graph).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
START, END = "<!-- people-bench:start -->", "<!-- people-bench:end -->"


def synthetic(n: int, centres: int, dim: int = 128, noise: float = 0.33, seed: int = 0) -> np.ndarray:
    """``n`` unit embeddings, each around one of ``centres`` random unit centres."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + rng.normal(scale=noise / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_run(dst: Path, emb: np.ndarray, start: int, run_id: str) -> None:
    """One annotate-layout run folder holding faces ``start..`` (one face per photo)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = len(emb)
    d = dst / f"dt={run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}" / f"run={run_id}"
    d.mkdir(parents=True)
    flat = pa.array(emb.reshape(-1), pa.float32())
    t = pa.table({"path": [f"s3://photos/{i:08d}.jpg" for i in range(start, start + n)],
                  "status": pa.array(["ok"] * n), "face_index": pa.array(np.zeros(n, np.int32)),
                  "box": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([0, 0, 100, 100], n), pa.float32()), 4),
                  "score": pa.array(np.full(n, 0.99, np.float32)), "face_size": pa.array(np.full(n, 100, np.float32)),
                  "embedding": pa.ListArray.from_arrays(pa.array(np.arange(0, n * 128 + 1, 128, dtype=np.int32)), flat),
                  "run_id": pa.array([run_id] * n)})
    pq.write_table(t, d / "part-00000.parquet")
    (d / "_SUCCESS").write_text(run_id)


def bench(faces: int, centres: int, repeat: int, threshold: float, block: int) -> dict:
    from facebatch.people import run_people
    from facebatch.people.night import NO_PERSON, Params, run_night
    extra = faces // 100
    x = synthetic(faces + extra, centres)
    p = Params(threshold=threshold, block=block)
    first, later = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        n1 = run_night(x[:faces], np.ones(faces, bool), np.full(faces, NO_PERSON), np.ones(faces, bool), {}, 1, p)
        first.append(time.perf_counter() - t)
        new = np.r_[np.zeros(faces, bool), np.ones(extra, bool)]
        t = time.perf_counter()
        n2 = run_night(x, np.ones(len(x), bool), np.r_[n1.person, np.full(extra, NO_PERSON)], new, {}, n1.next_id, p)
        later.append(time.perf_counter() - t)
    out = {"core_first_s": [round(v, 2) for v in first], "core_night_s": [round(v, 2) for v in later],
           "persons": int(len(set(n1.person[n1.person >= 0].tolist()))), "edges_first": n1.edges,
           "assigned_existing": n2.assigned_existing, "created_night2": len(n2.created)}
    stage_first, stage_night = [], []
    for r in range(repeat):
        tmp = Path(tempfile.mkdtemp(prefix="people-bench-"))
        try:
            write_run(tmp, x[:faces], 0, "20261201T000000000000Z-aaaaaa")
            t = time.perf_counter()
            s1 = run_people(str(tmp), threshold=threshold, block=block, run_id=f"b{r}1")
            stage_first.append(time.perf_counter() - t)
            write_run(tmp, x[faces:], faces, "20261202T000000000000Z-bbbbbb")
            t = time.perf_counter()
            s2 = run_people(str(tmp), threshold=threshold, block=block, run_id=f"b{r}2")
            stage_night.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out.update(stage_first_s=[round(v, 2) for v in stage_first], stage_night_s=[round(v, 2) for v in stage_night],
               stage_persons=s1["persons"], stage_night_summary={k: s2[k] for k in
                                                                ("new_faces", "assigned_to_existing", "new_persons")})
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def doc_block(r: dict) -> list[str]:
    med = lambda k: round(statistics.median(r[k]), 2)  # noqa: E731
    f, n = med("stage_first_s"), med("stage_night_s")
    return [f"Run {r['date']}, {r['machine']}; load average before {r['load_before']}. {r['faces']:,} synthetic faces "
            f"around {r['centres']:,} centres, threshold {r['threshold']}, block {r['block']}, k 10; medians of "
            f"{r['repeat']} runs (each run's figures in brackets); peak RSS {r['peak_rss_mb']} MB.", "",
            "| check | result | target |", "|---|---|---|",
            f"| first night, `run_people` (read runs, gate, graph, whispers, write `_people/`) | **{f} s** "
            f"({', '.join(map(str, r['stage_first_s']))}) | <= 60 s |",
            f"| a night adding 1% ({r['faces'] // 100:,} faces), `run_people` | **{n} s** "
            f"({', '.join(map(str, r['stage_night_s']))}) = {100 * n / f:.1f}% of the first | <= 10% |",
            f"| first night, algorithm alone (`run_night` on arrays) | {med('core_first_s')} s "
            f"({', '.join(map(str, r['core_first_s']))}); {r['edges_first']:,} edges, {r['persons']:,} persons | - |",
            f"| the 1% night, algorithm alone | {med('core_night_s')} s ({', '.join(map(str, r['core_night_s']))}); "
            f"{r['assigned_existing']} faces joined known persons, {r['created_night2']} new persons | - |"]


def write_doc(r: dict) -> None:
    doc = REPO / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    block = START + "\n" + "\n".join(doc_block(r)) + "\n" + END
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## People clustering (`bench/people_bench.py`)\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--centres", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    a = ap.parse_args()
    from facebatch.people.stage import resolve_threshold
    thr = resolve_threshold(a.threshold)
    r = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "faces": a.faces, "centres": a.centres,
         "repeat": a.repeat, "block": a.block, "threshold": thr, "load_before": [round(v, 1) for v in os.getloadavg()],
         "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    r.update(bench(a.faces, a.centres, a.repeat, thr, a.block))
    print(r)
    if not a.no_write:
        write_doc(r)


if __name__ == "__main__":
    main()
