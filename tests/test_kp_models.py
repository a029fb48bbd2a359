"""Keypoint models (shapes, sizes, FLOPs, face init, flip TTA, a real-data overfit smoke run) and losses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.keypoints.augment import NO_AUGMENT, augment
from facebatch.keypoints.losses import masked_l1, masked_mse, masked_wing
from facebatch.keypoints.models import count_flops, count_params, predict_with_flip, soft_argmax
from facebatch.models import create_model, registry
from facebatch.keypoints.schemes import IBUG68, KAGGLE15, Scheme, to_unit



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


# name -> (input shape, parameter range for 15 points)
EXPECTED = {
    "seed000_resnet18_mlp": ((3, 256, 256), (17.3e6, 17.7e6)),
    "seed001_cnn": ((1, 96, 96), (6.6e6, 6.72e6)),
    "seed001_se_cnn": ((1, 96, 96), (6.6e6, 6.72e6)),
    "mobilenet_face_kp": ((3, 128, 128), (0.3e6, 1.0e6)),
}


def test_registry_covers_expected():
    assert set(EXPECTED) <= set(registry("keypoints"))
    with pytest.raises(ValueError, match="unknown keypoints model"):
        create_model("nope", task="keypoints", n_points=15)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shapes_and_sizes(name):
    shape, (lo, hi) = EXPECTED[name]
    torch.manual_seed(0)
    model = create_model(name, n_points=15)
    assert (model.in_channels, model.input_size, model.n_points) == (shape[0], shape[1], 15)
    assert lo <= count_params(model) <= hi
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(2, *shape))
    assert y.shape == (2, 30) and torch.isfinite(y).all()
    assert ((y > -0.5) & (y < 1.5)).all()  # unit coordinates, starting near the crop
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(2, 4 - shape[0] if shape[0] != 2 else 1, *shape[1:]))
    assert count_flops(model, (1, *shape)) > 1e7


def test_se_variant_and_flops_order():
    plain, se = create_model("seed001_cnn", n_points=15), create_model("seed001_se_cnn", n_points=15)
    assert 0 < count_params(se) - count_params(plain) < 50_000
    small = count_flops(create_model("mobilenet_face_kp", n_points=68), (1, 3, 128, 128))
    big = count_flops(create_model("seed000_resnet18_mlp", n_points=68), (1, 3, 256, 256))
    assert small * 10 < big
    m = create_model("mobilenet_face_kp", n_points=68, head="regression")
    assert m(torch.rand(1, 3, 96, 96)).shape == (1, 136)
    with pytest.raises(ValueError):
        create_model("mobilenet_face_kp", n_points=68, input_size=100)


def test_pretrained_loads_detector_weights(mobilenet_weights):
    from facebatch.detection.mobilenet_backend import load_mobilenet_retinaface

    det, _ = load_mobilenet_retinaface(path=str(mobilenet_weights))
    model = create_model("mobilenet_face_kp", n_points=68, pretrained=True, weights_dir=str(mobilenet_weights.parent))
    torch.testing.assert_close(model.body.stage2[0][0].weight, det.body.stage2[0][0].weight)
    torch.testing.assert_close(model.ssh[2].conv3X3[0].weight, det.ssh3.conv3X3[0].weight)


def test_pretrained_missing_weights_explains(tmp_path, monkeypatch):
    from facebatch.weights import WeightsNotFoundError

    monkeypatch.delenv("FACEBATCH_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("FACEBATCH_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFoundError, match="pretrained=False"):
        create_model("mobilenet_face_kp", n_points=68, pretrained=True, weights_dir=str(tmp_path / "empty"))


def test_soft_argmax_cell_centres():
    hm = torch.full((1, 2, 8, 8), -50.0)
    hm[0, 0, 2, 5] = 50.0
    hm[0, 1] = 0.0  # flat map -> centre
    out = soft_argmax(hm)
    torch.testing.assert_close(out[0, 0], torch.tensor([5.5 / 8, 2.5 / 8]))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.5, 0.5]))


class _Const(torch.nn.Module):
    def __init__(self, pts: torch.Tensor) -> None:
        super().__init__()
        self.pts = pts

    def forward(self, x):
        return self.pts.expand(x.shape[0], -1)


class _Centroid(torch.nn.Module):
    """Point 0 = intensity centroid, point 1 = the same: exactly flip-equivariant for a 2-point scheme."""

    def forward(self, x):
        c = soft_argmax(torch.log(x[:, :1] + 1e-6))[:, 0]
        return torch.cat([c, c], 1)


def test_predict_with_flip():
    toy = Scheme("toy2", ("r", "l"), (1, 0), (0, 1))
    const = _Const(torch.tensor([[0.2, 0.3, 0.6, 0.7]]))
    out = predict_with_flip(const, torch.rand(3, 1, 8, 8), toy)
    # flipped prediction (0.4, 0.3), (0.8, 0.7) is mapped back as r <- l: (0.4, 0.7), (0.8, 0.3)
    torch.testing.assert_close(out[0], torch.tensor([0.3, 0.5, 0.7, 0.5]))
    x = torch.rand(2, 1, 16, 16) ** 4
    torch.testing.assert_close(predict_with_flip(_Centroid(), x, toy), _Centroid()(x))
    model = create_model("mobilenet_face_kp", n_points=15).eval()
    assert predict_with_flip(model, torch.rand(2, 3, 64, 64), KAGGLE15).shape == (2, 30)


# ---------------------------------------------------------------- losses
def test_masked_losses_values_and_gradients():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.9]], requires_grad=True)
    target = torch.tensor([[0.6, 0.3, float("nan"), float("nan")]])
    mse = masked_mse(pred, target)
    assert mse.item() == pytest.approx((0.01 + 0.04) / 2)
    assert masked_l1(pred, target).item() == pytest.approx((0.1 + 0.2) / 2)
    w = masked_wing(pred, target, width=10, curvature=2, scale=100)  # errors 10 px and 20 px
    c = 10 - 10 * np.log(1 + 10 / 2)
    assert w.item() == pytest.approx(((10 - c) + (20 - c)) / 2, rel=1e-5)  # both on the linear part
    small = masked_wing(pred, target, scale=10)  # 1 px and 2 px: log part
    assert small.item() == pytest.approx((10 * np.log(1.5) + 10 * np.log(2)) / 2, rel=1e-5)
    for loss_fn in (masked_mse, masked_l1, masked_wing):
        pred.grad = None
        loss_fn(pred, target).backward()
        assert torch.isfinite(pred.grad).all() and (pred.grad[0, 2:] == 0).all() and (pred.grad[0, :2] != 0).all()
    everything_missing = torch.full_like(target, float("nan"))
    pred.grad = None
    loss = masked_wing(pred, everything_missing)
    loss.backward()
    assert loss.item() == 0.0 and (pred.grad == 0).all()
    mask = torch.tensor([[True, False, True, True]])
    assert masked_l1(pred, target, mask).item() == pytest.approx(0.1)


# ---------------------------------------------------------------- overfit smoke run on real faces
@pytest.fixture(scope="module")
def face_batch(udacity_root):
    labels = read_udacity68_csv(udacity_root / "training_frames_keypoints.csv")
    xs, ys = [], []
    for name in sorted(labels)[::400][:8]:
        image = np.asarray(Image.open(udacity_root / "training" / name).convert("RGB"))
        pts = labels[name]
        lo, hi = np.nanmin(pts, 0), np.nanmax(pts, 0)
        c, s = (lo + hi) / 2, (hi - lo).max() * 1.3
        res = augment(image, pts, IBUG68, np.random.default_rng(0), NO_AUGMENT, out_size=128,
                      crop_box=(c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2))
        xs.append(torch.from_numpy(res.image).permute(2, 0, 1).float() / 255)
        ys.append(torch.from_numpy(to_unit(res.points, 128)).flatten())
    return torch.stack(xs), torch.stack(ys)


def test_strong_model_overfits_real_faces(face_batch, mobilenet_weights):
    x, y = face_batch
    torch.manual_seed(0)
    model = create_model("mobilenet_face_kp", n_points=68, pretrained=True, weights_dir=str(mobilenet_weights.parent))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = masked_l1(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.35 * losses[0], losses
    assert all(np.isfinite(losses))


def test_resolution_ensemble_averages_members_at_their_sizes():
    from facebatch.keypoints.models import ResolutionEnsemble
    torch.manual_seed(0)
    specs = [{"model": "mobilenet_face_kp", "input_size": 64, "head": "regression"},
             {"model": "mobilenet_face_kp", "input_size": 96, "head": "regression"}]
    ens = ResolutionEnsemble(5, specs).eval()
    assert ens.input_size == 96 and ens.in_channels == 3 and len(ens.members) == 2
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        small = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        want = (ens.members[0](small) + ens.members[1](x)) / 2
        assert torch.allclose(ens(x), want, atol=1e-6)
    one = create_model("resolution_ensemble", n_points=5, members=specs[1:]).eval()
    one.members[0].load_state_dict(ens.members[1].state_dict())
    with torch.no_grad():
        assert torch.allclose(one(x), ens.members[1](x))
    with pytest.raises(ValueError, match="at least one member"):
        ResolutionEnsemble(5, [])
