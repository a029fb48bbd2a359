"""One AnalyzerConfig travels whole (JSON and back) from a command line to annotate actors and serve
replicas, and builds the analyzer; detector backends are looked up in a registry (a test-only
backend registered here is all it takes for ``create_detector``, the driver-side weights info and
``--backend`` to know it)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from facebatch.detection import DetectorConfig, backend_names, backend_spec, register_backend
from facebatch.detection import backends as registry
from facebatch.detection.options import add_detector_arguments, detector_config_from_args
from facebatch.inference.config import AnalyzerConfig


class StubBackend:
    """A detector backend without a network: one face in the middle of every image."""

    name = "stub"
    pad_multiple = 32

    def __init__(self, weights_dir=None, device="cpu", weights_path=None, random_weights=False):
        self.weights_dir, self.device, self.random_weights = weights_dir, device, random_weights
        self.weights_path, self.weights_sha256 = weights_path, None

    def to_tensor(self, image, scale):
        import torch
        from facebatch.detection.detector import resize_chw
        return resize_chw(torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1), scale)

    def forward(self, batch, sizes, score_threshold, top_k):
        import torch
        from facebatch.detection.detector import Candidates
        out = []
        for h, w in sizes:
            box = torch.tensor([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]])
            lms = torch.tensor([[[w * 0.4, h * 0.4], [w * 0.6, h * 0.4], [w * 0.5, h * 0.5],
                                 [w * 0.4, h * 0.6], [w * 0.6, h * 0.6]]])
            out.append(Candidates(boxes=box, scores=torch.tensor([0.9]), landmarks=lms))
        return out


@pytest.fixture
def stub_backend(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # unregistered again after the test
    (tmp_path / "stub.bin").write_bytes(b"stub weights")
    return register_backend("stub", StubBackend, weights_file="stub.bin", description="a test stub",
                            random_weights=True, extra_dirs=lambda: [tmp_path])


def test_analyzer_config_round_trip_is_json_and_whole():
    cfg = AnalyzerConfig(keypoints="keypoints15", attributes="none", gallery="g.npz", identity_threshold=0.3,
                         detector=DetectorConfig(max_side=800, score_threshold=0.7, weights_dir="/w"),
                         device="cuda:1", runtime="torch", heads=["brightness"])
    d = json.loads(json.dumps(cfg.to_dict()))
    back = AnalyzerConfig.from_dict(d)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert back.attributes is None and back.heads == ("brightness",)
    assert back.detector == DetectorConfig(max_side=800, score_threshold=0.7, weights_dir="/w", device="cuda:1")
    assert AnalyzerConfig.from_dict(cfg) is cfg and AnalyzerConfig.from_dict(None) == AnalyzerConfig()
    with pytest.raises(ValueError, match="unknown analyzer option"):
        AnalyzerConfig.from_dict({**d, "keypoint": "x"})
    with pytest.raises(ValueError, match="unknown detector option"):
        AnalyzerConfig.from_dict({**d, "detector": {"max_sid": 3}})


def test_one_device_for_every_model():
    assert AnalyzerConfig(detector=DetectorConfig(device="cuda")).device == "cuda"  # None: the detector's
    cfg = AnalyzerConfig(device="cuda:0")
    assert cfg.detector.device == "cuda:0"
    cfg.device = "cpu"
    assert cfg.validate().detector.device == "cpu"
    with pytest.raises(ValueError, match="--device"):
        AnalyzerConfig(device="gpu").validate()
    assert AnalyzerConfig(attributes=None, gallery="g.npz").validate().identity == "identity"  # a gallery implies it
    assert AnalyzerConfig().identity is None  # biometrics only when asked
    with pytest.raises(ValueError, match="score_threshold"):
        AnalyzerConfig(detector=DetectorConfig(score_threshold=2.0)).validate()


def test_detector_options_from_the_command_line():
    p = argparse.ArgumentParser()
    add_detector_arguments(p)
    args = p.parse_args(["--backend", "resnet50", "--max-side", "800", "--detect-batch-size", "4", "--upscale", "never"])
    assert detector_config_from_args(args) == DetectorConfig(backend="resnet50", max_side=800, batch_size=4,
                                                             upscale="never")
    assert detector_config_from_args(p.parse_args([])) == DetectorConfig()


def test_registry_knows_the_built_in_backends():
    assert backend_names()[:2] == ("mobilenet", "resnet50")
    assert backend_spec("mobilenet").weights_file == "mobilenet0.25_Final.pth"
    assert backend_spec("resnet50").random_weights and not backend_spec("mobilenet").random_weights
    with pytest.raises(ValueError, match="unknown detector backend 'yolo'; choose one of mobilenet, resnet50"):
        backend_spec("yolo")
    with pytest.raises(ValueError, match="unknown detector backend"):
        DetectorConfig(backend="yolo").validate()
    with pytest.raises(ValueError, match="registered twice"):
        register_backend("mobilenet", StubBackend, weights_file="x")
    info = backend_spec("resnet50").weights_info(random_weights=True)
    assert info == {"backend": "resnet50", "weights": None, "weights_sha256": None, "random_weights": True}


def test_a_registered_backend_is_all_it_takes(stub_backend, tmp_path, monkeypatch):
    from facebatch.detection import create_detector
    monkeypatch.setenv("FACEBATCH_DATA", str(tmp_path / "nodata"))
    monkeypatch.delenv("FACEBATCH_WEIGHTS_DIR", raising=False)
    p = argparse.ArgumentParser()
    add_detector_arguments(p)
    cfg = detector_config_from_args(p.parse_args(["--backend", "stub", "--max-side", "64"]))
    assert cfg.backend == "stub" and "stub: a test stub" in p.format_help()
    det = create_detector(cfg, random_weights=True)
    assert det.config == cfg and det.config is not cfg and det.backend.random_weights
    faces = det.detect([np.zeros((128, 96, 3), np.uint8)])[0]
    assert len(faces) == 1 and np.allclose(faces[0].box, [24, 32, 72, 96], atol=1)
    # the driver-side weights info asks the spec: no branch per backend
    info = stub_backend.weights_info()
    assert info["backend"] == "stub" and info["weights"] == str(tmp_path / "stub.bin") and len(info["weights_sha256"]) == 64
    # kwargs path for callers that pass a backend name and options
    assert create_detector("stub", max_side=100).config == DetectorConfig(backend="stub", max_side=100)


def test_build_gives_the_analyzer_of_the_config(stub_backend):
    cfg = AnalyzerConfig(keypoints=None, attributes=None, detector=DetectorConfig(backend="stub", max_side=64))
    fa = AnalyzerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).build()
    assert fa.detector.config == cfg.detector and isinstance(fa.detector.backend, StubBackend)
    assert fa.keypoints is None and fa.attributes is None and fa.gallery is None
    (face,) = fa.analyze([np.zeros((128, 96, 3), np.uint8)])[0]
    assert np.allclose(face.box, [24, 32, 72, 96], atol=1)


def test_mobilenet_has_no_random_weights():
    from facebatch.detection import create_detector
    with pytest.raises(ValueError, match="random weights"):
        create_detector(DetectorConfig(), random_weights=True)
