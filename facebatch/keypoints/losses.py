"""Masked keypoint losses: NaN targets drop out of the loss and never produce NaN gradients.

``pred`` and ``target`` have the same shape, e.g. ``(B, K*2)`` or ``(B, K, 2)``. A coordinate is
used when its target is finite (and ``mask`` is true, if given). The loss is the mean over used
coordinates; with none used it is 0 with a zero gradient. The NaN is replaced inside the loss with
``torch.where`` *before* any arithmetic touches it, which is what keeps the gradient finite.
"""
from __future__ import annotations

import math

import torch


def _masked_diff(pred: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    m = torch.isfinite(target)
    if mask is not None:
        m = m & mask.to(torch.bool).expand_as(m)
    safe_target = torch.where(m, target, pred.detach())
    diff = torch.where(m, pred - safe_target, torch.zeros_like(pred))
    return diff, m


def _mean(values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return values.sum() / m.sum().clamp(min=1).to(values.dtype)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over present coordinates.

    Args:
        pred: predictions.
        target: targets, NaN where missing.
        mask: optional extra boolean mask, broadcastable to ``target``.
    """
    diff, m = _masked_diff(pred, target, mask)
    return _mean(diff ** 2, m)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over present coordinates.

    Args:
        pred: predictions.
        target: targets, NaN where missing.
        mask: optional extra boolean mask, broadcastable to ``target``.
    """
    diff, m = _masked_diff(pred, target, mask)
    return _mean(diff.abs(), m)


def masked_wing(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                width: float = 10.0, curvature: float = 2.0, scale: float = 96.0) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018) over present coordinates.

    ``wing(x) = w ln(1 + |x|/eps)`` for ``|x| < w``, else ``|x| - C`` with ``C = w - w ln(1 + w/eps)``,
    where ``x`` is the error multiplied by ``scale``; with unit coordinates and ``scale=96`` the
    paper's ``w=10, eps=2`` read as pixels of a 96-pixel crop.

    Args:
        pred: predictions.
        target: targets, NaN where missing.
        mask: optional extra boolean mask, broadcastable to ``target``.
        width: ``w``, the range of the log part (in scaled units).
        curvature: ``eps``.
        scale: factor applied to the error first.
    """
    diff, m = _masked_diff(pred, target, mask)
    x = (diff * scale).abs()
    c = width - width * math.log(1.0 + width / curvature)
    loss = torch.where(x < width, width * torch.log1p(x / curvature), x - c)
    return _mean(torch.where(m, loss, torch.zeros_like(loss)), m)


LOSSES = {"mse": masked_mse, "l1": masked_l1, "wing": masked_wing}
