"""Face attribute and identity models (pure torch), registered in :mod:`facebatch.models`.

Input contract, the same for every registered model: a float tensor ``(B, 3, S, S)``, RGB,
values in ``[0, 1]``. Any further normalisation (mean/std, BGR reordering) happens inside the
model; :func:`facebatch.inference.inputs.model_input` builds the input from face crops.

| name | input | output of ``forward`` |
|---|---|---|
| ``seed002_cnn`` | 64 px | smile logits ``(B, 2)`` (class 1 = smiling; softmax in the loss) |
| ``seed002_autoencoder`` | 64 px | reconstruction ``(B, 3, 64, 64)`` in ``[0, 1]``; classify with ``predict`` |
| ``seed004_cnn`` | 160 px | eyeglasses logits ``(B, 2)`` (class 1 = eyeglasses) |
| ``seed003_cnn`` | 224 px | identity logits ``(B, n_classes)`` |
| ``multitask`` | 128 px by default | dict: one logit ``(B,)`` per attribute (``smile``, ``eyeglasses`` by default; the release has 39 CelebA attributes), ``embedding`` ``(B, emb_dim)`` unit length, ``identity_logits`` ``(B, n_identities)`` when it has a margin head |
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import ATTRIBUTE_LOGITS, BINARY_LOGITS, CLASS_LOGITS, EMBEDDING, RECONSTRUCTION, register
from ..models.files import read_model_file, resolve_model_path
from .losses import MarginHead

# ----------------------------------------------------------------------------- helpers


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters.

    Args:
        model: the module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: int, batch: int = 1) -> int:
    """Forward FLOPs (multiply and add counted separately) from ``torch.utils.flop_counter``.

    Args:
        model: the module (run in eval mode, no grad).
        input_size: square input side.
        batch: batch size of the dummy input.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.rand(batch, 3, input_size, input_size))
    model.train(was_training)
    return int(fc.get_total_flops())


def state_dict_sha256(model: nn.Module) -> str:
    """A content hash of a model's state dict (names, shapes, values); for gallery metadata.

    Args:
        model: the module.
    """
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class InputNorm(nn.Module):
    """Maps RGB ``[0, 1]`` input to what a backbone expects (kept as buffers, not trained).

    Args:
        mode: ``"symmetric"`` ((x - 0.5) / 0.5), ``"imagenet"`` (ImageNet mean/std),
            ``"retina_bgr"`` (RetinaFace: BGR, 0-255, minus mean (104, 117, 123)) or ``"none"``.
    """

    MODES = ("symmetric", "imagenet", "retina_bgr", "none")

    def __init__(self, mode: str = "symmetric") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown input normalisation {mode!r}; choose one of {self.MODES}")
        self.mode = mode
        mean, std = {"symmetric": ((0.5,) * 3, (0.5,) * 3),
                     "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                     "retina_bgr": ((123 / 255, 117 / 255, 104 / 255), (1 / 255,) * 3),
                     "none": ((0.0,) * 3, (1.0,) * 3)}[mode]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.flip(1) if self.mode == "retina_bgr" else x


# ----------------------------------------------------------------------------- seed models


@register("seed002_cnn", task="attributes", outputs=(BINARY_LOGITS,), fixed_input=64,
          description="seed 002 smile CNN: logits (B, 2); softmax[:, 1] = P(smiling)")
