"""Attribute/identity models and losses: shapes, parameter counts, margin maths, a real-data overfit."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facebatch.attributes.losses import (MarginHead, MultiTaskLoss, masked_bce_with_logits,
                                         masked_cross_entropy, pos_weight_from_counts)
from facebatch.attributes.models import (InputNorm, MultiTaskFaceNet, SmileAutoencoder, count_params,
                                         multitask_outputs, pixel_histograms, state_dict_sha256,
                                         wasserstein_histograms)
from facebatch.inference import InputSpec, model_input
from facebatch.models import create_model, get_spec



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


# exact parameter counts: a change here is an architecture change
EXPECTED_PARAMS = {"seed002_cnn": 1_625_410, "seed002_autoencoder": 14_283, "seed004_cnn": 1_879_970,
                   "seed003_cnn": 1_213_416}


@pytest.mark.parametrize("name", ["seed002_cnn", "seed004_cnn", "seed003_cnn"])
def test_seed_classifiers_shapes_and_params(name):
    model = create_model(name).eval()
    s = get_spec(name).example_input
    with torch.no_grad():
        out = model(torch.rand(2, 3, s, s))
    n_out = 200 if name == "seed003_cnn" else 2
    assert out.shape == (2, n_out)
    assert count_params(model) == EXPECTED_PARAMS[name]


def test_seed002_cnn_is_the_described_architecture():
    m = create_model("seed002_cnn")
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    dense = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3))]
    assert [(d.in_features, d.out_features) for d in dense] == [(12544, 128), (128, 2)]
    assert create_model("seed003_cnn", n_classes=7)(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope")


def test_wasserstein_between_histograms():
    bins = 4
    p = np.array([1.0, 0, 0, 0])
    q = np.array([0, 0, 0, 2.0])  # counts are normalised
    # all mass moves from the first bin centre to the last: 3 bins of width 1/4
    assert wasserstein_histograms(p, q, 1 / bins) == pytest.approx(0.75)
    assert wasserstein_histograms(p, p, 1 / bins) == 0.0
    # half the mass moves one bin: 0.5 * 0.25
    assert wasserstein_histograms(np.array([0, 1.0, 1.0, 0]), np.array([0, 0, 2.0, 0]), 0.25) == pytest.approx(0.125)
    # torch and numpy agree, batched over leading axes
    a, b = np.random.default_rng(0).random((2, 3, 16))
    np.testing.assert_allclose(wasserstein_histograms(torch.tensor(a), torch.tensor(b), 1 / 16).numpy(),
                               wasserstein_histograms(a, b, 1 / 16))
    # pixel histograms: a black vs a white image are the whole [0, 1] range apart (bin centres)
    h = pixel_histograms(torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]), bins=bins)
    assert h[0, 0] == 1 and h[1, -1] == 1
    assert float(wasserstein_histograms(h[0], h[1], 1 / bins)) == pytest.approx(0.75)


def test_autoencoder_threshold_and_predict():
    torch.manual_seed(0)
    ae = create_model("seed002_autoencoder").eval()
    assert isinstance(ae, SmileAutoencoder) and count_params(ae) == EXPECTED_PARAMS["seed002_autoencoder"]
    x = torch.rand(6, 3, 64, 64)
    assert ae(x).shape == x.shape
    err = ae.reconstruction_error(x)
    assert err.shape == (6,) and bool((err >= 0).all())
    with pytest.raises(RuntimeError, match="fit_threshold"):
        ae.predict(x)
    with pytest.raises(ValueError, match="0.9 and 1.0"):
        ae.fit_threshold(err, 0.5)
    t = ae.fit_threshold(err, 1.0)
    assert t == pytest.approx(float(err.max()))
    assert ae.predict(x).tolist() == [1] * 6  # every training face is within the 1.0 quantile
    ae.fit_threshold(torch.arange(100.0), 0.9)
    assert float(ae.threshold) == pytest.approx(89.1)
    assert "threshold" in ae.state_dict()  # saved with the weights
    assert torch.equal(ae.score(x), -err)


def test_input_norm_retina_matches_detector_convention():
    x = torch.rand(1, 3, 4, 4)
    y = InputNorm("retina_bgr")(x)
    expect = x.flip(1) * 255 - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, expect)


@pytest.mark.parametrize("backbone", ["retina_mobilenet", "resnet_small"])
def test_multitask_forward_shapes(backbone):
    model = create_model("multitask", backbone=backbone, n_identities=10, input_size=64, emb_dim=32)
    x = torch.rand(3, 3, 64, 64)
    out = model(x, identity=torch.tensor([0, 1, -1]))
    assert set(out) == {"smile", "eyeglasses", "embedding", "identity_logits"}
    assert out["smile"].shape == (3,) and out["eyeglasses"].shape == (3,)
    assert out["embedding"].shape == (3, 32)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(3))
    assert out["identity_logits"].shape == (3, 10)
    model.eval()
    release = model.drop_margin_head()
    assert "identity_logits" not in release(x) and release.config["n_identities"] == 0


def test_flip_averaged_outputs_are_mirror_invariant():
    torch.manual_seed(0)
    model = create_model("multitask", backbone="resnet_small", input_size=64, emb_dim=16).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, a, b = multitask_outputs(model, x), multitask_outputs(model, x, True), multitask_outputs(model, x.flip(-1), True)
        mirrored = model(x.flip(-1))
    for k in ("smile", "eyeglasses"):
        torch.testing.assert_close(a[k], (plain[k] + mirrored[k]) / 2)
        torch.testing.assert_close(a[k], b[k])  # a face and its mirror image get the same answer
    torch.testing.assert_close(a["embedding"], b["embedding"])
    torch.testing.assert_close(a["embedding"].norm(dim=1), torch.ones(2))
    assert not torch.allclose(plain["smile"], mirrored["smile"])  # the network itself is not symmetric


def test_multitask_param_counts():
    mob = create_model("multitask", backbone="retina_mobilenet", n_identities=200)
    res = create_model("multitask", backbone="resnet_small", n_identities=200)
    body = sum(p.numel() for p in mob.backbone.parameters())
    assert body == 213_072  # MobileNet-0.25 body of the detector
    heads = 2 * (256 + 1) + 256 * 128 + 2 * 128
    assert count_params(mob) == body + heads + 200 * 128
    assert count_params(mob) == 272_210 and count_params(res) == 1_285_538


def test_multitask_generic_backbone():
    class KeypointFeatures(nn.Module):  # e.g. a keypoint model's feature extractor
        def forward(self, x):
            return [torch.zeros(x.shape[0], 8, 4, 4), x.mean(dim=(2, 3)).repeat(1, 5)]  # last one: (B, 15)

    model = MultiTaskFaceNet(KeypointFeatures(), input_size=32, emb_dim=16, input_norm="imagenet")
    assert model.feature_dim == 15 and model.config["backbone"] == "KeypointFeatures"
    out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out["embedding"].shape == (2, 16) and "identity_logits" not in out
    with pytest.raises(ValueError, match="unknown backbone"):
        MultiTaskFaceNet("vgg")
    with pytest.raises(ValueError, match="no pretrained"):
        MultiTaskFaceNet("resnet_small", pretrained=True)


def test_cosface_and_arcface_logits_by_hand():
    head = MarginHead(2, 3, s=10.0, m=0.2, kind="cosface")
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    emb = torch.tensor([[1.0, 1.0]])  # at 45 degrees: cos = (0.7071, 0.7071, -0.7071)
    c = math.sqrt(0.5)
    torch.testing.assert_close(head(emb), torch.tensor([[10 * c, 10 * c, -10 * c]]))
    torch.testing.assert_close(head(emb, torch.tensor([1])), torch.tensor([[10 * c, 10 * (c - 0.2), -10 * c]]))
    torch.testing.assert_close(head(emb, torch.tensor([-1])), head(emb))  # unlabelled: no margin
    arc = MarginHead(2, 3, s=10.0, m=0.2, kind="arcface")
    arc.load_state_dict(head.state_dict())
    torch.testing.assert_close(arc(emb, torch.tensor([0])),
                               torch.tensor([[10 * math.cos(math.pi / 4 + 0.2), 10 * c, -10 * c]]))
    # theta = 135 degrees, m = 1: theta + m > pi, so the fallback cos(theta) - m sin(m) applies
    arc1 = MarginHead(2, 3, s=10.0, m=1.0, kind="arcface")
    arc1.load_state_dict(head.state_dict())
    torch.testing.assert_close(arc1(emb, torch.tensor([2]))[0, 2], torch.tensor(10 * (-c - math.sin(1.0))))
    # the cross-entropy with margin is larger than without (the margin makes the task harder)
    y = torch.tensor([0])
    assert F.cross_entropy(head(emb, y), y) > F.cross_entropy(head(emb), y)
    with pytest.raises(ValueError, match="margin kind"):
        MarginHead(2, 3, kind="sphere")


def test_masked_losses():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, float("nan"), -1.0])
    loss = masked_bce_with_logits(logits, t)
    ref = F.binary_cross_entropy_with_logits(logits[:2], t[:2])
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert logits.grad[2] == 0 and logits.grad[3] == 0
    # pos_weight multiplies the positive term only
    pw = masked_bce_with_logits(logits, t, pos_weight=4.0)
    expect = (4 * F.softplus(-logits[0]) + F.softplus(logits[1])) / 2
    torch.testing.assert_close(pw, expect)
    # nothing labelled: zero, still differentiable
    z = masked_bce_with_logits(logits, torch.full((4,), -1.0))
    assert float(z.detach()) == 0.0 and z.requires_grad
    ce = masked_cross_entropy(torch.eye(3) * 5, torch.tensor([0, -1, 2]))
    torch.testing.assert_close(ce, F.cross_entropy(torch.eye(3)[[0, 2]] * 5, torch.tensor([0, 2])))
    assert pos_weight_from_counts(287, 5713) == pytest.approx(19.906, abs=1e-3)
    assert pos_weight_from_counts(287, 5713, cap=10) == 10
    with pytest.raises(ValueError):
        pos_weight_from_counts(0, 10)


def test_multitask_loss_handles_missing_tasks():
    model = create_model("multitask", backbone="resnet_small", n_identities=4, input_size=32,
                         resnet_widths=(8, 8, 16, 16))
    x = torch.rand(4, 3, 32, 32)
    ids = torch.tensor([0, 1, -1, -1])  # the last two: GENKI faces, no identity, no eyeglasses
    targets = {"smile": torch.tensor([1.0, 0, 1, 0]), "eyeglasses": torch.tensor([0.0, 1, -1, -1]), "identity": ids}
    total, parts = MultiTaskLoss(eyeglasses_pos_weight=19.9)(model(x, identity=ids), targets)
    assert set(parts) == {"smile", "eyeglasses", "identity"} and math.isfinite(float(total.detach()))
    total.backward()
    assert model.margin_head.weight.grad is not None
    total2, parts2 = MultiTaskLoss()(model(x), {"smile": targets["smile"]})
    assert parts2["eyeglasses"] == 0.0 and parts2["identity"] == 0.0


def test_state_dict_hash_changes_with_weights():
    m = create_model("seed002_cnn")
    h = state_dict_sha256(m)
    assert h == state_dict_sha256(m) and len(h) == 64
    with torch.no_grad():
        m.classifier[-1].bias.add_(1)
    assert state_dict_sha256(m) != h


def _celeba_attrs(root: Path) -> dict[str, tuple[int, int]]:
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    ism, ieg = names.index("Smiling"), names.index("Eyeglasses")
    out = {}
    for line in lines[2:]:
        f, *v = line.split()
        out[f] = (int(v[ism] == "1"), int(v[ieg] == "1"))
    return out


def test_pretrained_retina_backbone_overfits_real_faces(celeba_root, mobilenet_weights):
    from PIL import Image

    from facebatch.weights import load_state_dict

    torch.manual_seed(0)
    size = 96
    model = create_model("multitask", backbone="retina_mobilenet", pretrained=True,
                         weights_path=str(mobilenet_weights), n_identities=4, input_size=size)
    state = load_state_dict(mobilenet_weights)
    for k, v in model.backbone.body.state_dict().items():  # every body tensor comes from the detector
        torch.testing.assert_close(v, state["body." + k])
    assert len(model.config["backbone_weights_sha256"]) == 64

    attrs = _celeba_attrs(celeba_root)
    crops, smile, glasses, ids = [], [], [], []
    for pid, person in enumerate(["celeb_0", "celeb_1", "celeb_2", "celeb_3"]):
        for f in sorted((celeba_root / "train_dataset" / person).glob("*.jpg"))[:3]:
            im = np.asarray(Image.open(f).convert("RGB"))  # 218 x 178 aligned CelebA image
            crops.append(im[40:178, 20:158])              # the square face region
            s, g = attrs[f.name]
            smile.append(s), glasses.append(g), ids.append(pid)
    x = model_input(crops, InputSpec(size))
    assert x.shape == (12, 3, size, size) and 0 <= float(x.min()) and float(x.max()) <= 1
    targets = {"smile": torch.tensor(smile, dtype=torch.float32),
               "eyeglasses": torch.tensor(glasses, dtype=torch.float32), "identity": torch.tensor(ids)}
    loss_fn = MultiTaskLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(25):
        total, _parts = loss_fn(model(x, identity=targets["identity"]), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert (out["identity_logits"].argmax(1) == targets["identity"]).float().mean() >= 0.9


def test_retina_backbone_starts_from_the_keypoint_model_body():
    """pretrained="keypoints68" copies the shipped keypoint model's MobileNet body exactly."""
    from facebatch.modelio import read_model_file, resolve_model_path
    net = MultiTaskFaceNet("retina_mobilenet", pretrained="keypoints68", input_size=64, n_identities=3)
    src = read_model_file(resolve_model_path("keypoints68"))["state_dict"]
    prefix = "body." if any(k.startswith("body.") for k in src) else "members.0.body."  # ensemble: first member
    body = net.backbone.body.state_dict()
    assert body and all(torch.equal(v, src[prefix + k].float()) for k, v in body.items())
    assert net.config["backbone_weights_sha256"]
    with pytest.raises(ValueError, match="no MobileNet body"):
        from facebatch.attributes.models import RetinaMobileNetBackbone
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.pt"
            obj = read_model_file(resolve_model_path("keypoints68"))
            obj["state_dict"] = {"other.weight": torch.zeros(1)}
            torch.save(obj, p)
            RetinaMobileNetBackbone(pretrained=str(p))


