"""Identity benchmark: what the `identity` model costs per face, and annotate with and without it.

    python bench/identity_bench.py                  # everything, writes docs/BENCHMARKS.md
    python bench/identity_bench.py --faces 128 --udacity 600 --no-write

1. Per face, on real udacity68 faces (detected once): the aligned chip (numpy, CPU ms), the
   network's forward pass at batch 32 in onnxruntime (the CPU default) and torch, with 1 and 2
   threads (median of 5 timed passes, after a warm-up).
2. `facebatch annotate` over udacity68/training (all 3,462 unless --udacity N), fresh processes,
   alternately without identity (the default) and with `--embeddings` (the identity model runs),
   `--repeat` times each: wall time of the whole command, median, and the ratio in the same run.

Load averages are recorded beside every figure: on the shared 2-core machine only figures of the
same run compare.
"""
from __future__ import annotations

import argparse
import datetime as dt
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

START, END = "<!-- identity-bench:start -->", "<!-- identity-bench:end -->"


def _load() -> list[float]:
    return [round(v, 1) for v in os.getloadavg()]


def per_face(n_faces: int) -> dict:
    import numpy as np
    import torch
    from facebatch.identity import chip_from_retinaface
    from facebatch.imaging import decode_image
    from facebatch.inference import FaceAnalyzer
    from facebatch.inference.identity import IdentityHead
    from facebatch.runtime import accelerate
    root = data_dir() / "udacity68" / "training"
    files = sorted(root.iterdir())[:: max(1, 3462 // n_faces)][:n_faces]
    fa = FaceAnalyzer.load(keypoints=None, attributes=None)
    images = [decode_image(f.read_bytes()).image for f in files]
    faces = [f[0] for f in fa.detect(images) if f]
    t = time.process_time()
    chips = np.stack([chip_from_retinaface(im, np.asarray(f.landmarks).reshape(5, 2)) for im, f in zip(images, faces)])
    out = {"faces": len(chips), "chip_cpu_ms": round((time.process_time() - t) / len(chips) * 1000, 2), "forward": {}}
    head = IdentityHead(project=False)
    x = torch.from_numpy(chips[:32]).permute(0, 3, 1, 2).float().contiguous()
    for runtime in ("onnxruntime", "torch"):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            run, info = accelerate(head.model, x[:2], runtime, "cpu", what="identity bench")
            with torch.inference_mode():
                run(x)
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - t)
            out["forward"][f"{runtime} x{threads}"] = {"ms_per_face": round(statistics.median(times) / 32 * 1000, 2),
                                                       "ran": info.get("runtime"), "load": _load()}
    return out


def annotate(src: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.setdefault("FACEBATCH_WEIGHTS_DIR", str(data_dir() / "weights"))
    env.pop("RAY_ADDRESS", None)
    load = _load()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "facebatch.cli", "annotate", "--input", str(src), "--output", str(out),
                    *extra], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    summary = json.loads(next(out.rglob("_summary.json")).read_text())
    return {"wall_s": round(wall, 1), "load_before": load, "processed": summary["processed"],
            "faces": summary.get("faces"), "steady_images_per_s": summary.get("steady_images_per_s")}


def udacity_input(tmp: Path, n: int | None) -> Path:
    root = data_dir() / "udacity68" / "training"
    if not n:
        return root
    sub = tmp / "udacity_sub"
    sub.mkdir()
    for f in sorted(root.iterdir())[:: max(1, 3462 // n)][:n]:
        (sub / f.name).symlink_to(f)
    return sub


def doc_block(r: dict, note: str) -> list[str]:
    pf = r.get("per_face")
    lines = [f"Run {r['date']}, {r['machine']}; load average before {r['load_before']}, after {r['load_after']}."
             + (f" {note}" if note else ""), ""]
    if pf:
        lines += [f"Per face ({pf['faces']} udacity68 faces; the identity model's chip is aligned on the detector's "
                  f"landmarks): chip {pf['chip_cpu_ms']} ms CPU.", "",
                  "| forward pass, batch 32 | ms per face | load avg |", "|---|---|---|"]
        lines += [f"| {k} | {v['ms_per_face']} | {v['load']} |" for k, v in pf["forward"].items()]
    if "annotate" in r:
        a = r["annotate"]
        base = [x["wall_s"] for x in a["default"]]
        emb = [x["wall_s"] for x in a["embeddings"]]
        runs = {k: ", ".join("%s (%s)" % (x["wall_s"], x["load_before"][0]) for x in a[k])
                for k in ("default", "embeddings")}
        lines += ["", f"| udacity68 annotate ({a['images']} images), wall of the whole command | median | runs (load before) "
                  "| target |", "|---|---|---|---|",
                  f"| default (no identity) | {statistics.median(base)} s | {runs['default']} | as today |",
                  f"| `--embeddings` (identity model) | {statistics.median(emb)} s | {runs['embeddings']} | <= 60 s |",
                  f"| ratio | {statistics.median(emb) / statistics.median(base):.2f}x | | |"]
    return lines


def write_doc(r: dict, note: str) -> None:
    doc = REPO / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    if START not in text:
        text += ("\n## Identity model (bench/identity_bench.py)\n\n"
                 "dlib's face-recognition ResNet in our runtime, per face and inside annotate.\n\n" + START + "\n" + END + "\n")
    before, rest = text.split(START, 1)
    doc.write_text(before + START + "\n" + "\n".join(doc_block(r, note)) + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=256, help="faces for the per-face timing")
    p.add_argument("--udacity", type=int, default=None, help="annotate only N udacity68 images (default: all)")
    p.add_argument("--repeat", type=int, default=2, help="annotate runs of each kind")
    p.add_argument("--only", default="per_face,annotate")
    p.add_argument("--note", default="")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    r = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "load_before": _load(),
         "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})"}
    only = set(a.only.split(","))
    if "per_face" in only:
        r["per_face"] = per_face(a.faces)
        print(json.dumps(r["per_face"], indent=1), flush=True)
    if "annotate" in only:
        with tempfile.TemporaryDirectory() as tmp:
            src = udacity_input(Path(tmp), a.udacity)
            runs = {"default": [], "embeddings": []}
            warm = Path(tmp) / "warm_in"  # fills the onnxruntime export cache before any timed run
            warm.mkdir()
            for f in sorted(src.iterdir())[:4]:
                (warm / f.name).symlink_to(f.resolve())
            annotate(warm, Path(tmp) / "warm", "--embeddings")
            for k in range(a.repeat):
                for kind, extra in (("default", ()), ("embeddings", ("--embeddings",))):
                    runs[kind].append(annotate(src, Path(tmp) / f"{kind}{k}", *extra))
                    print(kind, runs[kind][-1], flush=True)
            r["annotate"] = {"images": runs["default"][0]["processed"], **runs}
    r["load_after"] = _load()
    print(json.dumps(r, indent=1))
    if not a.no_write:
        write_doc(r, a.note)


if __name__ == "__main__":
    main()
