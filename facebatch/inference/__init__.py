"""One face-analysis path shared by every command: the input contract, loaded model heads, and
:class:`FaceAnalyzer`.

Layering: core (geometry, imaging, formats, detection, keypoints, attributes, models) ->
**inference** -> jobs and services (preprocess, annotate, serve, evaluation, training) -> cli.

``import facebatch.inference`` does not import torch: :class:`AnalyzerConfig` (:mod:`.config`)
is torch-free, so a job's driver can build one; every other name is loaded from its module
(which imports torch) on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import AnalyzerConfig

if TYPE_CHECKING:  # pragma: no cover
    from .analyzer import UNKNOWN, FaceAnalyzer, FaceResult
    from .heads import AttributeHead, KeypointHead, load_model
    from .identity import IdentityHead
    from .inputs import CropFrame, InputSpec, decode_crop, face_crop, model_input, to_tensor
    from .outputs import Output
    from .registry import AnalyzerHead, FaceBatch, create_head, register_head

# name -> the module it is loaded from on first use
_LAZY = {**dict.fromkeys(("UNKNOWN", "FaceAnalyzer", "FaceResult"), "analyzer"),
         **dict.fromkeys(("AttributeHead", "KeypointHead", "load_model"), "heads"),
         **dict.fromkeys(("CropFrame", "InputSpec", "decode_crop", "face_crop", "model_input", "to_tensor"), "inputs"),
         **dict.fromkeys(("AnalyzerHead", "FaceBatch", "create_head", "register_head"), "registry"),
         **dict.fromkeys(("Output",), "outputs"), "IdentityHead": "identity"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AnalyzerConfig", "AnalyzerHead", "AttributeHead", "CropFrame", "FaceAnalyzer", "FaceBatch", "FaceResult",
           "IdentityHead", "InputSpec", "KeypointHead", "Output", "UNKNOWN", "create_head", "decode_crop", "face_crop",
           "load_model", "model_input", "register_head", "to_tensor"]
