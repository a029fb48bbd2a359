"""The annotate job on Ray Data: list -> diff -> shards -> read tasks -> analyzer actors -> sink.

Stage 1 (Ray tasks, fractional CPU, :mod:`.read`): read each shard's objects with retries on
transient storage errors. Stage 2 (an actor pool, ``map_batches`` with :class:`AnnotateWorker`):
each actor holds one :class:`~facebatch.inference.FaceAnalyzer`; per shard it decodes every object
with per-row error capture (JPEGs at reduced scale, :func:`facebatch.imaging.decode_scaled`), runs
the analyzer and hands the rows to the run's :class:`~facebatch.batch.sink.Sink` (by default
:class:`~facebatch.annotate.state.RunSink`: ``part-NNNNN.parquet`` in the run folder). Every input
gives at least one row; rows in equal rows out is checked per shard and, at the end, as sets
against the list of objects to do; then the sink commits the run.
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
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import schema as S
from ..batch.check import check_rows
from ..batch.errors import JobFailed, rerun_can_fix, short_error, write_failed, write_failure
from ..batch.progress import StepClock
from ..batch.retry import RetryPolicy, call_with_retries, one_by_one, retry_note, retryable_inputs
from ..batch.shards import part_name
from ..batch.sink import Sink
from ..batch.summary import ShardTally, count, failed, retryable_fields
from ..batch.workers import WorkerPlan, plan_on_cluster, precheck_local
from ..imaging import crop_scale, decode_scaled, sha256_bytes
from ..storage import check_writable, filesystem, join, storage_options
from . import state as ST
from . import versions as V
from .config import AnnotateConfig, shard_size_for
from .lock import RunLock
# stage 1 (read tasks) lives in .read, which imports no torch: read workers start seconds sooner
from .read import read_shard

log = logging.getLogger(__name__)

__all__ = ["AnnotateWorker", "JobFailed", "crop_needs", "run_annotate"]


# ---- stage 2: decode and analyse (Ray actors) ----------------------------------------------------

def _scaled_face(face, k: float):
    from ..detection import Face
    if k == 1:
        return face
    return Face(box=np.asarray(face.box, np.float64) * k, score=face.score,
                landmarks=np.asarray(face.landmarks, np.float64) * k)


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
    for head in fa.heads:
        if getattr(head, "crop_need", None) is not None:  # a head that cuts its own pixels (identity chips)
            needs.append(head.crop_need)
        elif getattr(head, "input", None) is not None:
            needs.append((min(int(head.input.size), int(head.input.frame.crop_size)), float(head.input.frame.margin)))
    if crops:
        frame = CropFrame()
        needs.append((int(frame.crop_size), float(frame.margin)))
    return needs


@dataclass
class ShardRows:
    """One shard's rows as a worker made them, with what its stats need."""

    shard_id: int
    n_inputs: int
    rows: list[dict]
    clock: StepClock
    begin: float  # wall-clock time the worker started it
    redecoded: int  # images decoded again for their faces' crops
    read_s: float  # seconds its read task took


