"""Load test of the annotation API on a local Ray Serve, loopback only, bounded in requests and time.

    python bench/serve_load.py                                # both configs, concurrency 1, 8, 32
    python bench/serve_load.py --requests 200 --memory-requests 5000 --out out/serve_load.json

For each app config (``--max-batch-size 1`` and the default, in the same run and the same
Ray) it deploys the app on 127.0.0.1, warms it up, then keeps C requests in flight (asyncio +
aiohttp) for C in --concurrency, each level bounded by --requests and --max-seconds. Photos are
real: udacity68 frames and celeba6k crops, mixed. Reported per level: requests/s, p50/p95/p99
latency, errors (any non-200 or connection error), and the batch sizes the model replica saw.
After the default config it keeps going at concurrency 8 and records the RSS of Serve's HTTP
proxy and of each replica after 500 and after --memory-requests requests in total.

For reference it also measures ``FaceAnalyzer.analyze`` in this process on the same photos in
batches of 16 (no HTTP, no Ray): the steady rate the models allow on this machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facebatch.paths import data_dir  # noqa: E402
from facebatch.raycluster import local_ray_env  # noqa: E402

local_ray_env()


def photos(n: int, seed: int = 0) -> list[bytes]:
    root = data_dir()
    ud = sorted((root / "udacity68" / "training").glob("*.jpg"))
    cb = sorted((root / "celeba6k" / "test_dataset").glob("*/*.jpg"))
    if not ud or not cb:
        raise SystemExit(f"udacity68 and celeba6k not found under {root}; set FACEBATCH_DATA")
    rng = random.Random(seed)
    files = rng.sample(ud, n // 2) + rng.sample(cb, n - n // 2)
    rng.shuffle(files)
    return [p.read_bytes() for p in files]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))] if xs else float("nan")


async def load(url: str, datas: list[bytes], concurrency: int, requests: int, max_seconds: float,
               start: int = 0) -> dict:
    import aiohttp
    lat: list[float] = []
    errors: dict[str, int] = {}
    nxt = [0]
    t_end = time.perf_counter() + max_seconds

    async def worker(session):
        while nxt[0] < requests and time.perf_counter() < t_end:
            i = start + nxt[0]
            nxt[0] += 1
            t = time.perf_counter()
            try:
                async with session.post(url, data=datas[i % len(datas)],
                                        headers={"Content-Type": "image/jpeg"}) as r:
                    body = await r.read()
                    if r.status != 200:
                        key = f"{r.status} {json.loads(body).get('status', '?') if body[:1] == b'{' else '?'}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
            except Exception as e:  # connection errors count as errors
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            lat.append(time.perf_counter() - t)

    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": nxt[0], "ok": len(lat), "errors": errors,
            "seconds": round(wall, 2), "rps": round(len(lat) / wall, 2),
            "p50_ms": round(1000 * pct(lat, 50), 1), "p95_ms": round(1000 * pct(lat, 95), 1),
            "p99_ms": round(1000 * pct(lat, 99), 1)}


def serve_rss() -> dict:
    """RSS (MB) of this run's Serve proxy, controller and replicas (descendants of this process)."""
    import psutil
    out = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            for tag in ("ProxyActor", "ServeController", "ServeReplica:facebatch:FaceModel",
                        "ServeReplica:facebatch:Ingress"):
                if tag in cmd:
                    out[f"{tag.split(':')[-1]}:{p.pid}"] = round(p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            pass
    return out


def stats(base: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(base + "/v1/stats", timeout=60) as r:
        return json.loads(r.read())["model"]


def diff_sizes(a: dict, b: dict) -> dict:
    return {k: v - a.get(k, 0) for k, v in sorted(b.items(), key=lambda kv: int(kv[0])) if v - a.get(k, 0)}


def offline_rate(datas: list[bytes], batch: int = 16, threads: int = 1) -> dict:
    import torch

    from facebatch.imaging import decode_image
    from facebatch.inference import FaceAnalyzer
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    fa = FaceAnalyzer.load()
    ims = [decode_image(d).image for d in datas]
    fa.analyze(ims[:2])
    t = time.perf_counter()
    for i in range(0, len(ims), batch):
        fa.analyze(ims[i:i + batch], embedding=False)
    dt = time.perf_counter() - t
    torch.set_num_threads(old)
    return {"images": len(ims), "batch": batch, "torch_threads": threads, "images_per_s": round(len(ims) / dt, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18451)
    ap.add_argument("--photos", type=int, default=96, help="distinct photos (half udacity68, half celeba6k)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=240, help="requests per level (at most)")
    ap.add_argument("--max-seconds", type=float, default=90, help="time per level (at most)")
    ap.add_argument("--batch-sizes", default="1,16", help="app max_batch_size values to compare")
    ap.add_argument("--memory-requests", type=int, default=5000, help="total requests for the memory check (0: skip)")
    ap.add_argument("--memory-max-seconds", type=float, default=900)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "out" / "serve_load.json"))
    a = ap.parse_args(argv)

    import ray
    from ray import serve

    from facebatch.raycluster import init_ray
    from facebatch.serve.app import build_app

    datas = photos(a.photos)
    result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_avg_start": os.getloadavg(), "photos": len(datas), "runs": []}
    result["offline_face_analyzer"] = offline_rate(datas, threads=a.torch_threads)
    print("offline FaceAnalyzer:", result["offline_face_analyzer"], flush=True)

    init_ray(address="local", num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    base = f"http://127.0.0.1:{a.port}"
    url = base + "/v1/annotate"
    levels = [int(c) for c in a.concurrency.split(",")]
    try:
        for bs in [int(b) for b in a.batch_sizes.split(",")]:
            serve.run(build_app({"max_batch_size": bs, "torch_threads": a.torch_threads, "replica_cpus": 1}),
                      name="facebatch", route_prefix="/")
            asyncio.run(load(url, datas, 8, 16, 60))  # warm-up
            for c in levels:
                before = stats(base)["batch_sizes"]
                r = asyncio.run(load(url, datas, c, a.requests, a.max_seconds))
                r.update(max_batch_size=bs, batch_sizes=diff_sizes(before, stats(base)["batch_sizes"]),
                         load_avg=os.getloadavg()[0])
                print(json.dumps(r), flush=True)
                result["runs"].append(r)
            if bs == max(int(b) for b in a.batch_sizes.split(",")) and a.memory_requests:
                mem = {"max_batch_size": bs, "concurrency": 8}
                served = stats(base)["images"]
                t0 = time.perf_counter()
                for mark in (500, a.memory_requests):
                    if served < mark:
                        r = asyncio.run(load(url, datas, 8, mark - served,
                                             a.memory_max_seconds - (time.perf_counter() - t0), start=served))
                        served = stats(base)["images"]
                        mem.setdefault("errors", {}).update(r["errors"])
                    mem[f"rss_mb_after_{served}"] = serve_rss()
                    print("memory", served, mem[f"rss_mb_after_{served}"], flush=True)
                result["memory"] = mem
            serve.delete("facebatch")
    finally:
        serve.shutdown()
        ray.shutdown()
    result["load_avg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
