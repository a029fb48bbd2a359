"""The CPU runtime (issue 12): onnxruntime runs the detector and keypoint networks on the same
weights as torch, within 1e-3 of torch's outputs, falls back to torch with a warning when it
cannot, reuses its cached export, and the analyzer's provenance says which runtime ran.

Real udacity68 photos and the shipped models throughout; nothing is mocked but the missing
onnxruntime import.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from facebatch.models.files import release_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-3


@pytest.fixture(scope="module")
def photos(udacity_root):
    from PIL import Image
    files = sorted((udacity_root / "training").glob("*.jpg"))[::350][:10]  # 10 people, spread out
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


@pytest.fixture(scope="module")
def analyzers(mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    kw = dict(weights_path=str(mobilenet_weights), identity="identity")  # every network, the identity model too
    return {rt: FaceAnalyzer.load(runtime=rt, **kw) for rt in ("onnxruntime", "torch")}


def test_detector_network_matches_torch_on_real_photos(analyzers, photos):
    be_ort, be_torch = (analyzers[rt].detector.backend for rt in ("onnxruntime", "torch"))
    assert be_ort.runtime_info["runtime"] == "onnxruntime" and be_torch.runtime_info["runtime"] == "torch"
    # the backend's own input for 4 photos, padded to a multiple of 32 as BatchDetector pads it
    xs = [be_ort.to_tensor(p, 1.0) for p in photos[:4]]
    h = max(-(-x.shape[1] // 32) * 32 for x in xs)
    w = max(-(-x.shape[2] // 32) * 32 for x in xs)
    batch = torch.zeros((len(xs), 3, h, w))
    for k, x in enumerate(xs):
        batch[k, :, :x.shape[1], :x.shape[2]] = x
    with torch.inference_mode():
        got, ref = be_ort.network(batch), be_torch.network(batch)
    for name, g, r in zip(("loc", "conf", "landm"), got, ref):
        assert g.shape == r.shape, name
        assert float((g - r).abs().max()) <= TOL, name


def _expected_parts(model) -> list[str]:
    """What onnxruntime should run: the whole network, or, where it holds a resolution ensemble
    (whose antialiased resize has no ONNX form), each of the ensemble's members."""
    from facebatch.keypoints.models import ResolutionEnsemble
    ens = [(n, m) for n, m in model.named_modules() if isinstance(m, ResolutionEnsemble)]
    if not ens:
        return ["(whole model)"]
    return [f"{n + '.' if n else ''}members.{i}" for n, m in ens for i in range(len(m.members))]


@pytest.fixture(scope="module")
def real_faces(analyzers, photos):
    faces = analyzers["torch"].detect(photos)
    return [(p, f) for p, fs in zip(photos, faces) for f in fs]


@pytest.mark.parametrize("name", [n for n in release_models() if n.startswith("keypoints")])
def test_shipped_keypoint_models_match_torch_on_real_crops(name, real_faces):
    """Single networks export whole; an ensemble (keypoints15 wraps one, two levels down) runs
    its members in onnxruntime and its resize, averaging and mapping in torch."""
    from facebatch.inference import KeypointHead, face_crop
    from facebatch.inference.inputs import model_input
    k_ort, k_torch = (KeypointHead.load(name, runtime=rt) for rt in ("onnxruntime", "torch"))
    info = k_ort.describe()["runtime"]
    assert info["runtime"] == "onnxruntime", info
    assert info["onnx_parts"] == _expected_parts(k_ort.model)
    assert k_torch.describe()["runtime"]["runtime"] == "torch"
    x = model_input([face_crop(p, f.box, k_ort.input.frame)[1] for p, f in real_faces], k_ort.input)
    assert len(x) >= 10
    got, ref = k_ort.predict(x), k_torch.predict(x)  # unit crop coordinates, flip test included
    assert got.shape == ref.shape and got.shape[0] == len(x)
    assert float(np.abs(got - ref).max()) <= TOL


def test_analyzer_onnxruntime_and_torch_agree_on_real_photos(analyzers, photos):
    res = {rt: fa.analyze(photos) for rt, fa in analyzers.items()}
    n = 0
    for a, b in zip(res["onnxruntime"], res["torch"]):
        assert len(a) == len(b)
        for fa_, fb in zip(a, b):
            n += 1
            assert np.abs(np.subtract(fa_.box, fb.box)).max() <= TOL  # pixels
            assert np.abs(np.subtract(fa_.landmarks, fb.landmarks)).max() <= 1e-2
            assert np.abs(np.subtract(fa_.keypoints68, fb.keypoints68)).max() <= 0.05  # px on a ~250 px crop
            assert fa_.labels == fb.labels
            assert max(abs(fa_.attributes[k] - fb.attributes[k]) for k in fa_.attributes) <= TOL
            assert np.abs(np.subtract(fa_.embedding, fb.embedding)).max() <= TOL
    assert n >= 10
    d_ort, d_torch = analyzers["onnxruntime"].describe(), analyzers["torch"].describe()
    assert d_ort["detector"]["runtime"]["runtime"] == "onnxruntime"
    assert d_ort["keypoints"]["runtime"]["runtime"] == "onnxruntime"
    assert d_torch["detector"]["runtime"]["runtime"] == d_torch["keypoints"]["runtime"]["runtime"] == "torch"
    assert d_ort["attributes"]["runtime"]["runtime"] == "onnxruntime"
    assert d_torch["attributes"]["runtime"]["runtime"] == "torch"


