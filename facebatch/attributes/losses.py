"""Losses for the face attribute and identity models (pure torch).

Missing labels: binary targets use ``-1`` or ``NaN`` for "no label" (GENKI-4K has no eyeglasses
label and no identity); identity targets use ``-1``. Masked losses average over the labelled
items only and return a graph-connected zero when a batch has none, so a training step never
produces NaN and DDP still sees every parameter used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MARGIN_KINDS = ("cosface", "arcface")


class MarginHead(nn.Module):
    """CosFace / ArcFace head: scaled cosine logits with an additive margin on the true class.

    ``weight`` is the class-weight matrix (one learnable centre per identity). The logits go
    straight into ``F.cross_entropy``.

    * CosFace (Wang et al. 2018): ``s * (cos(theta_y) - m)``; typical ``s=30, m=0.35``.
    * ArcFace (Deng et al. 2019): ``s * cos(theta_y + m)``; typical ``s=64 (or 30), m=0.5``.
      Where ``theta_y + m > pi`` the usual fallback ``cos(theta_y) - m * sin(m)`` keeps the
      target logit monotonic in ``theta_y``.

    Args:
        emb_dim: embedding size.
        n_classes: number of identities.
        s: scale applied to the cosines.
        m: margin (cosine margin for CosFace, angular margin in radians for ArcFace).
        kind: ``"cosface"`` or ``"arcface"``.
    """

    def __init__(self, emb_dim: int, n_classes: int, s: float = 30.0, m: float = 0.35,
                 kind: str = "cosface") -> None:
        super().__init__()
        if kind not in MARGIN_KINDS:
            raise ValueError(f"unknown margin kind {kind!r}; choose one of {MARGIN_KINDS}")
        self.emb_dim, self.n_classes, self.s, self.m, self.kind = emb_dim, n_classes, float(s), float(m), kind
        self.weight = nn.Parameter(torch.empty(n_classes, emb_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, n_classes)`` between embeddings and class centres."""
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Margin logits ``(B, n_classes)``.

        Args:
            emb: embeddings ``(B, emb_dim)`` (normalised here, so need not be unit length).
            labels: true class per row, ``-1`` for unlabelled rows (no margin applied); ``None``
                at inference gives plain ``s * cos``.
        """
        cos = self.cosine(emb)
        if labels is None:
            return self.s * cos
        labels = labels.long()
        valid = labels >= 0
        onehot = torch.zeros_like(cos, dtype=torch.bool)
        if valid.any():
            rows = torch.nonzero(valid).squeeze(1)
            onehot[rows, labels[rows]] = True
        if self.kind == "cosface":
            target = cos - self.m
        else:
            c = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
            sin = torch.sqrt(1.0 - c * c)
            phi = c * math.cos(self.m) - sin * math.sin(self.m)  # cos(theta + m)
            th, mm = math.cos(math.pi - self.m), math.sin(math.pi - self.m) * self.m
            target = torch.where(c > th, phi, c - mm)
        return self.s * torch.where(onehot, target, cos)


def _valid_binary(targets: torch.Tensor) -> torch.Tensor:
    t = targets.float()
    return ~torch.isnan(t) & (t >= 0)


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                           pos_weight: float | torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy over labelled items only.

    Args:
        logits: raw scores ``(B,)``.
        targets: ``1``/``0`` labels, ``-1`` or ``NaN`` where missing.
        pos_weight: weight of positive examples (class balancing, see :func:`pos_weight_from_counts`).
    """
    valid = _valid_binary(targets)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    pw = None
    if pos_weight is not None:
        pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(
        logits[valid], targets.float()[valid].to(logits.dtype), pos_weight=pw)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows with ``label >= 0`` (``-1`` = missing); zero when none.

    Args:
        logits: ``(B, n_classes)``.
        labels: class indices ``(B,)``.
    """
    valid = labels.long() >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], labels.long()[valid])


def pos_weight_from_counts(n_pos: int, n_neg: int, cap: float | None = None) -> float:
    """``n_neg / n_pos``: the BCE ``pos_weight`` that balances a rare positive class.

    Eyeglasses in celeba6k: 287 positive, 5,713 negative -> about 19.9.

    Args:
        n_pos: positive count in the training labels.
        n_neg: negative count.
        cap: optional upper bound (very large weights make training noisy).
    """
    if n_pos <= 0:
        raise ValueError("no positive examples: pos_weight is undefined")
    w = n_neg / n_pos
    return min(w, cap) if cap is not None else w


class MultiTaskLoss(nn.Module):
    """Weighted sum of one masked BCE per binary attribute and the identity margin CE.

    Expects the :class:`~facebatch.attributes.models.MultiTaskFaceNet` output dict (every key
    but ``embedding`` and ``identity_logits`` is an attribute logit ``(B,)``; ``identity_logits``
    with the training margin applied) and a targets dict with the attributes (float, ``-1``/``NaN``
    = missing) and ``identity`` (long, ``-1`` = missing). Absent keys count as all-missing.

    Args:
        eyeglasses_pos_weight: BCE ``pos_weight`` for eyeglasses (``None`` = unweighted).
        smile_pos_weight: BCE ``pos_weight`` for smile.
        weights: per-task loss weights by name (``smile``, ``eyeglasses``, ``identity``, any
            attribute); ``"*"`` is the weight of every attribute not named (default 1).
        pos_weights: BCE ``pos_weight`` of further attributes by name.
    """

    NOT_ATTRIBUTES = ("embedding", "identity_logits")

    def __init__(self, eyeglasses_pos_weight: float | None = None, smile_pos_weight: float | None = None,
                 weights: dict[str, float] | None = None, pos_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.pos_weight = {**(pos_weights or {}), "smile": smile_pos_weight, "eyeglasses": eyeglasses_pos_weight}
        self.weights = {"smile": 1.0, "eyeglasses": 1.0, "identity": 1.0, **(weights or {})}

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(total, parts)`` where ``parts`` holds detached floats for logging."""
        ref = outputs["embedding"]
        parts: dict[str, torch.Tensor] = {}
        for task in [k for k in outputs if k not in self.NOT_ATTRIBUTES]:
            t = targets.get(task)
            if t is None:
                t = torch.full((ref.shape[0],), float("nan"), device=ref.device)
            parts[task] = masked_bce_with_logits(outputs[task], t, self.pos_weight.get(task))
        if "identity_logits" in outputs:
            ids = targets.get("identity")
            if ids is None:
                ids = torch.full((ref.shape[0],), -1, dtype=torch.long, device=ref.device)
            parts["identity"] = masked_cross_entropy(outputs["identity_logits"], ids)
        other = self.weights.get("*", 1.0)
        total = sum(self.weights.get(k, other) * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
