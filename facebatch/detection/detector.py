"""Batched face detection: images of different sizes in, a list of faces per image out.

:class:`BatchDetector` owns everything that is the same for every backend: downscaling
to ``max_side``, packing images of similar size into padded sub-batches, score
filtering, NMS, and mapping boxes and landmarks back to the original pixels. A backend
(:mod:`.mobilenet_backend`, :mod:`.resnet50`) turns an image into a network tensor and a
padded batch into candidate detections.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

# the torch-free part (options, result type) lives in .config; re-exported here for existing imports
from .config import LANDMARK_NAMES, DetectorConfig, Face  # noqa: F401

@dataclass
class Candidates:
    """Raw detections of one image in pixels of the network input, before NMS."""

    boxes: torch.Tensor  # (N, 4)
    scores: torch.Tensor  # (N,)
    landmarks: torch.Tensor  # (N, 5, 2)


class Backend(Protocol):
    """What a detector backend provides to :class:`BatchDetector`."""

    name: str
    weights_path: Path | None
    weights_sha256: str | None
    pad_multiple: int

    def to_tensor(self, image: np.ndarray, scale: float) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float ``(3, h, w)``, resized by ``scale``; 0 is the pad value."""

    def forward(self, batch: torch.Tensor, sizes: list[tuple[int, int]], score_threshold: float,
                top_k: int) -> list[Candidates]:
        """Run the network on a padded batch; ``sizes`` are the unpadded ``(h, w)``."""


def resize_chw(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize a ``(3, H, W)`` float tensor by ``scale`` (antialiased when shrinking)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=scale < 1.0)[0]


def pack_by_size(shapes: Sequence[tuple[int, int]], max_batch: int, max_waste: float = 2.0) -> list[list[int]]:
    """Group image indices into sub-batches whose padded area stays within ``max_waste`` of each image.

    Sorting by area keeps similar sizes together, so a batch of mixed sizes costs little
    more than its images would one by one. Deterministic for a given input.
    """
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i][0] * shapes[i][1], i), reverse=True)
    groups: list[list[int]] = []
    cur: list[int] = []
    gh = gw = 0
    for i in order:
        h, w = shapes[i]
        nh, nw = max(gh, h), max(gw, w)
        if cur and (len(cur) >= max_batch or nh * nw > max_waste * h * w):
            groups.append(cur)
            cur, nh, nw = [], h, w
        cur.append(i)
        gh, gw = nh, nw
    if cur:
        groups.append(cur)
    return groups


def pack_by_padded_shape(shapes: Sequence[tuple[int, int]], multiple: int, max_batch: int) -> list[list[int]]:
    """Group image indices whose network input pads to the same shape (a multiple of ``multiple``),
    in chunks of ``max_batch``: no image is padded beyond what it would be alone."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(shapes):
        key = (int(math.ceil(h / multiple) * multiple), int(math.ceil(w / multiple) * multiple))
        by_shape.setdefault(key, []).append(i)
    return [idx[j:j + max_batch] for idx in by_shape.values() for j in range(0, len(idx), max_batch)]


class BatchDetector:
    """Detect faces in batches of RGB images of any sizes.

    Use :func:`facebatch.detection.create_detector` to build one.
    """

    def __init__(self, backend: Backend, config: DetectorConfig) -> None:
        self.backend = backend
        self.config = config.validate()
        self.device = torch.device(config.device)

    @property
    def info(self) -> dict:
        """Backend name, weights file and sha256, and options: what produced a result."""
        return {"backend": self.backend.name,
                "weights": str(self.backend.weights_path) if self.backend.weights_path else None,
                "weights_sha256": self.backend.weights_sha256, "config": self.config.to_dict()}

    def scale_for(self, h: int, w: int, retry: bool = False) -> float:
        """Detection scale of an ``h x w`` image: down to ``max_side``; up to ``min_side`` for a
        small image always (``upscale="always"``) or, with ``retry``, on the second look at a
        small image where nothing was found (``upscale="retry"``)."""
        longest = max(h, w)
        if longest <= 0:
            return 1.0
        floor = min(self.config.min_side, self.config.max_side)
        if longest < floor and (retry or self.config.upscale == "always"):
            return floor / longest
        return min(1.0, self.config.max_side / longest)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], exact: bool = False) -> list[list[Face]]:
        """Detect faces in each image.

        Args:
            images: RGB ``uint8`` arrays of shape ``(H, W, 3)``, sizes may differ.
            exact: batch only images with the same padded network input, so each image gets
                exactly its answer alone. Otherwise images of similar size share a padded batch,
                which is faster for mixed sizes but moves boxes near a padded border by a few
                thousandths of a pixel.

        Returns:
            One list per image of :class:`Face`, highest score first.
        """
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected an RGB image of shape (H, W, 3), got {img.shape}")
        results = self._detect(images, [self.scale_for(*img.shape[:2]) for img in images], exact)
        if self.config.upscale == "retry":  # small images with nothing found get a second, upscaled look
            retry = {i: self.scale_for(*img.shape[:2], retry=True) for i, img in enumerate(images) if not results[i]}
            again = [i for i, s in retry.items() if s > 1.0]
            if again:
                second = self._detect([images[i] for i in again], [retry[i] for i in again], exact)
                for i, r in zip(again, second):
                    results[i] = r
        return results

    def _detect(self, images: Sequence[np.ndarray], scales: list[float], exact: bool) -> list[list[Face]]:
        results: list[list[Face]] = [[] for _ in images]
        tensors = [self.backend.to_tensor(img, s) for img, s in zip(images, scales)]
        shapes = [tuple(t.shape[-2:]) for t in tensors]
        m = self.backend.pad_multiple
        groups = pack_by_padded_shape(shapes, m, self.config.batch_size) if exact else \
            pack_by_size(shapes, self.config.batch_size)
        for group in groups:
            hp = int(math.ceil(max(shapes[i][0] for i in group) / m) * m)
            wp = int(math.ceil(max(shapes[i][1] for i in group) / m) * m)
            batch = torch.zeros((len(group), 3, hp, wp), dtype=torch.float32)
            for k, i in enumerate(group):
                h, w = shapes[i]
                batch[k, :, :h, :w] = tensors[i]
            cands = self.backend.forward(batch.to(self.device), [shapes[i] for i in group],
                                         self.config.score_threshold, self.config.pre_nms_top_k)
            for k, i in enumerate(group):
                results[i] = self._finish(cands[k], scales[i], images[i].shape[:2])
        return results

    def _finish(self, c: Candidates, scale: float, hw: tuple[int, int]) -> list[Face]:
        if c.scores.numel() == 0:
            return []
        keep = nms(c.boxes.float(), c.scores.float(), self.config.nms_iou)[: self.config.max_faces]
        boxes = (c.boxes[keep] / scale).cpu().numpy()
        scores = c.scores[keep].cpu().numpy()
        lms = (c.landmarks[keep] / scale).cpu().numpy()
        h, w = hw
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return [Face(box=boxes[j].astype(np.float32), score=float(scores[j]),
                     landmarks=lms[j].astype(np.float32)) for j in range(len(scores))]
