"""Preprocess benchmark: udacity68/training through `facebatch preprocess` on the embedded local Ray.

    python bench/preprocess_bench.py                 # everything, writes docs/BENCHMARKS.md
    python bench/preprocess_bench.py --quick         # smaller samples

Runs, in one go (so the ratios come from one run on one machine):
  1. the seed projects' loop: retina-face `detect_faces` on one image at a time with default
     settings (upscaling to 1024 px), ResNet-50 with random weights (no weights exist here;
     the cost does not depend on the weights), over a sample;
  2. `facebatch preprocess` with the mobilenet backend over all 3,462 images, wall time
     measured around the whole command (Ray start-up included);
  3. the same with the resnet50 backend (random weights, said so) over a sample;
  4. mobilenet with 1 and with 2 detection workers over the same sample.
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


def seed_loop(images: list[Path]) -> dict:
    """Seconds per image of retina-face's own per-image path (default settings, ResNet-50)."""
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
    import torch
    from retinaface import RetinaFace
    from retinaface.model.retinaface_pth_model import RetinaFace as Net
    torch.manual_seed(0)
    net = Net().eval()
    times = []
    for p in images:
        t = time.perf_counter()
        RetinaFace.detect_faces(str(p), model=net)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"images": len(images), "median_s_per_image": round(med, 3), "images_per_s": round(1 / med, 3)}


