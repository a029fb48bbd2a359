"""Analyzer heads: the interface every head of :class:`~facebatch.inference.FaceAnalyzer` has,
the faces of one call as a head sees them, and the registry of heads named in a config.

A head declares its outputs (:class:`~facebatch.inference.outputs.Output`) and, given the
faces of one ``analyze`` call, returns one value per face for each output it is asked for.
The keypoint and attribute model heads (:mod:`.heads`) are built from model files; any other
head registers a factory under a name::

    @register_head("brightness")
    class Brightness:
        name, input = "brightness", InputSpec(64)
        def declares(self): return [Output("brightness", REGRESSION)]
        def run(self, faces, wanted): return {"brightness": faces.input(self.input).mean((1, 2, 3)).tolist()}
        def describe(self): return {"name": self.name}

and naming it is all it takes: ``FaceAnalyzer.load(heads=["brightness"])``, ``facebatch
annotate --head brightness``, ``facebatch serve --head brightness``. A name ``module:head``
imports ``module`` first (so Ray workers, which start without the caller's imports, register it
too); installed packages can also declare heads under the ``facebatch.heads`` entry point group.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from .inputs import CropFrame, InputSpec, decode_crop, face_crop, model_input
from .outputs import Output


class FaceBatch:
    """The faces of one ``analyze`` call: every face of every image, flat, in result order.

    Attributes:
        images: the RGB images.
        faces: ``(image index, Face)`` per face.
        values: columns computed so far this call (a later head may read an earlier head's, e.g.
            keypoints for alignment).
    """

    def __init__(self, images: Sequence[np.ndarray], faces: list[tuple[int, Any]]) -> None:
        self.images, self.faces = images, faces
        self.values: dict[str, list] = {}
        self._crops: dict[CropFrame, tuple[list, list]] = {}

    def __len__(self) -> int:
        return len(self.faces)

    def crops(self, frame: CropFrame = CropFrame()) -> tuple[list, list]:
        """``(crop boxes, crops)`` of every face in this frame, cut once per call (JPEG frames are
        round-tripped and decoded once: every model resizes from the same pixels)."""
        if frame not in self._crops:
            boxes, crops = [], []
            for i, f in self.faces:
                cbox, crop = face_crop(self.images[i], f.box, frame)
                boxes.append(cbox)
                crops.append(crop)
            if frame.jpeg_quality:
                crops = [decode_crop(c, frame.crop_size) for c in crops]
            self._crops[frame] = (boxes, crops)
        return self._crops[frame]

    def input(self, spec: InputSpec) -> torch.Tensor:
        """The model input batch for ``spec`` (:func:`~facebatch.inference.inputs.model_input`)."""
        return model_input(self.crops(spec.frame)[1], spec)


class AnalyzerHead(Protocol):
    """What :class:`~facebatch.inference.FaceAnalyzer` needs of a head."""

    name: str
    input: InputSpec | None  # the crop frame/input it takes; None if it cuts no crop

    def declares(self) -> list[Output]:
        """The outputs it can give (their kinds decide the columns and the per-call switches)."""

    def run(self, faces: FaceBatch, wanted: set[str]) -> dict[str, Any]:
        """Per output name in ``wanted``, its columns' values, one per face (lists or arrays)."""

    def describe(self) -> dict:
        """Name, version/sha256 and settings: what produced a result."""


_HEADS: dict[str, Callable[..., AnalyzerHead]] = {}


def register_head(name: str) -> Callable:
    """Decorator: make a head factory (a class or function taking ``device=`` and ``runtime=``
    keywords) available under ``name``."""
    def deco(factory: Callable) -> Callable:
        if name in _HEADS and _HEADS[name] is not factory:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = factory
        return factory
    return deco


def registered_heads() -> list[str]:
    return sorted(_HEADS)


def create_head(spec: str, device: str = "cpu", runtime: str | None = None) -> AnalyzerHead:
    """Build the head named ``spec`` (``name`` or ``module:name``; see the module doc)."""
    module, _, name = spec.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"head {spec!r}: cannot import {module!r} ({exc}); is it installed / on PYTHONPATH?") from None
    if name not in _HEADS:
        for ep in entry_points(group="facebatch.heads"):
            if ep.name == name:
                ep.load()
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; registered: {', '.join(registered_heads()) or 'none'} "
                         "(a head defined elsewhere is named 'module:head')")
    return _HEADS[name](device=device, runtime=runtime)