class AnnotateWorker:
    """One FaceAnalyzer per actor, the Ray callable of ``map_batches``: per read shard it decodes and
    analyses (:meth:`process` gives the rows), hands the rows to the run's sink and returns the
    shard's stats (JSON)."""

    def __init__(self, cfg: dict, threads: int, run_id: str, sink: Sink, provenance: dict,
                 models: dict | None = None) -> None:
        # wall-clock marks (epoch seconds) of the actor's start-up, for the run's timeline
        self.marks = {"actor_process_start": _process_start(), "actor_enter": time.time()}
        import torch
        from ..inference import AnalyzerConfig, FaceAnalyzer  # noqa: F401 (heavy imports before the mark)
        self.marks["actor_imported"] = time.time()
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        self.cfg = AnnotateConfig(**{**cfg, "analyzer": AnalyzerConfig.from_dict(cfg["analyzer"])})
        self.fa = self.cfg.analyzer.build()
        self.attrs = self.fa.attribute_names
        self.run_id, self.sink = run_id, sink
        self.retry = RetryPolicy(budget_s=self.cfg.retry_s)
        self.describe = self.fa.describe()
        # the models' fingerprints, checked against those the driver diffed with (``models``)
        self.models = V.worker_models(self.cfg.analyzer, self.describe, models)
        self.models_json, self.identity_model = V.dumps(self.models), self.models.get("identity")
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
            shard = self.process(int(sid), payload, float(rs))
            self.write(shard)
            st = self._stats(shard)
            st["marks"].update({"read_begin": None if b is None else float(b), "read_end": None if e is None else float(e)})
            st["read_cpu_s"] = float(c or 0.0)
            st["cpu_by_step_s"]["read"] = round(float(c or 0.0), 4)  # in the read task's process
            stats.append(st)
        return {"stats": [json.dumps(s, default=str) for s in stats]}

    # -- per shard
    def process(self, shard_id: int, payload: bytes, read_s: float = 0.0) -> ShardRows:
        """Decode and analyse one read shard (``payload``: pickled ``[(base, bytes or None)]``): its rows."""
        t_begin = time.time()
        clock = StepClock()
        items = pickle.loads(payload)
        del payload
        clock.lap("unpickle")
        bases, decoded, datas = self._decode(items, clock)
        ok = [i for i, r in enumerate(decoded) if r is not None]
        found = self._detect([decoded[i].image for i in ok], [bases[i] for i in ok])
        clock.lap("detect")
        images, faces, scales, n_faces, redecoded = self._crop_sources(ok, found, decoded, datas)
        clock.lap("redecode")
        results = self._analyze(images, faces, bases)
        clock.lap("analyze")
        rows = self._rows(bases, results, images, faces, scales, n_faces)
        clock.lap("rows")
        expected = sum(max(1, len(results.get(i) or [])) for i in range(len(bases)))
        if len(rows) != expected or {r[S.PATH] for r in rows} != {b[S.PATH] for b in bases} or len(bases) != len(items):
            raise RuntimeError(f"shard {shard_id}: {len(items)} inputs gave {len(rows)} rows, expected {expected}")
        return ShardRows(shard_id, len(items), rows, clock, t_begin, redecoded, read_s)

    def write(self, shard: ShardRows) -> None:
        """Hand the shard's rows to the sink, retrying transient storage errors."""
        try:
            call_with_retries(lambda: self.sink.write_part(shard.shard_id, shard.rows, self._table), self.retry,
                              f"write {part_name(shard.shard_id)}", on_retry=retry_note)
        except Exception as exc:
            raise write_failed(shard.shard_id, str(self.sink), exc) from None
        shard.clock.lap("write")

    def _table(self, rows: list[dict]):
        from .rows import to_table
        return to_table(rows, self.fa.columns(), self.metadata)

    def _decode(self, items: list, clock: StepClock) -> tuple[list[dict], list, list]:
        """``(base columns, first decode or None, bytes)`` per item; sets size, sha256 and status."""
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
        return bases, decoded, datas

    def _decode_first(self, data: bytes):
        """The decode the detector sees: in ``draft`` mode a JPEG at the smallest scale whose
        longer side still has ``max_side`` pixels; in ``full`` mode full size."""
        max_side = self.cfg.analyzer.detector.max_side if self.cfg.decode == "draft" else None
        return decode_scaled(data, max_side=max_side, max_pixels=self.cfg.max_pixels)

    def _crop_sources(self, ok: list[int], found: list, decoded: list, datas: list):
        """Per image with faces: the image the faces are cut from (the first decode, or a finer one
        for faces that need more pixels than it has), its scale, the faces in its pixels and how
        many the detector found; and how many images were decoded again."""
        images, faces, scales, n_faces = {}, {}, {}, {}
        redecoded = 0
        for i, fs in zip(ok, found):
            r = decoded[i]
            decoded[i] = None  # the detector's image is not needed past here unless it is also the crop source
            if fs is None:
                continue
            orig = [_scaled_face(f, r.scale) for f in fs]
            n_faces[i] = len(orig)
            keep = orig if self.cfg.all_faces else orig[:1]
            img, s, again = self._crop_source(datas[i], r, keep)
            redecoded += again
            datas[i] = None
            images[i], scales[i] = img, s
            faces[i] = [_scaled_face(f, 1.0 / s) for f in keep]
        return images, faces, scales, n_faces, redecoded

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

        def failed_image(k: int, exc: Exception) -> None:
            bases[k].update({S.STATUS: S.DETECT_ERROR, S.ERROR: f"{type(exc).__name__}: {exc}"[:500]})
        return one_by_one(self.fa.detect, images, failed_image)

    def _analyze(self, images: dict, faces: dict, bases: list) -> dict:
        """Face results per image index; an image whose analysis raises gets ``detect_error`` and no entry."""
        idx = list(images)
        if not idx:
            return {}
        kw = dict(embedding=self.cfg.embeddings, identity=self.fa.gallery is not None)

        def analyze(pairs: list) -> list:
            return self.fa.analyze([im for im, _ in pairs], faces=[fs for _, fs in pairs], **kw)

        def failed_image(k: int, exc: Exception) -> None:
            bases[idx[k]].update({S.STATUS: S.DETECT_ERROR,
                                  S.ERROR: f"analysis failed: {type(exc).__name__}: {exc}"[:500]})
        res = one_by_one(analyze, [(images[i], faces[i]) for i in idx], failed_image)
        return {i: r for i, r in zip(idx, res) if r is not None}

    def _rows(self, bases: list, results: dict, images: dict, faces: dict, scales: dict, n_faces: dict) -> list[dict]:
        """One row per face, per image without a face and per failed input (in original pixels)."""
        from .rows import face_fields
        cfg = self.cfg
        now = _dt.datetime.now(_dt.timezone.utc)
        rows = []
        for i, base in enumerate(bases):
            base.update({"run_id": self.run_id, "annotated_at": now, "models": self.models_json,
                         "identity_model": self.identity_model})
            res = results.get(i)
            if base.get(S.STATUS) != S.OK or res is None:
                rows.append({**base, S.N_FACES: None if base.get(S.STATUS) != S.OK else 0, S.FACE_INDEX: -1})
                continue
            if not res:
                rows.append({**base, S.STATUS: S.NO_FACE, S.N_FACES: 0, S.FACE_INDEX: -1})
                continue
            k = scales[i]
            for j, fr in enumerate(res):
                d = face_fields(fr, k, cfg.embeddings)
                if cfg.crops:
                    from ..inference import face_crop
                    d[S.CROP] = face_crop(images[i], faces[i][j].box)[1]
                rows.append({**base, **d, S.N_FACES: n_faces[i], S.FACE_INDEX: j})
        return rows

    def _stats(self, shard: ShardRows) -> dict:
        rows, clock = shard.rows, shard.clock
        first = [r for r in rows if (r[S.FACE_INDEX] or 0) <= 0]
        w = clock.wall
        return {"shard_id": shard.shard_id, "n_inputs": shard.n_inputs, "n_rows": len(rows),
                "status_counts": dict(Counter(r[S.STATUS] for r in first)),
                "row_status_counts": dict(Counter(r[S.STATUS] for r in rows)),
                "retryable": retryable_inputs(first),  # read_error after a transient storage error
                "redecoded": shard.redecoded, "read_s": shard.read_s,
                "decode_s": w["unpickle"] + w["decode"] + w["sha256"] + w["redecode"], "detect_s": w["detect"],
                "analyze_s": w["analyze"], "rows_s": w["rows"], "write_s": w["write"], "actor_init_s": self.init_s,
                "wall_by_step_s": clock.rounded(clock.wall), "cpu_by_step_s": clock.rounded(clock.cpu),
                "marks": {**self.marks, "shard_begin": shard.begin, "shard_end": time.time()},
                "actor": {"pid": self.pid, "cpu_ready_s": round(self.cpu_ready, 3),
                          "cpu_now_s": round(time.process_time(), 3)},
                "models": self.describe, "model_fingerprints": self.models, "attributes": self.attrs,
                "outputs": [{"name": o.name, "kind": o.kind} for o in self.fa.outputs]}


