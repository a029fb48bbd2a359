"""The preprocess job on Ray Data: sorted inputs -> shards -> read+decode tasks -> detect+crop+write actors.

Each shard (a fixed run of the sorted inputs) becomes one Parquet part ``part-NNNNN.parquet``
and, written after it, a done-marker ``_done/part-NNNNN.json`` with the shard's counts and a
hash of its inputs (path, size, mtime or ETag, labels). A rerun overwrites the same names;
``resume`` skips only shards whose marker exists with the same inputs hash and no row a retry
could change (``read_error``, ``detect_error``). Transient storage errors are retried with
backoff. Rows in equal rows out is checked per shard, and at the end the *set* of paths in
the written files is compared with the listing (see :mod:`facebatch.preprocess.shards`).
"""
from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from collections import Counter
from typing import Any

from .. import schema as S
from ..storage import check_writable, filesystem, join, object_info, storage_options
from .config import PreprocessConfig, plan_workers
from .progress import Progress
from .shards import (
    MARKER_VERSION, RetriesExhausted, RetryPolicy, call_with_retries, check_output_paths, input_fingerprint,
    plan_resume, plan_shards, shard_inputs_hash,
)

log = logging.getLogger(__name__)

DONE_DIR = "_done"
SUMMARY_FILE = "_summary.json"
CONFIG_FILE = "_config.json"


def part_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}.parquet"


class JobFailed(RuntimeError):
    """The job stopped part-way for a reason a rerun with ``--resume`` can get past (storage outage,
    lost workers); the message says what failed and what was finished."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: ``str()`` says what was finished and how to resume."""


def _retry_note(what: str, exc: BaseException, attempt: int, delay: float) -> None:
    # printed by the worker; Ray forwards it to the driver's output
    print(f"[facebatch] retrying {what} in {delay:.1f} s (attempt {attempt + 1}) after "
          f"{type(exc).__name__}: {str(exc)[:160]}", flush=True)


# ---- stage 1: read and decode (Ray tasks) ---------------------------------------------------------

_FS_CACHE: dict[str, Any] = {}


def _open_bytes(path: str, options: dict) -> bytes:
    fs, p = filesystem(path, options)
    with fs.open(p, "rb") as f:
        return f.read()


def read_and_decode(record, split: str, max_pixels: int, options: dict,
                    retry: RetryPolicy | None = None, counter: dict | None = None):
    """``(base columns, RGB image or None)`` for one input; never raises.

    Transient read errors are retried with ``retry``'s backoff (``counter["retries"]`` counts the
    retries); what still fails becomes a ``read_error`` row, which ``--resume`` retries.
    """
    from ..imaging import decode_image, sha256_bytes
    base = {S.PATH: record.path, S.SPLIT: split}

    def note(what, exc, attempt, delay):
        if counter is not None:
            counter["retries"] = counter.get("retries", 0) + 1
        _retry_note(what, exc, attempt, delay)
    try:
        if record.image_bytes is not None:
            data = record.image_bytes
        else:
            data = call_with_retries(lambda: _open_bytes(record.path, options), retry or RetryPolicy(),
                                     f"read {record.path}", on_retry=note)
    except Exception as exc:  # missing object, permissions, network that stayed down
        shown = exc.__cause__ if isinstance(exc, RetriesExhausted) and exc.__cause__ else exc
        text = f"{type(shown).__name__}: {exc}" if shown is not exc else f"{type(exc).__name__}: {exc}"
        base.update({S.STATUS: S.READ_ERROR, S.ERROR: text[:500]})
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
    counter = {"retries": 0}
    policy = RetryPolicy(budget_s=retry_s)
    out = [degrade_input(rec, *read_and_decode(rec, split, max_pixels, options, policy, counter), degrade)
           for rec, split in items]
    return {"shard_id": row["shard_id"], "payload": pickle.dumps(out, protocol=5),
            "decode_s": time.perf_counter() - t0, "read_retries": counter["retries"],
            "inputs_sha256": row["inputs_sha256"]}


# ---- stage 2: detect, crop, write (Ray actors) ----------------------------------------------------

