"""The preprocess job on Ray Data: sorted inputs -> shards -> read+decode tasks -> detect+crop+write actors.

Each shard (a fixed run of the sorted inputs) becomes one Parquet part ``part-NNNNN.parquet``
(written through a :class:`~facebatch.batch.sink.ParquetSink`) and, written after it, a
done-marker ``_done/part-NNNNN.json`` with the shard's counts and a hash of its inputs (path,
size, mtime or ETag, labels). A rerun overwrites the same names; ``resume`` skips only shards
whose marker exists with the same inputs hash and no row a retry could change (``read_error``,
``detect_error``). Transient storage errors are retried with backoff. Rows in equal rows out is
checked per shard, and at the end the *set* of paths in the written files is compared with the
listing. The shard, retry, check and pool machinery is :mod:`facebatch.batch`'s.
"""
from __future__ import annotations

import functools
import json
import logging
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass

from .. import schema as S
from ..batch.check import check_rows
from ..batch.errors import JobFailed, is_lost_worker, rerun_can_fix, short_error, write_failed, write_failure
from ..batch.listing import input_fingerprint, version_of
from ..batch.progress import Progress
from ..batch.retry import (
    RetryCounter, RetryPolicy, call_with_retries, failure_text, one_by_one, retry_note, retryable_inputs,
)
from ..batch.shards import (
    DONE_DIR, MARKER_VERSION, PART_GLOB, ResumePlan, part_name, plan_resume, plan_shards, read_markers,
    shard_inputs_hash, shard_of, write_marker,
)
from ..batch.sink import ParquetSink, Sink
from ..batch.summary import ShardTally, count, failed, retryable_fields
from ..batch.workers import WorkerPlan, alive_resources, plan_on_cluster, plan_workers, precheck_local
from ..storage import check_writable, filesystem, join, object_info, storage_options
from .config import PreprocessConfig

log = logging.getLogger(__name__)

SUMMARY_FILE = "_summary.json"
CONFIG_FILE = "_config.json"
MAX_PIPELINE_ATTEMPTS = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: ``str()`` says what was finished and how to resume."""


# ---- stage 1: read and decode (Ray tasks) ---------------------------------------------------------

def _open_bytes(path: str, options: dict) -> bytes:
    fs, p = filesystem(path, options)
    with fs.open(p, "rb") as f:
        return f.read()


def read_and_decode(record, split: str, max_pixels: int, options: dict,
                    retry: RetryPolicy | None = None, counter: RetryCounter | None = None):
    """``(base columns, RGB image or None)`` for one input; never raises.

    Transient read errors are retried with ``retry``'s backoff (``counter`` counts the retries);
    what still fails becomes a ``read_error`` row, which ``--resume`` retries.
    """
    from ..imaging import decode_image, sha256_bytes
    base = {S.PATH: record.path, S.SPLIT: split}
    try:
        if record.image_bytes is not None:
            data = record.image_bytes
        else:
            data = call_with_retries(lambda: _open_bytes(record.path, options), retry or RetryPolicy(),
                                     f"read {record.path}", on_retry=counter or retry_note)
    except Exception as exc:  # missing object, permissions, network that stayed down
        base.update({S.STATUS: S.READ_ERROR, S.ERROR: failure_text(exc)[:500]})
        return base, None
    res = decode_image(data, max_pixels=max_pixels)
    base.update({S.SHA256: sha256_bytes(data), S.WIDTH: res.width, S.HEIGHT: res.height,
                 S.STATUS: res.status, S.ERROR: res.error})
    return base, res.image


def degrade_input(record, base: dict, image, spec: str | None):
    """Apply ``--degrade`` to a decoded image: ``(record with labels moved, base with the new size, image)``."""
    if image is None or not spec:
        return record, base, image
    import dataclasses

    import numpy as np

    from ..degrade import Degradation
    image, (sx, sy) = Degradation.parse(spec).apply(image)
    if record.keypoints is not None:
        record = dataclasses.replace(record, keypoints=np.asarray(record.keypoints, np.float32) * np.float32([sx, sy]))
    return record, {**base, S.WIDTH: image.shape[1], S.HEIGHT: image.shape[0]}, image


def _read_decode_shard(row: dict, max_pixels: int, options: dict, retry_s: float, degrade: str | None = None) -> dict:
    t0 = time.perf_counter()
    items = pickle.loads(row["records"])
    counter = RetryCounter()
    policy = RetryPolicy(budget_s=retry_s)
    out = [degrade_input(rec, *read_and_decode(rec, split, max_pixels, options, policy, counter), degrade)
           for rec, split in items]
    return {"shard_id": row["shard_id"], "payload": pickle.dumps(out, protocol=5),
            "decode_s": time.perf_counter() - t0, "read_retries": counter.retries,
            "inputs_sha256": row["inputs_sha256"]}


# ---- stage 2: detect, crop, write (Ray actors) ----------------------------------------------------

def _make_detector(cfg: dict):
    """The detector an actor runs, from the job's options (``cfg``: ``PreprocessConfig.to_dict()``)."""
    from ..detection import create_detector
    det = dict(cfg["detector"])
    backend = det.pop("backend")
    return create_detector(backend, random_weights=cfg.get("random_weights", False), **det)


