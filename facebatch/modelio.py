"""Loading facebatch model files into networks: the file format (:mod:`facebatch.models.files`)
plus the architecture registry (:mod:`facebatch.models`). Shipped models resolve by name with
no download.
"""
from __future__ import annotations

from torch import nn

from .models import create_model
from .models.files import (FORMAT, RELEASE_DIR, read_model_file, release_models, resolve_model_path,  # noqa: F401
                           save_model_file)
from .weights import WeightsError, load_into, sha256_file


def build_from_file(obj: dict) -> nn.Module:
    if obj["task"] not in ("keypoints", "attributes"):
        raise WeightsError(f"unknown task {obj['task']!r} in model file")
    kwargs = {k: v for k, v in obj["model_kwargs"].items() if k != "pretrained"}
    return create_model(obj["model"], task=obj["task"], **kwargs)


def load_model(name_or_path: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a shipped or trained model in eval mode (fp32); returns ``(model, file dict without weights)``."""
    path = resolve_model_path(name_or_path)
    obj = read_model_file(path)
    model = build_from_file(obj)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in obj["state_dict"].items()}
    load_into(model, state, path, f"{obj['task']} model {obj['model']!r}")
    info = {k: v for k, v in obj.items() if k != "state_dict"}
    info["path"], info["sha256"] = str(path), sha256_file(path)
    return model.to(device).eval(), info
