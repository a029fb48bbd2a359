"""The keypoint task: crops + normalised keypoints from preprocess Parquet -> a keypoint model.

Pure torch/numpy; the Ray Train loop in :mod:`.loop` calls these methods.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import schema as S
from ..inference.inputs import decode_crop, to_tensor
from ..keypoints.augment import AugmentConfig, augment
from ..keypoints.losses import LOSSES
from ..keypoints.metrics import FACE_FRAME_PX, PCK_THRESHOLDS_PX
from ..keypoints.models import predict_with_flip
from ..keypoints.schemes import convert_scheme, from_unit, get_scheme, to_unit
from ..models import create_model
from .config import TrainConfig


class KeypointTask:
    """Predict a keypoint scheme's points in unit crop coordinates."""

    monitor, mode = "val_nme", "min"
    n_metric_sums = 9
    columns = [S.STATUS, S.SPLIT, S.CROP, S.KP_SCHEME, S.KEYPOINTS_NORM]

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.scheme = get_scheme(cfg.scheme)
        self.loss_fn = LOSSES[cfg.loss]
        self.aug = None if cfg.augment is None else AugmentConfig(**{
            k: (tuple(v) if isinstance(v, list) else v) for k, v in (cfg.augment or {}).items()})

    # -- data -------------------------------------------------------------------------------------
    def decode(self, batch: dict, splits: list[str]) -> dict:
        """Keep usable rows of ``splits``; decode crops to ``uint8 (N, S, S, C)`` and points to ``(N, K, 2)``."""
        keep = [i for i in range(len(batch[S.STATUS]))
                if batch[S.STATUS][i] == S.OK and batch[S.SPLIT][i] in splits and batch[S.CROP][i] is not None
                and batch[S.KEYPOINTS_NORM][i] is not None]
        size, c = self.cfg.input_size, 1 if self.cfg.grey else 3
        if not keep:
            return {"image": np.zeros((0, size, size, c), np.uint8), "points": np.zeros((0, self.scheme.n_points, 2), np.float32)}
        images = np.stack([decode_crop(batch[S.CROP][i], size, self.cfg.grey) for i in keep])
        pts = []
        for i in keep:
            p = np.asarray(batch[S.KEYPOINTS_NORM][i], np.float32).reshape(-1, 2)
            pts.append(convert_scheme(p, batch[S.KP_SCHEME][i], self.scheme.name))
        return {"image": images, "points": np.stack(pts).astype(np.float32)}

    def inputs(self, batch: dict, train: bool, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (N, C, S, S) float in [0, 1], target (N, K*2) unit coordinates, NaN = missing)``."""
        images, points = batch["image"], batch["points"]
        size = self.cfg.input_size
        if train and self.aug is not None:
            out_i, out_p = [], []
            for img, p in zip(images, points):
                src = img[..., 0] if img.shape[-1] == 1 else img
                r = augment(src, from_unit(p, size), self.scheme, rng, self.aug)
                out_i.append(r.image[..., None] if r.image.ndim == 2 else r.image)
                out_p.append(to_unit(r.points, size))
            images, points = np.stack(out_i), np.stack(out_p)
        return to_tensor(images), torch.from_numpy(points.reshape(len(points), -1).astype(np.float32))

    # -- model --------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        kw = {"input_size": self.cfg.input_size, **self.cfg.model_kwargs}
        return create_model(self.cfg.model, task="keypoints", n_points=self.scheme.n_points, **kw)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(out.float(), target)

    def predict(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict_with_flip(model, x, self.scheme) if self.cfg.flip_test else model(x)

    # -- validation ---------------------------------------------------------------------------------
    def metric_sums(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sums that add up across workers: [n_img, nme_sum, sq_err_sum, n_coords, abs_err_px_sum, pck5, pck10, pck15, n_points]."""
        k = self.scheme.n_points
        pred, tgt = out.float().view(-1, k, 2), target.view(-1, k, 2)
        valid = ~torch.isnan(tgt).any(-1)
        d = torch.where(valid[..., None], pred - tgt, torch.zeros_like(pred))
        dist = d.norm(dim=-1)
        a, b = self.scheme.eye_outer
        iod = (tgt[:, a] - tgt[:, b]).norm(dim=-1)
        ok_img = valid.any(1) & torch.isfinite(iod) & (iod > 0)
        nme = (dist.sum(1) / valid.sum(1).clamp(min=1)) / iod.clamp(min=1e-6)
        px = dist * FACE_FRAME_PX
        return torch.stack([
            ok_img.sum().float(), nme[ok_img].sum(), (d ** 2).sum(), valid.sum().float() * 2,
            (d.abs() * FACE_FRAME_PX).sum(), *[((px <= t) & valid).sum().float() for t in PCK_THRESHOLDS_PX],
            valid.sum().float()])

    def finalize(self, s: torch.Tensor) -> dict:
        s = s.tolist()
        return {"val_nme": s[1] / max(1, s[0]), "val_rmse_norm": (s[2] / max(1, s[3])) ** 0.5,
                "val_mae_px": s[4] / max(1, s[3]),
                **{f"val_pck_{int(t)}px": s[5 + i] / max(1, s[8]) for i, t in enumerate(PCK_THRESHOLDS_PX)}}