class ShardProcessor:
    """Loads the detector once; per shard: detect in batches, crop, write the part, then its marker."""

    def __init__(self, cfg: dict, threads: int, metadata: dict, options: dict, sink: Sink) -> None:
        import torch
        from .rows import CropConfig
        torch.set_num_threads(threads)
        self.detector = _make_detector(cfg)
        self.crop = CropConfig(**cfg["crop"])
        self.output = cfg["output"]
        self.to_table = functools.partial(S.to_table, metadata={k.encode(): v for k, v in metadata.items()})
        self.options, self.sink = options, sink
        self.retry = RetryPolicy(budget_s=cfg.get("retry_s", 120.0))

    def __call__(self, batch: dict) -> dict:
        stats = [self.process(int(sid), payload, float(dec), int(rr), str(h))
                 for sid, payload, dec, rr, h in zip(batch["shard_id"], batch["payload"], batch["decode_s"],
                                                     batch["read_retries"], batch["inputs_sha256"])]
        return {"stats": [json.dumps(s) for s in stats]}

    def _detect(self, images: list) -> tuple[list, list]:
        """Faces per image; an image whose detection raises gets an error instead of sinking the batch."""
        errors = [None] * len(images)

        def failed_image(i: int, exc: Exception) -> list:
            errors[i] = f"{type(exc).__name__}: {exc}"[:500]
            return []
        return one_by_one(self.detector.detect, images, failed_image), errors

    def _rows(self, shard_id: int, items: list) -> tuple[list[dict], float, float]:
        """Detect and crop: ``(rows, detect seconds, crop seconds)``; checks one row per input (per face)."""
        from .rows import rows_for_image
        t0 = time.perf_counter()
        ok = [i for i, (_, base, img) in enumerate(items) if img is not None]
        faces: dict[int, list] = {}
        bs = self.detector.config.batch_size * 4
        for j in range(0, len(ok), bs):
            idx = ok[j:j + bs]
            found, errors = self._detect([items[i][2] for i in idx])
            for i, f, e in zip(idx, found, errors):
                faces[i] = f
                if e:
                    items[i][1].update({S.STATUS: S.DETECT_ERROR, S.ERROR: e})
        t1 = time.perf_counter()
        rows = []
        for i, (rec, base, img) in enumerate(items):
            rows.extend(rows_for_image(base, img if base[S.STATUS] == S.OK else None, faces.get(i, []), rec, self.crop))
        expected = sum(1 if not self.crop.all_faces else max(1, len(faces.get(i, [])) if items[i][1][S.STATUS] == S.OK else 1)
                       for i in range(len(items)))
        if len(rows) != expected or len({r[S.PATH] for r in rows}) != len(items):
            raise RuntimeError(f"shard {shard_id}: {len(items)} inputs gave {len(rows)} rows, expected {expected}")
        return rows, t1 - t0, time.perf_counter() - t1

    def process(self, shard_id: int, payload: bytes, decode_s: float, read_retries: int = 0,
                inputs_sha256: str = "") -> dict:
        items = pickle.loads(payload)
        rows, detect_s, crop_s = self._rows(shard_id, items)
        counter = RetryCounter()
        try:
            t0 = time.perf_counter()
            call_with_retries(lambda: self.sink.write_part(shard_id, rows, self.to_table),
                              self.retry, f"write {part_name(shard_id)}", on_retry=counter)
            stats = {"shard_id": shard_id, "n_inputs": len(items), "n_rows": len(rows),
                     "status_counts": dict(Counter(r[S.STATUS] for r in rows)),
                     "input_status_counts": dict(Counter(r[S.STATUS] for r in rows if (r[S.FACE_INDEX] or 0) <= 0)),
                     "retryable": retryable_inputs(rows),  # read_error after a transient storage error
                     "decode_s": decode_s, "detect_s": detect_s, "crop_s": crop_s,
                     "write_s": time.perf_counter() - t0, "retries": read_retries + counter.retries,
                     "inputs_sha256": inputs_sha256,
                     "marker_version": MARKER_VERSION}
            call_with_retries(lambda: write_marker(self.output, shard_id, stats, self.options),
                              self.retry, f"write marker {shard_id}", on_retry=counter)
        except Exception as exc:
            # A plain exception type crosses back to the driver as the job's failure reason.
            raise write_failed(shard_id, self.output, exc) from None
        return stats


