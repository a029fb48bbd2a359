"""The ``resnet50`` backend: retina-face's RetinaFace-ResNet50 (its PyTorch port) on padded batches.

The network is the package's own ``retinaface.model.retinaface_pth_model.RetinaFace`` with its
``retinaface.pth``; only the batching is ours. Input, anchors and decoding follow
``retinaface.RetinaFace.detect_faces``: RGB pixels in 0..255 (the network normalises them with its
first batch norm), NHWC, two anchors per cell from the package's fixed base anchors at strides
32/16/8, the ``+1`` box convention, and boxes clipped to ``[0, w-1] x [0, h-1]``. The model's
landmark order, which the package labels right_eye, left_eye, nose, mouth_right, mouth_left (the
subject's sides), is already :data:`.detector.LANDMARK_NAMES` order and is kept. Unlike
``detect_faces`` we do not upscale to a 1024-pixel short side: :class:`.BatchDetector` only
downscales to ``max_side``.

Padding is made exact: while a batch runs, hooks zero the padded area of the input of every
spatial layer (the 3x3/7x7 convolutions and the max pool), which is what the zero padding of
those layers shows them when an image runs alone. Each image of a padded batch therefore gets
the detections the package's per-image path gives it (up to float rounding).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..weights import load_into, load_state_dict, sha256_file
from .backends import backend_spec, deepface_weights_dir  # noqa: F401 (deepface_weights_dir: re-exported)
from .detector import Candidates, resize_chw

WEIGHTS_FILE = backend_spec("resnet50").weights_file
STRIDES = (32, 16, 8)
# retina-face's base anchors (x1, y1, x2, y2), two per cell, as in RetinaFace.detect_faces.
BASE_ANCHORS = {
    32: ((-248.0, -248.0, 263.0, 263.0), (-120.0, -120.0, 135.0, 135.0)),
    16: ((-56.0, -56.0, 71.0, 71.0), (-24.0, -24.0, 39.0, 39.0)),
    8: ((-8.0, -8.0, 23.0, 23.0), (0.0, 0.0, 15.0, 15.0)),
}


def load_resnet50_retinaface(weights_dir: str | None = None, path: str | None = None,
                             random_weights: bool = False) -> tuple[nn.Module, Path | None]:
    """Build retina-face's ResNet-50 RetinaFace (eval mode, CPU) and load ``retinaface.pth`` strictly.

    Never downloads. With ``random_weights=True`` no file is read and the path is ``None``.
    """
    from retinaface.model.retinaface_pth_model import RetinaFace

    net = RetinaFace()
    if random_weights:
        return net.eval(), None
    wpath = Path(path) if path else backend_spec("resnet50").find_weights(weights_dir)
    load_into(net, load_state_dict(wpath), wpath, "retina-face RetinaFace-ResNet50")
    return net.eval(), wpath


def anchors_plane(fh: int, fw: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors of a ``(fh, fw)`` feature map, ``(fh * fw * 2, 4)`` in (row, col, anchor) order."""
    base = torch.tensor(BASE_ANCHORS[stride], dtype=torch.float32, device=device)
    ys, xs = torch.meshgrid(torch.arange(fh, device=device), torch.arange(fw, device=device), indexing="ij")
    shifts = (torch.stack([xs, ys, xs, ys], dim=-1) * stride).float()
    return (shifts[:, :, None, :] + base).reshape(-1, 4)


