"""The annotate job on Ray Data: list -> diff -> shards -> read tasks -> analyzer actors -> parts.

Stage 1 (Ray tasks, fractional CPU): read each shard's objects with retries on transient
storage errors. Stage 2 (an actor pool, ``map_batches`` with :class:`AnnotateWorker`): each actor
holds one :class:`~facebatch.inference.FaceAnalyzer`; per shard it decodes every object with
per-row error capture (JPEGs at reduced scale, :mod:`.decode`), runs the analyzer, and writes
``part-NNNNN.parquet`` into the run folder. Every input gives at least one row; rows in equal
rows out is checked per shard and, at the end, as sets against the list of objects to do.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from .. import schema as S
from ..preprocess.shards import RetryPolicy, call_with_retries, check_output_paths
from ..storage import check_writable, filesystem, join, storage_options
from . import state as ST
from .config import AnnotateConfig, plan_workers, shard_size_for
from ..imaging import sha256_bytes
from .decode import crop_scale, decode_scaled
from .lock import RunLock
# stage 1 (read tasks) lives in .read, which imports no torch: read workers start seconds sooner
from .read import _read, _read_shard, changed_since_listing, read_object  # noqa: F401

log = logging.getLogger(__name__)


class _Clock:
    """Wall and CPU seconds of a worker's steps, accumulated by name (``lap`` ends a step)."""

    def __init__(self) -> None:
        self.wall: Counter = Counter()
        self.cpu: Counter = Counter()
        self._w, self._c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] += w - self._w
        self.cpu[name] += c - self._c
        self._w, self._c = w, c

    @staticmethod
    def rounded(d: Counter) -> dict:
        return {k: round(v, 4) for k, v in d.items()}


class JobFailed(RuntimeError):
    """The run stopped part-way; nothing was committed. Rerunning the same command finishes it."""


def part_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}.parquet"


# ---- stage 2: analyze and write (Ray actors) -----------------------------------------------------

def _scaled_face(face, k: float):
    from ..detection import Face
    if k == 1:
        return face
    return Face(box=np.asarray(face.box, np.float64) * k, score=face.score,
                landmarks=np.asarray(face.landmarks, np.float64) * k)


def _scale_list(v, k: float):
    return None if v is None else [float(x) * k for x in v]