class ShardProcessor:
    """Loads the detector once; per shard: detect in batches, crop, write the part, then its marker."""

    def __init__(self, cfg: dict, threads: int, metadata: dict, options: dict) -> None:
        import torch
        from ..detection import create_detector
        from .rows import CropConfig
        torch.set_num_threads(threads)
        det = dict(cfg["detector"])
        backend = det.pop("backend")
        self.detector = create_detector(backend, random_weights=cfg.get("random_weights", False), **det)
        self.crop = CropConfig(**cfg["crop"])
        self.output = cfg["output"]
        self.metadata = {k.encode(): v for k, v in metadata.items()}
        self.options = options
        self.retry = RetryPolicy(budget_s=cfg.get("retry_s", 120.0))

    def __call__(self, batch: dict) -> dict:
        stats = [self.process(int(sid), payload, float(dec), int(rr), str(h))
                 for sid, payload, dec, rr, h in zip(batch["shard_id"], batch["payload"], batch["decode_s"],
                                                     batch["read_retries"], batch["inputs_sha256"])]
        return {"stats": [json.dumps(s) for s in stats]}

    def _detect(self, images: list) -> tuple[list, list]:
        """Faces per image; an image whose detection raises gets an error instead of sinking the batch."""
        try:
            return self.detector.detect(images), [None] * len(images)
        except Exception:
            faces, errors = [], []
            for img in images:
                try:
                    faces.append(self.detector.detect([img])[0])
                    errors.append(None)
                except Exception as exc:
                    faces.append([])
                    errors.append(f"{type(exc).__name__}: {exc}"[:500])
            return faces, errors

    def process(self, shard_id: int, payload: bytes, decode_s: float, read_retries: int = 0,
                inputs_sha256: str = "") -> dict:
        from .rows import rows_for_image
        items = pickle.loads(payload)
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
        t2 = time.perf_counter()
        expected = sum(1 if not self.crop.all_faces else max(1, len(faces.get(i, [])) if items[i][1][S.STATUS] == S.OK else 1)
                       for i in range(len(items)))
        if len(rows) != expected or len({r[S.PATH] for r in rows}) != len(items):
            raise RuntimeError(f"shard {shard_id}: {len(items)} inputs gave {len(rows)} rows, expected {expected}")
        counter = {"retries": 0}

        def note(what, exc, attempt, delay):
            counter["retries"] += 1
            _retry_note(what, exc, attempt, delay)
        try:
            call_with_retries(lambda: write_part(self.output, shard_id, rows, self.metadata, self.options),
                              self.retry, f"write {part_name(shard_id)}", on_retry=note)
            t3 = time.perf_counter()
            stats = {"shard_id": shard_id, "n_inputs": len(items), "n_rows": len(rows),
                     "status_counts": dict(Counter(r[S.STATUS] for r in rows)),
                     "input_status_counts": dict(Counter(r[S.STATUS] for r in rows if (r[S.FACE_INDEX] or 0) <= 0)),
                     "decode_s": decode_s, "detect_s": t1 - t0, "crop_s": t2 - t1, "write_s": t3 - t2,
                     "retries": read_retries + counter["retries"], "inputs_sha256": inputs_sha256,
                     "marker_version": MARKER_VERSION}
            call_with_retries(lambda: write_marker(self.output, shard_id, stats, self.options),
                              self.retry, f"write marker {shard_id}", on_retry=note)
        except Exception as exc:
            # A plain exception type crosses back to the driver as the job's failure reason.
            raise RuntimeError(f"FACEBATCH_WRITE_FAILED shard {shard_id} to {self.output}: "
                               f"{type(exc).__name__}: {exc}"[:800]) from None
        return stats


def write_part(output: str, shard_id: int, rows: list[dict], metadata: dict, options: dict) -> None:
    """Write one part; locally through a temporary name so a killed write leaves no part behind."""
    import pyarrow.parquet as pq
    fs, root = filesystem(output, options)
    table = S.to_table(rows, metadata)
    final = join(root, part_name(shard_id))
    tmp = final + ".tmp" if not hasattr(fs, "s3") else final  # S3 objects appear whole on close
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    if tmp != final:
        fs.mv(tmp, final)


def write_marker(output: str, shard_id: int, stats: dict, options: dict) -> None:
    fs, root = filesystem(output, options)
    fs.makedirs(join(root, DONE_DIR), exist_ok=True)
    with fs.open(join(root, DONE_DIR, part_name(shard_id).replace(".parquet", ".json")), "w") as f:
        json.dump(stats, f)


