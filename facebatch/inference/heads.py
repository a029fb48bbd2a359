"""Loaded models and what their outputs mean: keypoints in crop units, attribute scores with their
decision thresholds, identity embeddings. The meaning comes from the registry spec's output
kinds (:mod:`facebatch.models`), never from a model's name.

A head takes the input batch built by :func:`facebatch.inference.inputs.model_input` for its
own :class:`~facebatch.inference.inputs.InputSpec`; evaluation, enrollment, threshold fitting
and the analyzer all call these. As analyzer heads (:class:`~facebatch.inference.registry.AnalyzerHead`)
they declare their outputs by kind (:mod:`.outputs`) and fill them for a :class:`FaceBatch`.

The networks' forward passes run in onnxruntime on CPU by default (:mod:`facebatch.runtime`:
``runtime=`` or ``$FACEBATCH_CPU_RUNTIME``; torch on CUDA, and for the autoencoder's scores and
the seed models' ``embed``); :meth:`_Head.describe` records the runtime that ran.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..geometry import points_from_crop
from ..keypoints.models import predict_with_flip
from ..keypoints.schemes import get_scheme, ibug68_to_kaggle15
from ..modelio import load_model as _load_file
from ..models import ATTRIBUTE_LOGITS, BINARY_LOGITS, EMBEDDING, POINTS, RECONSTRUCTION, get_spec
from ..runtime import accelerate
from .inputs import InputSpec, model_input
from .outputs import BINARY, EMBEDDING as EMBEDDING_KIND, KEYPOINTS, Output
from .registry import FaceBatch


def floats(a) -> list[float]:
    """Any array -> a flat list of Python floats (the form results and rows carry)."""
    return [float(v) for v in np.asarray(a, np.float64).reshape(-1)]


def load_model(name_or_path: str, device: str = "cpu", task: str | None = None):
    """``(model in eval mode, info)`` of a shipped name or model file; ``task`` checks what it is."""
    model, info = _load_file(name_or_path, device)
    if task and info["task"] != task:
        raise ValueError(f"{info['path']} is a {info['task']} model, not a {task} model")
    return model, info


class _Head:
    task = ""

    def __init__(self, model: torch.nn.Module, info: dict) -> None:
        self.model, self.info = model.eval(), info
        self.meta = info.get("meta") or {}
        self.spec = get_spec(info["model"], self.task)
        self.input = InputSpec.from_meta(self.meta)
        self.flip = bool(self.meta.get("flip_test"))
        self.device = next(model.parameters()).device
        self.runner, self.runtime_info = self.model, {"runtime": "torch"}  # what runs the forward

    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu", **kwargs):
        return cls(*load_model(name_or_path, device, cls.task), **kwargs)

    def _set_runtime(self, runtime: str | None) -> None:
        """Run the forward pass in ``runtime`` (``auto``, ``torch``, ``onnxruntime``, ``None``: the
        environment's); exported, and checked against torch, on a fixed batch of the input size."""
        example = torch.rand((2, 1 if self.input.grey else 3, self.input.size, self.input.size),
                             generator=torch.Generator().manual_seed(0))
        self.runner, self.runtime_info = accelerate(self.model, example, runtime, self.device,
                                                    what=f"{self.task} {self.name}")

    @property
    def name(self) -> str:
        return self.info.get("name") or str(self.info.get("path", "")).rsplit("/", 1)[-1].removesuffix(".pt")

    def describe(self) -> dict:
        """Name, file, sha256, architecture and input spec: what produced a result."""
        return {"name": self.name, "path": self.info.get("path"), "sha256": self.info.get("sha256"),
                "model": self.info["model"], "input_size": self.input.size, "grey": self.input.grey,
                "crop_frame": self.input.frame.to_dict(), "flip_test": self.flip, "runtime": dict(self.runtime_info)}


class KeypointHead(_Head):
    """A keypoint model: ``predict(x)`` -> ``(B, K, 2)`` unit crop coordinates of its scheme."""

    task = "keypoints"

    def __init__(self, model, info, runtime: str | None = None) -> None:
        """``runtime``: ``auto`` (onnxruntime on CPU, torch on CUDA), ``torch``, ``onnxruntime``,
        or ``None`` for ``$FACEBATCH_CPU_RUNTIME``; any failure falls back to torch (a warning)."""
        super().__init__(model, info)
        if POINTS not in self.spec.outputs:
            raise ValueError(f"{info.get('path')}: model {info['model']!r} does not output keypoints")
        self.scheme = get_scheme(self.meta["scheme"])
        self._set_runtime(runtime)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device)
        y = predict_with_flip(self.runner, x, self.scheme) if self.flip else self.runner(x)
        return y.float().view(len(x), -1, 2).cpu().numpy()

    def declares(self) -> list[Output]:
        """``keypoints68`` (+ ``keypoints15`` derived from it) for iBUG-68 models; ``keypointsK``
        for a K-point scheme."""
        if self.scheme.name == "ibug68":
            return [Output("keypoints68", KEYPOINTS, "68 iBUG points"),
                    Output("keypoints15", KEYPOINTS, "15 Kaggle points derived from the 68")]
        return [Output(f"keypoints{len(self.scheme.point_names)}", KEYPOINTS, f"{self.scheme.name} points")]

    def run(self, faces: FaceBatch, wanted: set[str]) -> dict[str, list]:
        boxes, crops = faces.crops(self.input.frame)
        pts = [points_from_crop(u, cbox) for u, cbox in zip(self.predict(model_input(crops, self.input)), boxes)]
        if self.scheme.name == "ibug68":
            return {"keypoints68": [floats(p) for p in pts],
                    "keypoints15": [floats(ibug68_to_kaggle15(p[None])[0]) for p in pts]}
        return {self.declares()[0].name: [floats(p) for p in pts]}