def decode(anchors: torch.Tensor, deltas: torch.Tensor, lm_deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """retina-face's ``bbox_pred`` and ``landmark_pred``: ``(N, 4)`` boxes and ``(N, 5, 2)`` points."""
    wh = anchors[:, 2:4] - anchors[:, 0:2] + 1.0
    ctr = anchors[:, 0:2] + 0.5 * (wh - 1.0)
    pred_ctr = deltas[:, 0:2] * wh + ctr
    half = 0.5 * (torch.exp(deltas[:, 2:4]) * wh - 1.0)
    boxes = torch.cat([pred_ctr - half, pred_ctr + half], dim=1)
    landmarks = lm_deltas.reshape(-1, 5, 2) * wh[:, None, :] + ctr[:, None, :]
    return boxes, landmarks


class ResNet50Backend:
    """RetinaFace-ResNet50 of the retina-face package, run on padded batches."""

    name = "resnet50"
    pad_multiple = 32

    def __init__(self, weights_dir: str | None = None, device: str = "cpu", weights_path: str | None = None,
                 random_weights: bool = False) -> None:
        net, wpath = load_resnet50_retinaface(weights_dir, weights_path, random_weights)
        # channels-last weights: the package permutes its NHWC input to a channels-last NCHW view,
        # so the convolutions run in that layout without copies (a few % faster on CPU)
        self.net = net.to(device).to(memory_format=torch.channels_last)
        self.weights_path = wpath
        self.weights_sha256 = sha256_file(wpath) if wpath else None
        self._valid: tuple[int, int, list[tuple[int, int]]] | None = None  # set only inside forward
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        for module in self.net.modules():
            if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:
                module.register_forward_pre_hook(lambda m, args: (self._mask(args[0]),) + args[1:])
        # max pool input: relu(bn0(.)) is 0 where bn0's output is 0, as in the pool's own zero padding
        self.net.bn0.register_forward_hook(lambda m, args, out: self._mask(out))

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the padded area of a ``(B, C, H', W')`` feature map while a padded batch runs."""
        if self._valid is None:
            return x
        hp, wp, sizes = self._valid
        key = tuple(x.shape[-2:])
        if key not in self._masks:
            sh, sw = hp // key[0], wp // key[1]
            m = torch.zeros((len(sizes), 1, *key), dtype=x.dtype, device=x.device)
            for b, (h, w) in enumerate(sizes):
                m[b, :, : math.ceil(h / sh), : math.ceil(w / sw)] = 1
            self._masks[key] = m
        return x.mul_(self._masks[key])  # in place: only padded values change, and nothing valid reads them

    def to_tensor(self, image: np.ndarray, scale: float) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float RGB ``(3, h, w)`` in 0..255 (the network's own input scale)."""
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
        return resize_chw(x, scale)

    def forward(self, batch: torch.Tensor, sizes: list[tuple[int, int]], score_threshold: float,
                top_k: int) -> list[Candidates]:
        """Run on a padded ``(B, 3, H, W)`` batch; candidates are in pixels of each unpadded input.

        Not re-entrant: the padding masks live on the backend while the network runs.
        """
        hp, wp = batch.shape[-2:]
        if hp % self.pad_multiple or wp % self.pad_multiple:
            raise ValueError(f"batch height and width must be multiples of {self.pad_multiple}, got {hp}x{wp}")
        padded = any((h, w) != (hp, wp) for h, w in sizes)
        self._valid, self._masks = ((hp, wp, list(sizes)) if padded else None), {}
        try:
            with torch.inference_mode():
                out = self.net(batch.permute(0, 2, 3, 1).contiguous())  # NHWC, as the package feeds it
        finally:
            self._valid, self._masks = None, {}
        results = []
        for b, (h, w) in enumerate(sizes):
            scores, boxes, lms = [], [], []
            for k, s in enumerate(STRIDES):
                fh, fw = math.ceil(h / s), math.ceil(w / s)  # the map size of the image alone
                prob, bbox, lmk = (t[b, :fh, :fw] for t in out[3 * k: 3 * k + 3])
                sc = prob[..., 2:].reshape(-1)  # channels: bg_a1, bg_a2, face_a1, face_a2
                idx = torch.nonzero(sc >= score_threshold).squeeze(1)
                anchors = anchors_plane(fh, fw, s, batch.device)[idx]
                bx, lm = decode(anchors, bbox.reshape(-1, 4)[idx], lmk.reshape(-1, 10)[idx])
                scores.append(sc[idx])
                boxes.append(bx)
                lms.append(lm)
            sc, bx, lm = torch.cat(scores), torch.cat(boxes), torch.cat(lms)
            if sc.numel() > top_k:
                keep = sc.topk(top_k).indices
                sc, bx, lm = sc[keep], bx[keep], lm[keep]
            bx[:, 0::2] = bx[:, 0::2].clamp(0, w - 1)
            bx[:, 1::2] = bx[:, 1::2].clamp(0, h - 1)
            results.append(Candidates(boxes=bx, scores=sc, landmarks=lm))
        return results
