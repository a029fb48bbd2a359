"""The preprocess job on Ray Data: sorted inputs -> shards -> read+decode tasks -> detect+crop+write actors.

Each shard (a fixed run of the sorted inputs) becomes one Parquet part ``part-NNNNN.parquet``
and, written after it, a done-marker ``_done/part-NNNNN.json`` with the shard's counts.
A rerun overwrites the same names; ``resume`` skips shards whose marker exists. Rows in
equal rows out is checked per shard and again over the written files.
"""
from __future__ import annotations

import json
import logging
import pickle
import time
from collections import Counter
from typing import Any

from .. import schema as S
from ..storage import check_writable, filesystem, join, storage_options
from .config import PreprocessConfig, plan_workers
from .progress import Progress

log = logging.getLogger(__name__)

DONE_DIR = "_done"
SUMMARY_FILE = "_summary.json"
CONFIG_FILE = "_config.json"


def part_name(shard_id: int) -> str:
    return f"part-{shard_id:05d}.parquet"


# ---- stage 1: read and decode (Ray tasks) ---------------------------------------------------------

_FS_CACHE: dict[str, Any] = {}


def _open_bytes(path: str, options: dict) -> bytes:
    fs, p = filesystem(path, options)
    with fs.open(p, "rb") as f:
        return f.read()


def read_and_decode(record, split: str, max_pixels: int, options: dict):
    """``(base columns, RGB image or None)`` for one input; never raises."""
    from ..imaging import decode_image, sha256_bytes
    base = {S.PATH: record.path, S.SPLIT: split}
    try:
        data = record.image_bytes if record.image_bytes is not None else _open_bytes(record.path, options)
    except Exception as exc:  # missing object, permissions, network
        base.update({S.STATUS: S.READ_ERROR, S.ERROR: f"{type(exc).__name__}: {exc}"[:500]})
        return base, None
    res = decode_image(data, max_pixels=max_pixels)
    base.update({S.SHA256: sha256_bytes(data), S.WIDTH: res.width, S.HEIGHT: res.height,
                 S.STATUS: res.status, S.ERROR: res.error})
    return base, res.image


def _read_decode_shard(row: dict, max_pixels: int, options: dict) -> dict:
    t0 = time.perf_counter()
    items = pickle.loads(row["records"])
    out = [(rec, *read_and_decode(rec, split, max_pixels, options)) for rec, split in items]
    return {"shard_id": row["shard_id"], "payload": pickle.dumps(out, protocol=5),
            "decode_s": time.perf_counter() - t0}


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

    def __call__(self, batch: dict) -> dict:
        stats = [self.process(int(sid), payload, float(dec))
                 for sid, payload, dec in zip(batch["shard_id"], batch["payload"], batch["decode_s"])]
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

    def process(self, shard_id: int, payload: bytes, decode_s: float) -> dict:
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
        write_part(self.output, shard_id, rows, self.metadata, self.options)
        t3 = time.perf_counter()
        stats = {"shard_id": shard_id, "n_inputs": len(items), "n_rows": len(rows),
                 "status_counts": dict(Counter(r[S.STATUS] for r in rows)),
                 "input_status_counts": dict(Counter(r[S.STATUS] for r in rows if (r[S.FACE_INDEX] or 0) <= 0)),
                 "decode_s": decode_s, "detect_s": t1 - t0, "crop_s": t2 - t1, "write_s": t3 - t2}
        write_marker(self.output, shard_id, stats, self.options)
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


def _clear_previous(output: str, options: dict) -> None:
    """Remove our own parts and markers from an earlier run (never other files)."""
    fs, root = filesystem(output, options)
    for pattern in ("part-*.parquet", "part-*.parquet.tmp", f"{DONE_DIR}/part-*.json", SUMMARY_FILE):
        for p in fs.glob(join(root, pattern)):
            fs.rm(p)