# ---- driver ---------------------------------------------------------------------------------------

def _remove_shards(output: str, options: dict, shard_ids: list[int], stale_from: int) -> None:
    """Delete the markers (and stale parts) of shards about to be redone, and every part or marker
    numbered at or beyond ``stale_from`` (left by a larger earlier input)."""
    fs, root = filesystem(output, options)
    ids = set(shard_ids)
    for pattern in (f"{DONE_DIR}/part-*.json", PART_GLOB, PART_GLOB + ".tmp*"):
        for p in fs.glob(join(root, pattern)):
            sid = shard_of(p)
            if sid >= stale_from or (sid in ids and pattern.startswith(DONE_DIR)):
                fs.rm(p)


def _clear_previous(output: str, options: dict) -> None:
    """Remove our own parts and markers from an earlier run (never other files)."""
    fs, root = filesystem(output, options)
    for pattern in (PART_GLOB, PART_GLOB + ".tmp*", f"{DONE_DIR}/part-*.json", SUMMARY_FILE):
        for p in fs.glob(join(root, pattern)):
            fs.rm(p)


@dataclass
class _Inputs:
    """The sorted (and limited) inputs of a run."""

    records: list  # [(record, split)]
    skipped: dict  # what the lister left out
    prints: list[str]  # one fingerprint per record


def _load_records(cfg: PreprocessConfig, options: dict) -> _Inputs:
    """The inputs, their splits and fingerprints."""
    from ..formats.sources import list_inputs
    from ..storage import storage_error_message
    try:
        fs_in = filesystem(cfg.input, options)[0] if "://" in cfg.input else None
        records, listing = list_inputs(cfg.input, cfg.format, cfg.labels, filesystem=fs_in)
    except Exception as exc:
        msg = storage_error_message(exc, cfg.input, options)
        if msg:
            raise ValueError(msg) from exc
        raise
    if not records:
        raise ValueError(f"no images found in --input {cfg.input} (format {cfg.format}); "
                         "check the path and --format")
    if cfg.limit is not None:
        records = records[: cfg.limit]
    items = [(r, split_for(r, cfg.val_fraction)) for r in records]
    if cfg.splits:
        items = [(r, s) for r, s in items if s in cfg.splits]
        if not items:
            raise ValueError(f"--splits {','.join(cfg.splits)}: none of the {len(records)} inputs of {cfg.input} is in "
                             "those splits (train, val, test); check the names and --val-fraction")
    return _Inputs(items, listing.report(), fingerprints(items, listing.info, options))


