"""tools/average_models.py: the weighted mean of fine-tunes of one model, written as a model file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from facebatch.modelio import load_model, save_model_file
from facebatch.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOOL = Path(__file__).resolve().parent.parent / "tools" / "average_models.py"
KW = {"backbone": "resnet_small", "resnet_widths": [8, 8, 16, 16], "input_size": 64, "emb_dim": 16}


def _tool():
    spec = importlib.util.spec_from_file_location("average_models", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _file(path: Path, seed: int, kw=KW) -> Path:
    torch.manual_seed(seed)
    model = create_model("multitask", task="attributes", **kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so they are averaged too
        model.train()(torch.rand(4, 3, 64, 64))
    meta = {"attributes": ["smile", "eyeglasses"], "input_size": 64, "name": f"seed{seed}"}
    return save_model_file(path, "attributes", "multitask", kw, model.eval(), meta)


def test_weighted_mean_of_two_models(tmp_path):
    a, b = _file(tmp_path / "a.pt", 0), _file(tmp_path / "b.pt", 1)
    tool = _tool()
    assert tool.main([str(tmp_path / "m.pt"), str(a), str(b), "--weights", "0.25", "0.75"]) == 0
    ma, _ = load_model(str(a))
    mb, _ = load_model(str(b))
    mm, info = load_model(str(tmp_path / "m.pt"))
    sa, sb, sm = ma.state_dict(), mb.state_dict(), mm.state_dict()
    for k, v in sm.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.25 * sa[k] + 0.75 * sb[k], atol=1e-6), k
        else:
            assert torch.equal(v, sa[k]), k
    assert not torch.allclose(sm["attribute_heads.smile.weight"], sa["attribute_heads.smile.weight"])
    assert info["meta"]["name"] == "seed0" and [x["weight"] for x in info["meta"]["averaged_from"]] == [0.25, 0.75]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert mm(x)["embedding"].shape == (2, 16)


def test_refuses_other_architectures_and_bad_weights(tmp_path):
    a = _file(tmp_path / "a.pt", 0)
    c = _file(tmp_path / "c.pt", 2, dict(KW, emb_dim=8))
    tool = _tool()
    with pytest.raises(SystemExit, match="emb_dim"):
        tool.main([str(tmp_path / "m.pt"), str(a), str(c)])
    with pytest.raises(SystemExit, match="summing to 1"):
        tool.main([str(tmp_path / "m.pt"), str(a), str(a), "--weights", "0.5", "0.6"])
    with pytest.raises(SystemExit, match="two or more"):
        tool.main([str(tmp_path / "m.pt"), str(a)])
