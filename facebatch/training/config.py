"""Training configuration: a JSON/YAML file plus ``key=value`` overrides (dotted keys for nested values)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved beside its checkpoints).

    Args:
        task: ``keypoints`` or ``attributes``.
        model: registry name of the model; ``model_kwargs`` are passed to it.
        data: preprocess Parquet (folder, file or s3:// prefix); several may be given as a list.
        train_splits / val_splits: values of the ``split`` column used for training / validation.
        scheme: keypoint scheme to predict (``ibug68`` or ``kaggle15``); kaggle15 is derived from ibug68 labels.
        input_size: side of the square model input; ``grey`` feeds one channel.
        epochs, batch_size, lr, weight_decay, warmup_epochs: optimisation (AdamW, cosine decay).
        loss: ``mse``, ``l1`` or ``wing`` for keypoints.
        patience: stop after this many epochs without a better validation score (0 = never).
        ema: decay of an exponential moving average of the weights, updated every step (e.g.
            0.999; 0 = off). When on, validation, the kept best model and the export use the
            averaged weights.
        keep: which weights to export: ``best`` (best validation score) or ``last`` (the final
            epoch; for models whose validation score misses part of what they learn, e.g. a
            multitask model's identity embedding, judged on people outside the validation split).
        augment: overrides of :class:`facebatch.keypoints.augment.AugmentConfig` (``{}``: defaults; ``null``: off).
        num_workers, use_gpu, cpus_per_worker: Ray Train scaling.
        storage_path, name: where checkpoints go (local or s3://); name defaults to model + time.
        max_failures: worker failures to recover from (resuming from the last checkpoint).
        export: write the best model to this file at the end (``.pt``), optionally fp16.
        init_from: start from the weights of this model file or shipped model (fine-tuning).
        seed: random seed.
    """

    task: str = "keypoints"
    model: str = "mobilenet_face_kp"
    model_kwargs: dict = field(default_factory=dict)
    data: Any = "out/udacity68"
    train_splits: list = field(default_factory=lambda: ["train"])
    val_splits: list = field(default_factory=lambda: ["val"])
    scheme: str = "ibug68"
    attributes: list = field(default_factory=lambda: ["smile", "eyeglasses"])
    input_size: int = 128
    grey: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: str = "wing"
    patience: int = 0
    keep: str = "best"
    ema: float = 0.0
    augment: Any = field(default_factory=dict)
    flip_test: bool = False
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    amp: bool = True
    storage_path: str = "runs"
    name: str | None = None
    max_failures: int = 2
    export: str | None = None
    export_fp16: bool = False
    limit: int | None = None
    init_from: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a config file (or a shipped config by name, e.g. ``keypoints68``) and apply overrides.

    Raises:
        ValueError: naming an unknown key or a malformed override.
    """
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file() and (CONFIG_DIR / f"{path}.json").is_file():
            p = CONFIG_DIR / f"{path}.json"
        if not p.is_file():
            shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.json")))
            raise FileNotFoundError(f"config {path!r} not found; give a file or a shipped config ({shipped})")
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    known = {f.name for f in fields(TrainConfig)}
    for k in data:
        if k not in known:
            raise ValueError(f"unknown config key {k!r} in {path}; known keys: {', '.join(sorted(known))}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=5 or model_kwargs.width=32)")
        key, value = item.split("=", 1)
        top, *rest = key.split(".")
        if top not in known:
            raise ValueError(f"unknown config key {top!r} in override {item!r}; known keys: {', '.join(sorted(known))}")
        if rest:
            node = data.setdefault(top, {})
            for r in rest[:-1]:
                node = node.setdefault(r, {})
            node[rest[-1]] = _parse_value(value)
        else:
            data[top] = _parse_value(value)
    cfg = TrainConfig(**data)
    if cfg.task not in ("keypoints", "attributes"):
        raise ValueError(f"task must be keypoints or attributes, got {cfg.task!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1) (a decay such as 0.999; 0 = off), got {cfg.ema}")
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"keep must be best or last, got {cfg.keep!r}")
    return cfg


def default_storage(cfg: TrainConfig) -> str:
    return cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