def run_job(inp: str, out: str, extra: list[str], pin_one_core: bool = False) -> dict:
    """Run ``facebatch preprocess`` as a user would; ``pin_one_core`` runs the whole process tree
    (driver, Ray's own processes, tasks, actors) on CPU 0 with ``taskset``: a one-core machine."""
    cmd = (["taskset", "-c", "0"] if pin_one_core else []) + [str(REPO / ".venv" / "bin" / "facebatch"), "preprocess", "--input", inp, "--format", "udacity68",
           "--output", out, "--progress", "log", "--log-every", "15", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((Path(out) / "_summary.json").read_text())
    return {"args": " ".join(extra) + (" (taskset -c 0)" if pin_one_core else ""), "inputs": summary["inputs"], "status_counts": summary["status_counts"],
            "wall_s_with_ray_start": round(wall, 1), "images_per_s_wall": round(summary["inputs"] / wall, 2),
            "images_per_s_processing": summary["images_per_s"],
            "images_per_s_steady": summary.get("steady_images_per_s"), "stage_s_summed": summary["stage_s"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(data_dir()))
    ap.add_argument("--quick", action="store_true", help="smaller samples (a quick look, not for the record)")
    ap.add_argument("--seed-sample", type=int, default=12, help="images for the seed loop")
    ap.add_argument("--resnet-sample", type=int, default=800,
                    help="images for the resnet50 run (enough that Ray start-up does not dominate)")
    ap.add_argument("--workers-sample", type=int, default=1200, help="images for the 1-vs-2 workers runs")
    ap.add_argument("--no-docs", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.seed_sample, args.resnet_sample, args.workers_sample = 4, 48, 300
    root = Path(args.data) / "udacity68"
    names = sorted(p for p in (root / "training").glob("*.jpg"))
    res: dict = {"date": dt.date.today().isoformat(),
                 "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"}
    tmp = Path(tempfile.mkdtemp(prefix="fb-bench-"))
    step = max(1, len(names) // args.seed_sample)
    print("seed loop ...", flush=True)
    res["seed_loop"] = seed_loop(names[::step][: args.seed_sample])
    print(res["seed_loop"], flush=True)
    print("mobilenet, all images ...", flush=True)
    res["mobilenet_full"] = run_job(str(root), str(tmp / "m"), [])
    print(res["mobilenet_full"], flush=True)
    print("resnet50 (random weights) ...", flush=True)
    res["resnet50_sample"] = run_job(str(root), str(tmp / "r"), ["--backend", "resnet50", "--random-weights",
                                                                  "--limit", str(args.resnet_sample)])
    print(res["resnet50_sample"], flush=True)
    # Scaling: one worker on a one-core machine (everything pinned to CPU 0) against two workers on
    # two cores. Unpinned, a single worker already gets the second core for reading, decoding and
    # Ray itself, so "1 worker" on this 2-core VM is not one CPU's worth; both are recorded.
    for key, w, pin in (("mobilenet_1_worker_1_core", 1, True), ("mobilenet_1_workers", 1, False),
                        ("mobilenet_2_workers", 2, False)):
        print(f"mobilenet, {key} ...", flush=True)
        res[key] = run_job(str(root), str(tmp / key), ["--workers", str(w), "--limit", str(args.workers_sample)],
                           pin_one_core=pin)
        print(res[key], flush=True)
    seed = res["seed_loop"]["images_per_s"]
    res["ratios"] = {
        "mobilenet_vs_seed": round(res["mobilenet_full"]["images_per_s_wall"] / seed, 1),
        "resnet50_vs_seed": round(res["resnet50_sample"]["images_per_s_wall"] / seed, 1),
        "resnet50_processing_vs_seed": round(res["resnet50_sample"]["images_per_s_processing"] / seed, 1),
        "2_vs_1_workers_processing": round(res["mobilenet_2_workers"]["images_per_s_processing"]
                                           / res["mobilenet_1_workers"]["images_per_s_processing"], 2),
        "2_vs_1_workers_steady": round(res["mobilenet_2_workers"]["images_per_s_steady"]
                                       / res["mobilenet_1_workers"]["images_per_s_steady"], 2),
        "2_cores_vs_1_core_steady": round(res["mobilenet_2_workers"]["images_per_s_steady"]
                                          / res["mobilenet_1_worker_1_core"]["images_per_s_steady"], 2),
        "2_cores_vs_1_core_processing": round(res["mobilenet_2_workers"]["images_per_s_processing"]
                                              / res["mobilenet_1_worker_1_core"]["images_per_s_processing"], 2),
        "mobilenet_vs_issue_reference_0.195": round(res["mobilenet_full"]["images_per_s_wall"] / 0.195, 1),
        "resnet50_vs_issue_reference_0.195": round(res["resnet50_sample"]["images_per_s_wall"] / 0.195, 1),
    }
    print(json.dumps(res, indent=2))
    if not args.no_docs and not args.quick:
        with open(REPO / "docs" / "BENCHMARKS.md", "a") as f:
            m, r = res["mobilenet_full"], res["resnet50_sample"]
            w1, w2, c1 = res["mobilenet_1_workers"], res["mobilenet_2_workers"], res["mobilenet_1_worker_1_core"]
            f.write(f"\n## Preprocess, udacity68/training, {res['date']}, {res['machine']}\n\n"
                    f"`python bench/preprocess_bench.py`. Wall times include Ray start-up.\n\n"
                    "Processing excludes the CLI's imports; steady is the rate between the first and last finished shard "
                    "(Ray and actor start-up left out), the fair measure of how a run scales with workers.\n\n"
                    "| run | images | wall s | images/s (wall) | images/s (processing) | images/s (steady) | vs seed loop |\n|---|---|---|---|---|---|---|\n"
                    f"| seed loop (retina-face detect_faces per image, ResNet-50, random weights) | {seed and res['seed_loop']['images']} | – | {seed} | – | – | 1x |\n"
                    f"| facebatch mobilenet, all | {m['inputs']} | {m['wall_s_with_ray_start']} | {m['images_per_s_wall']} | {m['images_per_s_processing']} | {m['images_per_s_steady']} | {res['ratios']['mobilenet_vs_seed']}x |\n"
                    f"| facebatch resnet50 (random weights) | {r['inputs']} | {r['wall_s_with_ray_start']} | {r['images_per_s_wall']} | {r['images_per_s_processing']} | {r['images_per_s_steady']} | {res['ratios']['resnet50_vs_seed']}x |\n"
                    f"| mobilenet, 1 worker, pinned to 1 core | {c1['inputs']} | {c1['wall_s_with_ray_start']} | {c1['images_per_s_wall']} | {c1['images_per_s_processing']} | {c1['images_per_s_steady']} | |\n"
                    f"| mobilenet, 1 worker (2 cores) | {w1['inputs']} | {w1['wall_s_with_ray_start']} | {w1['images_per_s_wall']} | {w1['images_per_s_processing']} | {w1['images_per_s_steady']} | |\n"
                    f"| mobilenet, 2 workers | {w2['inputs']} | {w2['wall_s_with_ray_start']} | {w2['images_per_s_wall']} | {w2['images_per_s_processing']} | {w2['images_per_s_steady']} | {res['ratios']['2_cores_vs_1_core_steady']}x of 1 worker on 1 core (steady; {res['ratios']['2_cores_vs_1_core_processing']}x processing); {res['ratios']['2_vs_1_workers_steady']}x of 1 worker on 2 cores |\n\n"
                    f"Stage seconds, mobilenet full run (summed over workers): `{json.dumps(m['stage_s_summed'])}`\n\n"
                    f"```json\n{json.dumps(res, indent=2)}\n```\n")
    return res


if __name__ == "__main__":
    main()