def test_falls_back_to_torch_when_onnxruntime_is_missing(monkeypatch, caplog, mobilenet_weights, photos, analyzers):
    from facebatch.inference import FaceAnalyzer
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" raises ImportError
    with caplog.at_level(logging.WARNING, logger="facebatch.runtime"):
        fa = FaceAnalyzer.load(runtime="onnxruntime", attributes=None, weights_path=str(mobilenet_weights))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("detector" in m and "onnxruntime is not installed" in m for m in warnings), warnings
    assert any("keypoints" in m and "onnxruntime is not installed" in m for m in warnings), warnings
    d = fa.describe()
    for part in ("detector", "keypoints"):
        assert d[part]["runtime"]["runtime"] == "torch"
        assert "not installed" in d[part]["runtime"]["fallback_reason"]
    got = fa.analyze(photos[:3], attributes=False)
    ref = analyzers["torch"].analyze(photos[:3], attributes=False)
    assert [[f.box for f in r] for r in got] == [[f.box for f in r] for r in ref]  # it is torch


def test_export_is_cached_reused_and_needs_onnx_only_to_export(monkeypatch, tmp_path, caplog, mobilenet_weights):
    """One backend, its runtime set up again at each step (as a new process would), in an empty cache."""
    from facebatch.detection.mobilenet_backend import MobileNetBackend
    monkeypatch.setenv("FACEBATCH_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "onnx"
    caplog.set_level(logging.WARNING, logger="facebatch.runtime")
    be = MobileNetBackend(weights_path=str(mobilenet_weights), runtime="torch")

    def setup() -> dict:
        caplog.clear()
        be.set_runtime("onnxruntime")
        return be.runtime_info

    # exporting needs the onnx package: without it, torch and a warning, and nothing remembered
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert setup()["runtime"] == "torch"
    assert any("onnx package is not installed" in r.getMessage() for r in caplog.records)
    assert not cache.exists() or not list(cache.iterdir())
    monkeypatch.delitem(sys.modules, "onnx")
    # exported once, written atomically (no temporary file left), then reused
    assert setup()["runtime"] == "onnxruntime" and not be._runner.cached
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    inode = files[0].stat().st_ino
    assert setup()["runtime"] == "onnxruntime" and be._runner.cached
    assert list(cache.glob("*.onnx")) == files and files[0].stat().st_ino == inode
    # running a cached export does not need the onnx package
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert setup()["runtime"] == "onnxruntime" and be._runner.cached
    monkeypatch.delitem(sys.modules, "onnx")
    # a damaged cache file is exported again, with a warning, not a failure
    files[0].write_bytes(b"not an onnx file")
    assert setup()["runtime"] == "onnxruntime" and not be._runner.cached
    assert any("unusable" in r.getMessage() for r in caplog.records)
    assert files[0].stat().st_size > 1_000_000


def test_runtime_choice(monkeypatch, caplog, mobilenet_weights):
    from facebatch.detection.mobilenet_backend import MobileNetBackend
    from facebatch.runtime import requested_runtime
    with pytest.raises(ValueError, match="unknown runtime"):
        requested_runtime("tensorrt")
    monkeypatch.setenv("FACEBATCH_CPU_RUNTIME", "torch")
    assert requested_runtime() == "torch" and requested_runtime("auto") == "auto"
    be = MobileNetBackend(weights_path=str(mobilenet_weights))
    assert be.runtime_info == {"runtime": "torch", "requested": "torch"}
    monkeypatch.setenv("FACEBATCH_CPU_RUNTIME", "bogus")
    with caplog.at_level(logging.WARNING, logger="facebatch.runtime"):
        assert requested_runtime() == "auto"
    assert any("FACEBATCH_CPU_RUNTIME" in r.getMessage() for r in caplog.records)
    monkeypatch.delenv("FACEBATCH_CPU_RUNTIME")
    be.set_runtime(None)  # auto on CPU: onnxruntime
    assert be.runtime_info["runtime"] == "onnxruntime"