class Seed002CNN(nn.Module):
    """Smile CNN of seed 002: conv32 3x3, max-pool, conv64 3x3, max-pool, dense 128, 2-way output.

    Keras-style ``valid`` convolutions on 64x64: 64 -> 62 -> 31 -> 29 -> 14, so the dense layer
    sees 14*14*64 = 12,544 features; 1,625,410 parameters. Returns logits ``(B, 2)``.

    Args:
        n_classes: output classes (2: not smiling / smiling).
    """

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 14 * 14, 128), nn.ReLU(inplace=True), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def pixel_histograms(x: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Per-image normalised histograms of pixel values in ``[0, 1]`` (all channels pooled).

    Args:
        x: images ``(B, C, H, W)``.
        bins: equal-width bins over ``[0, 1]``.
    """
    b = x.shape[0]
    idx = (x.detach().reshape(b, -1).clamp(0.0, 1.0) * bins).long().clamp_(max=bins - 1)
    h = torch.zeros(b, bins, dtype=torch.float64, device=x.device)
    h.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return h / h.sum(dim=1, keepdim=True)


def wasserstein_histograms(p: Any, q: Any, bin_width: float = 1.0) -> Any:
    """1-D Wasserstein-1 distance between histograms on the same equal-width bins.

    ``W1 = bin_width * sum_k |CDF_p(k) - CDF_q(k)|``; histograms are normalised first. Works on
    numpy arrays and torch tensors; the last axis is the bins, leading axes are batched.

    Args:
        p: histogram(s) (counts or probabilities).
        q: histogram(s) of the same shape.
        bin_width: width of one bin in value units (``1 / bins`` for values in ``[0, 1]``).
    """
    if isinstance(p, torch.Tensor):
        p, q = p.double(), q.double()
        cp = torch.cumsum(p / p.sum(-1, keepdim=True), -1)
        cq = torch.cumsum(q / q.sum(-1, keepdim=True), -1)
        return (cp - cq).abs()[..., :-1].sum(-1) * bin_width
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    cp = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    cq = np.cumsum(q / q.sum(-1, keepdims=True), -1)
    return np.abs(cp - cq)[..., :-1].sum(-1) * bin_width


@register("seed002_autoencoder", task="attributes", outputs=(RECONSTRUCTION,), example_input=64,
          description="seed 002 smile autoencoder: reconstruction; score() = -error, predict() at its threshold")
class SmileAutoencoder(nn.Module):
    """Seed 002's anomaly detector: a conv autoencoder trained on smiling faces only.

    A face is called smiling when its reconstruction error (the Wasserstein distance between
    the pixel-value histograms of input and reconstruction, in ``[0, 1]`` value units) is at most
    ``threshold``, fitted by :meth:`fit_threshold` as a quantile (0.9 to 1.0) of the errors on
    the smiling training faces. Train ``forward`` with MSE against the input.

    Args:
        bins: histogram bins for the error.
    """

    def __init__(self, bins: int = 64) -> None:
        super().__init__()
        self.bins = bins
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),   # 32
            nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 16
            nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))   # 8x8x8 code
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 32, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 32, 2, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(32, 3, 3, padding=1), nn.Sigmoid())
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Wasserstein distance ``(B,)`` between pixel histograms of ``x`` and its reconstruction.

        Args:
            x: images ``(B, 3, 64, 64)`` in ``[0, 1]``.
        """
        rec = self(x)
        return wasserstein_histograms(pixel_histograms(x, self.bins), pixel_histograms(rec, self.bins),
                                      1.0 / self.bins).float()

    def fit_threshold(self, train_errors: Any, quantile: float = 0.95) -> float:
        """Set ``threshold`` to a quantile of the smiling training faces' errors and return it.

        Args:
            train_errors: errors of the (smiling) training faces.
            quantile: between 0.9 and 1.0 (1.0 = the largest training error).
        """
        if not 0.9 <= quantile <= 1.0:
            raise ValueError(f"quantile must be between 0.9 and 1.0, got {quantile}")
        err = np.asarray(torch.as_tensor(train_errors).detach().cpu(), dtype=np.float64).ravel()
        if err.size == 0:
            raise ValueError("no training errors given")
        t = float(np.quantile(err, quantile))
        self.threshold.fill_(t)
        return t

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Smile score ``(B,)``: the negated error (higher = more smile-like; for ROC AUC).

        Args:
            x: images ``(B, 3, 64, 64)`` in ``[0, 1]``.
        """
        return -self.reconstruction_error(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``1`` (smiling) where the error is at most ``threshold``, else ``0``; ``(B,)`` long.

        Args:
            x: images ``(B, 3, 64, 64)`` in ``[0, 1]``.
        """
        if torch.isnan(self.threshold):
            raise RuntimeError("threshold not fitted: call fit_threshold(train_errors) first")
        return (self.reconstruction_error(x) <= self.threshold).long()


def _vgg_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


@register("seed004_cnn", task="attributes", outputs=(BINARY_LOGITS,), fixed_input=160,
          description="seed 004 eyeglasses CNN: logits (B, 2); softmax[:, 1] = P(eyeglasses)")
class Seed004CNN(nn.Module):
    """Eyeglasses CNN of seed 004 on 160x160: four conv-BN-ReLU-pool blocks (32, 64, 128, 128),
    160 -> 10 px, flatten, dropout, dense 128, 2-way output. Returns logits ``(B, 2)``.

    Args:
        n_classes: output classes (2: no eyeglasses / eyeglasses).
        dropout: dropout before the dense layers.
    """

    def __init__(self, n_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(_vgg_block(3, 32), _vgg_block(32, 64), _vgg_block(64, 128),
                                      _vgg_block(128, 128))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * 10 * 10, 128),
                                        nn.ReLU(inplace=True), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("seed003_cnn", task="attributes", outputs=(CLASS_LOGITS, EMBEDDING), example={"n_classes": 5},
          example_input=224, description="seed 003 identity CNN: logits (B, n_classes); embed() the 512-d layer")
class Seed003CNN(nn.Module):
    """Identity CNN of seed 003 on 224x224: a VGG-style stack of five conv-BN-ReLU-pool blocks
    (32, 64, 128, 256, 256), 224 -> 7 px, global average pool, dense 512, dropout,
    ``n_classes`` output. Returns logits ``(B, n_classes)``.

    Args:
        n_classes: number of identities (200 in celeba6k).
        dropout: dropout before the output layer.
    """

    def __init__(self, n_classes: int = 200, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(_vgg_block(3, 32), _vgg_block(32, 64), _vgg_block(64, 128),
                                      _vgg_block(128, 256), _vgg_block(256, 256))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 512),
                                        nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length identity embeddings ``(B, 512)``: the penultimate (dense 512, ReLU) layer."""
        return F.normalize(self.classifier[:4](self.features(x)).float(), dim=1)


# ----------------------------------------------------------------------------- multitask


class RetinaMobileNetBackbone(nn.Module):
    """The MobileNet-0.25 body of the RetinaFace detector (stride 32, 256 channels).

    Expects RetinaFace's input convention (BGR, 0-255, mean subtracted):
    :class:`MultiTaskFaceNet` puts ``InputNorm("retina_bgr")`` in front of it.

    Args:
        pretrained: ``True`` (or ``"detector"``) copies the body weights from the detector's
            ``mobilenet0.25_Final.pth``; a shipped model name or model file (``"keypoints68"``)
            copies the body of that model instead.
        weights_path: explicit weights file (default: the usual weights search).
    """

    out_channels = 256

    def __init__(self, pretrained: bool | str = False, weights_path: str | None = None) -> None:
        super().__init__()
        from ..detection.mobilenet import MobileNetV1

        self.body = MobileNetV1()
        self.weights_sha256: str | None = None
        if isinstance(pretrained, str) and pretrained not in ("detector", "true"):
            # a facebatch model whose network has the same MobileNet-0.25 body (e.g. keypoints68):
            # start from features trained for landmarks, which encode the eyes and the mouth
            from ..weights import sha256_file

            path = resolve_model_path(pretrained)
            sd = read_model_file(path)["state_dict"]
            # a single network keeps its body under body.*; an ensemble (keypoints68) under members.N.body.*:
            # take the first member's
            prefix = "body." if any(k.startswith("body.") for k in sd) else "members.0.body."
            state = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
            if not state:
                raise ValueError(f"{path} has no MobileNet body (keys body.*) to start the attribute backbone from")
            self.body.load_state_dict(state, strict=True)
            self.weights_sha256 = sha256_file(path)
        elif pretrained:
            from ..detection.mobilenet_backend import load_mobilenet_retinaface
            from ..weights import sha256_file

            net, wpath = load_mobilenet_retinaface(path=weights_path)
            self.body.load_state_dict(net.body.state_dict(), strict=True)
            self.weights_sha256 = sha256_file(wpath)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[-1]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.short(x), inplace=True)


class SmallResNet(nn.Module):
    """A narrow ResNet for faces, trained from scratch: stride-2 stem, four stages
    (stride 1, 2, 2, 2; overall stride 16), ``blocks`` basic blocks each.

    Args:
        widths: channels of the four stages.
        blocks: basic blocks per stage.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), blocks: Sequence[int] = (1, 1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


BACKBONES = ("retina_mobilenet", "resnet_small")
#: the attribute heads of a multitask model made without ``attributes`` (and of every file from before it)
DEFAULT_ATTRIBUTES = ("smile", "eyeglasses")
#: output names a multitask model uses for other things
NOT_ATTRIBUTES = ("embedding", "identity_logits")
#: state-dict prefixes a fine-tune may find missing in its start file (new attributes and a margin
#: head start fresh) or in the new model (the start's fitted identity projection is left behind)
FRESH_PREFIXES = ("attribute_heads.", "margin_head.", "lda_")


def upgrade_old_heads(state: dict) -> dict:
    """Files from before ``attributes=`` keep ``smile_head.*`` and ``eyeglasses_head.*``: the same
    state with them as ``attribute_heads.smile.*`` and ``attribute_heads.eyeglasses.*``."""
    out = {}
    for k, v in state.items():
        head = k.split(".", 1)[0]
        if head in (f"{a}_head" for a in DEFAULT_ATTRIBUTES):
            k = f"attribute_heads.{head[:-len('_head')]}.{k.split('.', 1)[1]}"
        out[k] = v
    return out


def _last_output(out: Any) -> torch.Tensor:
    """A backbone's output tensor: the last one of a list/tuple/dict of them."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        out = out[-1]
    return out


def _backbone_features(out: Any) -> torch.Tensor:
    out = _last_output(out)
    if out.dim() == 4:
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
    if out.dim() == 2:
        return out
    raise ValueError(f"backbone output must be (B, C, H, W) or (B, C), got shape {tuple(out.shape)}")


@register("multitask", task="attributes", outputs=(ATTRIBUTE_LOGITS, EMBEDDING),
          example={"backbone": "resnet_small", "resnet_widths": [8, 8, 16, 16], "input_size": 64, "emb_dim": 16},
          example_input=64, description="shared backbone; one logit per attribute, unit embedding, margin head")
class MultiTaskFaceNet(nn.Module):
    """One shared backbone with one logit per binary attribute and an identity-embedding head.

    Input: RGB ``[0, 1]``, ``(B, 3, input_size, input_size)``. The backbone's feature map is
    global-average pooled to ``C`` features; then

    * one entry per name in ``attributes`` (``smile``, ``eyeglasses``, ...): dropout + linear ->
      one logit each, ``(B,)`` (multi-label: independent sigmoids; train with masked BCE);
    * ``embedding``: linear (no bias) + BatchNorm1d -> L2-normalised ``(B, emb_dim)``;
    * ``identity_logits`` (only with ``n_identities > 0``): the CosFace/ArcFace
      :class:`~facebatch.attributes.losses.MarginHead` on the embedding. Pass ``identity=labels``
      while training to apply the margin; without labels they are plain ``s * cos``. The head is
      part of the model so one DDP wrapper syncs its class-weight matrix; drop it for release
      with :meth:`drop_margin_head`.

    Args:
        attributes: the binary attributes, one linear head each (``attribute_heads.NAME``);
            files from before this option hold ``smile_head`` and ``eyeglasses_head``, which load
            as ``attribute_heads.smile`` and ``attribute_heads.eyeglasses`` (:meth:`upgrade_state`).
        backbone: ``"retina_mobilenet"`` (RetinaFace MobileNet-0.25 body, 256 channels),
            ``"resnet_small"`` (:class:`SmallResNet` from scratch), or any ``nn.Module`` mapping
            the normalised image to ``(B, C, H, W)``, ``(B, C)`` or a list/tuple/dict of them (the
            last is used), e.g. a keypoint model's feature extractor.
        pretrained: for ``retina_mobilenet``: start from the detector weights (``True``), or from
            the body of a keypoint model (its name or file, e.g. ``"keypoints68"``).
        input_size: square input side (used to size a generic backbone and recorded in ``config``).
        emb_dim: identity embedding size.
        n_identities: training identities for the margin head (0 = no head).
        margin: ``"cosface"`` or ``"arcface"``.
        s: margin-head scale.
        m: margin.
        dropout: dropout before the attribute heads.
        input_norm: :class:`InputNorm` mode; default ``retina_bgr`` for ``retina_mobilenet``,
            ``symmetric`` otherwise.
        weights_path: explicit detector weights file for ``pretrained``.
        resnet_widths: stage widths for ``resnet_small``.
        resnet_blocks: blocks per stage for ``resnet_small``.
        lda_dim: with ``lda_dim > 0`` the identity ``embedding`` is a fixed linear projection
            (buffers ``lda_mean`` and ``lda_proj``) of the backbone's last feature map, pooled to
            ``lda_grid x lda_grid`` cells, flattened and L2-normalised; the buffers are fitted
            in closed form after training (:func:`facebatch.attributes.lda.fit_lda`,
            ``tools/fit_identity_lda.py``). The trained ``embedding_head`` still feeds the
            margin head. 0 (default): the embedding is ``embedding_head``'s output.
        lda_grid: the cells per side of the pooled map for ``lda_dim`` (5 = the stride-32 map of
            a 160 px input, unpooled).
    """

    fresh_prefixes = FRESH_PREFIXES

    def __init__(self, backbone: str | nn.Module = "retina_mobilenet", pretrained: bool | str = False,
                 input_size: int = 128, emb_dim: int = 128, n_identities: int = 0, margin: str = "cosface",
                 s: float = 30.0, m: float = 0.35, dropout: float = 0.2, input_norm: str | None = None,
                 weights_path: str | None = None, resnet_widths: Sequence[int] = (32, 64, 128, 256),
                 resnet_blocks: Sequence[int] = (1, 1, 1, 1), lda_dim: int = 0, lda_grid: int = 5,
                 attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> None:
        super().__init__()
        self.attributes = [str(a) for a in attributes]
        clash = [a for a in self.attributes if a in NOT_ATTRIBUTES or not a or "." in a]
        if clash or len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attribute names must be unique, without '.', and not {NOT_ATTRIBUTES}; got {clash or self.attributes}")
        if isinstance(backbone, str):
            if backbone == "retina_mobilenet":
                self.backbone: nn.Module = RetinaMobileNetBackbone(pretrained, weights_path)
            elif backbone == "resnet_small":
                if pretrained:
                    raise ValueError("resnet_small has no pretrained weights; use pretrained=False")
                self.backbone = SmallResNet(resnet_widths, resnet_blocks)
            else:
                raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES} or pass a module")
            backbone_name = backbone
        else:
            self.backbone = backbone
            backbone_name = type(backbone).__name__
        if input_norm is None:
            input_norm = "retina_bgr" if backbone_name == "retina_mobilenet" else "symmetric"
        self.input_norm = InputNorm(input_norm)
        feat_dim = self._infer_feature_dim(input_size)
        self.feature_dim = feat_dim
        self.dropout = nn.Dropout(dropout)
        self.attribute_heads = nn.ModuleDict({a: nn.Linear(feat_dim, 1) for a in self.attributes})
        self.embedding_head = nn.Sequential(nn.Linear(feat_dim, emb_dim, bias=False), nn.BatchNorm1d(emb_dim))
        self.margin_head = MarginHead(emb_dim, n_identities, s, m, margin) if n_identities > 0 else None
        self.lda_dim, self.lda_grid = int(lda_dim), int(lda_grid)
        if self.lda_dim > 0:
            d = feat_dim * self.lda_grid ** 2
            self.register_buffer("lda_mean", torch.zeros(d))
            self.register_buffer("lda_proj", torch.zeros(d, self.lda_dim))
        self.config: dict[str, Any] = dict(
            backbone=backbone_name, input_size=input_size, emb_dim=emb_dim, n_identities=n_identities,
            margin=margin, s=s, m=m, dropout=dropout, input_norm=input_norm,
            resnet_widths=list(resnet_widths), resnet_blocks=list(resnet_blocks),
            backbone_weights_sha256=getattr(self.backbone, "weights_sha256", None),
            lda_dim=self.lda_dim, lda_grid=self.lda_grid, attributes=list(self.attributes))

    @staticmethod
    def upgrade_state(state: dict) -> dict:
        """A state dict from an older file in today's key names (:func:`upgrade_old_heads`);
        :func:`facebatch.weights.load_into` calls it before the strict load."""
        return upgrade_old_heads(state)

    def _infer_feature_dim(self, input_size: int) -> int:
        known = getattr(self.backbone, "out_channels", None)
        if isinstance(known, int):
            return known
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            out = _backbone_features(self.backbone(self.input_norm(torch.rand(1, 3, input_size, input_size))))
        self.backbone.train(was)
        return int(out.shape[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, C)``.

        Args:
            x: RGB ``[0, 1]`` images ``(B, 3, S, S)``.
        """
        return _backbone_features(self.feature_map(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``(B, C, H, W)`` (what :meth:`lda_features` reads).

        Args:
            x: RGB ``[0, 1]`` images ``(B, 3, S, S)``.
        """
        return _last_output(self.backbone(self.input_norm(x)))

    def lda_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """The LDA projection's input: the feature map pooled to ``lda_grid`` cells per side,
        flattened, L2-normalised ``(B, C * lda_grid**2)``."""
        if fmap.dim() != 4:
            raise ValueError("lda_dim needs a backbone with a (B, C, H, W) feature map")
        g = self.lda_grid
        if fmap.shape[-2:] != (g, g):
            fmap = F.adaptive_avg_pool2d(fmap, g)
        return F.normalize(fmap.flatten(1).float(), dim=1)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Heads' outputs as a dict (see the class docstring).

        Args:
            x: RGB ``[0, 1]`` images ``(B, 3, S, S)``.
            identity: identity labels ``(B,)`` (``-1`` = none) for the training margin.
        """
        raw = self.backbone(self.input_norm(x))
        f = _backbone_features(raw)
        fd = self.dropout(f)
        emb = F.normalize(self.embedding_head(f), dim=1)
        out = {a: head(fd).squeeze(1) for a, head in self.attribute_heads.items()}
        out["embedding"] = emb
        if self.lda_dim > 0:  # the closed-form embedding replaces the head's; the margin head keeps the head's
            out["embedding"] = F.normalize((self.lda_features(_last_output(raw)) - self.lda_mean) @ self.lda_proj, dim=1)
        if self.margin_head is not None:
            out["identity_logits"] = self.margin_head(emb, identity)
        return out

    def drop_margin_head(self) -> "MultiTaskFaceNet":
        """Remove the training-only class-weight matrix (for release); returns ``self``."""
        self.margin_head = None
        self.config["n_identities"] = 0
        return self


def multitask_outputs(model: nn.Module, x: torch.Tensor, flip: bool = False) -> dict[str, torch.Tensor]:
    """A multitask model's outputs, optionally averaged with those of the mirrored images.

    With ``flip`` the logits of ``x`` and ``x.flip(-1)`` are averaged and the two unit
    embeddings are summed and re-normalised (a face and its mirror image are the same person
    with the same attributes; the models train with random flips). One function for
    validation, threshold fitting, evaluation and enrollment, so they all see the same numbers.

    Args:
        model: a :class:`MultiTaskFaceNet` (or anything returning its dict).
        x: RGB ``[0, 1]`` images ``(B, 3, S, S)``.
        flip: average with the mirrored images (the model file's ``flip_test``).
    """
    out = {k: v.float() for k, v in model(x).items()}
    if not flip:
        return out
    out2 = model(x.flip(-1))
    avg = {k: (out[k] + out2[k].float()) / 2 for k in out}
    avg["embedding"] = F.normalize(avg["embedding"], dim=1)
    return avg