# ---- driver ---------------------------------------------------------------------------------------

def _existing_markers(output: str, options: dict) -> dict[int, dict]:
    fs, root = filesystem(output, options)
    done = {}
    for p in fs.glob(join(root, DONE_DIR, "part-*.json")):
        with fs.open(p, "r") as f:
            st = json.load(f)
        done[int(st["shard_id"])] = st
    return done


def _remove_shards(output: str, options: dict, shard_ids: list[int], stale_from: int) -> None:
    """Delete the markers (and stale parts) of shards about to be redone, and every part or marker
    numbered at or beyond ``stale_from`` (left by a larger earlier input)."""
    fs, root = filesystem(output, options)
    ids = set(shard_ids)
    for pattern in (f"{DONE_DIR}/part-*.json", "part-*.parquet", "part-*.parquet.tmp"):
        for p in fs.glob(join(root, pattern)):
            sid = int(p.rsplit("part-", 1)[1].split(".")[0])
            if sid >= stale_from or (sid in ids and pattern.startswith(DONE_DIR)):
                fs.rm(p)


def _clear_previous(output: str, options: dict) -> None:
    """Remove our own parts and markers from an earlier run (never other files)."""
    fs, root = filesystem(output, options)
    for pattern in ("part-*.parquet", "part-*.parquet.tmp", f"{DONE_DIR}/part-*.json", SUMMARY_FILE):
        for p in fs.glob(join(root, pattern)):
            fs.rm(p)


def _load_records(cfg: PreprocessConfig, options: dict) -> tuple[list, dict, list[str]]:
    """``([(record, split)], skipped report, input fingerprints)`` for the sorted (and limited) inputs."""
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
    return items, listing.report(), fingerprints(items, listing.info, options)


def fingerprints(items: list, info: dict[str, dict], options: dict) -> list[str]:
    """One :func:`~facebatch.preprocess.shards.input_fingerprint` per input: size and mtime (local)
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
        version = st.get("ETag") or st.get("etag") or st.get("mtime") or st.get("LastModified")
        out.append(input_fingerprint(rec.path, st.get("size"), version, labels))
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
    output; :class:`JobFailed` when the run stopped part-way (finished shards are kept: rerun
    with ``resume``); :class:`Interrupted` on Ctrl-C; :class:`~facebatch.preprocess.shards.OutputCheckError`
    when the written rows do not match the listing.
    """
    t_start = time.perf_counter()
    cfg.validate()
    options = storage_options(cfg.s3_endpoint_url)
    records, skipped, prints = _load_records(cfg, options)
    check_writable(cfg.output, options)
    det_info = detector_info(cfg, random_weights)
    try:
        return _run_checked(cfg, address, random_weights, options, records, skipped, prints, det_info, t_start)
    except (JobFailed, KeyboardInterrupt, ValueError):
        raise
    except Exception as exc:  # the output store failing outside the workers (markers, config, summary)
        from ..storage import storage_error_message
        msg = storage_error_message(exc, cfg.output, options)
        if msg:
            raise JobFailed(f"{msg}; rerun the same command with --resume") from exc
        raise


