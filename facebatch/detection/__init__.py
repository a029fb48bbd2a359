"""Face detection: one batched interface over several RetinaFace backends.

>>> det = create_detector(DetectorConfig(max_side=800))   # doctest: +SKIP
>>> faces = det.detect([rgb_a, rgb_b])                     # doctest: +SKIP

Backends are registered by name (:mod:`.backends`); the command-line options that build a
:class:`DetectorConfig` are in :mod:`.options`.

``import facebatch.detection`` does not import torch: :class:`DetectorConfig`, :class:`Face`,
:data:`BACKENDS` and :data:`LANDMARK_NAMES` come from the torch-free :mod:`.config`, the
registry from :mod:`.backends`; :class:`BatchDetector` and the packing helpers are loaded from
:mod:`.detector` (torch) on first use, and :func:`create_detector` imports the backend it builds.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .backends import BackendSpec, backend_names, backend_spec, register_backend
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


def create_detector(config: DetectorConfig | str = "mobilenet", *, weights_path: str | None = None,
                    random_weights: bool = False, **options) -> "BatchDetector":
    """Build a :class:`BatchDetector` from a :class:`DetectorConfig`.

    Args:
        config: the detector's options, whole. A backend name instead (``mobilenet``, ``resnet50``,
            any registered one) builds ``DetectorConfig(backend=config, **options)``.
        weights_path: an explicit weights file (else the backend's file is searched for).
        random_weights: random weights, no file read (backends that can: ``resnet50``), for
            timing and plumbing tests.
        **options: :class:`DetectorConfig` fields that replace the config's.
    """
    from .detector import BatchDetector
    if isinstance(config, str):
        config = DetectorConfig(backend=config)
    cfg = replace(config, **options).validate()  # a copy: the caller's config is never changed
    backend = backend_spec(cfg.backend).build(cfg.weights_dir, cfg.device, weights_path, random_weights)
    return BatchDetector(backend, cfg)


__all__ = ["BACKENDS", "LANDMARK_NAMES", "BackendSpec", "BatchDetector", "DetectorConfig", "Face", "backend_names",
           "backend_spec", "create_detector", "pack_by_padded_shape", "pack_by_size", "register_backend"]