def fingerprints(items: list, info: dict[str, dict], options: dict) -> list[str]:
    """One :func:`~facebatch.batch.listing.input_fingerprint` per input: size and mtime (local)
    or ETag (S3) from the listing, else from one ``info`` call; inline pixels by their hash."""
    import hashlib
    out = []
    for rec, split in items:
        kp = getattr(rec, "keypoints", None)
        labels = {"kp": None if kp is None else hashlib.sha1(memoryview(__import__("numpy").ascontiguousarray(
                      kp, dtype="float32"))).hexdigest(),
                  "scheme": rec.keypoint_scheme, "attrs": rec.attributes, "identity": rec.identity,
                  "person": rec.person, "split": split}
        if rec.image_bytes is not None:
            out.append(input_fingerprint(rec.path, len(rec.image_bytes), hashlib.sha256(rec.image_bytes).hexdigest(),
                                         labels))
            continue
        st = object_info(rec.path, options, info.get(rec.path))  # {} if unreadable: the read gives its status
        out.append(input_fingerprint(rec.path, st.get("size"), version_of(st), labels))
    return out


def split_for(record, val_fraction: float) -> str:
    """The dataset's ``test`` split stays; everything else is ``val`` for a hashed share of persons, else ``train``.

    Held out by person, so near-duplicate frames of one person never straddle train and val.
    """
    from ..formats.base import assign_split
    if record.split == "test":
        return "test"
    return "val" if assign_split(record.person or record.path, val_fraction) == "val" else "train"


def detector_info(cfg: PreprocessConfig, random_weights: bool = False) -> dict:
    """Backend, weights file and sha256: resolved on the driver so a missing file fails before work."""
    from ..weights import find_weights, sha256_file
    if random_weights:
        return {"backend": cfg.detector.backend, "weights": None, "weights_sha256": None, "random_weights": True}
    if cfg.detector.backend == "mobilenet":
        from ..detection.mobilenet_backend import WEIGHTS_FILE
        path = find_weights(WEIGHTS_FILE, cfg.detector.weights_dir)
    else:
        from ..detection.resnet50 import WEIGHTS_FILE, deepface_weights_dir
        path = find_weights(WEIGHTS_FILE, cfg.detector.weights_dir, extra=[deepface_weights_dir()],
                            hint="retina-face's own weights; they are downloaded by the package where a network exists.")
    return {"backend": cfg.detector.backend, "weights": str(path), "weights_sha256": sha256_file(path)}


def run_preprocess(cfg: PreprocessConfig, address: str | None = None, random_weights: bool = False) -> dict:
    """Run the job; returns the summary (also written to ``OUTPUT/_summary.json``).

    Raises ``ValueError``/``FileNotFoundError``/``PermissionError`` before any work for bad
    options, a missing input, an unreachable or unauthorised S3 endpoint or an unwritable
    output; :class:`~facebatch.batch.errors.JobFailed` when the run stopped part-way (finished
    shards are kept: rerun with ``resume``); :class:`Interrupted` on Ctrl-C;
    :class:`~facebatch.batch.check.OutputCheckError` when the written rows do not match the listing.
    """
    t_start = time.perf_counter()
    cfg.validate()
    options = storage_options(cfg.s3_endpoint_url)
    inputs = _load_records(cfg, options)
    check_writable(cfg.output, options)
    det_info = detector_info(cfg, random_weights)
    try:
        return _run_checked(cfg, address, random_weights, options, inputs, det_info, t_start)
    except (JobFailed, KeyboardInterrupt, ValueError):
        raise
    except Exception as exc:  # the output store failing outside the workers (markers, config, summary)
        from ..storage import storage_error_message
        msg = storage_error_message(exc, cfg.output, options)
        if msg:
            raise JobFailed(f"{msg}; rerun the same command with --resume", retryable=rerun_can_fix(exc)) from exc
        raise