def _run_checked(cfg, address, random_weights, options, records, skipped, prints, det_info, t_start) -> dict:
    from .. import __version__
    from ..provenance import provenance
    resolved = {"config": cfg.to_dict(), "detector": det_info, "provenance": provenance()}
    fs, root = filesystem(cfg.output, options)
    if cfg.resume and fs.exists(join(root, CONFIG_FILE)):
        with fs.open(join(root, CONFIG_FILE), "r") as f:
            prev = json.load(f)
        if prev.get("output_affecting") != cfg.output_affecting():
            raise ValueError(f"--resume: the options differ from the run that wrote {cfg.output} "
                             f"({CONFIG_FILE}); rerun without --resume or with the same options")

    shards = plan_shards(records, cfg.shard_size)
    hashes = [shard_inputs_hash(prints[i * cfg.shard_size:(i + 1) * cfg.shard_size]) for i in range(len(shards))]
    markers = _existing_markers(cfg.output, options) if cfg.resume else {}
    plan = plan_resume(hashes, markers)
    if cfg.resume:
        print(f"[facebatch] {plan.describe()}", file=sys.stderr, flush=True)
        _remove_shards(cfg.output, options, plan.todo + plan.stale, stale_from=len(shards))
    else:
        _clear_previous(cfg.output, options)
    done = {i: markers[i] for i in plan.skip}
    todo = list(plan.todo)
    resolved["output_affecting"] = cfg.output_affecting()
    with fs.open(join(root, CONFIG_FILE), "w") as f:
        json.dump(resolved, f, indent=2, default=str)

    metadata = {S.META_SCHEMA_VERSION.decode(): json.dumps(S.SCHEMA_VERSION),
                S.META_DETECTOR.decode(): json.dumps({**det_info, "config": cfg.detector.to_dict()}),
                S.META_CONFIG.decode(): json.dumps(cfg.to_dict(), default=str),
                S.META_VERSION.decode(): json.dumps(__version__),
                S.META_GIT.decode(): json.dumps(resolved["provenance"]["git_commit"])}
    progress = Progress(total=len(records), mode=cfg.progress, every=cfg.log_every,
                        initial=sum(len(shards[i]) for i in done))
    results = dict(done)
    finished: list[tuple[float, int]] = []  # (time, inputs) as shards complete
    t_ray = time.perf_counter()
    info = {}
    try:
        if todo:
            from ..raycluster import init_ray
            _precheck_local(cfg, address)
            info = init_ray(address)  # before importing ray: the local-Ray settings are read at import
            n, cpw, threads = plan_workers(cfg, info["resources"].get("CPU", 1), info["resources"].get("GPU", 0),
                                           node_cpus=_largest_node_cpus())
            for attempt in range(1, MAX_PIPELINE_ATTEMPTS + 1):
                left = [i for i in todo if i not in results]
                if not left:
                    break
                if attempt > 1:  # a lost node took its CPUs with it: size the new pool from the nodes alive now
                    n, cpw, threads = _replan_after_loss(cfg, results, len(shards))
                try:
                    _run_pipeline(cfg, shards, hashes, left, min(n, len(left)), cpw, threads, metadata, options,
                                  random_weights, results, finished, progress)
                except Exception as exc:
                    write_failed = _write_failure(exc)
                    if write_failed:
                        raise JobFailed(f"{write_failed}; {_finished_note(results, len(shards))}; storage stayed "
                                        f"unavailable for --retry-seconds {cfg.retry_s:g}: rerun the same "
                                        f"command with --resume") from exc
                    if not _is_lost_worker(exc) or attempt == MAX_PIPELINE_ATTEMPTS:
                        raise JobFailed(f"the pipeline failed: {_short_error(exc)}; "
                                        f"{_finished_note(results, len(shards))}; rerun the same command "
                                        "with --resume") from exc
                    log.warning("a worker was lost (%s); redoing the unfinished shards (attempt %d of %d)",
                                _short_error(exc), attempt + 1, MAX_PIPELINE_ATTEMPTS)
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(f"interrupted: {_finished_note(results, len(shards))} (kept, each with its done-marker); "
                          f"rerun the same command with --resume to do the rest") from None
    finally:
        progress.close()
    wall = time.perf_counter() - t_start
    summary = summarise(cfg, records, shards, results, done, wall, time.perf_counter() - t_ray, info, options)
    summary["steady_images_per_s"] = steady_rate(finished)
    summary["skipped"] = skipped
    summary["resume"] = {"skipped": len(plan.skip), "changed": len(plan.changed), "retried": len(plan.retry),
                         "stale_removed": len(plan.stale)} if cfg.resume else None
    with fs.open(join(root, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


MAX_PIPELINE_ATTEMPTS = 3


def _run_pipeline(cfg, shards, hashes, todo, n, cpw, threads, metadata, options, random_weights,
                  results, finished, progress) -> None:
    """Thin Ray Data glue: shards -> read+decode tasks -> detect+crop+write actors; fills ``results``."""
    import ray
    log.info("detection actors: %d x %.2f CPU, %d threads", n, cpw, threads)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"shard_id": i, "records": pickle.dumps(shards[i], protocol=5), "inputs_sha256": hashes[i]}
             for i in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_read_decode_shard, fn_kwargs={"max_pixels": cfg.max_pixels, "options": options,
                                               "retry_s": cfg.retry_s, "degrade": cfg.degrade}, num_cpus=0.25)
    # max_restarts=0: Ray Data passes the actor's constructor arguments by reference, and an actor
    # with such arguments and restarts on logs an ERROR line on every run (ray issue 53727). A lost
    # actor instead fails this pass, and the driver reruns the shards without a result.
    ds = ds.map_batches(
        ShardProcessor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpw,
        num_gpus=cfg.gpus_per_worker or None, max_restarts=0,
        fn_constructor_kwargs={"cfg": {**cfg.to_dict(), "random_weights": random_weights},
                               "threads": threads, "metadata": metadata, "options": options})
    progress.waiting_for = f"{len(todo)} shards: reading, detecting and writing"
    for row in ds.iter_rows():
        st = json.loads(row["stats"])
        results[st["shard_id"]] = st
        finished.append((time.perf_counter(), st["n_inputs"]))
        progress.update(st["n_inputs"], st["input_status_counts"], retries=st.get("retries", 0))
        left = len(todo) - sum(1 for i in todo if i in results)
        progress.waiting_for = f"{left} shards: reading, detecting and writing"