# ---- driver ----------------------------------------------------------------------------------------

def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Run:
    """One annotate run, as the driver's steps share it (filled in as they go)."""

    cfg: AnnotateConfig
    options: dict
    listing: Any  # pyarrow Table of the listed objects
    skipped: dict  # what the lister left out
    t_start: float  # time.perf_counter() at the start
    timing: dict[str, float]  # start-up seconds by step
    marks: dict[str, float]  # wall-clock marks of the driver, for the run's timeline
    run_id: str = ""
    sink: Sink | None = None
    folder: str = ""  # the run folder inside its filesystem
    uri_folder: str = ""  # the same as the user named DST (an s3:// URI or a local path)
    recovered: dict = field(default_factory=dict)
    diff: ST.Diff | None = None
    models: dict = field(default_factory=dict)  # fingerprints of this run's models (:mod:`.versions`)
    identity_changed: dict | None = None  # {"from": old, "to": new} when the identity model changed
    tally: ShardTally = field(default_factory=ShardTally)
    info: dict = field(default_factory=dict)  # the Ray cluster's
    t_ray: float = 0.0  # time.perf_counter() when processing started
    processing_s: float = 0.0


def run_annotate(cfg: AnnotateConfig, address: str | None = None,
                 sink: Callable[[str], Sink] | None = None) -> dict:
    """Run one annotate pass; returns the summary (also ``RUN/_summary.json``).

    ``sink`` makes the run's :class:`~facebatch.batch.sink.Sink` from its run id (default:
    :class:`~facebatch.annotate.state.RunSink`, Parquet parts in the run folder, committed with
    ``_SUCCESS`` and the manifest).

    Raises ``ValueError``/``FileNotFoundError``/``PermissionError`` before any work for bad options
    or inputs; :class:`~facebatch.annotate.lock.LockHeld` when another run holds the output;
    :class:`~facebatch.batch.errors.JobFailed` when the run stopped part-way (nothing committed:
    rerun the same command).
    """
    t_start = time.perf_counter()
    marks = {"run_start": time.time()}
    cfg.validate()
    options = storage_options(cfg.s3_endpoint_url)
    listing, skipped = ST.list_source(cfg.input, options)
    timing = {"list_s": time.perf_counter() - t_start}
    marks["listed"] = time.time()
    if listing.num_rows == 0:
        raise ValueError(f"no images found in --input {cfg.input}")
    if cfg.dry_run:
        return _dry_run(cfg, options, listing, skipped)
    check_writable(cfg.output, options)
    run = _Run(cfg, options, listing, skipped, t_start, timing, marks)
    run_id = ST.new_run_id()
    with RunLock(cfg.output, options, run_id, cfg.lock_ttl_s) as lock:
        _start(run, run_id, (sink or _default_sink(cfg, options))(run_id))
        _process(run, address)
        if lock.lost:  # another run took the lock over while this one could not renew it: do not commit
            raise JobFailed(f"the output lock on {cfg.output} was taken over by another run while this one could "
                            "not renew it (storage outage longer than --lock-ttl?); nothing was committed: rerun "
                            "the same command", retryable=True)
        return _finish(run)


