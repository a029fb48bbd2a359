"""Face detection: one batched interface over several RetinaFace backends.

>>> det = create_detector("mobilenet")          # doctest: +SKIP
>>> faces = det.detect([rgb_a, rgb_b])          # doctest: +SKIP
"""
from __future__ import annotations

from .detector import LANDMARK_NAMES, BatchDetector, DetectorConfig, Face, pack_by_padded_shape, pack_by_size

BACKENDS = ("mobilenet", "resnet50")


def create_detector(backend: str = "mobilenet", **options) -> BatchDetector:
    """Build a :class:`BatchDetector`.

    Args:
        backend: ``mobilenet`` or ``resnet50``.
        **options: any :class:`DetectorConfig` field, plus ``weights_path`` for an explicit file
            and (``resnet50`` only) ``random_weights=True`` for timing and plumbing tests.
    """
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
