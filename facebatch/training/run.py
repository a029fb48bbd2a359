"""Ray Train glue: Parquet -> Ray Data -> TorchTrainer -> best model file, history and curves."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from .config import TrainConfig, default_storage
from .loop import make_task, train_loop_per_worker

log = logging.getLogger(__name__)


def load_datasets(cfg: TrainConfig, task):
    """``(train, val)`` Ray Datasets of decoded model inputs, materialised once for all epochs."""
    import ray
    from ..storage import arrow_filesystem
    paths = cfg.data if isinstance(cfg.data, list) else [cfg.data]
    for p in paths:
        if "://" not in str(p) and not Path(p).exists():
            raise FileNotFoundError(f"training data {p!r} not found; run `facebatch preprocess` first "
                                    "or set data=... in the config")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own per-epoch lines are enough in job logs
    fs = arrow_filesystem(str(paths[0]))
    cols = list(task.columns)
    ds = ray.data.read_parquet([str(p) for p in paths], filesystem=fs)
    if cfg.limit:
        # The same rows on every run (a resumed run must train on the same data): the ``limit``
        # paths with the smallest hash, not whichever blocks a parallel read returns first.
        keep = limited_paths(ds.select_columns(["path"]).take_all(), cfg.limit)
        ds = ds.filter(lambda row: row["path"] in keep)
    ds = ds.select_columns(cols)
    def decoded(splits):
        return ds.map_batches(task.decode, fn_kwargs={"splits": list(splits)}, batch_format="numpy", batch_size=256)
    return shuffled_each_epoch(decoded(cfg.train_splits)), decoded(cfg.val_splits).materialize()


def limited_paths(rows: list[dict], limit: int) -> set[str]:
    """The ``limit`` distinct paths with the smallest sha1: a fixed, spread-out subset (not the first
    people alphabetically), identical on every run over the same data."""
    import hashlib
    paths = sorted({r["path"] for r in rows}, key=lambda p: (hashlib.sha1(p.encode()).hexdigest(), p))
    return set(paths[:limit])


def shuffled_each_epoch(ds, rows_per_block: int = 64):
    """The training rows cut into small blocks whose order is drawn again every epoch.

    Preprocess output is in file order (celeba6k person by person, then genki4k), and a
    worker's local shuffle buffer only mixes neighbouring rows: without this, a batch held
    two or three people, and one DDP worker could see mostly one dataset. Small blocks in a
    fresh random order per epoch, plus the loop's local shuffle buffer, make batches a random
    mix; the data is materialised once (no full shuffle through the object store)."""
    return ds.repartition(target_num_rows_per_block=rows_per_block).materialize().randomize_block_order()


def _absolute_local_paths(cfg: TrainConfig) -> None:
    """Make relative local files in the config absolute: Ray Train workers run in a directory of
    their own, where ``runs/exports/x.pt`` would not be found. Shipped model names stay names."""
    def fix(value):
        if isinstance(value, str) and "://" not in value and value and Path(value).is_file():
            return os.path.abspath(value)
        return value
    cfg.init_from = fix(cfg.init_from)
    if isinstance(cfg.model_kwargs.get("pretrained"), str):
        cfg.model_kwargs["pretrained"] = fix(cfg.model_kwargs["pretrained"])


CONFIG_FILE = "facebatch_config.json"


def run_exists(storage: str, name: str) -> bool:
    """True when ``storage/name`` holds an earlier run (its config or any checkpoint)."""
    from ..storage import filesystem, join
    fs, root = filesystem(storage)
    d = join(root, name)
    return fs.exists(d) and bool(fs.ls(d))


def saved_config_path(storage: str, name: str) -> str | None:
    """The config a run wrote when it started, or ``None``."""
    from ..storage import filesystem, join
    fs, root = filesystem(storage)
    p = join(root, name, CONFIG_FILE)
    return p if fs.exists(p) else None


def write_run_config(cfg: TrainConfig, storage: str, name: str) -> None:
    from ..storage import filesystem, join
    fs, root = filesystem(storage)
    fs.makedirs(join(root, name), exist_ok=True)
    with fs.open(join(root, name, CONFIG_FILE), "w") as f:
        f.write(json.dumps({**cfg.to_dict(), "name": name}, indent=2))


def train(cfg: TrainConfig, address: str | None = None, resume: str | None = None) -> dict:
    """Train with Ray Train; returns a summary (best metrics, paths). ``resume`` is a run name to continue.

    The resolved config is written to ``storage/NAME/facebatch_config.json`` before training, so
    ``--resume NAME`` can reuse it. A new run under an existing name is refused (``ValueError``).
    """
    from ..raycluster import init_ray
    storage = default_storage(cfg)
    name = resume or cfg.name or f"{cfg.task}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume is None and run_exists(storage, name):
        raise ValueError(f"a run named {name!r} already exists in {storage}; continue it with --resume {name}, "
                         f"or choose another name=...")
    if resume is not None and not run_exists(storage, name):
        raise ValueError(f"--resume {name}: no run named {name!r} in {storage} (storage_path)")
    _absolute_local_paths(cfg)
    task = make_task(cfg)
    task.build_model()  # fail early on a bad model name or missing init weights
    info = init_ray(address)  # before importing ray: the local-Ray settings are read at import
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    t0 = time.perf_counter()
    train_ds, val_ds = load_datasets(cfg, task)
    n_train, n_val = train_ds.count(), val_ds.count()
    if n_train == 0 or n_val == 0:
        raise ValueError(f"no usable rows: {n_train} for train splits {cfg.train_splits}, {n_val} for val splits "
                         f"{cfg.val_splits} in {cfg.data}")
    write_run_config(cfg, storage, name)
    steps = math.ceil(n_train / cfg.num_workers / cfg.batch_size)
    print(f"[facebatch train] {name}: {n_train} train / {n_val} val rows, {cfg.num_workers} worker(s), "
          f"{'GPU' if cfg.use_gpu else 'CPU'}, {cfg.epochs} epochs; storage {storage}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "steps_per_epoch": steps},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train", "val"]),
    )
    result = fit_and_release(trainer)
    wall = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        st = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    meta = json.loads(st["meta"])
    history = meta["history"]
    best_i = (len(history) - 1 if cfg.keep == "last" else
              min(range(len(history)), key=lambda i: history[i][task.monitor] * (1 if task.mode == "min" else -1)))
    summary = {"run": name, "storage": storage, "checkpoint": result.checkpoint.path, "n_train": n_train, "n_val": n_val,
               "best_epoch": best_i + 1, "best": history[best_i], "epochs_run": len(history),
               "train_s": meta["train_s"], "wall_s": wall, "ray": info}
    run_dir = Path(storage) / name if "://" not in storage else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "history.json").write_text(json.dumps(history, indent=2))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        try:
            from ..plots import plot_history
            plot_history(history, run_dir / "curves.png", task.monitor)
        except Exception as exc:  # plots are a convenience; never fail a finished run over them
            log.warning("could not draw curves: %s", exc)
    if cfg.export:
        summary["export"] = str(export_model(cfg, task, st["best_model"], summary, history))
    return summary


def fit_and_release(trainer):
    """``trainer.fit()``, then Ray Train's Ctrl-C handler taken down again (the one that was there before is put
    back). That handler holds the run's controller actor, so the controller and the data split coordinators it
    started stayed alive after the run, for as long as the process (a test session, a notebook) lived; and a later
    Ctrl-C would have gone to a finished run. Released, Ray stops them as soon as the result is read."""
    import signal
    import threading
    main = threading.current_thread() is threading.main_thread()  # Ray Train sets the handler only there
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def data_crop_frame(data) -> dict:
    """The crop frame (margin, crop size, JPEG quality) of the training data's stored crops, read from
    each preprocess output's file metadata, so a model file records what its inputs were cut like
    (:class:`facebatch.inference.inputs.CropFrame`). Outputs without that metadata count as the
    preprocess defaults; sources that disagree are an error."""
    import pyarrow.dataset as pads

    from .. import schema as S
    from ..inference.inputs import CropFrame
    from ..storage import arrow_filesystem
    frames = {}
    for p in (data if isinstance(data, (list, tuple)) else [data]):
        fs = arrow_filesystem(str(p))
        src = str(p).split("://", 1)[1] if fs is not None else str(p)
        crop = (S.read_metadata(pads.dataset(src, format="parquet", filesystem=fs).schema).get("config") or {}).get("crop")
        crop = crop or {}
        d = CropFrame()
        frames[str(p)] = CropFrame(crop.get("margin", d.margin), crop.get("crop_size", d.crop_size),
                                   crop.get("jpeg_quality", d.jpeg_quality))
    if len(set(frames.values())) > 1:
        raise ValueError("the training data were cropped differently: " + "; ".join(
            f"{k}: {v}" for k, v in frames.items()) + ". Preprocess them with the same --margin and --crop-size")
    return next(iter(frames.values())).to_dict()


def export_model(cfg: TrainConfig, task, state: dict, summary: dict, history: list) -> Path:
    """Write the best weights as a facebatch model file with everything a user needs in ``meta``."""
    from ..modelio import save_model_file
    from ..provenance import provenance
    model = task.build_model()
    model.load_state_dict(state)
    from ..keypoints.models import count_flops, count_params
    c = 1 if cfg.grey else 3
    meta = {"input_size": cfg.input_size, "grey": cfg.grey, "scheme": cfg.scheme if cfg.task == "keypoints" else None,
            "attributes": cfg.attributes if cfg.task == "attributes" else None, "flip_test": cfg.flip_test,
            "params": count_params(model), "flops": count_flops(model, (1, c, cfg.input_size, cfg.input_size)),
            "best_epoch": summary["best_epoch"], "metrics": summary["best"], "n_train": summary["n_train"],
            "n_val": summary["n_val"], "train_s": summary["train_s"], "history": history, "config": cfg.to_dict(),
            "run": summary["run"], "provenance": provenance(), "crop_frame": data_crop_frame(cfg.data)}
    kwargs = {"input_size": cfg.input_size, **{k: v for k, v in cfg.model_kwargs.items() if k != "pretrained"}}
    if cfg.task == "keypoints":
        kwargs["n_points"] = task.scheme.n_points
    else:  # the attribute task knows its model's kwargs, attribute names, identity list (and fits thresholds)
        kwargs, extra = task.export(model)
        meta.update(extra)
    return save_model_file(cfg.export, cfg.task, cfg.model, kwargs, model, meta, fp16=cfg.export_fp16)
