"""Face attribute (smile, eyeglasses) and identity models: pure torch/numpy, no Ray.

* :mod:`.models`: the architectures (registered in :mod:`facebatch.models`, built with
  ``facebatch.models.create_model(name, **kw)``); all take RGB ``[0, 1]`` ``(B, 3, S, S)``.
* :mod:`.losses`: ``MarginHead`` (CosFace/ArcFace), masked and class-balanced BCE, ``MultiTaskLoss``.
* :mod:`.metrics`: ``binary_metrics``, ``top1_accuracy``, ``verification_accuracy`` (numpy only).
* :mod:`.gallery`: open-set ``Gallery`` of per-person centroids (numpy only).
* :mod:`.plots`: confusion-matrix PNG with Pillow.

Names are imported lazily so that ``metrics`` and ``gallery`` users do not pay for torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MultiTaskFaceNet": "models",
    "MarginHead": "losses", "MultiTaskLoss": "losses",
    "binary_metrics": "metrics", "top1_accuracy": "metrics", "verification_accuracy": "metrics",
    "Gallery": "gallery", "save_confusion_png": "plots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