def _load_records(cfg: PreprocessConfig, options: dict) -> list:
    from ..formats.sources import list_records
    fs_in = filesystem(cfg.input, options)[0] if "://" in cfg.input else None
    records = list_records(cfg.input, cfg.format, cfg.labels, filesystem=fs_in)
    if not records:
        raise ValueError(f"no images found in --input {cfg.input} (format {cfg.format}); "
                         "check the path and --format")
    if cfg.limit:
        records = records[: cfg.limit]
    return [(r, split_for(r, cfg.val_fraction)) for r in records]


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
    options, a missing input or an unwritable output.
    """
    from .. import __version__
    from ..provenance import provenance
    t_start = time.perf_counter()
    cfg.validate()
    options = storage_options(cfg.s3_endpoint_url)
    records = _load_records(cfg, options)
    check_writable(cfg.output, options)
    det_info = detector_info(cfg, random_weights)
    resolved = {"config": cfg.to_dict(), "detector": det_info, "provenance": provenance()}
    fs, root = filesystem(cfg.output, options)
    if cfg.resume and fs.exists(join(root, CONFIG_FILE)):
        with fs.open(join(root, CONFIG_FILE), "r") as f:
            prev = json.load(f)
        if prev.get("output_affecting") != cfg.output_affecting():
            raise ValueError(f"--resume: the options differ from the run that wrote {cfg.output} "
                             f"({CONFIG_FILE}); rerun without --resume or with the same options")
    done = _existing_markers(cfg.output, options) if cfg.resume else {}
    if not cfg.resume:
        _clear_previous(cfg.output, options)
    resolved["output_affecting"] = cfg.output_affecting()
    with fs.open(join(root, CONFIG_FILE), "w") as f:
        json.dump(resolved, f, indent=2, default=str)

    shards = [records[i:i + cfg.shard_size] for i in range(0, len(records), cfg.shard_size)]
    todo = [i for i in range(len(shards)) if i not in done]
    metadata = {S.META_SCHEMA_VERSION.decode(): json.dumps(S.SCHEMA_VERSION),
                S.META_DETECTOR.decode(): json.dumps({**det_info, "config": cfg.detector.to_dict()}),
                S.META_CONFIG.decode(): json.dumps(cfg.to_dict(), default=str),
                S.META_VERSION.decode(): json.dumps(__version__),
                S.META_GIT.decode(): json.dumps(resolved["provenance"]["git_commit"])}
    progress = Progress(total=len(records), mode=cfg.progress, every=cfg.log_every,
                        initial=sum(done[i]["n_inputs"] for i in done))
    results = dict(done)
    finished: list[tuple[float, int]] = []  # (time, inputs) as shards complete
    t_ray = time.perf_counter()
    info = {}
    if todo:
        from ..raycluster import init_ray
        info = init_ray(address)  # before importing ray: the local-Ray settings are read at import
        import ray
        n, cpw, threads = plan_workers(cfg, info["resources"].get("CPU", 1), info["resources"].get("GPU", 0))
        n = min(n, len(todo))
        log.info("detection actors: %d x %.2f CPU, %d threads", n, cpw, threads)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"shard_id": i, "records": pickle.dumps(shards[i], protocol=5)} for i in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map(_read_decode_shard, fn_kwargs={"max_pixels": cfg.max_pixels, "options": options},
                    num_cpus=0.25)
        ds = ds.map_batches(
            ShardProcessor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=cpw,
            num_gpus=cfg.gpus_per_worker or None,
            fn_constructor_kwargs={"cfg": {**cfg.to_dict(), "random_weights": random_weights},
                                   "threads": threads, "metadata": metadata, "options": options})
        for row in ds.iter_rows():
            st = json.loads(row["stats"])
            results[st["shard_id"]] = st
            finished.append((time.perf_counter(), st["n_inputs"]))
            progress.update(st["n_inputs"], st["input_status_counts"])
    progress.close()
    wall = time.perf_counter() - t_start
    summary = summarise(cfg, records, shards, results, done, wall, time.perf_counter() - t_ray, info, options)
    summary["steady_images_per_s"] = steady_rate(finished)
    with fs.open(join(root, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def steady_rate(finished: list[tuple[float, int]]) -> float | None:
    """Images/s between the first and the last finished shard: throughput once Ray and the actors are up.

    Start-up (Ray, actor construction, the first shard) is a fixed cost that hides how a run scales
    with workers; this rate leaves it out. ``None`` with fewer than 3 shards.
    """
    if len(finished) < 3 or finished[-1][0] <= finished[0][0]:
        return None
    return round(sum(n for _, n in finished[1:]) / (finished[-1][0] - finished[0][0]), 2)


def summarise(cfg, records, shards, results, done, wall, processing_s, info, options) -> dict:
    """Counts by status, throughput, stage times; checks rows in == rows out against the files."""
    import pyarrow.parquet as pq
    missing = [i for i in range(len(shards)) if i not in results]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} produced no result; rerun with --resume")
    n_in = sum(results[i]["n_inputs"] for i in range(len(shards)))
    n_rows = sum(results[i]["n_rows"] for i in range(len(shards)))
    fs, root = filesystem(cfg.output, options)
    in_files = 0
    for i in range(len(shards)):
        with fs.open(join(root, part_name(i)), "rb") as f:
            in_files += pq.ParquetFile(f).metadata.num_rows
    statuses, inputs_by_status = Counter(), Counter()
    for st in results.values():
        statuses.update(st["status_counts"])
        inputs_by_status.update(st["input_status_counts"])
    if n_in != len(records) or in_files != n_rows or (not cfg.crop.all_faces and n_rows != n_in):
        raise RuntimeError(f"row check failed: {len(records)} inputs, {n_in} processed, {n_rows} rows "
                           f"reported, {in_files} rows in the files")
    failed = sum(v for k, v in inputs_by_status.items() if k in S.FAILED_STATUSES)
    new = [results[i] for i in results if i not in done]
    n_new = sum(s["n_inputs"] for s in new)
    summary = {
        "input": cfg.input, "output": cfg.output, "format": cfg.format,
        "inputs": n_in, "rows": n_rows, "rows_in_files": in_files, "rows_check": "ok",
        "status_counts": dict(sorted(inputs_by_status.items())), "row_status_counts": dict(sorted(statuses.items())),
        "failed": failed, "failure_rate": failed / max(1, n_in),
        "shards": len(shards), "shards_skipped_resume": len(done),
        "wall_s": round(wall, 2), "processing_s": round(processing_s, 2),
        "images_per_s": round(n_new / processing_s, 2) if n_new else None,
        "images_per_s_wall": round(n_new / wall, 2) if n_new else None,
        "stage_s": {k: round(sum(s[k] for s in new), 2) for k in ("decode_s", "detect_s", "crop_s", "write_s")},
        "ray": info,
    }
    return summary
