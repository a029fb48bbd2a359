"""Training throughput: Ray Train with 1 and 2 workers against a plain single-process PyTorch loop.

    python bench/train_bench.py --data out/udacity68            # writes docs/BENCHMARKS.md

Same model, data, batch size and augmentation in all three. The plain loop runs one torch
thread (as each Ray worker does); images/s counts the training phase of an epoch only
(augmentation + forward + backward + step), median over epochs after the first.
Overhead = 1 - (Ray 1 worker / plain loop).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def plain_loop(cfg, epochs: int) -> list[float]:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from facebatch.training.loop import make_task
    torch.set_num_threads(1)
    task = make_task(cfg)
    table = pq.read_table(cfg.data, columns=task.columns)
    if cfg.limit:
        table = table.slice(0, cfg.limit)
    cols = {c: np.array(table.column(c).to_pylist(), dtype=object) for c in task.columns}
    data = task.decode(cols, cfg.train_splits)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(epochs):
        order = rng.permutation(len(data["image"]))
        model.train()
        t0, n = time.perf_counter(), 0
        for i in range(0, len(order), cfg.batch_size):
            sel = order[i:i + cfg.batch_size]
            x, y = task.inputs({k: v[sel] for k, v in data.items()}, train=True, rng=rng)
            loss = task.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def ray_run(cfg, workers: int, epochs: int) -> list[float]:
    from facebatch.training.run import train
    cfg.num_workers, cfg.cpus_per_worker, cfg.epochs = workers, 1, epochs
    cfg.name, cfg.export = f"bench-{workers}w-{int(time.time())}", None
    s = train(cfg)
    hist = json.loads((Path(s["storage"]) / s["run"] / "history.json").read_text())
    return [h["train_images_per_s"] for h in hist]  # all-reduced: images of all workers per second


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="out/udacity68")
    ap.add_argument("--config", default="keypoints68")
    ap.add_argument("--limit", type=int, default=1280, help="rows used (train split of them)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    from facebatch.training.config import load_config
    def cfg():
        return load_config(args.config, [f"data={json.dumps(args.data)}", f"limit={args.limit}",
                                         "storage_path=\"/tmp/fb-bench-runs\"", "export=null"])
    res = {"date": dt.date.today().isoformat(), "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
           "model": cfg().model, "input_size": cfg().input_size, "batch_size": cfg().batch_size}
    plain = plain_loop(cfg(), args.epochs)
    r1 = ray_run(cfg(), 1, args.epochs)
    r2 = ray_run(cfg(), 2, args.epochs)
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731
    res.update({"plain_images_per_s": round(med(plain), 1), "ray_1_worker_images_per_s": round(med(r1), 1),
                "ray_2_workers_images_per_s": round(med(r2), 1)})
    res["ray_1_worker_overhead"] = round(1 - res["ray_1_worker_images_per_s"] / res["plain_images_per_s"], 3)
    res["ray_2_workers_speedup_vs_plain"] = round(res["ray_2_workers_images_per_s"] / res["plain_images_per_s"], 2)
    print(json.dumps(res, indent=2))
    if not args.no_docs:
        with open(REPO / "docs" / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Training throughput, {res['date']}, {res['machine']}\n\n"
                    f"`python bench/train_bench.py` — {res['model']} at {res['input_size']} px, batch {res['batch_size']}, "
                    "training phase only, median of epochs 2..N, one torch thread per process.\n\n"
                    "| run | images/s | vs plain loop |\n|---|---|---|\n"
                    f"| plain PyTorch loop, 1 process | {res['plain_images_per_s']} | 1.00 |\n"
                    f"| Ray Train, 1 worker | {res['ray_1_worker_images_per_s']} | overhead {res['ray_1_worker_overhead']:.1%} |\n"
                    f"| Ray Train, 2 workers (DDP, gloo) | {res['ray_2_workers_images_per_s']} | {res['ray_2_workers_speedup_vs_plain']}x |\n")
    return res


if __name__ == "__main__":
    main()