def test_multitask_heads_by_attribute_name_and_older_files(tmp_path):
    """One head per named attribute; a file from before ``attributes=`` (smile_head, eyeglasses_head)
    loads under today's names; a fine-tune from it keeps its smile head and starts the new ones fresh."""
    from facebatch.training.loop import init_partial
    from facebatch.weights import load_into
    kw = dict(backbone="resnet_small", input_size=32, resnet_widths=(8, 8, 16, 16), emb_dim=8)
    old = create_model("multitask", **kw).eval()
    assert list(old.attribute_heads) == ["smile", "eyeglasses"]
    legacy = {k.replace("attribute_heads.smile.", "smile_head.").replace("attribute_heads.eyeglasses.", "eyeglasses_head."): v
              for k, v in old.state_dict().items()}
    assert "smile_head.weight" in legacy
    again = load_into(create_model("multitask", **kw).eval(), legacy, "old.pt", "test")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["eyeglasses"], old(x)["eyeglasses"])
    new = create_model("multitask", attributes=["smile", "male", "wearing_hat"], **kw).eval()
    before = new.attribute_heads["male"].weight.detach().clone()
    fresh = init_partial(new, old.state_dict(), "old")
    assert fresh == ["attribute_heads.male.weight", "attribute_heads.male.bias",
                     "attribute_heads.wearing_hat.weight", "attribute_heads.wearing_hat.bias"]
    torch.testing.assert_close(new.attribute_heads["male"].weight, before)
    with torch.no_grad():
        out = new(x)
        torch.testing.assert_close(out["smile"], old(x)["smile"])
    assert set(out) == {"smile", "male", "wearing_hat", "embedding"} and out["male"].shape == (3,)
    with pytest.raises(ValueError, match="attribute names"):
        create_model("multitask", attributes=["smile", "embedding"], **kw)


def test_multitask_loss_weighs_unnamed_attributes_with_star():
    out = {"smile": torch.tensor([2.0, -1.0]), "male": torch.tensor([0.5, 0.5]), "embedding": torch.zeros(2, 4)}
    y = {"smile": torch.tensor([1.0, 0.0]), "male": torch.tensor([1.0, float("nan")])}
    total, parts = MultiTaskLoss(weights={"*": 0.25})(out, y)
    assert set(parts) == {"smile", "male"}
    assert float(total) == pytest.approx(parts["smile"] + 0.25 * parts["male"], rel=1e-6)
    assert parts["male"] == pytest.approx(float(F.binary_cross_entropy_with_logits(torch.tensor(0.5), torch.tensor(1.0))))
    _, pw = MultiTaskLoss(pos_weights={"male": 3.0})(out, y)
    assert pw["male"] == pytest.approx(3 * parts["male"], rel=1e-6)
