"""Face detection: one batched interface over several RetinaFace backends.

>>> det = create_detector("mobilenet")          # doctest: +SKIP
>>> faces = det.detect([rgb_a, rgb_b])          # doctest: +SKIP

``import facebatch.detection`` does not import torch: :class:`DetectorConfig`, :class:`Face`,
:data:`BACKENDS` and :data:`LANDMARK_NAMES` come from the torch-free :mod:`.config`;
:class:`BatchDetector` and the packing helpers are loaded from :mod:`.detector` (torch) on
first use, and :func:`create_detector` imports the backend it builds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import BACKENDS, LANDMARK_NAMES, DetectorConfig, Face

if TYPE_CHECKING:  # pragma: no cover
    from .detector import BatchDetector, pack_by_padded_shape, pack_by_size

# names served lazily from .detector (which imports torch)
_FROM_DETECTOR = ("BatchDetector", "pack_by_padded_shape", "pack_by_size")


def __getattr__(name: str):
    if name in _FROM_DETECTOR:
        from . import detector
        value = getattr(detector, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FROM_DETECTOR))


def create_detector(backend: str = "mobilenet", **options) -> "BatchDetector":
    """Build a :class:`BatchDetector`.

    Args:
        backend: ``mobilenet`` or ``resnet50``.
        **options: any :class:`DetectorConfig` field, plus ``weights_path`` for an explicit file
            and (``resnet50`` only) ``random_weights=True`` for timing and plumbing tests.
    """
    from .detector import BatchDetector
    weights_path = options.pop("weights_path", None)
    random_weights = options.pop("random_weights", False)
    cfg = DetectorConfig(backend=backend, **options).validate()
    if backend == "mobilenet":
        from .mobilenet_backend import MobileNetBackend
        be = MobileNetBackend(cfg.weights_dir, cfg.device, weights_path)
    elif backend == "resnet50":
        from .resnet50 import ResNet50Backend
        be = ResNet50Backend(cfg.weights_dir, cfg.device, weights_path, random_weights=random_weights)
    else:
        raise ValueError(f"unknown detector backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BatchDetector(be, cfg)


__all__ = ["BACKENDS", "LANDMARK_NAMES", "BatchDetector", "DetectorConfig", "Face", "create_detector", "pack_by_padded_shape", "pack_by_size"]
