"""Prior boxes and output decoding for RetinaFace-style detectors.

Pure torch, no Ray. Coordinates are in pixels of the (padded) network input unless a
function says otherwise. Conventions follow the published RetinaFace models:
priors are ``(cx, cy, w, h)`` normalised by the input size, box offsets are scaled by
``variances[0]`` (centre) and ``variances[1]`` (log size), landmarks by ``variances[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

# Published configuration shared by the MobileNet-0.25 and ResNet-50 RetinaFace models.
DEFAULT_MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
DEFAULT_STEPS: tuple[int, ...] = (8, 16, 32)
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)


@dataclass(frozen=True)
class PriorConfig:
    """Anchor layout of a RetinaFace model.

    Args:
        min_sizes: anchor sizes in pixels, one tuple per feature level.
        steps: stride in pixels of each feature level.
        variances: (centre, size) scaling of the regression outputs.
        clip: clip priors to [0, 1] (off in the published models).
    """

    min_sizes: tuple[tuple[int, ...], ...] = DEFAULT_MIN_SIZES
    steps: tuple[int, ...] = DEFAULT_STEPS
    variances: tuple[float, float] = DEFAULT_VARIANCES
    clip: bool = False


def _feature_size(n: int, step: int) -> int:
    # Each stride-2 3x3 conv with padding 1 maps n -> ceil(n / 2).
    for _ in range(step.bit_length() - 1):
        n = (n + 1) // 2
    return n


@lru_cache(maxsize=64)
def _priors_cached(height: int, width: int, cfg: PriorConfig) -> torch.Tensor:
    rows = []
    for sizes, step in zip(cfg.min_sizes, cfg.steps):
        fh, fw = _feature_size(height, step), _feature_size(width, step)
        ys = (torch.arange(fh, dtype=torch.float32) + 0.5) * step / height
        xs = (torch.arange(fw, dtype=torch.float32) + 0.5) * step / width
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # row-major like the reference
        wh = torch.tensor([[s / width, s / height] for s in sizes], dtype=torch.float32)
        wh = wh.unsqueeze(0).expand(centres.shape[0], -1, -1)
        rows.append(torch.cat([centres.expand(-1, len(sizes), -1), wh], dim=-1).reshape(-1, 4))
    priors = torch.cat(rows, dim=0)
    if cfg.clip:
        priors = priors.clamp(0.0, 1.0)
    return priors


def prior_boxes(height: int, width: int, cfg: PriorConfig = PriorConfig()) -> torch.Tensor:
    """Return the ``(N, 4)`` priors ``(cx, cy, w, h)`` for an input of ``height x width``."""
    return _priors_cached(int(height), int(width), cfg)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=DEFAULT_VARIANCES) -> torch.Tensor:
    """Decode ``(..., N, 4)`` offsets into normalised ``(x1, y1, x2, y2)`` boxes."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variances=DEFAULT_VARIANCES) -> torch.Tensor:
    """Decode ``(..., N, 10)`` landmark offsets into normalised ``(..., N, 5, 2)`` points."""
    pts = pre.reshape(*pre.shape[:-1], 5, 2)
    return priors[..., None, :2] + pts * variances[0] * priors[..., None, 2:]