def _precheck_local(cfg: PreprocessConfig, address: str | None) -> None:
    """Before starting an embedded local Ray, check the worker options against this machine, so a
    request it cannot meet fails in seconds instead of after Ray's start-up (or never)."""
    import os
    from ..raycluster import resolve_address
    if resolve_address(address) is not None or ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        return
    gpus = 0
    if cfg.gpus_per_worker > 0:
        import torch
        gpus = torch.cuda.device_count()
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    plan_workers(cfg, cpus, gpus)


def _raylet_reachable(node: dict) -> bool:
    import socket
    try:
        socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=3).close()
        return True
    except (OSError, KeyError, ValueError):
        return False


def _alive_resources(wait_s: float = 60.0) -> tuple[float, float, float | None]:
    """``(CPUs, GPUs, largest node's CPUs)`` of the nodes alive now. The lost worker's error comes
    before the cluster has marked its node dead (health checks take seconds): wait up to ``wait_s``
    for nodes whose raylet no longer answers to be marked dead, and leave them out in any case."""
    import ray
    deadline = time.time() + wait_s
    while True:
        alive = [nd for nd in ray.nodes() if nd.get("Alive")]
        gone = [nd for nd in alive if not _raylet_reachable(nd)]
        if not gone or time.time() > deadline:
            break
        time.sleep(1.0)
    res = [nd["Resources"] for nd in alive if nd not in gone]
    return (sum(r.get("CPU", 0) for r in res), sum(r.get("GPU", 0) for r in res),
            max((r.get("CPU", 0) for r in res), default=None))


def _replan_after_loss(cfg: PreprocessConfig, results: dict, n_shards: int) -> tuple[int, float, int]:
    """The pool for a rerun after a lost worker, from the nodes alive now.

    The first pool was sized from the cluster at the start; after a node is lost, a pool of that
    size waits forever for actors no node can hold (and its placed actors can leave no CPU for the
    read tasks), so the rerun stalled. Plan it again from the nodes that are left.
    """
    cpus, gpus, largest = _alive_resources()
    try:
        n, cpw, threads = plan_workers(cfg, cpus, gpus, node_cpus=largest)
    except ValueError as exc:
        raise JobFailed(f"a worker was lost and the nodes left cannot hold the pool: {exc}; "
                        f"{_finished_note(results, n_shards)}; rerun the same command with --resume") from exc
    log.warning("nodes alive now: %g CPUs, %g GPUs; detection actors for the rerun: %d x %.2f CPU", cpus, gpus, n, cpw)
    return n, cpw, threads


def _largest_node_cpus() -> float | None:
    import ray
    try:
        return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=None)
    except Exception:
        return None


def _finished_note(results: dict, n_shards: int) -> str:
    n = len(results)
    return (f"{n} of {n_shards} shards known finished ({sum(r['n_inputs'] for r in results.values())} inputs; "
            f"shards written with a done-marker are kept)")


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = [t for t in text if t.strip()][-1] if text else ""
    return f"{type(exc).__name__}: {last}"[:300]