def _default_sink(cfg: AnnotateConfig, options: dict) -> Callable[[str], Sink]:
    return lambda run_id: ST.RunSink(cfg.output, options, run_id)


def _exists(dst: str, options: dict) -> bool:
    fs, root = filesystem(dst, options)
    return fs.exists(root)


def _dry_run(cfg: AnnotateConfig, options: dict, listing, skipped: dict) -> dict:
    exists = _exists(cfg.output, options)
    manifest, _ = ST.load_manifest(cfg.output, options) if exists else (None, None)
    erased = ST.load_erased(cfg.output, options) if exists else None
    d = ST.diff(listing, manifest, cfg.full, V.run_models(cfg.analyzer), erased, cfg.max_reannotate)
    return {"dry_run": True, "listed": listing.num_rows, **d.counts(), "processed": 0,
            "would_process": d.todo["path"].to_pylist(), "would_delete": d.deleted["path"].to_pylist(),
            "skipped": skipped}


def _start(run: _Run, run_id: str, sink: Sink) -> None:
    """Holding the lock: recover what killed runs left, diff the listing against the manifest and
    make the run folder."""
    cfg, options = run.cfg, run.options
    fs, root = filesystem(cfg.output, options)
    run.run_id, run.sink = run_id, sink
    from .forget import finish_pending
    forgot = finish_pending(cfg.output, options, log=_print)  # a forget killed mid-way first
    run.recovered = ST.recover(cfg.output, options, log=_print)
    if forgot:
        run.recovered["forget"] = forgot
    manifest, _ = ST.load_manifest(cfg.output, options)
    run.models = V.run_models(cfg.analyzer)
    run.identity_changed = _identity_change(manifest, run.models)
    run.diff = d = ST.diff(run.listing, manifest, cfg.full, run.models, ST.load_erased(cfg.output, options),
                           cfg.max_reannotate)
    run.timing["diff_s"] = time.perf_counter() - run.t_start - run.timing["list_s"]
    run.marks["diffed"] = time.time()
    run.folder, run.uri_folder = ST.run_dir(root, run_id), ST.run_uri(cfg.output, options, run_id)
    fs.makedirs(run.folder, exist_ok=True)
    _print(f"[facebatch] annotate run {run_id}: listed {run.listing.num_rows}, " +
           ", ".join(f"{k} {v}" for k, v in d.counts().items()) + f"; processing {d.todo.num_rows}")


