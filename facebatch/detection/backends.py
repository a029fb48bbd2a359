"""The detector backends, by name: how to build each one and which weights file it reads.

A backend is registered under a name, as models are (:mod:`facebatch.models`)::

    register_backend("mobilenet", "facebatch.detection.mobilenet_backend:MobileNetBackend",
                     weights_file="mobilenet0.25_Final.pth", description="...")

Unlike models, the built-in backends register here and not where they are defined: those
modules import torch, and a job's driver needs the names (``--backend`` choices) and the
weights file (resolved and hashed before any work) without it. The class is imported on first
use. It is built as ``cls(weights_dir, device, weights_path, **extra)`` and provides what
:class:`~facebatch.detection.detector.Backend` says. Code that needs something of a backend
asks its :class:`BackendSpec`, never its name.

This module imports neither torch nor anything else of facebatch at import time.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class BackendSpec:
    """What a registered detector backend is.

    Attributes:
        name: registry key (``DetectorConfig.backend``, ``--backend``).
        factory: the backend class or a factory, or ``"module:attr"`` naming one (imported on
            first use, so that registering imports nothing heavy).
        weights_file: the weights file name searched for (:func:`facebatch.weights.find_weights`).
        description: one line for ``--help``.
        hint: a sentence telling the user how to obtain the weights file.
        extra_dirs: further places searched last for the weights file (called when searching).
        random_weights: whether the backend can be built with random weights (timing and
            plumbing tests: no file is read).
    """

    name: str
    factory: Callable[..., Any] | str
    weights_file: str
    description: str = ""
    hint: str = ""
    extra_dirs: Callable[[], list[Path]] | None = None
    random_weights: bool = False

    def load_factory(self) -> Callable[..., Any]:
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, weights_dir: str | None = None, device: str = "cpu", weights_path: str | None = None,
              random_weights: bool = False) -> Any:
        """The backend object, with its weights loaded (or random ones, where it can)."""
        if random_weights and not self.random_weights:
            raise ValueError(f"detector backend {self.name!r} cannot run on random weights")
        extra = {"random_weights": True} if random_weights else {}
        return self.load_factory()(weights_dir, device, weights_path, **extra)

    def find_weights(self, weights_dir: str | None = None) -> Path:
        """The weights file this backend reads (the usual search order, then :attr:`extra_dirs`)."""
        from ..weights import find_weights
        extra = self.extra_dirs() if self.extra_dirs else []
        return find_weights(self.weights_file, weights_dir, extra=extra, hint=self.hint)

    def weights_info(self, weights_dir: str | None = None, random_weights: bool = False) -> dict:
        """Backend name, weights file and its sha256, resolved without building the backend (a job's
        driver does this so that a missing file fails before any work)."""
        if random_weights:
            return {"backend": self.name, "weights": None, "weights_sha256": None, "random_weights": True}
        from ..weights import sha256_file
        path = self.find_weights(weights_dir)
        return {"backend": self.name, "weights": str(path), "weights_sha256": sha256_file(path)}


_REGISTRY: dict[str, BackendSpec] = {}


def register_backend(name: str, factory: Callable[..., Any] | str, *, weights_file: str, description: str = "",
                     hint: str = "", extra_dirs: Callable[[], list[Path]] | None = None,
                     random_weights: bool = False) -> BackendSpec:
    """Add a detector backend to the registry (see the module doc); returns its spec."""
    spec = BackendSpec(name, factory, weights_file, description, hint, extra_dirs, random_weights)
    if name in _REGISTRY and _REGISTRY[name].factory != factory:
        raise ValueError(f"detector backend {name!r} is registered twice")
    _REGISTRY[name] = spec
    return spec


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def backend_spec(name: str) -> BackendSpec:
    """The spec of a registered backend; a clear error listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector backend {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def deepface_weights_dir() -> Path:
    """Where retina-face keeps its weights: ``$DEEPFACE_HOME/.deepface/weights`` (home by default)."""
    return Path(os.getenv("DEEPFACE_HOME", default=str(Path.home()))) / ".deepface" / "weights"


register_backend(
    "mobilenet", "facebatch.detection.mobilenet_backend:MobileNetBackend", weights_file="mobilenet0.25_Final.pth",
    description="RetinaFace-MobileNet-0.25 (fast)",
    hint="It is the MobileNet-0.25 RetinaFace state dict of the Pytorch_Retinaface project (MIT).")
register_backend(
    "resnet50", "facebatch.detection.resnet50:ResNet50Backend", weights_file="retinaface.pth",
    description="retina-face's ResNet-50", extra_dirs=lambda: [deepface_weights_dir()], random_weights=True,
    hint="It is the PyTorch RetinaFace-ResNet50 of the retina-face package (MIT), published at "
         "https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.pth.")

__all__ = ["BackendSpec", "backend_names", "backend_spec", "deepface_weights_dir", "register_backend"]
