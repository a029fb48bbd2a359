"""Keypoint regression models (registered in :mod:`facebatch.models`), flip test-time augmentation,
and size/FLOP counters.

Every model takes a float batch ``(B, C, H, W)`` with values in ``[0, 1]`` (it normalises
internally) and returns ``(B, n_points * 2)`` unit coordinates of the crop, ordered
``x0, y0, x1, y1, ...`` with ``u = (x + 0.5) / W`` (see :mod:`.schemes`); regression heads can
leave ``[0, 1]`` for points outside the crop. Each model carries ``input_size`` (side in pixels),
``in_channels`` (1 = grey, 3 = RGB) and ``n_points``.

=====================  ======  =========  ===============================================
name                   input   channels   what
=====================  ======  =========  ===============================================
seed000_resnet18_mlp   256     3 (RGB)    torchvision ResNet-18 (random init) + MLP head
seed001_cnn            96      1 (grey)   Kaggle-style CNN 32-64-128-256 + dense 560-560
seed001_se_cnn         96      1 (grey)   the same with squeeze-and-excitation (r=8)
mobilenet_face_kp      128     3 (RGB)    RetinaFace MobileNet-0.25 body+FPN+SSH (face init
                                          from the detector weights) + soft-argmax heatmaps
resolution_ensemble    any     members'   members at several input sizes, averaged
=====================  ======  =========  ===============================================
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import POINTS, create_model, register
from .schemes import Scheme, get_scheme


class KeypointModel(nn.Module):
    """Base: holds the input contract and normalises ``[0, 1]`` input with ``mean``/``std``."""

    def __init__(self, n_points: int, input_size: int, in_channels: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.n_points, self.input_size, self.in_channels = n_points, input_size, in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_channels}, H, W) input, "
                             f"got {tuple(x.shape)}")
        return (x - self.mean) / self.std


def _unit_head(layer: nn.Linear) -> nn.Linear:
    """Start a regression output near the crop centre: small weights, bias 0.5."""
    nn.init.normal_(layer.weight, std=1e-3)
    nn.init.constant_(layer.bias, 0.5)
    return layer


# ---------------------------------------------------------------- seed 000
@register("seed000_resnet18_mlp", task="keypoints", outputs=(POINTS,), example={"n_points": 15, "input_size": 64},
          example_input=64)
class ResNet18MLP(KeypointModel):
    """ResNet-18 trunk (no pretrained weights), global average pool, 4096-1024 MLP with dropout 0.4.

    Input ``(B, 3, 256, 256)`` RGB in [0, 1] (ImageNet normalisation inside).
    """

    def __init__(self, n_points: int, input_size: int = 256, dropout: float = 0.4) -> None:
        super().__init__(n_points, input_size, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        from torchvision.models import resnet18

        self.trunk = resnet18(weights=None)
        self.trunk.fc = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(512, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            _unit_head(nn.Linear(1024, n_points * 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.normalise(x)))


# ---------------------------------------------------------------- seed 001
class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global pool, C -> C/r -> C, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register("seed001_cnn", task="keypoints", outputs=(POINTS,), channels=1, example={"n_points": 15},
          example_input=96)
class KaggleCNN(KeypointModel):
    """Classic Kaggle facial-keypoint CNN: 4 blocks of (conv-BN-ReLU x2 [+SE], maxpool), dense head.

    Input ``(B, 1, 96, 96)`` grey in [0, 1]. 96 -> 6x6x256 after four pools; dense 9216 -> 560 ->
    560 -> 2K with dropout. ``hidden=560`` puts the plain model at 6.67M parameters for 15 points,
    the size reported for seed 001.
    """

    def __init__(self, n_points: int, input_size: int = 96, widths: tuple[int, ...] = (32, 64, 128, 256),
                 hidden: int = 560, dropout: float = 0.3, se_reduction: int | None = None) -> None:
        super().__init__(n_points, input_size, 1, (0.5,), (0.25,))
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += _conv_bn_relu(cin, w) + _conv_bn_relu(w, w)
            if se_reduction:
                layers.append(SqueezeExcite(w, se_reduction))
            layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            _unit_head(nn.Linear(hidden, n_points * 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalise(x)))


# ---------------------------------------------------------------- MobileNet face keypoints
def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Integral regression: softmax over each map, expected cell centre in unit coordinates.

    Args:
        heatmaps: ``(B, K, H, W)`` logits.

    Returns:
        ``(B, K, 2)`` with ``x = sum p * (col + 0.5) / W`` (and likewise ``y``).
    """
    b, k, h, w = heatmaps.shape
    p = torch.softmax(heatmaps.flatten(2).float(), dim=-1).view(b, k, h, w)
    xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5) / w
    ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