def _process(run: _Run, address: str | None) -> None:
    """Annotate the objects to do on Ray, then check the rows the sink holds against them."""
    todo = run.diff.todo
    run.t_ray = time.perf_counter()
    if todo.num_rows:
        from ..raycluster import init_ray
        precheck_local(run.cfg, address)
        run.info = init_ray(address)
        run.timing["ray_init_s"] = time.perf_counter() - run.t_ray
        run.marks["ray_started"] = time.time()
        pool = plan_on_cluster(run.cfg, run.info)
        # pickled shards (no per-key objects kept), as many per actor on a small run
        shards = ST.plan_todo(todo, shard_size_for(todo.num_rows, run.cfg.shard_size, pool.actors))
        try:
            _run_pipeline(run, shards, pool)
        except Exception as exc:
            # a part that could not be written says so (storage outage), else Ray's cause
            raise JobFailed(f"annotate run {run.run_id} failed: {write_failure(exc) or short_error(exc)}; "
                            f"{len(run.tally.results)} of "
                            f"{len(shards)} shards were written, nothing was committed: rerun the same command",
                            retryable=rerun_can_fix(exc)) from exc
        run.marks["last_shard"] = time.time()
        check_rows(run.sink, todo["path"].to_pylist(), run.tally.results, len(shards), all_faces=True,
                   rerun="nothing committed: rerun the same command")
        run.marks["checked"] = time.time()
    run.processing_s = time.perf_counter() - run.t_ray


def _run_pipeline(run: _Run, shards: list[bytes], pool: WorkerPlan) -> None:
    """Thin Ray Data glue: shards -> read tasks -> analyzer actors (which write through the sink)."""
    import ray

    from .. import __version__
    from ..provenance import provenance
    cfg, total = run.cfg, run.diff.todo.num_rows
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"shard_id": i, "objects": s} for i, s in enumerate(shards)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(read_shard, fn_kwargs={"options": run.options, "retry_s": cfg.retry_s}, num_cpus=0.25)
    ds = ds.map_batches(AnnotateWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(pool.actors, len(shards))),
                        num_cpus=pool.cpus, num_gpus=cfg.gpus_per_worker or None, max_restarts=0,
                        fn_constructor_kwargs={"cfg": cfg.to_dict(), "threads": pool.threads, "run_id": run.run_id,
                                               "sink": run.sink, "provenance": {**provenance(), "version": __version__},
                                               "models": run.models})
    for row in ds.iter_rows():
        if not run.tally.finished:
            run.timing["first_shard_s"] = time.perf_counter() - run.t_ray
            run.marks["first_shard"] = time.time()
        run.tally.add(json.loads(row["stats"]))
        _print(f"[facebatch] {run.tally.inputs}/{total} images annotated")


