"""The facebatch model file: format, shipped models by name, saving and reading (no architectures).

A model file is a ``torch.save`` of plain data (loadable with ``weights_only=True``)::

    {"format": "facebatch-model-1", "task": "keypoints", "model": <registry name>,
     "model_kwargs": {...}, "state_dict": {...fp16 or fp32 tensors...}, "meta": {...}}

``meta`` holds what a user of the model needs: input size and channels, keypoint scheme or
attribute names, the crop frame its inputs were cut in, the training config, metrics, and
provenance. Shipped models live in ``facebatch/release/<name>.pt`` beside a model card
``<name>.md``. Building the network from a file is :func:`facebatch.modelio.load_model`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..weights import WeightsError

if TYPE_CHECKING:  # torch loads on first use: resolving a model's file needs none (a job's driver)
    from torch import nn

FORMAT = "facebatch-model-1"
RELEASE_DIR = Path(__file__).resolve().parent.parent / "release"


def release_models() -> list[str]:
    return sorted(p.stem for p in RELEASE_DIR.glob("*.pt"))


def resolve_model_path(name_or_path: str) -> Path:
    """A shipped model's name (``keypoints68``) or a path to a model file / checkpoint folder."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.is_dir() and (p / "model.pt").is_file():
        return p / "model.pt"
    shipped = RELEASE_DIR / f"{name_or_path}.pt"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"model {name_or_path!r} is neither a file nor a shipped model. Shipped models: "
                            f"{', '.join(release_models()) or 'none'}; or pass a path to a .pt model file "
                            "or a training checkpoint folder holding model.pt.")


def save_model_file(path: str | os.PathLike, task: str, model_name: str, model_kwargs: dict,
                    model: nn.Module, meta: dict, fp16: bool = False) -> Path:
    """Write a model file; ``fp16`` halves floating-point tensors (buffers like BN counts stay)."""
    import torch
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "task": task, "model": model_name, "model_kwargs": model_kwargs,
                "state_dict": state, "meta": json.loads(json.dumps(meta, default=str))}, path)
    return path


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"could not read model file {path} ({type(exc).__name__}); it is corrupt or not "
                           "a facebatch model file") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a facebatch model file (format {FORMAT!r} expected)")
    return obj