class AttributeHead(_Head):
    """An attribute and/or identity model.

    ``scores(x)``: per attribute ``(B,)`` scores, compared with :attr:`thresholds` (score >= t
    means present): a sigmoid probability (multitask, thresholds fitted at export, 0.5 in older
    files), a softmax probability (2-way seed CNNs, 0.5), or the negated reconstruction error
    (seed autoencoder; threshold = -its fitted error threshold). ``embed(x)``: unit embeddings.
    """

    task = "attributes"

    def __init__(self, model, info, runtime: str | None = None) -> None:
        """``runtime``: as for :class:`KeypointHead`; used for the forward pass of multitask and
        2-way models (the autoencoder's ``score`` and the seed models' ``embed`` stay in torch)."""
        super().__init__(model, info)
        self.attributes = list(self.meta.get("attributes") or [])
        self.has_embedding = EMBEDDING in self.spec.outputs
        self.embedding_output = True  # declared as the analyzer's embedding (off beside an identity model)
        outs = self.spec.outputs
        if ATTRIBUTE_LOGITS in outs:
            fitted = self.meta.get("thresholds") or {}
            self.thresholds = {a: float(fitted.get(a, 0.5)) for a in self.attributes}
        elif BINARY_LOGITS in outs:
            self.thresholds = {a: 0.5 for a in self.attributes}
        elif RECONSTRUCTION in outs:
            thr = float(model.threshold)
            if math.isnan(thr):
                raise ValueError(f"{info.get('path')}: the autoencoder's threshold was never fitted")
            self.thresholds = {a: -thr for a in self.attributes}
        else:
            self.thresholds = {}
            self.attributes = []
        self.probabilities = ATTRIBUTE_LOGITS in outs or BINARY_LOGITS in outs  # scores are P(attribute)
        if self.probabilities:
            self._set_runtime(runtime)

    @torch.inference_mode()
    def outputs(self, x: torch.Tensor, embedding: bool = True) -> dict:
        """``{"scores": {attr: (B,)}, "embedding": (B, d) or None}`` as numpy, one forward pass."""
        from ..attributes.models import multitask_outputs
        x = x.to(self.device)
        outs, scores, emb = self.spec.outputs, {}, None
        if ATTRIBUTE_LOGITS in outs:
            out = multitask_outputs(self.runner, x, self.flip)
            scores = {a: torch.sigmoid(out[a].float()).cpu().numpy() for a in self.attributes}
            if embedding and EMBEDDING in outs:
                emb = out["embedding"].float().cpu().numpy()
        else:
            if BINARY_LOGITS in outs:
                p = torch.softmax(self.runner(x).float(), 1)[:, 1].cpu().numpy()
                scores = {a: p for a in self.attributes}
            elif RECONSTRUCTION in outs:
                s = self.model.score(x).cpu().numpy()
                scores = {a: s for a in self.attributes}
            if embedding and EMBEDDING in outs:
                emb = self.model.embed(x).float().cpu().numpy()
        return {"scores": scores, "embedding": emb}

    def declares(self) -> list[Output]:
        """One binary output per attribute, and ``embedding`` if the model has one."""
        outs = [Output(a, BINARY, f"score >= {self.thresholds[a]:.4g}") for a in self.attributes]
        if self.has_embedding and self.embedding_output:
            outs.append(Output("embedding", EMBEDDING_KIND, f"{self.info['model']} identity embedding"))
        return outs

    def run(self, faces: FaceBatch, wanted: set[str]) -> dict[str, list]:
        out = self.outputs(faces.input(self.input),
                           embedding=self.has_embedding and self.embedding_output and "embedding" in wanted)
        res: dict[str, list] = {}
        for a, s in out["scores"].items():
            if a in wanted:
                res[a] = [float(v) for v in s]
                res[f"{a}_label"] = [bool(v >= self.thresholds[a]) for v in s]
        if out["embedding"] is not None:
            res["embedding"] = out["embedding"]
        return res

    def scores(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return self.outputs(x, embedding=False)["scores"]

    def embed(self, x: torch.Tensor) -> np.ndarray:
        if not self.has_embedding:
            raise ValueError(f"model {self.info['model']!r} has no identity embedding; use a multitask or "
                             "seed003_cnn model")
        return self.outputs(x)["embedding"]
