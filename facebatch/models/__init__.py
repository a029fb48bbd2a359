"""The one model registry: every keypoint and attribute architecture, and what it outputs.

Architectures register themselves where they are defined, with a decorator::

    @register("seed001_cnn", task="keypoints", outputs=(POINTS,), fixed_input=None,
              example={"n_points": 15})
    class KaggleCNN(...): ...

A spec says what ``forward`` returns (output kinds below), the input side the model is tied
to (``fixed_input``, e.g. dense layers sized for 64 px) or ``None``, its channels, and the
keyword arguments that build a small example (tests build every registered model from
them). Code that interprets outputs asks the spec, never the model's name.

Every registered model takes float ``(B, C, S, S)`` in ``[0, 1]`` (RGB, or grey with C=1)
and normalises inside; :mod:`facebatch.inference.inputs` builds that input from face crops.

Lookups import the modules that define architectures on first use (:data:`ARCHITECTURE_MODULES`),
so this module imports nothing of its own package and no cycle forms.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Output kinds: what a model's forward pass returns.
POINTS = "points"                      # (B, K*2) unit crop coordinates x0, y0, x1, y1, ...
ATTRIBUTE_LOGITS = "attribute_logits"  # dict: one (B,) logit per attribute (sigmoid = probability)
EMBEDDING = "embedding"                # unit-length identity embedding: dict key, or the model's embed()
CLASS_LOGITS = "class_logits"          # (B, n_classes) closed-set identity logits
BINARY_LOGITS = "binary_logits"        # (B, 2) logits, class 1 = the attribute present (softmax)
RECONSTRUCTION = "reconstruction"      # (B, C, S, S) image; score() = -error, predict() at its threshold
OUTPUT_KINDS = (POINTS, ATTRIBUTE_LOGITS, EMBEDDING, CLASS_LOGITS, BINARY_LOGITS, RECONSTRUCTION)

TASKS = ("keypoints", "attributes")
ARCHITECTURE_MODULES = ("facebatch.keypoints.models", "facebatch.attributes.models")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered architecture is.

    Attributes:
        name: registry key (stored in model files as ``model``).
        factory: builds the module from keyword options.
        task: ``keypoints`` or ``attributes`` (the model file's ``task``).
        outputs: output kinds of ``forward`` (see :data:`OUTPUT_KINDS`).
        fixed_input: the only input side the model accepts, or ``None`` (any, set by ``input_size``).
        channels: 3 (RGB) or 1 (grey).
        example: keyword arguments that build a small working instance (tests iterate these).
        example_input: input side for that example.
        description: one line for tables and ``--help``.
    """

    name: str
    factory: Callable[..., Any]
    task: str
    outputs: tuple[str, ...]
    fixed_input: int | None = None
    channels: int = 3
    example: dict = field(default_factory=dict)
    example_input: int = 128
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(name: str, *, task: str, outputs: tuple[str, ...], fixed_input: int | None = None,
             channels: int = 3, example: dict | None = None, example_input: int | None = None,
             description: str = "") -> Callable:
    """Class or function decorator that adds an architecture to the registry (see the module doc)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    bad = [o for o in outputs if o not in OUTPUT_KINDS]
    if bad or not outputs:
        raise ValueError(f"{name}: unknown output kinds {bad}; known: {OUTPUT_KINDS}")

    def deco(factory: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model {name!r} is registered twice")
        doc = description or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = ModelSpec(name, factory, task, tuple(outputs), fixed_input, channels, dict(example or {}),
                                    int(example_input or fixed_input or 128), doc)
        return factory
    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for mod in ARCHITECTURE_MODULES:  # importing them runs their @register decorators
            importlib.import_module(mod)
        _loaded = True


def registry(task: str | None = None) -> dict[str, ModelSpec]:
    """Every registered architecture (of one task), by name."""
    _load()
    return {k: v for k, v in sorted(_REGISTRY.items()) if task is None or v.task == task}


def get_spec(name: str, task: str | None = None) -> ModelSpec:
    """The spec of a registered architecture; a clear error listing the known names otherwise."""
    known = registry(task)
    if name not in known:
        what = f"{task} model" if task else "model"
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return known[name]


def create_model(name: str, task: str | None = None, **kwargs: Any):
    """Build a registered architecture.

    Args:
        name: registry key.
        task: if given, the architecture must be of this task.
        **kwargs: the architecture's options (``n_points`` for keypoint models, ``input_size``, ...).
    """
    spec = get_spec(name, task)
    if spec.fixed_input is not None:
        size = kwargs.pop("input_size", None)
        if size not in (None, spec.fixed_input):
            raise ValueError(f"{name} takes {spec.fixed_input} px input only (its layers are sized for it); "
                             f"set input_size={spec.fixed_input}, got {size}")
    return spec.factory(**kwargs)


__all__ = ["ATTRIBUTE_LOGITS", "BINARY_LOGITS", "CLASS_LOGITS", "EMBEDDING", "OUTPUT_KINDS", "POINTS",
           "RECONSTRUCTION", "ModelSpec", "create_model", "get_spec", "register", "registry"]