@dataclass
class _Job:
    """What the driver's steps share about one run."""

    cfg: PreprocessConfig
    options: dict
    random_weights: bool
    shards: list[list]  # [(record, split)] per shard
    hashes: list[str]  # inputs hash per shard
    metadata: dict[str, str]  # every part's file metadata (JSON strings)
    sink: Sink


def _run_checked(cfg, address, random_weights, options, inputs: _Inputs, det_info, t_start) -> dict:
    from ..provenance import provenance
    resolved = {"config": cfg.to_dict(), "detector": det_info, "provenance": provenance()}
    fs, root = filesystem(cfg.output, options)
    _check_same_options(cfg, fs, root)
    shards = plan_shards(inputs.records, cfg.shard_size)
    hashes = [shard_inputs_hash(inputs.prints[i * cfg.shard_size:(i + 1) * cfg.shard_size]) for i in range(len(shards))]
    plan, done = _resume_plan(cfg, options, hashes)
    resolved["output_affecting"] = cfg.output_affecting()
    with fs.open(join(root, CONFIG_FILE), "w") as f:
        json.dump(resolved, f, indent=2, default=str)
    job = _Job(cfg, options, random_weights, shards, hashes, _metadata(cfg, det_info, resolved),
               ParquetSink(cfg.output, options))
    tally = ShardTally(results=dict(done))
    progress = Progress(total=len(inputs.records), mode=cfg.progress, every=cfg.log_every,
                        initial=sum(len(shards[i]) for i in done))
    t_ray = time.perf_counter()
    try:
        info = _process(job, list(plan.todo), tally, progress, address) if plan.todo else {}
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(f"interrupted: {_finished_note(tally, len(shards))} (kept, each with its done-marker); "
                          f"rerun the same command with --resume to do the rest") from None
    finally:
        progress.close()
    wall = time.perf_counter() - t_start
    summary = summarise(job, inputs.records, tally.results, done, wall, time.perf_counter() - t_ray, info)
    summary["steady_images_per_s"] = tally.steady_rate()
    summary["skipped"] = inputs.skipped
    summary["resume"] = plan.counts() if cfg.resume else None
    with fs.open(join(root, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _check_same_options(cfg: PreprocessConfig, fs, root: str) -> None:
    """``--resume`` continues only the run of the same output-affecting options."""
    if cfg.resume and fs.exists(join(root, CONFIG_FILE)):
        with fs.open(join(root, CONFIG_FILE), "r") as f:
            prev = json.load(f)
        if prev.get("output_affecting") != cfg.output_affecting():
            raise ValueError(f"--resume: the options differ from the run that wrote {cfg.output} "
                             f"({CONFIG_FILE}); rerun without --resume or with the same options")


def _resume_plan(cfg: PreprocessConfig, options: dict, hashes: list[str]) -> tuple[ResumePlan, dict[int, dict]]:
    """What this run does with each shard, and the markers of the shards it skips. Removes what an
    earlier run left that this one replaces (everything, without ``--resume``)."""
    markers = read_markers(cfg.output, options) if cfg.resume else {}
    plan = plan_resume(hashes, markers)
    if cfg.resume:
        print(f"[facebatch] {plan.describe()}", file=sys.stderr, flush=True)
        _remove_shards(cfg.output, options, plan.todo + plan.stale, stale_from=len(hashes))
    else:
        _clear_previous(cfg.output, options)
    return plan, {i: markers[i] for i in plan.skip}


def _metadata(cfg: PreprocessConfig, det_info: dict, resolved: dict) -> dict[str, str]:
    from .. import __version__
    return {S.META_SCHEMA_VERSION.decode(): json.dumps(S.SCHEMA_VERSION),
            S.META_DETECTOR.decode(): json.dumps({**det_info, "config": cfg.detector.to_dict()}),
            S.META_CONFIG.decode(): json.dumps(cfg.to_dict(), default=str),
            S.META_VERSION.decode(): json.dumps(__version__),
            S.META_GIT.decode(): json.dumps(resolved["provenance"]["git_commit"])}


def _process(job: _Job, todo: list[int], tally: ShardTally, progress: Progress, address: str | None) -> dict:
    """Run the ``todo`` shards on Ray; after a lost worker, again for the shards without a result
    (up to :data:`MAX_PIPELINE_ATTEMPTS` passes). Returns the cluster's info."""
    from ..raycluster import init_ray
    precheck_local(job.cfg, address)
    info = init_ray(address)  # before importing ray: the local-Ray settings are read at import
    pool = plan_on_cluster(job.cfg, info)
    for attempt in range(1, MAX_PIPELINE_ATTEMPTS + 1):
        left = [i for i in todo if i not in tally.results]
        if not left:
            break
        if attempt > 1:  # a lost node took its CPUs with it: size the new pool from the nodes alive now
            pool = _replan_after_loss(job, tally)
        try:
            _run_pipeline(job, left, pool, tally, progress)
        except Exception as exc:
            failure = _failure(job, tally, exc, last=attempt == MAX_PIPELINE_ATTEMPTS)
            if failure is not None:
                raise failure from exc
            log.warning("a worker was lost (%s); redoing the unfinished shards (attempt %d of %d)",
                        short_error(exc), attempt + 1, MAX_PIPELINE_ATTEMPTS)
    return info


def _failure(job: _Job, tally: ShardTally, exc: BaseException, last: bool) -> JobFailed | None:
    """The error to stop with, or ``None`` for a lost worker that another pass can get past."""
    note = _finished_note(tally, len(job.shards))
    write_failed_ = write_failure(exc)
    if write_failed_:
        if not rerun_can_fix(exc):  # e.g. access denied: not an outage
            return JobFailed(f"{write_failed_}; {note}; fix the output's storage, then rerun the same command "
                             "with --resume", retryable=False)
        return JobFailed(f"{write_failed_}; {note}; storage stayed unavailable for --retry-seconds "
                         f"{job.cfg.retry_s:g}: rerun the same command with --resume")
    if not is_lost_worker(exc) or last:
        return JobFailed(f"the pipeline failed: {short_error(exc)}; {note}; rerun the same command with --resume",
                         retryable=rerun_can_fix(exc))
    return None


def _run_pipeline(job: _Job, todo: list[int], pool: WorkerPlan, tally: ShardTally, progress: Progress) -> None:
    """Thin Ray Data glue: shards -> read+decode tasks -> detect+crop+write actors; fills ``tally``."""
    import ray
    cfg = job.cfg
    n = min(pool.actors, len(todo))
    log.info("detection actors: %d x %.2f CPU, %d threads", n, pool.cpus, pool.threads)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"shard_id": i, "records": pickle.dumps(job.shards[i], protocol=5), "inputs_sha256": job.hashes[i]}
             for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_read_decode_shard, fn_kwargs={"max_pixels": cfg.max_pixels, "options": job.options,
                                               "retry_s": cfg.retry_s, "degrade": cfg.degrade}, num_cpus=0.25)
    # max_restarts=0: Ray Data passes the actor's constructor arguments by reference, and an actor
    # with such arguments and restarts on logs an ERROR line on every run (ray issue 53727). A lost
    # actor instead fails this pass, and the driver reruns the shards without a result.
    ds = ds.map_batches(
        ShardProcessor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=pool.cpus,
        num_gpus=cfg.gpus_per_worker or None, max_restarts=0,
        fn_constructor_kwargs={"cfg": {**cfg.to_dict(), "random_weights": job.random_weights},
                               "threads": pool.threads, "metadata": job.metadata, "options": job.options,
                               "sink": job.sink})
    progress.waiting_for = f"{len(todo)} shards: reading, detecting and writing"
    for row in ds.iter_rows():
        st = json.loads(row["stats"])
        tally.add(st)
        progress.update(st["n_inputs"], st["input_status_counts"], retries=st.get("retries", 0))
        left = len(todo) - sum(1 for i in todo if i in tally.results)
        progress.waiting_for = f"{left} shards: reading, detecting and writing"


