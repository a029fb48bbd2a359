"""Annotate benchmark: end-to-end `facebatch annotate` runs on the embedded local Ray (never a test).

    python bench/annotate_bench.py                       # everything, writes docs/BENCHMARKS.md
    python bench/annotate_bench.py --only small,big --no-write
    python bench/annotate_bench.py --udacity 600 --big 40 --no-write

Each run is a fresh process, timed around the whole command (Python start, imports, Ray start,
actor construction included); the per-run summary (`_summary.json`) gives the steady rate, the
start-up timeline and the worker CPU seconds per step. Load averages are recorded beside every
run: on a shared machine only ratios and CPU seconds measured in the same run mean much. Runs:

  0. a 4-image warm-up run (fills the onnxruntime export cache, ~/.cache/facebatch/onnx, so that
     no timed run pays for an export);
  1. a 100-image annotate run, `--repeat` times each through `python jobs/annotate.py` (the
     `ray job submit` entrypoint, which builds only the annotate parser) and through
     `python -m facebatch.cli annotate`: wall time (median) and where it goes;
  2. udacity68/training (all 3,462 images unless --udacity N): annotate (detector + keypoints68 +
     attributes) and `facebatch preprocess` on the same input;
  3. N synthetic 12 MP JPEGs (4000x3000, q90) made from shared photos (upscaled, with texture):
     annotate with `--decode draft` against `--decode full` (shard size 8), wall and worker CPU
     seconds per step, plus the bare decode times.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from facebatch.paths import data_dir  # noqa: E402

PY = sys.executable
ENTRIES = {"job": [PY, "jobs/annotate.py"], "cli": [PY, "-m", "facebatch.cli", "annotate"]}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("FACEBATCH_WEIGHTS_DIR", str(data_dir() / "weights"))
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    env.pop("RAY_ADDRESS", None)
    return env


def _load() -> list[float]:
    return [round(v, 1) for v in os.getloadavg()]


def _run(cmd: list[str]) -> tuple[float, float]:
    """``(wall seconds, epoch at launch)``."""
    t, epoch = time.perf_counter(), time.time()
    r = subprocess.run(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 3):
        sys.stderr.write(r.stdout[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, epoch


def annotate(inp: Path, out: Path, *extra: str, entry: str = "cli") -> dict:
    load = _load()
    wall, epoch = _run([*ENTRIES[entry], "--input", str(inp), "--output", str(out), *extra])
    s = json.loads(Path(sorted(glob.glob(f"{out}/dt=*/run=*/_summary.json"))[-1]).read_text())
    tl = dict(s.get("timeline_s") or {})
    if s.get("run_start_epoch"):
        # from the process's launch: Python start + imports, then the run's own marks, then the exit
        tl = {"run_start": round(s["run_start_epoch"] - epoch, 2),
              **{k: round(v + s["run_start_epoch"] - epoch, 2) for k, v in tl.items()}, "exit": round(wall, 2)}
    return {"entry": entry, "wall_s": round(wall, 1), "processed": s["processed"], "rows": s["rows"],
            "images_per_s_wall": round(s["processed"] / wall, 1), "images_per_s": s["images_per_s"],
            "steady_images_per_s": s["steady_images_per_s"], "startup_s": s["startup_s"], "timeline_s": tl,
            "actor_init_s": s["actor_init_s"], "stage_s": s["stage_s"], "step_s": s.get("step_s", {}),
            "redecoded": s["redecoded_for_crops"], "actors": s.get("actors"), "load_before": load, "load_after": _load()}


def preprocess(inp: Path, out: Path) -> dict:
    wall, _ = _run([PY, "-m", "facebatch.cli", "preprocess", "--input", str(inp), "--format", "folder",
                 "--output", str(out), "--progress", "none"])
    s = json.loads((out / "_summary.json").read_text())
    return {"wall_s": round(wall, 1), "inputs": s["inputs"], "images_per_s_wall": round(s["inputs"] / wall, 1),
            "steady_images_per_s": s.get("steady_images_per_s")}


def link_folder(dst: Path, files: list[Path]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dst / f.name).symlink_to(f)
    return dst


def make_big(dst: Path, sources: list[Path], n: int) -> list[Path]:
    """n 4000x3000 q90 JPEGs: a shared photo upscaled to 1/2 of the frame on a noisy textured background."""
    import numpy as np
    from PIL import Image
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        p = dst / f"big_{i:04d}.jpg"
        if not p.exists():
            bg = rng.integers(60, 200, size=(375, 500, 3), dtype=np.uint8)
            canvas = Image.fromarray(bg).resize((4000, 3000), Image.BICUBIC)
            noise = rng.integers(-12, 12, size=(3000, 4000, 3), dtype=np.int16)
            canvas = Image.fromarray(np.clip(np.asarray(canvas, np.int16) + noise, 0, 255).astype(np.uint8))
            face = Image.open(sources[i % len(sources)]).convert("RGB")
            k = 1500 / max(face.size)
            face = face.resize((int(face.width * k), int(face.height * k)), Image.BICUBIC)
            canvas.paste(face, (int(rng.integers(0, 4000 - face.width)), int(rng.integers(0, 3000 - face.height))))
            canvas.save(p, quality=90)
        out.append(p)
    return out


def decode_times(files: list[Path]) -> dict:
    """CPU milliseconds per image of the job's decode, full size and at the draft scale."""
    from facebatch.imaging import decode_scaled
    datas = [f.read_bytes() for f in files]
    res = {}
    for mode, side in (("full", None), ("draft", 640)):
        t = time.process_time()
        for d in datas:
            decode_scaled(d, max_side=side)
        res[f"{mode}_ms"] = round((time.process_time() - t) / len(files) * 1000, 1)
    return res