def _dw_sep(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register("seed001_se_cnn", task="keypoints", outputs=(POINTS,), channels=1, example={"n_points": 15},
          example_input=96, description="KaggleCNN with squeeze-and-excitation (r=8)")
def _seed001_se_cnn(n_points: int, **kw) -> "KaggleCNN":
    return KaggleCNN(n_points, se_reduction=8, **kw)


@register("mobilenet_face_kp", task="keypoints", outputs=(POINTS,), example={"n_points": 68}, example_input=128)
class MobileNetFaceKP(KeypointModel):
    """RetinaFace-MobileNet-0.25 body + FPN + SSH with a stride-4 heatmap head and soft-argmax.

    Input ``(B, 3, S, S)`` RGB in [0, 1], ``S`` a multiple of 32 (default 128); converted inside
    to the detector's BGR, 0-255, mean-subtracted convention, so ``pretrained=True`` starts from
    features trained for faces. The three SSH maps (strides 8/16/32) are fused at stride 8,
    upsampled to stride 4 and joined with the body's stride-4 features; one heatmap per point
    (``S/4`` square) gives coordinates by soft-argmax (``head="integral"``), or a pooled linear
    layer regresses them (``head="regression"``).
    """

    def __init__(self, n_points: int, input_size: int = 128, pretrained: bool = False,
                 weights_dir: str | None = None, head: str = "integral") -> None:
        # BGR*255 - (104, 117, 123), expressed on RGB [0, 1] input: (x - mean) / std with std = 1/255
        super().__init__(n_points, input_size, 3, (123 / 255, 117 / 255, 104 / 255), (1 / 255,) * 3)
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        if head not in ("integral", "regression"):
            raise ValueError(f"head must be 'integral' or 'regression', got {head!r}")
        from ..detection.mobilenet import RetinaFaceMobileNet

        det = _load_detector(weights_dir) if pretrained else RetinaFaceMobileNet()
        self.body, self.fpn = det.body, det.fpn
        self.ssh = nn.ModuleList([det.ssh1, det.ssh2, det.ssh3])
        self.head_kind = head
        if head == "integral":
            self.fuse = nn.Sequential(nn.Conv2d(3 * 64, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU(inplace=True))
            self.refine = nn.Sequential(_dw_sep(96 + 32, 64), _dw_sep(64, 64))
            self.heatmap = nn.Conv2d(64, n_points, 1)
        else:
            self.regress = _unit_head(nn.Linear(3 * 64, n_points * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x).flip(1)  # RGB -> BGR
        s1 = self.body.stage1
        c_s4 = s1[:4](x)  # 32 ch, stride 4
        c1 = s1[4:](c_s4)
        c2 = self.body.stage2(c1)
        c3 = self.body.stage3(c2)
        feats = [ssh(f) for ssh, f in zip(self.ssh, self.fpn([c1, c2, c3]))]
        if self.head_kind == "regression":
            pooled = torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats], 1)
            return self.regress(pooled)
        size = feats[0].shape[-2:]
        f = self.fuse(torch.cat([feats[0]] + [F.interpolate(t, size=size, mode="nearest") for t in feats[1:]], 1))
        f = F.interpolate(f, size=c_s4.shape[-2:], mode="bilinear", align_corners=False)
        hm = self.heatmap(self.refine(torch.cat([f, c_s4], 1)))
        return soft_argmax(hm).flatten(1)


def _load_detector(weights_dir: str | None):
    from ..detection.mobilenet_backend import load_mobilenet_retinaface
    from ..weights import WeightsNotFoundError

    try:
        net, _ = load_mobilenet_retinaface(weights_dir)
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(
            f"mobilenet_face_kp(pretrained=True) starts from the RetinaFace-MobileNet-0.25 detector "
            f"weights, which were not found; pass pretrained=False to train from random init.\n{e}") from e
    return net.train()


@register("kaggle15_from_ibug68", task="keypoints", outputs=(POINTS,),
          example={"n_points": 15, "input_size": 64}, example_input=64)
class Kaggle15From68(nn.Module):
    """A 68-point model whose output is mapped to the 15 Kaggle points by the fixed
    :func:`facebatch.keypoints.schemes.ibug68_to_kaggle15` table (a linear map: means and picks).

    Args:
        n_points: must be 15.
        base: registry name of the 68-point model; ``base_kwargs`` build it.
    """

    def __init__(self, n_points: int = 15, base: str = "mobilenet_face_kp", input_size: int = 128, **base_kwargs) -> None:
        super().__init__()
        from .schemes import IBUG68_TO_KAGGLE15
        if n_points != 15:
            raise ValueError("Kaggle15From68 predicts 15 points")
        self.base = create_model(base, n_points=68, input_size=input_size, **base_kwargs)
        self.n_points, self.input_size, self.in_channels = 15, self.base.input_size, self.base.in_channels
        m = torch.zeros(15, 68)
        for row, (_, idx) in enumerate(IBUG68_TO_KAGGLE15):
            m[row, list(idx)] = 1.0 / len(idx)
        self.register_buffer("mapping", m, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pts = self.base(x).view(x.shape[0], 68, 2)
        return torch.einsum("kj,bjc->bkc", self.mapping, pts).reshape(x.shape[0], 30)


@register("resolution_ensemble", task="keypoints", outputs=(POINTS,),
          example={"n_points": 68, "members": [{"model": "mobilenet_face_kp", "input_size": 64},
                                               {"model": "mobilenet_face_kp", "input_size": 96}]},
          example_input=96)
class ResolutionEnsemble(nn.Module):
    """Snapshots of one keypoint network trained at several input sizes, averaged.

    Each member sees the crop resized to its own ``input_size`` (antialiased when shrinking);
    the unit coordinates they return are averaged. The release ``keypoints68`` is the 128,
    160 and 192 px stages of one run: 1.4% lower NME than its best member on the by-person
    validation split, at the members' summed cost.

    Args:
        n_points: keypoints per face (every member predicts the same points).
        members: one dict per member: ``{"model": registry name, "input_size": px, **kwargs}``.
        input_size: the side of the crop the ensemble is fed (the largest member's by default).
    """

    def __init__(self, n_points: int, members: list[dict], input_size: int | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(
            create_model(m["model"], n_points=n_points, **{k: v for k, v in m.items() if k not in ("model", "pretrained")})
            for m in members)
        channels = {m.in_channels for m in self.members}
        if len(channels) != 1:
            raise ValueError(f"ensemble members take different channel counts: {sorted(channels)}")
        self.n_points, self.in_channels = n_points, channels.pop()
        self.input_size = int(input_size or max(m.input_size for m in self.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for m in self.members:
            xi = x
            if x.shape[-1] != m.input_size or x.shape[-2] != m.input_size:
                xi = F.interpolate(x, size=(m.input_size, m.input_size), mode="bilinear", align_corners=False,
                                   antialias=m.input_size < x.shape[-1])
            outs.append(m(xi))
        return torch.stack(outs).mean(0)


@torch.no_grad()
def predict_with_flip(model: nn.Module, x: torch.Tensor, scheme: Scheme | str) -> torch.Tensor:
    """Average the predictions for ``x`` and its mirror image (flip test-time augmentation).

    The mirror's prediction is mapped back with ``u -> 1 - u`` and the scheme's left/right
    permutation before averaging. Runs without gradients; put the model in eval mode first.

    Args:
        model: a keypoint model returning ``(B, K*2)`` unit coordinates.
        x: ``(B, C, H, W)`` input batch.
        scheme: layout of the ``K`` points.
    """
    scheme = get_scheme(scheme)
    b = x.shape[0]
    y = model(x).view(b, -1, 2)
    yf = model(x.flip(-1)).view(b, -1, 2)
    yf = torch.stack([1.0 - yf[..., 0], yf[..., 1]], -1)[:, list(scheme.flip_perm)]
    return ((y + yf) / 2).reshape(b, -1)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass (torch's counter: a multiply-add is 2 FLOPs), in eval mode.

    Args:
        model: any module.
        input_shape: e.g. ``(1, 3, 128, 128)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
