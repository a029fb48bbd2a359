"""What a :class:`~facebatch.inference.FaceAnalyzer` is made of, as one value that travels whole.

    cfg = AnalyzerConfig(keypoints="keypoints68", detector=DetectorConfig(max_side=800))
    actor_args = cfg.to_dict()                        # JSON: part metadata, Ray arguments, YAML
    fa = AnalyzerConfig.from_dict(actor_args).build()

A command line builds one, the annotate actors and serve replicas get it whole (as
:meth:`AnalyzerConfig.to_dict`) and build their analyzer from it. Torch-free: a job's driver
builds and validates it without importing torch.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..detection.config import DetectorConfig

if TYPE_CHECKING:  # pragma: no cover
    from .analyzer import FaceAnalyzer

DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")


def _model(v: str | None) -> str | None:
    """``None``, ``""`` and ``"none"`` (any case) all mean: no model."""
    return None if v is None or str(v).strip().lower() in ("", "none") else str(v)


@dataclass
class AnalyzerConfig:
    """The models and options of one :class:`~facebatch.inference.FaceAnalyzer`.

    Args:
        keypoints: keypoint model: shipped name (``keypoints68``, ``keypoints15``), model file, or
            ``None`` (``"none"``) to skip.
        attributes: attribute/identity model: shipped name (``attributes``), model file, or ``None``.
        gallery: an ``enroll`` gallery (.npz) for identities, or ``None``.
        identity_threshold: cosine similarity below which a face is ``unknown`` (``None``: the
            gallery's, else the model's, else 0.5).
        detector: the detector's options, whole.
        device: torch device of every model, the detector's included (``cpu``, ``cuda``, ``cuda:N``);
            ``None`` takes the detector's. Once set, ``detector.device`` follows it.
        runtime: what runs the networks: ``auto``, ``torch``, ``onnxruntime``; ``None``:
            ``$FACEBATCH_CPU_RUNTIME``, else ``auto`` (:mod:`facebatch.runtime`).
        heads: more analyzer heads by registered name.
        identity: where face embeddings come from (``identity``: the shipped recognition network; an
            attributes model with an embedding; ``None``: no embeddings). A gallery implies ``identity``.
            Commands set it only when an output needs it (a gallery, embeddings, people): biometric data.
    """

    keypoints: str | None = "keypoints68"
    attributes: str | None = "attributes"
    gallery: str | None = None
    identity_threshold: float | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    device: str | None = None
    runtime: str | None = None
    heads: tuple[str, ...] = ()
    identity: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.detector, dict):
            self.detector = DetectorConfig.from_dict(self.detector)
        self.keypoints, self.attributes = _model(self.keypoints), _model(self.attributes)
        self.identity = _model(self.identity)
        if self.gallery and self.identity is None:
            self.identity = "identity"
        self.gallery = self.gallery or None
        self.heads = tuple(self.heads or ())
        if self.device is None:
            self.device = self.detector.device
        self.detector.device = self.device

    def validate(self) -> "AnalyzerConfig":
        """Check every option before any work (the models themselves are read by :meth:`build`)."""
        self.__post_init__()
        self.detector.validate()
        if not DEVICE_RE.fullmatch(str(self.device)):
            raise ValueError(f"unknown --device {self.device!r}; use cpu, cuda or cuda:N")
        if self.identity == "identity" and not self.keypoints:
            from ..identity.meta import identity_meta
            if identity_meta("identity").get("align") == "keypoints68":
                raise ValueError("the identity model aligns faces on keypoints68: keep --keypoints (keypoints68)")
        return self

    # ------------------------------------------------------------------ travel
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the detector as a nested dict); :meth:`from_dict` gives the config back."""
        d = asdict(self)
        d["heads"] = list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: "dict | AnalyzerConfig | None") -> "AnalyzerConfig":
        """From :meth:`to_dict`'s form (or a config, returned as is); unknown keys are an error."""
        if isinstance(d, AnalyzerConfig):
            return d
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown analyzer option(s) {', '.join(unknown)}")
        return cls(**d)

    # ------------------------------------------------------------------ use
    def build(self, weights_path: str | None = None) -> "FaceAnalyzer":
        """Load every model once: the :class:`~facebatch.inference.FaceAnalyzer` this config describes.

        ``weights_path``: an explicit detector weights file (else the backend's file is searched for).
        """
        from ..detection import create_detector
        from .analyzer import FaceAnalyzer
        self.validate()
        detector = create_detector(replace(self.detector, device=self.device), weights_path=weights_path)
        return FaceAnalyzer.load(detector=detector, keypoints=self.keypoints, attributes=self.attributes,
                                 gallery=self.gallery, device=self.device, identity_threshold=self.identity_threshold,
                                 runtime=self.runtime, heads=list(self.heads), identity=self.identity)


__all__ = ["AnalyzerConfig"]
