"""The closed-form identity projection (PCA + LDA): its maths on controlled data, and the model's
``lda_dim`` embedding computing exactly what the fit assumed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facebatch.attributes.lda import fit_lda, project
from facebatch.attributes.metrics import verification_accuracy
from facebatch.attributes.models import MultiTaskFaceNet, multitask_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


BASIS = np.linalg.qr(np.random.default_rng(99).normal(size=(60, 60)))[0]


def people_with_nuisance(n_people: int, per: int, seed: int = 0):
    """Identity lives in 5 weak directions; a strong within-person nuisance (pose, light) lives in
    10 others and swamps it under plain cosine similarity. Every set shares one basis."""
    rng = np.random.default_rng(seed)
    ident = rng.normal(size=(n_people, 5))
    rows, labels = [], []
    for p in range(n_people):
        for _ in range(per):
            v = np.r_[ident[p] + rng.normal(size=5) * 0.2, rng.normal(size=10) * 4.0, rng.normal(size=45) * 0.3]
            rows.append(v @ BASIS.T)
            labels.append(f"p{p}")
    x = np.asarray(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.asarray(labels)


def test_lda_removes_within_person_nuisance_on_unseen_people():
    x_fit, y_fit = people_with_nuisance(80, 8, seed=1)
    x_new, y_new = people_with_nuisance(30, 8, seed=2)  # other people
    mean, proj, info = fit_lda(x_fit, y_fit, dim=20, pca_dim=40, reg=0.1)
    assert proj.shape == (60, 20) and mean.shape == (60,) and info["people"] == 80 and info["dim"] == 20
    raw = verification_accuracy(x_new, y_new, n_pairs=2000, seed=0)["accuracy"]
    lda = verification_accuracy(project(x_new, mean, proj), y_new, n_pairs=2000, seed=0)["accuracy"]
    assert raw < 0.8 and lda > raw + 0.1, (raw, lda)


def test_lda_dim_capped_and_inputs_checked():
    x, y = people_with_nuisance(6, 5)
    mean, proj, info = fit_lda(x, y, dim=50, pca_dim=40)
    assert info["dim"] == 5 and proj.shape[1] == 5  # at most people - 1 discriminant directions
    with pytest.raises(ValueError, match="at least 3 people"):
        fit_lda(x[:10], y[:10])
    with pytest.raises(ValueError, match="reg"):
        fit_lda(x, y, reg=0.0)
    lone = np.r_[y[:-1], ["only-once"]]
    assert fit_lda(x, lone)[2]["left_out_images"] == 1  # one image: no within-person spread


def test_model_lda_embedding_is_the_fitted_projection():
    torch.manual_seed(0)
    kw = dict(backbone="resnet_small", resnet_widths=[8, 8, 16, 16], input_size=64, emb_dim=16)
    plain = MultiTaskFaceNet(**kw).eval()
    with_lda = MultiTaskFaceNet(**kw, lda_dim=4, lda_grid=2).eval()
    assert "lda_proj" not in plain.state_dict() and with_lda.state_dict()["lda_proj"].shape == (16 * 4, 4)
    state = plain.state_dict()
    mean, proj = torch.randn(64), torch.randn(64, 4)
    with_lda.load_state_dict(dict(state, lda_mean=mean, lda_proj=proj))
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), with_lda(x)
        fmap = with_lda.feature_map(x)
    assert torch.equal(a["smile"], b["smile"]) and torch.equal(a["eyeglasses"], b["eyeglasses"])
    feats = F.normalize(F.adaptive_avg_pool2d(fmap, 2).flatten(1), dim=1)
    want = project(feats.numpy(), mean.numpy(), proj.numpy())
    assert b["embedding"].shape == (3, 4) and np.allclose(b["embedding"].numpy(), want, atol=1e-5)
    assert with_lda.config["lda_dim"] == 4
    flip = multitask_outputs(with_lda, x, flip=True)["embedding"]
    assert torch.allclose(flip.norm(dim=1), torch.ones(3), atol=1e-5)
