"""The ``mobilenet`` backend: our RetinaFace-MobileNet-0.25 on the published weights.

The network runs in onnxruntime on CPU by default (:mod:`facebatch.runtime`: faster than torch there,
same outputs within 1e-3) and in torch on CUDA or when asked
(``runtime="torch"`` or ``FACEBATCH_CPU_RUNTIME=torch``); :attr:`MobileNetBackend.runtime_info`
says which one ran.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..runtime import accelerate, requested_runtime
from ..weights import load_into, load_state_dict, sha256_file
from .anchors import PriorConfig, decode_boxes, decode_landmarks, prior_boxes
from .backends import backend_spec
from .detector import Candidates, resize_chw
from .mobilenet import RetinaFaceMobileNet, normalise_state_dict_keys

WEIGHTS_FILE = backend_spec("mobilenet").weights_file
MEAN_BGR = (104.0, 117.0, 123.0)


def load_mobilenet_retinaface(weights_dir: str | None = None, path: str | None = None) -> tuple[RetinaFaceMobileNet, Path]:
    """Build the network and load its weights strictly (eval mode, CPU)."""
    wpath = Path(path) if path else backend_spec("mobilenet").find_weights(weights_dir)
    net = RetinaFaceMobileNet()
    state = normalise_state_dict_keys(load_state_dict(wpath))
    load_into(net, state, wpath, "RetinaFace-MobileNet-0.25")
    return net.eval(), wpath


def inference_network(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` for inference: batch norms folded into the convolutions, channels-last layout.

    Same outputs to float rounding (checked in the tests); on CPU about 1.7x faster for this
    network, mostly from the channels-last depthwise convolutions. Falls back to ``net`` itself
    (channels-last only) where torch.fx cannot trace it.
    """
    import copy
    try:
        from torch.fx.experimental.optimization import fuse
        fast = fuse(copy.deepcopy(net).eval())
    except Exception:  # pragma: no cover - tracing is known to work for RetinaFaceMobileNet
        fast = net
    return fast.to(memory_format=torch.channels_last)


class MobileNetBackend:
    """RetinaFace-MobileNet-0.25 for :class:`~facebatch.detection.BatchDetector`.

    ``runtime``: ``auto`` (onnxruntime on CPU, torch on CUDA), ``torch``, ``onnxruntime``, or
    ``None`` for ``$FACEBATCH_CPU_RUNTIME``. The runtime is set up (exported, or read from the
    cache, and checked against torch) by :meth:`prepare`, at the latest on the first forward.
    """

    name = "mobilenet"
    pad_multiple = 32

    def __init__(self, weights_dir: str | None = None, device: str = "cpu", weights_path: str | None = None,
                 runtime: str | None = None) -> None:
        net, wpath = load_mobilenet_retinaface(weights_dir, weights_path)
        self.device = torch.device(device)
        self.net = net.to(device)  # the strictly loaded network, as published
        self.fast_net = inference_network(self.net)  # what the torch runtime runs
        self.weights_path = wpath
        self.weights_sha256 = sha256_file(wpath)
        self.priors = PriorConfig()
        self._mean = torch.tensor(MEAN_BGR).view(3, 1, 1)
        self.set_runtime(runtime)

    def set_runtime(self, runtime: str | None) -> None:
        """Choose the runtime (see the class); takes effect at the next :meth:`prepare`."""
        self.runtime_requested = requested_runtime(runtime)
        self._runner, self._runtime_info = None, None

    def prepare(self) -> None:
        """Set up the chosen runtime now (falls back to torch with a warning; never raises for it)."""
        if self._runner is not None:
            return
        # a smooth synthetic "photo", mean-subtracted like the real input: exported at 96x128
        # (batch, height and width stay free), checked against torch on one at 128x96
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
        img = torch.stack([yy * 200 + 20, xx * 180 + 40, (yy * xx) * 220 + 10])
        example = torch.stack([img, img.flip(-1)]) - self._mean
        check = img.transpose(1, 2)[None] - self._mean
        runner, info = accelerate(self.net, example, self.runtime_requested, self.device, dynamic=(0, 2, 3),
                                  what="detector mobilenet", check=check)
        self._runner = self._torch_network if runner is self.net else runner
        self._runtime_info = info

    def _torch_network(self, batch: torch.Tensor):
        return self.fast_net(batch.contiguous(memory_format=torch.channels_last))

    @property
    def runtime_info(self) -> dict:
        """``{"runtime": "onnxruntime" | "torch", "requested": ..., ...}``: what runs the network."""
        self.prepare()
        return dict(self._runtime_info)

    def to_tensor(self, image: np.ndarray, scale: float) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float()  # BGR
        return resize_chw(x, scale) - self._mean

    def network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The raw ``(loc, conf, landm)`` of a padded batch, from the chosen runtime."""
        self.prepare()
        return self._runner(batch)

    def forward(self, batch, sizes, score_threshold, top_k):
        hp, wp = batch.shape[-2:]
        loc, conf, landm = self.network(batch)
        priors = prior_boxes(hp, wp, self.priors).to(batch.device)
        scores = torch.softmax(conf, dim=-1)[..., 1]
        scale = torch.tensor([wp, hp], dtype=torch.float32, device=batch.device)
        out = []
        for b in range(batch.shape[0]):
            idx = torch.nonzero(scores[b] > score_threshold).squeeze(1)
            if idx.numel() > top_k:
                idx = idx[scores[b, idx].topk(top_k).indices]
            p = priors[idx]
            boxes = decode_boxes(loc[b, idx], p, self.priors.variances) * scale.repeat(2)
            lms = decode_landmarks(landm[b, idx], p, self.priors.variances) * scale
            out.append(Candidates(boxes=boxes, scores=scores[b, idx], landmarks=lms))
        return out
