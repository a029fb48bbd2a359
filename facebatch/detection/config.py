"""The detector's options and result type, without torch.

Kept apart from :mod:`.detector` (which needs torch and torchvision, ~2-3 s to import) so that
job drivers and command lines (``facebatch annotate``, ``preprocess``) can build and validate a
:class:`DetectorConfig` and start Ray without importing torch. Re-exported by
:mod:`facebatch.detection` and :mod:`facebatch.detection.detector`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .backends import backend_names, backend_spec

BACKENDS = backend_names()
"""The built-in detector backends (:mod:`.backends` holds the registry, which may grow)."""
#: when a small image (longer side under ``min_side``) is upscaled for detection
UPSCALE_MODES = ("retry", "always", "never")

LANDMARK_NAMES = ("eye_image_left", "eye_image_right", "nose", "mouth_image_left", "mouth_image_right")
"""The 5 landmarks in output order. "image_left" is the subject's right (iBUG 36-41 / 48)."""


@dataclass
class Face:
    """One detected face, in pixels of the original image.

    Attributes:
        box: ``(x1, y1, x2, y2)``.
        score: face probability in [0, 1].
        landmarks: ``(5, 2)`` points in :data:`LANDMARK_NAMES` order.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def to_dict(self) -> dict:
        return {"box": [float(v) for v in self.box], "score": float(self.score),
                "landmarks": [[float(x), float(y)] for x, y in self.landmarks]}


@dataclass
class DetectorConfig:
    """Options shared by every backend.

    Args:
        backend: a registered backend (:mod:`.backends`): ``mobilenet`` (default, fast) or
            ``resnet50`` (retina-face's model).
        score_threshold: minimum face probability kept.
        nms_iou: IoU above which the lower-scoring of two boxes is dropped.
        max_side: images whose longer side exceeds this are downscaled for detection.
        min_side: images whose longer side is below this are upscaled to it for detection as
            ``upscale`` says (RetinaFace misses faces under about 20 px; capped at max_side).
        upscale: ``retry`` (default): a second, upscaled look only where nothing was found, so
            found faces keep the boxes the models were trained on; ``always``: every small image
            (better boxes for tiny faces, but they differ from the training crops); ``never``.
            On the udacity68 val people at half size (44-186 px wide) ``always`` took detection
            recall from 0.985 to 1 and keypoint NME from 0.060 to 0.047, but moved full-size NME
            0.0452 -> 0.0455 and genki4k val smile accuracy 0.956 -> 0.949.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        weights_dir: extra directory searched first for weights files.
        batch_size: images per forward pass (sub-batches are formed by size).
        pre_nms_top_k: candidates kept per image before NMS.
        max_faces: detections kept per image after NMS.
    """

    backend: str = "mobilenet"
    score_threshold: float = 0.5
    nms_iou: float = 0.4
    max_side: int = 640
    min_side: int = 256
    upscale: str = "retry"
    device: str = "cpu"
    weights_dir: str | None = None
    batch_size: int = 16
    pre_nms_top_k: int = 5000
    max_faces: int = 750

    def validate(self) -> "DetectorConfig":
        backend_spec(self.backend)  # a clear error naming the registered backends
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {self.max_side}")
        if self.upscale not in UPSCALE_MODES:
            raise ValueError(f"upscale must be one of {', '.join(UPSCALE_MODES)}, got {self.upscale!r}")
        if self.min_side < 0:
            raise ValueError(f"min_side must be at least 0 (0 = never upscale), got {self.min_side}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return self

    def to_dict(self) -> dict:
        """Plain JSON values; :meth:`from_dict` gives the config back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: "dict | DetectorConfig | None") -> "DetectorConfig":
        """From :meth:`to_dict`'s form (or a config, returned as is); unknown keys are an error."""
        if isinstance(d, DetectorConfig):
            return d
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown detector option(s) {', '.join(unknown)}")
        return cls(**d)
