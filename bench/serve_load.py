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

    python bench/serve_load.py --cost                         # bounded cost per request (issue 23)

``--cost`` instead measures what one big request costs the others. The big photo is a 30 x 30
grid of real celeba6k faces at 90 px (2700 x 2700; the detector finds about 724). One client
posts it again and again while another sends 20 small photos (udacity68 / celeba6k) one after
the other; reported: the small requests' latencies (p50/p99/max) and codes, each big answer's
code, time and faces answered / found. Then the stop drills on an app with ``max_faces`` 1000
(about 700 faces of work): the big photo with ``timeout_s=2`` (504), and a client that gives up
after 2 s and closes its connection; reported: faces analysed before and after the stop, and
the model replica's CPU seconds after it (process, and the compute thread). The same is run on
an "unbounded" app (``max_faces`` and ``face_chunk`` 100000: the whole photo in one batch
call, as before issue 23) for comparison. The figures go into docs/BENCHMARKS.md between the
``serve-cost-bench`` markers (``--no-write`` to skip).
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


# ---------------------------------------------------------------------------------- --cost
COST_START, COST_END = "<!-- serve-cost-bench:start -->", "<!-- serve-cost-bench:end -->"


def face_grid(n: int = 30, px: int = 90) -> bytes:
    """JPEG of an ``n x n`` grid of real celeba6k faces (square centre crops at ``px``)."""
    import io

    import numpy as np
    from PIL import Image
    files = sorted((data_dir() / "celeba6k" / "test_dataset").glob("*/*.jpg"))[:n * n]
    if len(files) < n * n:
        raise SystemExit(f"celeba6k/test_dataset under {data_dir()} has fewer than {n * n} photos")
    tiles = []
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        top = (h - w) // 2
        tiles.append(np.asarray(im.crop((0, top, w, top + w)).resize((px, px), Image.BILINEAR)))
    grid = np.concatenate([np.concatenate(tiles[r * n:(r + 1) * n], axis=1) for r in range(n)], axis=0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _post(url: str, data: bytes, params=None, timeout=120):
    import requests
    t = time.perf_counter()
    r = requests.post(url, data=data, params=params, timeout=timeout, headers={"Content-Type": "image/jpeg"})
    return r, time.perf_counter() - t


def contention(base: str, big: bytes, smalls: list[bytes], max_big: int, repeat: bool) -> dict:
    """One client posts ``big`` (again and again while ``repeat``) while another sends ``smalls``
    one after the other, starting 0.5 s after the first big request."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    url = base + "/v1/annotate"
    done = threading.Event()
    bigs: list = []

    def big_client():
        while not done.is_set() and len(bigs) < max_big:
            r, t = _post(url, big)
            body = r.json()
            bigs.append({"code": r.status_code, "s": round(t, 2), "faces": len(body.get("faces", [])),
                         "found": body.get("faces_found"), "truncated": body.get("faces_truncated")})
            if not repeat:
                break

    before = stats(base)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(big_client)
        time.sleep(0.5)
        small = [_post(url, d) for d in smalls]
        done.set()
        fut.result()
    after = stats(base)
    lat = [t for _, t in small]
    codes: dict[str, int] = {}
    for r, _ in small:
        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
    return {"small": {"n": len(small), "codes": codes, "p50_s": round(pct(lat, 50), 2),
                      "p99_s": round(pct(lat, 99), 2), "max_s": round(max(lat), 2)},
            "big": bigs, "batch_sizes": diff_sizes(before["batch_sizes"], after["batch_sizes"]),
            "chunk_units": after["chunk_units"] - before["chunk_units"]}


def stop_drill(base: str, big: bytes, how: str, window_s: float = 3.0) -> dict:
    """Post ``big`` and stop it after 2 s (``504``: ``timeout_s=2``; ``gone``: the client closes
    its connection), then watch the model replica for ``window_s`` seconds after it settles."""
    import requests
    url = base + "/v1/annotate"
    found = _post(url, big, {"max_faces": 1})[0].json()["faces_found"]
    s0 = stats(base)
    t = time.perf_counter()
    if how == "504":
        r, _ = _post(url, big, {"timeout_s": 2})
        answer = f"{r.status_code} {r.json().get('status')}"
    else:
        try:
            r, _ = _post(url, big, timeout=(5, 2.0))
            answer = f"{r.status_code} (not gone)"
        except requests.exceptions.ReadTimeout:
            answer = "client gone at 2 s"
    took = time.perf_counter() - t
    s_at = stats(base)
    s1, deadline = s_at, time.perf_counter() + 180
    while s1["running_units"] and time.perf_counter() < deadline:  # until the batch call in flight ends
        time.sleep(0.1)
        s1 = stats(base)
    busy_after = time.perf_counter() - t - took
    time.sleep(window_s)
    s2 = stats(base)
    return {"how": how, "answer": answer, "answer_s": round(took, 2), "faces_found": found,
            "faces_before_stop": s_at["faces"] - s0["faces"], "faces_after_stop": s2["faces"] - s_at["faces"],
            "busy_after_stop_s": round(busy_after, 2),
            "cpu_after_stop_s": round(s1["process_cpu_s"] - s_at["process_cpu_s"], 2),
            "idle_window_s": window_s, "cpu_idle_window_s": round(s2["process_cpu_s"] - s1["process_cpu_s"], 3),
            "faces_in_idle_window": s2["faces"] - s1["faces"],
            "cancelled_requests": s2["cancelled_requests"] - s0["cancelled_requests"],
            "units_finished_stopped": s2["units_finished_stopped"] - s0["units_finished_stopped"]}


def cost_main(a) -> dict:
    import ray
    from ray import serve

    from facebatch.raycluster import init_ray
    from facebatch.serve.app import build_app
    big = face_grid()
    smalls = photos(20, seed=1)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_avg_start": [round(x, 2) for x in os.getloadavg()], "big_bytes": len(big), "configs": []}
    init_ray(address="local", num_cpus=2)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    base = f"http://127.0.0.1:{a.port}"
    common = {"torch_threads": a.torch_threads, "replica_cpus": 1}
    configs = [("bounded", {}, {"max_faces": 1000})]
    if not a.no_unbounded:
        configs.append(("unbounded", {"max_faces": 100000, "face_chunk": 100000}, None))
    try:
        for name, opts, drill_opts in configs:
            serve.run(build_app({**common, **opts}), name="facebatch", route_prefix="/")
            for d in smalls[:4]:
                _post(base + "/v1/annotate", d)  # warm
            alone = [_post(base + "/v1/annotate", d)[1] for d in smalls]
            c = {"name": name, "options": {**common, **opts},
                 "small_alone": {"p50_s": round(pct(alone, 50), 2), "p99_s": round(pct(alone, 99), 2)},
                 "contention": contention(base, big, smalls, max_big=6, repeat=name == "bounded")}
            print(name, json.dumps(c["contention"]), flush=True)
            if drill_opts is not None:
                serve.run(build_app({**common, **opts, **drill_opts}), name="facebatch", route_prefix="/")
                c["drill_options"] = drill_opts
            c["drills"] = [stop_drill(base, big, how) for how in ("504", "gone")]
            print(name, json.dumps(c["drills"]), flush=True)
            res["configs"].append(c)
            serve.delete("facebatch")
    finally:
        serve.shutdown()
        ray.shutdown()
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return res


def cost_block(r: dict) -> list[str]:
    lines = [f"`python bench/serve_load.py --cost`, {r['date']}, {r['machine']}; load average "
             f"{r['load_avg_start']} at the start, {r['load_avg_end']} at the end. One FaceModel replica "
             "(1 CPU, 1 torch thread), one Ingress; the big photo: 30 x 30 real celeba6k faces at 90 px "
             f"(2700 x 2700, {r['big_bytes'] // 1024} KB JPEG). One client posts it again and again while "
             "another sends 20 small photos one after the other.", "",
             "| app | small alone p50 / p99 | small during big: p50 / p99 / max | small codes | big answers (code, s, faces / found) | chunk units |",
             "|---|---|---|---|---|---|"]
    for c in r["configs"]:
        k = c["contention"]
        bigs = "; ".join(f"{b['code']}, {b['s']} s, {b['faces']} / {b['found']}" for b in k["big"])
        opts = ", ".join(f"{key} {v}" for key, v in c["options"].items() if key in ("max_faces", "face_chunk")) \
            or "defaults (max_faces 64, face_chunk 8)"
        lines.append(f"| {c['name']}: {opts} | {c['small_alone']['p50_s']} / {c['small_alone']['p99_s']} s | "
                     f"{k['small']['p50_s']} / **{k['small']['p99_s']}** / {k['small']['max_s']} s | "
                     f"{k['small']['codes']} | {bigs} | {k['chunk_units']} |")
    lines += ["", "Stopping a request (the big photo; `timeout_s=2` for the 504, or a client that closes its "
              "connection after 2 s). After the stop: how long the model replica still computed (until no "
              "batch call ran), its CPU seconds over that time (process CPU time), then its CPU seconds and "
              "faces analysed over the next seconds:", "",
              "| app | stop | answer | faces analysed before / after the stop (found) | still computing after the stop | replica CPU after the stop | then idle: CPU, faces |",
              "|---|---|---|---|---|---|---|"]
    for c in r["configs"]:
        opts = ", ".join(f"{key} {v}" for key, v in {**c["options"], **c.get("drill_options", {})}.items()
                         if key in ("max_faces", "face_chunk"))
        for d in c["drills"]:
            lines.append(f"| {c['name']}: {opts} | {d['how']} | {d['answer']} ({d['answer_s']} s) | "
                         f"{d['faces_before_stop']} / **{d['faces_after_stop']}** ({d['faces_found']}) | "
                         f"{d['busy_after_stop_s']} s | **{d['cpu_after_stop_s']} s** | "
                         f"{d['cpu_idle_window_s']} s, {d['faces_in_idle_window']} in {d['idle_window_s']:g} s |")
    return lines


def write_cost_doc(r: dict) -> None:
    doc = ROOT / "docs" / "BENCHMARKS.md"
    text = doc.read_text()
    block = COST_START + "\n" + "\n".join(cost_block(r)) + "\n" + COST_END
    if COST_START in text and COST_END in text:
        before, rest = text.split(COST_START, 1)
        text = before + block + rest.split(COST_END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n## Serve: bounded cost per request (`bench/serve_load.py --cost`)\n\n"
                + block + "\n")
    doc.write_text(text)


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
    ap.add_argument("--cost", action="store_true", help="the big-photo / small-photos and stop measurements")
    ap.add_argument("--no-unbounded", action="store_true", help="--cost: skip the unbounded comparison app")
    ap.add_argument("--no-write", action="store_true", help="--cost: do not write docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    if a.cost:
        res = cost_main(a)
        out = Path(a.out).with_name("serve_cost.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print("\n".join(cost_block(res)))
        if not a.no_write:
            write_cost_doc(res)
        return 0

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