def _write_failure(exc: BaseException) -> str | None:
    text = str(exc)
    key = "FACEBATCH_WRITE_FAILED "
    if key in text:  # the last one: Ray's abbreviated traceback also quotes the raising source line
        line = text[text.rindex(key) + len(key):].splitlines()[0]
        return "could not write " + line[:400]
    return None


def _is_lost_worker(exc: BaseException) -> bool:
    names = {c.__name__ for e in (exc, exc.__cause__) if e is not None for c in type(e).__mro__}
    text = str(exc)
    return bool(names & {"RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                         "WorkerCrashedError", "ObjectLostError", "OwnerDiedError"}) or \
        any(t in text for t in ("ActorDiedError", "RayActorError", "WorkerCrashedError", "ObjectLostError"))


def steady_rate(finished: list[tuple[float, int]]) -> float | None:
    """Images/s between the first and the last finished shard: throughput once Ray and the actors are up.

    Start-up (Ray, actor construction, the first shard) is a fixed cost that hides how a run scales
    with workers; this rate leaves it out. ``None`` with fewer than 3 shards.
    """
    if len(finished) < 3 or finished[-1][0] <= finished[0][0]:
        return None
    return round(sum(n for _, n in finished[1:]) / (finished[-1][0] - finished[0][0]), 2)


def summarise(cfg, records, shards, results, done, wall, processing_s, info, options) -> dict:
    """Counts by status, throughput, stage times; checks the output against the listing.

    Rows in equal rows out is checked twice: the markers' counts against the part files, and the
    *set* of ``(path, face_index)`` in every part file against the listed inputs (no input missing,
    none repeated, no stale rows).
    """
    import pyarrow.parquet as pq
    missing = [i for i in range(len(shards)) if i not in results]
    if missing:
        raise JobFailed(f"shards {missing[:10]} produced no result; rerun with --resume")
    n_in = sum(results[i]["n_inputs"] for i in range(len(shards)))
    n_rows = sum(results[i]["n_rows"] for i in range(len(shards)))
    fs, root = filesystem(cfg.output, options)
    found: list[tuple[str, int]] = []
    parts = sorted(fs.glob(join(root, "part-*.parquet")))
    for p in parts:
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[S.PATH, S.FACE_INDEX])
        found.extend(zip(t.column(S.PATH).to_pylist(), (fi or 0 for fi in t.column(S.FACE_INDEX).to_pylist())))
    in_files = len(found)
    check_output_paths([r.path for r, _ in records], found, cfg.crop.all_faces)
    statuses, inputs_by_status = Counter(), Counter()
    for st in results.values():
        statuses.update(st["status_counts"])
        inputs_by_status.update(st["input_status_counts"])
    if n_in != len(records) or in_files != n_rows or (not cfg.crop.all_faces and n_rows != n_in) \
            or len(parts) != len(shards):
        raise RuntimeError(f"row check failed: {len(records)} inputs, {n_in} processed, {n_rows} rows "
                           f"reported, {in_files} rows in {len(parts)} files for {len(shards)} shards")
    failed = sum(v for k, v in inputs_by_status.items() if k in S.FAILED_STATUSES)
    new = [results[i] for i in results if i not in done]
    n_new = sum(s["n_inputs"] for s in new)
    summary = {
        "input": cfg.input, "output": cfg.output, "format": cfg.format,
        "inputs": n_in, "rows": n_rows, "rows_in_files": in_files, "rows_check": "ok",
        "status_counts": dict(sorted(inputs_by_status.items())), "row_status_counts": dict(sorted(statuses.items())),
        "failed": failed, "failure_rate": failed / max(1, n_in),
        "shards": len(shards), "shards_skipped_resume": len(done),
        "retries": sum(s.get("retries", 0) for s in new),
        "wall_s": round(wall, 2), "processing_s": round(processing_s, 2),
        "images_per_s": round(n_new / processing_s, 2) if n_new else None,
        "images_per_s_wall": round(n_new / wall, 2) if n_new else None,
        "stage_s": {k: round(sum(s[k] for s in new), 2) for k in ("decode_s", "detect_s", "crop_s", "write_s")},
        "ray": info,
    }
    return summary
