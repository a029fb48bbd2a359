"""onnxruntime against torch on CPU, same weights: the RetinaFace-MobileNet detector and the
keypoints68 model (the two models the annotate job spends its time in).

Each model is exported with ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch and,
for the detector, dynamic height/width) and run on the same inputs as torch runs them in facebatch:
the detector's ``fast_net`` (batch norms folded, channels-last) on a real photo prepared by the
backend, the keypoint model on real face crops at its input size (one forward; the analyzer runs
it twice with the flip test). Outputs are compared (max abs difference) and each runtime is timed
with 1 and 2 threads, alternating torch and onnxruntime, median of ``--reps`` calls after warm-up.

    .venv/bin/python bench/onnx_bench.py --reps 15

The issue's bar to adopt a runtime: at least 1.3x faster than torch, outputs within 1e-3.

``--facebatch`` times the adopted runtime through facebatch itself (``facebatch.runtime``):
the detector backend's ``network``, ``KeypointHead.predict`` and ``AttributeHead.outputs`` (flip
test included) per call,
``runtime="torch"`` against ``runtime="onnxruntime"``, and ``FaceAnalyzer.analyze`` images/s
over ``--photos`` udacity68 photos with ``runtime="torch"`` against ``"auto"``, alternating,
median of ``--runs`` runs, the load average beside each figure:

    .venv/bin/python bench/onnx_bench.py --facebatch --photos 100 --runs 5 --out logs/ort_facebatch.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _photos(n: int, step: int = 50) -> list[np.ndarray]:
    from PIL import Image
    data = Path(os.environ.get("FACEBATCH_DATA", ROOT.parent / "shared" / "data"))
    files = sorted((data / "udacity68" / "training").glob("*.jpg"))[::max(1, step)][:n]
    if not files:
        raise SystemExit(f"no udacity68 photos under {data}")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _ort(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting pool threads after a call: they would steal the cores torch's next call needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare(name: str, torch_fn, module, x: torch.Tensor, dynamic: dict, out_names: list[str], reps: int,
            tmp: str) -> dict:
    path = os.path.join(tmp, f"{name}.onnx")
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(module, (x,), path, input_names=["x"], output_names=out_names, opset_version=17,
                          dynamic_axes=dynamic, dynamo=False)
    export_s = time.perf_counter() - t0
    res = {"model": name, "input": list(x.shape), "export_s": round(export_s, 2),
           "onnx_mb": round(os.path.getsize(path) / 2**20, 2)}
    xn = x.numpy()
    with torch.inference_mode():
        ref = [t.float().numpy() for t in _as_list(torch_fn(x))]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sess = _ort(path, threads)
        got = sess.run(None, {"x": xn})
        diff = max(float(np.max(np.abs(r - g))) for r, g in zip(ref, got))
        scale = max(float(np.max(np.abs(r))) for r in ref)

        def run_torch():
            with torch.inference_mode():
                torch_fn(x)

        def run_ort():
            sess.run(None, {"x": xn})
        for _ in range(3):  # warm-up
            run_torch(), run_ort()
        tt, to = [], []
        for _ in range(reps):  # alternate, so load changes hit both
            tt += _time(run_torch, 1)
            to += _time(run_ort, 1)
        mt, mo = statistics.median(tt), statistics.median(to)
        res[f"threads{threads}"] = {"torch_ms": round(mt * 1e3, 2), "ort_ms": round(mo * 1e3, 2),
                                    "speedup": round(mt / mo, 2), "max_abs_diff": diff, "max_abs_output": scale}
        print(json.dumps({"model": name, "threads": threads, **res[f"threads{threads}"]}), flush=True)
    return res


def compare_ensemble(model, x: torch.Tensor, reps: int, tmp: str) -> dict:
    import torch.nn.functional as F
    t0 = time.perf_counter()
    members = []
    for i, m in enumerate(model.members):
        path = os.path.join(tmp, f"kp_member{i}.onnx")
        xi = torch.zeros((1, x.shape[1], m.input_size, m.input_size))
        with torch.no_grad():
            torch.onnx.export(m, (xi,), path, input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "b"}}, dynamo=False)
        members.append((m.input_size, path))
    res = {"model": "keypoints68", "input": list(x.shape), "members": [s for s, _ in members],
           "export_s": round(time.perf_counter() - t0, 2)}

    def resized(size: int) -> torch.Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < x.shape[-1])

    with torch.inference_mode():
        ref = model(x).float().numpy()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sessions = [(size, _ort(path, threads)) for size, path in members]

        def run_ort():
            with torch.inference_mode():
                return np.mean([sess.run(None, {"x": resized(size).numpy()})[0] for size, sess in sessions], 0)

        def run_torch():
            with torch.inference_mode():
                model(x)
        diff = float(np.max(np.abs(run_ort().reshape(ref.shape) - ref)))
        for _ in range(3):
            run_torch(), run_ort()
        tt, to = [], []
        for _ in range(reps):
            tt += _time(run_torch, 1)
            to += _time(run_ort, 1)
        mt, mo = statistics.median(tt), statistics.median(to)
        res[f"threads{threads}"] = {"torch_ms": round(mt * 1e3, 2), "ort_ms": round(mo * 1e3, 2),
                                    "speedup": round(mt / mo, 2), "max_abs_diff": diff,
                                    "max_abs_output": float(np.max(np.abs(ref)))}
        print(json.dumps({"model": "keypoints68", "threads": threads, **res[f"threads{threads}"]}), flush=True)
    return res


def facebatch_paths(photos: list[np.ndarray], reps: int, runs: int, threads: int, keypoints: str) -> dict:
    """The adopted runtime as facebatch runs it: per-call ms and analyzer images/s, torch vs ORT."""
    from facebatch.inference import FaceAnalyzer, face_crop
    from facebatch.inference.inputs import model_input
    torch.set_num_threads(threads)
    fas = {rt: FaceAnalyzer.load(runtime=rt, keypoints=keypoints) for rt in ("torch", "auto")}
    out = {"threads": threads, "keypoints_model": fas["auto"].describe()["keypoints"], "runtimes": {rt: {k: (fa.describe()[k] or {}).get("runtime") for k in
                                                 ("detector", "keypoints", "attributes")}
                                            for rt, fa in fas.items()}}
    # per call: one 640x480 photo through the detector network, 8 real crops through keypoints
    be = {rt: fa.detector.backend for rt, fa in fas.items()}
    x = be["torch"].to_tensor(photos[0], 1.0)[None]
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % 32, 0, -x.shape[-2] % 32))
    faces = fas["torch"].detect(photos[:8])
    head = fas["torch"].keypoints
    xk = model_input([face_crop(p, f[0].box, head.input.frame)[1] for p, f in zip(photos, faces) if f], head.input)
    ah = fas["torch"].attributes
    xa = model_input([face_crop(p, f[0].box, ah.input.frame)[1] for p, f in zip(photos, faces) if f], ah.input)
    calls = {"detector_network": (lambda rt: be[rt].network(x), list(x.shape)),
             "keypoints_predict": (lambda rt: fas[rt].keypoints.predict(xk), list(xk.shape)),
             "attributes_outputs": (lambda rt: fas[rt].attributes.outputs(xa), list(xa.shape))}
    for name, (fn, shape) in calls.items():
        with torch.inference_mode():
            for _ in range(3):
                fn("torch"), fn("auto")
            t = {"torch": [], "auto": []}
            load0 = os.getloadavg()[0]
            for _ in range(reps):
                for rt in t:
                    t[rt] += _time(lambda: fn(rt), 1)
        mt, mo = statistics.median(t["torch"]), statistics.median(t["auto"])
        out[name] = {"input": shape, "torch_ms": round(mt * 1e3, 2), "ort_ms": round(mo * 1e3, 2), "speedup": round(mt / mo, 2),
                     "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        print(json.dumps({name: out[name]}), flush=True)
    # the whole analyzer, as annotate and serve call it
    fas["torch"].analyze(photos[:4]), fas["auto"].analyze(photos[:4])  # warm-up
    per = {"torch": [], "auto": []}
    for r in range(runs):
        for rt, fa in fas.items():
            fa.timings = dict.fromkeys(fa.timings, 0.0)
            load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            n_faces = sum(len(f) for f in fa.analyze(photos))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU seconds are steadier than wall time on a shared machine (one thread: CPU ~ work)
            rec = {"run": r, "images_per_s": round(len(photos) / wall, 2), "wall_s": round(wall, 2),
                   "images_per_cpu_s": round(len(photos) / cpu, 2), "cpu_s": round(cpu, 2),
                   "faces": n_faces, "stages_s": {k: round(v, 2) for k, v in fa.timings.items()},
                   "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}
            per[rt].append(rec)
            print(json.dumps({"analyze": rt, **rec}), flush=True)
    out["analyze"] = {rt: {"photos": len(photos),
                           "median_images_per_s": statistics.median(r["images_per_s"] for r in recs),
                           "median_images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in recs),
                           "runs": recs} for rt, recs in per.items()}
    for k in ("images_per_s", "images_per_cpu_s"):
        out["analyze"][f"speedup_{k}"] = round(out["analyze"]["auto"][f"median_{k}"]
                                              / out["analyze"]["torch"][f"median_{k}"], 2)
    return out


def _as_list(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--det-batch", type=int, default=1)
    ap.add_argument("--kp-batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--facebatch", action="store_true", help="time facebatch's own runtime paths instead")
    ap.add_argument("--photos", type=int, default=100, help="--facebatch: udacity68 photos per analyze run")
    ap.add_argument("--runs", type=int, default=5, help="--facebatch: analyze runs per runtime")
    ap.add_argument("--threads", type=int, default=1, help="--facebatch: torch and onnxruntime threads")
    ap.add_argument("--keypoints", default="keypoints68", help="--facebatch: the analyzer's keypoint model")
    a = ap.parse_args()
    print(f"load before: {os.getloadavg()}", flush=True)
    if a.facebatch:
        results = {"torch": torch.__version__, "load_before": os.getloadavg(),
                   **facebatch_paths(_photos(a.photos, step=3462 // a.photos), a.reps, a.runs, a.threads,
                                       a.keypoints)}
        results["load_after"] = os.getloadavg()
        print(f"load after: {results['load_after']}", flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=2))
        return
    from facebatch.detection import create_detector
    from facebatch.inference import FaceAnalyzer
    from facebatch.inference.inputs import model_input  # noqa: E402
    torch.set_num_threads(1)
    photos = _photos(max(a.det_batch, a.kp_batch))
    results = {"torch": torch.__version__}
    import onnxruntime
    results["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        # detector: the backend's own input for one 640x480 photo (padded to a multiple of 32)
        det = create_detector("mobilenet")
        be = det.backend
        x = torch.stack([be.to_tensor(p, 1.0) for p in photos[:a.det_batch]])
        hp, wp = (-(-x.shape[-2] // 32) * 32), (-(-x.shape[-1] // 32) * 32)
        x = torch.nn.functional.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2])).contiguous()
        fast = be.fast_net
        results["detector"] = compare(
            "detector_mobilenet", lambda t: fast(t.contiguous(memory_format=torch.channels_last)), be.net, x,
            {"x": {0: "b", 2: "h", 3: "w"}}, ["loc", "conf", "landm"], a.reps, tmp)
        # keypoints68: real face crops at the model's input size (one forward; flip test doubles it)
        fa = FaceAnalyzer.load(attributes=None)
        head = fa.keypoints
        faces = fa.detect(photos[:a.kp_batch])
        crops = [(p, f[0]) for p, f in zip(photos, faces) if f]
        from facebatch.inference import face_crop
        xk = model_input([face_crop(p, f.box, head.input.frame)[1] for p, f in crops], head.input).float().contiguous()
        # the ensemble resizes its input with antialiased bilinear interpolation for its smaller
        # members, which ONNX cannot express: each member is exported alone, and the onnxruntime
        # path resizes in torch exactly as the ensemble does (that time is counted), then averages
        results["keypoints68"] = compare_ensemble(head.model, xk, a.reps, tmp)
    results["load_after"] = os.getloadavg()
    print(f"load after: {results['load_after']}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