def _process_start() -> float | None:
    """When this process started (epoch seconds; Linux ``/proc``), else ``None``."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            boot = time.time() - float(f.read().split()[0])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


def crop_needs(fa, crops: bool) -> list[tuple[int, float]]:
    """``(pixels, margin)`` that a face's crop square must span in the image it is cut from, one
    per consumer: each model head needs its input side (capped at its crop frame's size: the crop
    is resized to that first), and stored crops (``--crops``) need the frame's full ``crop_size``.
    A face whose square spans fewer pixels in the draft decode is cut from a finer decode."""
    from ..inference.inputs import CropFrame
    needs = []
    for head in (fa.keypoints, fa.attributes):
        if head is not None:
            needs.append((min(int(head.input.size), int(head.input.frame.crop_size)), float(head.input.frame.margin)))
    if crops:
        frame = CropFrame()
        needs.append((int(frame.crop_size), float(frame.margin)))
    return needs


class AnnotateWorker:
    """One FaceAnalyzer per actor; ``__call__`` takes a batch of read shards, writes their parts
    and returns per-shard stats (JSON)."""

    def __init__(self, cfg: dict, threads: int, run_id: str, folder: str, options: dict, provenance: dict) -> None:
        # wall-clock marks (epoch seconds) of the actor's start-up, for the run's timeline
        self.marks = {"actor_process_start": _process_start(), "actor_enter": time.time()}
        import torch
        from ..detection import DetectorConfig
        from ..inference import FaceAnalyzer
        self.marks["actor_imported"] = time.time()
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        self.cfg = AnnotateConfig(**{**cfg, "detector": DetectorConfig(**cfg["detector"])})
        det = self.cfg.detector.to_dict()
        backend = det.pop("backend")
        self.fa = FaceAnalyzer.load(detector=backend, keypoints=self.cfg.keypoints, attributes=self.cfg.attributes,
                                    gallery=self.cfg.gallery, device=det.pop("device"), **det)
        self.attrs = self.fa.attribute_names
        self.run_id, self.folder, self.options = run_id, folder, options
        self.retry = RetryPolicy(budget_s=self.cfg.retry_s)
        self.describe = self.fa.describe()
        from .rows import META_CONFIG, META_GIT, META_MODELS, META_SCHEMA, META_VERSION, SCHEMA_VERSION
        self.metadata = {META_SCHEMA: json.dumps(SCHEMA_VERSION), META_MODELS: json.dumps(self.describe, default=str),
                         META_CONFIG: json.dumps(cfg, default=str), META_VERSION: json.dumps(provenance.get("version")),
                         META_GIT: json.dumps(provenance.get("git_commit"))}
        self.crop_needs = crop_needs(self.fa, self.cfg.crops)
        self.init_s = time.perf_counter() - t0
        self.marks["actor_ready"] = time.time()
        # CPU seconds of this actor's process: since it started (Ray worker start-up, imports,
        # model load), and, per shard, in total (what Ray's own work adds shows against the steps)
        self.pid, self.cpu_ready = os.getpid(), time.process_time()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["shard_id"])
        rb, re_ = batch.get("read_begin", [None] * n), batch.get("read_end", [None] * n)
        rc = batch.get("read_cpu_s", [0.0] * n)
        stats = []
        for sid, payload, rs, b, e, c in zip(batch["shard_id"], batch["payload"], batch["read_s"], rb, re_, rc):
            st = self.process(int(sid), payload, float(rs))
            st["marks"].update({"read_begin": None if b is None else float(b), "read_end": None if e is None else float(e)})
            st["read_cpu_s"] = float(c or 0.0)
            st["cpu_by_step_s"]["read"] = round(float(c or 0.0), 4)  # in the read task's process
            stats.append(st)
        return {"stats": [json.dumps(s, default=str) for s in stats]}

    # -- per shard
    def process(self, shard_id: int, payload: bytes, read_s: float = 0.0) -> dict:
        cfg = self.cfg
        t_begin = time.time()
        clock = _Clock()
        items = pickle.loads(payload)
        del payload
        clock.lap("unpickle")
        bases, decoded, datas = [], [], []
        for base, data in items:
            res = None
            if data is not None:
                res = self._decode_first(data)
                clock.lap("decode")
                base.update({S.SHA256: sha256_bytes(data), S.WIDTH: res.width, S.HEIGHT: res.height,
                             S.STATUS: res.status, S.ERROR: res.error})
                clock.lap("sha256")
            bases.append(base)
            decoded.append(res if res is not None and res.image is not None else None)
            datas.append(data)
        ok = [i for i, r in enumerate(decoded) if r is not None]
        found = self._detect([decoded[i].image for i in ok], [bases[i] for i in ok])
        clock.lap("detect")
        # per image: the image the faces are cut from (the first decode, or a finer one for faces
        # that need more pixels than it has), and the faces in that image's pixels
        images, faces, scales, n_faces = {}, {}, {}, {}
        redecoded = 0
        for i, fs in zip(ok, found):
            r = decoded[i]
            decoded[i] = None  # the detector's image is not needed past here unless it is also the crop source
            if fs is None:
                continue
            orig = [_scaled_face(f, r.scale) for f in fs]
            n_faces[i] = len(orig)
            keep = orig if cfg.all_faces else orig[:1]
            img, s, again = self._crop_source(datas[i], r, keep)
            redecoded += again
            datas[i] = None
            images[i], scales[i] = img, s
            faces[i] = [_scaled_face(f, 1.0 / s) for f in keep]
        clock.lap("redecode")
        results = self._analyze(images, faces, bases)
        clock.lap("analyze")
        now = _dt.datetime.now(_dt.timezone.utc)
        rows = []
        for i, base in enumerate(bases):
            base.update({"run_id": self.run_id, "annotated_at": now})
            res = results.get(i)
            if base.get(S.STATUS) != S.OK or res is None:
                rows.append({**base, S.N_FACES: None if base.get(S.STATUS) != S.OK else 0, S.FACE_INDEX: -1})
                continue
            if not res:
                rows.append({**base, S.STATUS: S.NO_FACE, S.N_FACES: 0, S.FACE_INDEX: -1})
                continue
            k = scales[i]
            for j, fr in enumerate(res):
                d = fr.to_dict(embedding=cfg.embeddings)
                for c in (S.BOX, S.LANDMARKS, S.CROP_BOX, "keypoints68", "keypoints15"):
                    d[c] = _scale_list(d.get(c), k)
                d["face_size"] = float(d["face_size"]) * k
                if cfg.crops:
                    from ..inference import face_crop
                    d[S.CROP] = face_crop(images[i], faces[i][j].box)[1]
                rows.append({**base, **d, S.N_FACES: n_faces[i], S.FACE_INDEX: j})
        clock.lap("rows")
        expected = sum(max(1, len(results.get(i) or [])) for i in range(len(bases)))
        if len(rows) != expected or {r[S.PATH] for r in rows} != {b[S.PATH] for b in bases} or len(bases) != len(items):
            raise RuntimeError(f"shard {shard_id}: {len(items)} inputs gave {len(rows)} rows, expected {expected}")
        from .rows import to_table
        table = to_table(rows, self.attrs, self.metadata)
        try:
            call_with_retries(lambda: self._write(shard_id, table), self.retry, f"write {part_name(shard_id)}")
        except Exception as exc:
            raise RuntimeError(f"FACEBATCH_WRITE_FAILED shard {shard_id} to {self.folder}: "
                               f"{type(exc).__name__}: {exc}"[:800]) from None
        clock.lap("write")
        first = [r for r in rows if (r[S.FACE_INDEX] or 0) <= 0]
        w = clock.wall
        return {"shard_id": shard_id, "n_inputs": len(items), "n_rows": len(rows),
                "status_counts": dict(Counter(r[S.STATUS] for r in first)),
                "row_status_counts": dict(Counter(r[S.STATUS] for r in rows)),
                "redecoded": redecoded, "read_s": read_s,
                "decode_s": w["unpickle"] + w["decode"] + w["sha256"] + w["redecode"], "detect_s": w["detect"],
                "analyze_s": w["analyze"], "rows_s": w["rows"], "write_s": w["write"], "actor_init_s": self.init_s,
                "wall_by_step_s": clock.rounded(clock.wall), "cpu_by_step_s": clock.rounded(clock.cpu),
                "marks": {**self.marks, "shard_begin": t_begin, "shard_end": time.time()},
                "actor": {"pid": self.pid, "cpu_ready_s": round(self.cpu_ready, 3),
                          "cpu_now_s": round(time.process_time(), 3)},
                "models": self.describe, "attributes": self.attrs}

    def _decode_first(self, data: bytes):
        """The decode the detector sees: in ``draft`` mode a JPEG at the smallest scale whose
        longer side still has ``max_side`` pixels; in ``full`` mode full size."""
        max_side = self.cfg.detector.max_side if self.cfg.decode == "draft" else None
        return decode_scaled(data, max_side=max_side, max_pixels=self.cfg.max_pixels)

    def _crop_source(self, data: bytes, first, faces: list) -> tuple[np.ndarray, int, int]:
        """``(image, its scale, 1 if decoded again else 0)``: the image the faces' crops are cut
        from. The first decode when every face's crop square holds as many pixels as the models
        take (:func:`crop_needs`); otherwise the photo decoded again at the coarsest draft scale
        where they all do."""
        s = min([crop_scale(f.box, first.width, first.height, first.scale, crop_size=need, margin=margin, fmt=first.fmt)
                 for f in faces for need, margin in self.crop_needs], default=first.scale)
        if s == first.scale:
            return first.image, first.scale, 0
        again = decode_scaled(data, max_pixels=self.cfg.max_pixels, scale=s)
        if again.image is None:
            return first.image, first.scale, 0
        return again.image, again.scale, 1

    def _detect(self, images: list, bases: list) -> list:
        """Faces per image (in the decoded image's pixels); an image whose detection raises gets
        ``detect_error`` and ``None`` instead of sinking the shard."""
        if not images:
            return []
        try:
            return self.fa.detect(images)
        except Exception:
            out = []
            for img, base in zip(images, bases):
                try:
                    out.append(self.fa.detect([img])[0])
                except Exception as exc:
                    base.update({S.STATUS: S.DETECT_ERROR, S.ERROR: f"{type(exc).__name__}: {exc}"[:500]})
                    out.append(None)
            return out

    def _analyze(self, images: dict, faces: dict, bases: list) -> dict:
        idx = list(images)
        if not idx:
            return {}
        kw = dict(embedding=self.cfg.embeddings, identity=self.fa.gallery is not None)
        try:
            res = self.fa.analyze([images[i] for i in idx], faces=[faces[i] for i in idx], **kw)
            return dict(zip(idx, res))
        except Exception:
            out = {}
            for i in idx:
                try:
                    out[i] = self.fa.analyze([images[i]], faces=[faces[i]], **kw)[0]
                except Exception as exc:
                    bases[i].update({S.STATUS: S.DETECT_ERROR, S.ERROR: f"analysis failed: {type(exc).__name__}: {exc}"[:500]})
            return out

    def _write(self, shard_id: int, table) -> None:
        import pyarrow.parquet as pq
        fs, _ = filesystem(self.folder, self.options)
        final = join(self.folder, part_name(shard_id))
        remote = "://" in self.folder
        tmp = final if remote else final + ".tmp"
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f)
        if tmp != final:
            fs.mv(tmp, final)


# ---- driver ----------------------------------------------------------------------------------------

def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_annotate(cfg: AnnotateConfig, address: str | None = None) -> dict:
    """Run one annotate pass; returns the summary (also ``RUN/_summary.json``).

    Raises ``ValueError``/``FileNotFoundError``/``PermissionError`` before any work for bad options
    or inputs; :class:`~facebatch.annotate.lock.LockHeld` when another run holds the output;
    :class:`JobFailed` when the run stopped part-way (nothing committed: rerun the same command).
    """
    from ..provenance import provenance
    from .. import __version__
    t_start = time.perf_counter()
    marks = {"run_start": time.time()}  # wall-clock marks of the driver, for the run's timeline
    cfg.validate()
    timing: dict[str, float] = {}
    options = storage_options(cfg.s3_endpoint_url)
    listing, skipped = ST.list_source(cfg.input, options)
    timing["list_s"] = time.perf_counter() - t_start
    marks["listed"] = time.time()
    if listing.num_rows == 0:
        raise ValueError(f"no images found in --input {cfg.input}")
    if cfg.dry_run:
        manifest, _ = ST.load_manifest(cfg.output, options) if _exists(cfg.output, options) else (None, None)
        d = ST.diff(listing, manifest, cfg.full)
        return {"dry_run": True, "listed": listing.num_rows, **d.counts(), "processed": 0,
                "would_process": d.todo["path"].to_pylist(), "would_delete": d.deleted["path"].to_pylist(),
                "skipped": skipped}
    check_writable(cfg.output, options)
    run_id = ST.new_run_id()
    fs, root = filesystem(cfg.output, options)
    with RunLock(cfg.output, options, run_id, cfg.lock_ttl_s):
        recovered = ST.recover(cfg.output, options, log=_print)
        manifest, _ = ST.load_manifest(cfg.output, options)
        d = ST.diff(listing, manifest, cfg.full)
        timing["diff_s"] = time.perf_counter() - t_start - timing["list_s"]
        marks["diffed"] = time.time()
        todo = d.todo
        folder = ST.run_dir(root, run_id)
        uri_folder = ST.run_dir(cfg.output.rstrip("/"), run_id) if "://" in cfg.output else folder
        fs.makedirs(folder, exist_ok=True)
        _print(f"[facebatch] annotate run {run_id}: listed {listing.num_rows}, " +
               ", ".join(f"{k} {v}" for k, v in d.counts().items()) + f"; processing {todo.num_rows}")
        results: dict[int, dict] = {}
        finished: list[tuple[float, int]] = []
        info: dict = {}
        t_ray = time.perf_counter()
        if todo.num_rows:
            from ..raycluster import init_ray
            info = init_ray(address)
            timing["ray_init_s"] = time.perf_counter() - t_ray
            marks["ray_started"] = time.time()
            n, cpw, threads = plan_workers(cfg, info["resources"].get("CPU", 1), info["resources"].get("GPU", 0))
            # pickled shards (no per-key objects kept), as many per actor on a small run
            shards = ST.plan_todo(todo, shard_size_for(todo.num_rows, cfg.shard_size, n))
            prov = {**provenance(), "version": __version__}
            try:
                _run_pipeline(cfg, shards, min(n, len(shards)), cpw, threads, run_id, uri_folder, options, prov,
                              results, finished, timing, t_ray, todo.num_rows, marks)
            except Exception as exc:
                raise JobFailed(f"annotate run {run_id} failed: {_short(exc)}; {len(results)} of {len(shards)} "
                                f"shards were written, nothing was committed: rerun the same command") from exc
            marks["last_shard"] = time.time()
            _check(cfg, fs, folder, todo["path"].to_pylist(), results, len(shards))
            marks["checked"] = time.time()
        processing = time.perf_counter() - t_ray
        ST.write_run_deleted(fs, folder, d.deleted, run_id)
        if cfg.report:  # before the summary, so that its time is in the timeline
            from .report import write_report
            marks["report"] = time.time()
            summary = _summary(cfg, run_id, uri_folder, listing, d, results, finished, skipped, recovered, timing,
                               processing, time.perf_counter() - t_start, info, marks)
            write_report(cfg.output, folder, summary, options)
        marks["summary"] = time.time()
        summary = _summary(cfg, run_id, uri_folder, listing, d, results, finished, skipped, recovered, timing,
                           processing, time.perf_counter() - t_start, info, marks)
        with fs.open(join(folder, ST.SUMMARY), "w") as f:
            json.dump(summary, f, indent=2, default=str)
        with fs.open(join(folder, ST.SUCCESS), "w") as f:
            f.write(run_id)
        ST.apply_run(cfg.output, options, run_id, folder)
    return summary


def _exists(dst: str, options: dict) -> bool:
    fs, root = filesystem(dst, options)
    return fs.exists(root)


def _run_pipeline(cfg, shards, n, cpw, threads, run_id, folder, options, prov, results, finished, timing, t_ray,
                  total, marks):
    import ray
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"shard_id": i, "objects": s} for i, s in enumerate(shards)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_read_shard, fn_kwargs={"options": options, "retry_s": cfg.retry_s}, num_cpus=0.25)
    ds = ds.map_batches(AnnotateWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpw,
                        num_gpus=cfg.gpus_per_worker or None, max_restarts=0,
                        fn_constructor_kwargs={"cfg": cfg.to_dict(), "threads": threads, "run_id": run_id,
                                               "folder": folder, "options": options, "provenance": prov})
    done = 0
    for row in ds.iter_rows():
        st = json.loads(row["stats"])
        results[st["shard_id"]] = st
        now = time.perf_counter()
        if not finished:
            timing["first_shard_s"] = now - t_ray
            marks["first_shard"] = time.time()
        finished.append((now, st["n_inputs"]))
        done += st["n_inputs"]
        _print(f"[facebatch] {done}/{total} images annotated")


def _check(cfg, fs, folder, paths, results, n_shards) -> None:
    """Rows in equal rows out: every shard reported, the part files hold exactly the rows reported,
    and the set of paths equals the objects to do (none missing, none repeated)."""
    import pyarrow.parquet as pq
    missing = [i for i in range(n_shards) if i not in results]
    if missing:
        raise JobFailed(f"shards {missing[:10]} produced no result; nothing committed: rerun the same command")
    found = []
    parts = ST.run_parts(fs, folder)
    for p in parts:
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[S.PATH, S.FACE_INDEX])
        found.extend(zip(t.column(S.PATH).to_pylist(), (max(0, fi) for fi in t.column(S.FACE_INDEX).to_pylist())))
    check_output_paths(paths, found, all_faces=True)
    n_rows = sum(r["n_rows"] for r in results.values())
    n_in = sum(r["n_inputs"] for r in results.values())
    if len(parts) != n_shards or len(found) != n_rows or n_in != len(paths):
        raise RuntimeError(f"row check failed: {len(paths)} inputs, {n_in} processed, {n_rows} rows reported, "
                           f"{len(found)} rows in {len(parts)} files for {n_shards} shards")


def _steady(finished) -> float | None:
    if len(finished) < 3 or finished[-1][0] <= finished[0][0]:
        return None
    return round(sum(n for _, n in finished[1:]) / (finished[-1][0] - finished[0][0]), 2)


def _timeline(marks: dict, results: dict) -> dict:
    """Seconds from the start of the run to each driver mark and to the first of each worker mark
    (read tasks and actors run in other processes; the marks are wall-clock times on one clock
    per node)."""
    t0 = marks["run_start"]
    out = {k: v - t0 for k, v in marks.items() if k != "run_start"}
    workers: dict[str, list[float]] = {}
    for st in results.values():
        for k, v in (st.get("marks") or {}).items():
            if v is not None:
                workers.setdefault(k, []).append(v)
    for k, vs in workers.items():
        out[f"first_{k}"] = min(vs) - t0
        if k in ("actor_ready", "shard_end", "read_end"):
            out[f"last_{k}"] = max(vs) - t0
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: kv[1])}


def _summary(cfg, run_id, folder, listing, d, results, finished, skipped, recovered, timing, processing, wall, info,
             marks=None):
    statuses, rows_by = Counter(), Counter()
    for st in results.values():
        statuses.update(st["status_counts"])
        rows_by.update(st["row_status_counts"])
    processed = sum(st["n_inputs"] for st in results.values())
    failed = sum(v for k, v in statuses.items() if k in S.FAILED_STATUSES)
    stage = {k: round(sum(st[k] for st in results.values()), 2)
             for k in ("read_s", "decode_s", "detect_s", "analyze_s", "rows_s", "write_s")}
    steps = {"wall": Counter(), "cpu": Counter()}
    actors: dict = {}
    for st in results.values():
        steps["wall"].update(st.get("wall_by_step_s") or {})
        steps["cpu"].update(st.get("cpu_by_step_s") or {})
        a = st.get("actor")
        if a:
            got = actors.setdefault(a["pid"], {"ready": a["cpu_ready_s"], "last": 0.0, "steps": 0.0})
            got["last"] = max(got["last"], a["cpu_now_s"])
            got["steps"] += sum(v for k, v in (st.get("cpu_by_step_s") or {}).items() if k != "read")
    if actors:
        # actor CPU outside the steps: Ray's own work in the actor (fetching blocks, serialising results)
        steps["cpu"]["actor_other"] = sum(max(0.0, a["last"] - a["ready"] - a["steps"]) for a in actors.values())
        steps["cpu"]["actor_startup"] = sum(a["ready"] for a in actors.values())
    first = next(iter(results.values()), {})
    return {
        "run_id": run_id, "run_folder": folder, "input": cfg.input, "output": cfg.output,
        "listed": listing.num_rows, **d.counts(), "processed": processed,
        "rows": sum(st["n_rows"] for st in results.values()), "failed": failed,
        "failure_rate": round(failed / processed, 4) if processed else 0.0,
        "status_counts": dict(sorted(statuses.items())), "row_status_counts": dict(sorted(rows_by.items())),
        "faces": rows_by.get(S.OK, 0), "redecoded_for_crops": sum(st.get("redecoded", 0) for st in results.values()),
        "wall_s": round(wall, 2), "processing_s": round(processing, 2),
        "images_per_s": round(processed / processing, 2) if processed and processing > 0 else None,
        "steady_images_per_s": _steady(finished),
        "startup_s": {k: round(v, 2) for k, v in timing.items()},
        "timeline_s": _timeline(marks, results) if marks else {},
        "run_start_epoch": marks.get("run_start") if marks else None,
        "actor_init_s": round(max((st.get("actor_init_s", 0) for st in results.values()), default=0), 2),
        "stage_s": stage, "step_s": {k: {n: round(v, 2) for n, v in c.items()} for k, c in steps.items()},
        "actors": len(actors),
        "skipped": skipped, "recovered": recovered,
        "models": first.get("models"), "attributes": first.get("attributes"),
        "config": cfg.to_dict(), "ray": info,
    }


def _short(exc: BaseException) -> str:
    """One line for a failed run: the node-death cause when Ray gives one, else the error's last line."""
    text = [t for t in str(exc).strip().splitlines() if t.strip()]
    died = [t.strip() for t in text if "node" in t.lower() and ("died" in t.lower() or "dead" in t.lower())]
    return f"{type(exc).__name__}: {(died or text or [''])[-1]}"[:300]