def _replan_after_loss(job: _Job, tally: ShardTally) -> WorkerPlan:
    """The pool for a rerun after a lost worker, from the nodes alive now.

    The first pool was sized from the cluster at the start; after a node is lost, a pool of that
    size waits forever for actors no node can hold (and its placed actors can leave no CPU for the
    read tasks), so the rerun stalled. Plan it again from the nodes that are left.
    """
    cpus, gpus, largest = alive_resources()
    try:
        pool = plan_workers(job.cfg, cpus, gpus, node_cpus=largest)
    except ValueError as exc:
        raise JobFailed(f"a worker was lost and the nodes left cannot hold the pool: {exc}; "
                        f"{_finished_note(tally, len(job.shards))}; rerun the same command with --resume") from exc
    log.warning("nodes alive now: %g CPUs, %g GPUs; detection actors for the rerun: %d x %.2f CPU",
                cpus, gpus, pool.actors, pool.cpus)
    return pool


def _finished_note(tally: ShardTally, n_shards: int) -> str:
    return (f"{len(tally.results)} of {n_shards} shards known finished ({tally.inputs} inputs; "
            f"shards written with a done-marker are kept)")


def summarise(job: _Job, records, results, done, wall, processing_s, info) -> dict:
    """Counts by status, throughput, stage times; checks the output against the listing.

    Rows in equal rows out is checked twice: the markers' counts against the part files, and the
    *set* of ``(path, face_index)`` in every part file against the listed inputs (no input missing,
    none repeated, no stale rows): :func:`facebatch.batch.check.check_rows`.
    """
    cfg, n_shards = job.cfg, len(job.shards)
    checked = check_rows(job.sink, [r.path for r, _ in records], results, n_shards, cfg.crop.all_faces,
                         rerun="rerun with --resume")
    statuses = count(results.values(), "status_counts")
    inputs_by_status = count(results.values(), "input_status_counts")
    n_in, n_failed = checked["inputs"], failed(inputs_by_status)
    new = [results[i] for i in results if i not in done]
    n_new = sum(s["n_inputs"] for s in new)
    return {
        "input": cfg.input, "output": cfg.output, "format": cfg.format,
        "inputs": n_in, "rows": checked["rows"], "rows_in_files": checked["rows_in_files"], "rows_check": "ok",
        "status_counts": dict(sorted(inputs_by_status.items())), "row_status_counts": dict(sorted(statuses.items())),
        "failed": n_failed, "failure_rate": n_failed / max(1, n_in),
        **retryable_fields(results.values()),
        "shards": n_shards, "shards_skipped_resume": len(done),
        "retries": sum(s.get("retries", 0) for s in new),
        "wall_s": round(wall, 2), "processing_s": round(processing_s, 2),
        "images_per_s": round(n_new / processing_s, 2) if n_new else None,
        "images_per_s_wall": round(n_new / wall, 2) if n_new else None,
        "stage_s": {k: round(sum(s[k] for s in new), 2) for k in ("decode_s", "detect_s", "crop_s", "write_s")},
        "ray": info,
    }