# start-up pieces: (label, from mark, to mark) on the timeline from the process's launch
PIECES = [
    ("Python start + imports (driver)", None, "run_start"),
    ("listing + lock + diff", "run_start", "diffed"),
    ("Ray start (`ray.init`, local)", "diffed", "ray_started"),
    ("Ray Data start -> first actor constructor", "ray_started", "first_actor_enter"),
    ("actor imports (torch, onnxruntime, facebatch.inference)", "first_actor_enter", "first_actor_imported"),
    ("actor model load (3 models, onnxruntime sessions)", "first_actor_imported", "first_actor_ready"),
    ("first actor ready -> last shard written", "first_actor_ready", "last_shard_end"),
    ("check, summary, manifest, Ray shutdown, exit", "last_shard_end", "exit"),
]

STEPS = ["read", "unpickle", "decode", "sha256", "detect", "redecode", "analyze", "rows", "write", "actor_other"]


def pieces(tl: dict) -> dict:
    out = {}
    for label, a, b in PIECES:
        if b in tl and (a is None or a in tl):
            out[label] = round(tl[b] - (tl[a] if a else 0.0), 2)
    return out


def _median(runs: list[dict], key) -> float | None:
    vals = [key(r) for r in runs]
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="small,udacity,big", help="comma list of: small, udacity, big")
    ap.add_argument("--udacity", type=int, default=None, help="images of udacity68/training (default all)")
    ap.add_argument("--big", type=int, default=300, help="synthetic 12 MP JPEGs")
    ap.add_argument("--repeat", type=int, default=3, help="100-image runs per entrypoint (the median is reported)")
    ap.add_argument("--cache", default=str(REPO / "out" / "bench_big"), help="where the synthetic JPEGs are kept")
    ap.add_argument("--no-write", action="store_true", help="print, do not update docs/BENCHMARKS.md")
    ap.add_argument("--note", default="", help="a line added to the doc section (e.g. machine load)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    files = sorted((data_dir() / "udacity68" / "training").glob("*.jpg"))
    uda = files if a.udacity is None else files[:: max(1, len(files) // a.udacity)][: a.udacity]
    res: dict = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                 "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "load_before": _load()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res["warmup"] = annotate(link_folder(tmp / "warm", files[:4]), tmp / "o_warm", entry="job")
        if "small" in only:
            small = link_folder(tmp / "small", files[:100])
            runs: dict = {"job": [], "cli": []}
            for k in range(a.repeat):
                for entry in ("job", "cli"):
                    runs[entry].append(annotate(small, tmp / f"o_small_{entry}_{k}", entry=entry))
            res["small100"] = runs
        if "udacity" in only:
            inp = link_folder(tmp / "uda", uda)
            res["udacity"] = {"images": len(uda), "annotate": annotate(inp, tmp / "o_uda"),
                              "preprocess": preprocess(inp, tmp / "o_pre")}
        if "big" in only and a.big:
            big = make_big(Path(a.cache), files[::37], a.big)
            bin_ = link_folder(tmp / "big", big)
            res["big"] = {"images": len(big), "decode": decode_times(big[:20]),
                          "draft": annotate(bin_, tmp / "o_draft", "--shard-size", "8", entry="job"),
                          "full": annotate(bin_, tmp / "o_full", "--decode", "full", "--shard-size", "8", entry="job")}
    res["load_after"] = _load()
    print(json.dumps(res, indent=2))
    if not a.no_write:
        write_doc(res, a.note)


START, END = "<!-- annotate-bench:start -->", "<!-- annotate-bench:end -->"


def doc_block(r: dict, note: str) -> list[str]:
    lines = [f"Run {r['date']}, {r['machine']}; load average before {r['load_before']}, after {r['load_after']}."
             + (f" {note}" if note else ""), "",
             "| check | result | load avg (1/5/15 min) before the run | target |", "|---|---|---|---|"]
    if "small100" in r:
        for entry, cmd in (("job", "`python jobs/annotate.py`"), ("cli", "`facebatch annotate` (`python -m facebatch.cli annotate`)")):
            runs = r["small100"][entry]
            walls = ", ".join(str(x["wall_s"]) for x in runs)
            lines.append(f"| 100-image annotate run, {cmd}, wall (median of {len(runs)}) | "
                         f"{_median(runs, lambda x: x['wall_s'])} s ({walls}) | "
                         f"{'; '.join(str(x['load_before']) for x in runs)} | <= 15 s |")
    if "udacity" in r:
        u = r["udacity"]
        lines += [f"| udacity68 {u['images']} images, annotate wall (incl. Ray start) | {u['annotate']['wall_s']} s "
                  f"({u['annotate']['images_per_s_wall']} images/s) | {u['annotate']['load_before']} | <= 90 s for 3,462 |",
                  f"| udacity68 steady rate (between first and last shard) | {u['annotate']['steady_images_per_s']} images/s "
                  f"| | >= 60 |",
                  f"| `facebatch preprocess`, same input, same run | {u['preprocess']['wall_s']} s wall "
                  f"({u['preprocess']['images_per_s_wall']} images/s, steady {u['preprocess']['steady_images_per_s']}) | | - |"]
    if "big" in r:
        b = r["big"]
        sp = round(b["full"]["wall_s"] / b["draft"]["wall_s"], 2)
        cpu = {k: sum(v for n, v in b[k]["step_s"]["cpu"].items() if n in STEPS) for k in ("draft", "full")}
        lines += [f"| {b['images']} x 12 MP JPEG, annotate `--decode draft` vs `full`, wall | {b['draft']['wall_s']} s vs "
                  f"{b['full']['wall_s']} s: **{sp}x** (decoded again for crops: {b['draft']['redecoded']}) | "
                  f"{b['draft']['load_before']}; {b['full']['load_before']} | >= 3x |",
                  f"| the same, worker CPU seconds (read task + actor, every step; start-up not included) | "
                  f"{cpu['draft']:.1f} s vs {cpu['full']:.1f} s: **{cpu['full'] / max(cpu['draft'], 1e-9):.2f}x** | | >= 3x |",
                  f"| 12 MP decode alone, CPU per image | full {b['decode']['full_ms']} ms, draft {b['decode']['draft_ms']} ms | | - |"]
    if "small100" in r:
        runs = r["small100"]["job"] + r["small100"]["cli"]
        lines += ["", "Where the 100-image run's time goes (seconds, median over the runs of each entrypoint; from "
                  "the process's launch to the marks in `_summary.json` `timeline_s`):", "",
                  "| piece | `jobs/annotate.py` | `facebatch annotate` |", "|---|---|---|"]
        for label, _, _ in PIECES:
            j = _median(r["small100"]["job"], lambda x: pieces(x["timeline_s"]).get(label))
            c = _median(r["small100"]["cli"], lambda x: pieces(x["timeline_s"]).get(label))
            lines.append(f"| {label} | {j} | {c} |")
        lines.append(f"| **total (wall)** | {_median(r['small100']['job'], lambda x: x['wall_s'])} | "
                     f"{_median(r['small100']['cli'], lambda x: x['wall_s'])} |")
        del runs
    if "big" in r:
        b = r["big"]
        n = b["images"]
        lines += ["", f"Worker CPU per 12 MP image, ms ({n} images, `_summary.json` `step_s.cpu`; `read` in the read "
                  "tasks, the rest in the analyzer actors; `actor_other` is actor CPU outside the steps: Ray fetching "
                  "blocks and returning results):", "", "| step | draft | full |", "|---|---|---|"]
        for step in STEPS:
            d = b["draft"]["step_s"]["cpu"].get(step, 0.0)
            f = b["full"]["step_s"]["cpu"].get(step, 0.0)
            lines.append(f"| {step} | {d / n * 1000:.1f} | {f / n * 1000:.1f} |")
        cd = sum(b["draft"]["step_s"]["cpu"].get(x, 0.0) for x in STEPS)
        cf = sum(b["full"]["step_s"]["cpu"].get(x, 0.0) for x in STEPS)
        lines.append(f"| **total** | **{cd / n * 1000:.1f}** | **{cf / n * 1000:.1f}** |")
        lines.append(f"| actor start-up, CPU s per actor (not per image) | "
                     f"{b['draft']['step_s']['cpu'].get('actor_startup', 0) / max(1, b['draft']['actors']):.1f} | "
                     f"{b['full']['step_s']['cpu'].get('actor_startup', 0) / max(1, b['full']['actors']):.1f} |")
    return lines


def write_doc(r: dict, note: str) -> None:
    """Replace the block between the annotate-bench markers in docs/BENCHMARKS.md (nothing else)."""
    doc = REPO / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"docs/BENCHMARKS.md has no {START} ... {END} block to replace")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    doc.write_text(before + START + "\n" + "\n".join(doc_block(r, note)) + "\n" + END + after)


if __name__ == "__main__":
    main()