def _finish(run: _Run) -> dict:
    """Record the deleted objects and the summary in the run folder, then commit the run (the sink)."""
    fs, _ = filesystem(run.cfg.output, run.options)
    ST.write_run_deleted(fs, run.folder, run.diff.deleted, run.run_id)
    summary = _summarise(run)
    with fs.open(join(run.folder, ST.SUMMARY), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    run.sink.commit(summary)
    if run.identity_changed:
        summary["people_rebuilt"] = on_identity_model_changed(
            run.cfg.output, run.options, run.run_id, run.identity_changed["from"], run.identity_changed["to"])
    if run.cfg.people:
        _people_stage(run, summary, rebuilt=bool(summary.get("people_rebuilt")))
    return summary


def _people_stage(run: _Run, summary: dict, rebuilt: bool) -> None:
    """``--people``: group the live faces into persons (still holding the lock), add the counts to
    the summary (``_summary.json`` is written again) and, with ``--report``, the people section to
    the run's report. The run is committed before: a failure here is reported, and ``facebatch
    people --annotations DST`` does the same later."""
    from ..people import run_people
    try:
        people = summary["people_rebuilt"] if rebuilt else run_people(
            run.cfg.output, run.options, min_faces=run.cfg.min_faces, run_id=run.run_id, log=_print)
    except Exception as exc:
        _print(f"[facebatch] the people stage failed: {type(exc).__name__}: {exc}; the run is committed; "
               f"run `facebatch people --annotations {run.cfg.output}` to retry it")
        people = {"error": f"{type(exc).__name__}: {exc}"}
    summary["people"] = people
    fs, _ = filesystem(run.cfg.output, run.options)
    with fs.open(join(run.folder, ST.SUMMARY), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    if run.cfg.report and "error" not in people:
        from .report import add_people_section
        add_people_section(run.cfg.output, run.folder, run.options)


def _identity_change(manifest, models: dict) -> dict | None:
    """``{"from": old, "to": new}`` when this run's identity model differs from the one the latest
    annotation with an identity model used (the manifest's), else None."""
    new = models.get("identity")
    if new is None or manifest is None or not manifest.num_rows:
        return None
    old = ST.current_identity_model(manifest)
    return {"from": old, "to": new} if old is not None and old != new else None


def on_identity_model_changed(dst: str, options: dict, run_id: str, old: str, new: str) -> dict | None:
    """The hook called at the end of a committed run whose identity model differs from the last
    one: ``DST/_people/`` was built on the old model's embeddings, so the people stage re-clusters
    it now (``run_people(recluster=True)``: ids and names carried over where faces overlap; the
    live view gives the new model's embeddings only, :func:`~facebatch.annotate.state.read_latest`).
    Returns the people summary, or None when there is no ``_people/``. A failure here does not undo
    the committed run: it is reported; ``facebatch people --recluster`` does the same later."""
    from ..people.state import people_root
    fs, root = people_root(dst, options)
    if not fs.exists(root):
        return None
    _print(f"[facebatch] the identity model changed ({old} -> {new}): re-clustering {dst}/_people")
    try:
        from ..people import run_people
        return run_people(dst, options, run_id=run_id, recluster=True, log=_print)
    except Exception as exc:
        _print(f"[facebatch] could not rebuild _people/ after the identity model change: {type(exc).__name__}: "
               f"{exc}; run `facebatch people --annotations {dst}`")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _summarise(run: _Run) -> dict:
    """The run's summary. With ``--report`` the report is made from it first, and the summary's
    clock fields are then taken again so that the timeline counts the report."""
    run.marks["report" if run.cfg.report else "summary"] = time.time()
    summary = _summary(run)
    if run.cfg.report:
        from .report import write_report
        write_report(run.cfg.output, run.folder, summary, run.options)
        run.marks["summary"] = time.time()
        summary.update(_clock(run))
    return summary


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


def _clock(run: _Run) -> dict:
    """The summary's fields that change while the run is being finished."""
    return {"wall_s": round(time.perf_counter() - run.t_start, 2), "timeline_s": _timeline(run.marks, run.tally.results)}


def _steps(results: dict) -> tuple[dict, int]:
    """Wall and CPU seconds by step, summed over the shards (with the actors' CPU outside the
    steps), and how many actors ran."""
    steps = {"wall": count(results.values(), "wall_by_step_s"), "cpu": count(results.values(), "cpu_by_step_s")}
    actors: dict = {}
    for st in results.values():
        a = st.get("actor")
        if a:
            got = actors.setdefault(a["pid"], {"ready": a["cpu_ready_s"], "last": 0.0, "steps": 0.0})
            got["last"] = max(got["last"], a["cpu_now_s"])
            got["steps"] += sum(v for k, v in (st.get("cpu_by_step_s") or {}).items() if k != "read")
    if actors:
        # actor CPU outside the steps: Ray's own work in the actor (fetching blocks, serialising results)
        steps["cpu"]["actor_other"] = sum(max(0.0, a["last"] - a["ready"] - a["steps"]) for a in actors.values())
        steps["cpu"]["actor_startup"] = sum(a["ready"] for a in actors.values())
    return {k: {n: round(v, 2) for n, v in c.items()} for k, c in steps.items()}, len(actors)


def _summary(run: _Run) -> dict:
    cfg, results = run.cfg, run.tally.results
    statuses, rows_by = count(results.values(), "status_counts"), count(results.values(), "row_status_counts")
    processed = run.tally.inputs
    n_failed = failed(statuses)
    stage = {k: round(sum(st[k] for st in results.values()), 2)
             for k in ("read_s", "decode_s", "detect_s", "analyze_s", "rows_s", "write_s")}
    steps, n_actors = _steps(results)
    clock = _clock(run)
    first = next(iter(results.values()), {})
    return {
        "run_id": run.run_id, "run_folder": run.uri_folder, "input": cfg.input, "output": cfg.output,
        "listed": run.listing.num_rows, **run.diff.counts(), "processed": processed,
        "rows": sum(st["n_rows"] for st in results.values()), "failed": n_failed,
        "failure_rate": round(n_failed / processed, 4) if processed else 0.0,
        "status_counts": dict(sorted(statuses.items())), "row_status_counts": dict(sorted(rows_by.items())),
        **retryable_fields(results.values()),
        "faces": rows_by.get(S.OK, 0), "redecoded_for_crops": sum(st.get("redecoded", 0) for st in results.values()),
        "wall_s": clock["wall_s"], "processing_s": round(run.processing_s, 2),
        "images_per_s": round(processed / run.processing_s, 2) if processed and run.processing_s > 0 else None,
        "steady_images_per_s": run.tally.steady_rate(),
        "startup_s": {k: round(v, 2) for k, v in run.timing.items()},
        "timeline_s": clock["timeline_s"],
        "run_start_epoch": run.marks.get("run_start"),
        "actor_init_s": round(max((st.get("actor_init_s", 0) for st in results.values()), default=0), 2),
        "stage_s": stage, "step_s": steps,
        "actors": n_actors,
        "skipped": run.skipped, "recovered": run.recovered,
        "models": first.get("models"), "attributes": first.get("attributes"), "outputs": first.get("outputs"),
        "model_fingerprints": first.get("model_fingerprints") or run.models,
        "identity_model_changed": run.identity_changed,
        "config": cfg.to_dict(), "ray": run.info,
    }
