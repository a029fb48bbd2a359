"""The ``resnet50`` backend against retina-face's own per-image path on the same (random-weight) model.

No ``retinaface.pth`` is needed: the package's network is built with seeded random weights, which
exercises everything but the trained numbers (input layout, padding, anchors, decoding, landmark
order, score threshold, NMS, mapping back).
"""
from __future__ import annotations

import os

os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")

import numpy as np
import pytest
import torch

from facebatch.detection import create_detector
from facebatch.paths import data_dir
from facebatch.weights import WeightsError, WeightsNotFoundError

PICKS = [("udacity68/training", 0), ("udacity68/training", 3), ("genki4k/files", 0), ("genki4k/files", 2)]


def _images() -> list[np.ndarray]:
    from PIL import Image

    root = data_dir()
    out = []
    for sub, k in PICKS:
        files = sorted((root / sub).glob("*.jpg"))
        if len(files) <= k:
            pytest.skip(f"test images not found: need {root / sub}/*.jpg (set FACEBATCH_DATA to the data folder)")
        out.append(np.asarray(Image.open(files[k]).convert("RGB")))
    return out


def _pick_threshold(scores: list[np.ndarray]) -> float:
    """A threshold in the widest score gap that leaves 2..200 candidates in every image."""
    pooled = np.sort(np.concatenate(scores))[::-1]
    mids, gaps = 0.5 * (pooled[:-1] + pooled[1:]), pooled[:-1] - pooled[1:]
    counts = np.stack([len(s) - np.searchsorted(np.sort(s), mids) for s in scores])  # scores >= mid
    ok = (counts.min(0) >= 2) & (counts.max(0) <= 200)
    assert ok.any() and gaps[ok].max() > 1e-5, "random weights gave no usable score gap"
    return float(mids[ok][np.argmax(gaps[ok])])


@pytest.fixture(scope="module")
def setup():
    images = _images()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    det = create_detector("resnet50", random_weights=True, score_threshold=0.0, max_side=4096, upscale="never",
                          batch_size=8, pre_nms_top_k=100000)
    calls = []
    forward = det.backend.forward

    def recording_forward(batch, sizes, score_threshold, top_k):
        cands = forward(batch, sizes, score_threshold, top_k)
        calls.append((tuple(batch.shape[-2:]), list(sizes), [c.scores.numpy() for c in cands]))
        return cands

    det.backend.forward = recording_forward
    det.detect(images)  # all candidates, to choose a threshold with a clear margin
    scores = [None] * len(images)
    shapes = [img.shape[:2] for img in images]
    for _, sizes, group_scores in calls:
        for size, s in zip(sizes, group_scores):
            scores[shapes.index(tuple(size))] = s
    det.config.score_threshold = _pick_threshold(scores)
    calls.clear()
    return det, images, calls


def test_batched_path_matches_package_detect_faces(setup):
    from retinaface import RetinaFace

    det, images, calls = setup
    thr = det.config.score_threshold
    ours = det.detect(images)
    # at least one forward pass held images of different sizes, i.e. real padding
    assert any(len(set(map(tuple, sizes))) > 1 for _, sizes, _ in calls), calls
    assert all(hw[0] % 32 or hw[1] % 32 for hw in (img.shape[:2] for img in images))
    total = 0
    for img, faces in zip(images, ours):
        ref = RetinaFace.detect_faces(np.ascontiguousarray(img[..., ::-1]), model=det.backend.net,
                                      threshold=thr, allow_upscaling=False)  # the package wants BGR
        ref = list(ref.values())
        assert len(faces) == len(ref) > 0
        total += len(ref)
        used = set()
        for r in ref:
            box = np.array(r["facial_area"], dtype=np.float64)  # the package truncates to int
            lm = r["landmarks"]
            lms = np.array([lm["right_eye"], lm["left_eye"], lm["nose"], lm["mouth_right"], lm["mouth_left"]])
            j = min(range(len(faces)), key=lambda k: np.abs(faces[k].landmarks - lms).max())
            assert j not in used
            used.add(j)
            f = faces[j]
            assert f.score == pytest.approx(float(r["score"]), abs=1e-4)
            np.testing.assert_allclose(f.landmarks, lms, atol=2e-2)
            diff = f.box - box
            assert (diff > -2e-2).all() and (diff < 1 + 2e-2).all(), (f.box, box)
    assert total >= 2 * len(images)


def test_info_for_random_weights(setup):
    det = setup[0]
    info = det.info
    assert info["backend"] == "resnet50" and info["weights"] is None and info["weights_sha256"] is None


def test_missing_weights_names_file_and_places(tmp_path, monkeypatch):
    import retinaface.commons.weight_utils as wu

    def no_download(*a, **k):
        raise AssertionError("retina-face's downloader must not be called")

    monkeypatch.setattr(wu, "download_weights_if_necessary", no_download)
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FACEBATCH_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("FACEBATCH_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        create_detector("resnet50", weights_dir=str(tmp_path / "mine"))
    msg = str(err.value)
    assert "retinaface.pth" in msg
    for place in (tmp_path / "mine", tmp_path / "home" / ".deepface" / "weights", tmp_path / "cache"):
        assert str(place) in msg
    assert not (tmp_path / "home").exists()


def test_loads_weights_file_and_rejects_wrong_one(tmp_path):
    from retinaface.model.retinaface_pth_model import RetinaFace

    torch.manual_seed(1)
    net = RetinaFace()
    torch.save(net.state_dict(), tmp_path / "retinaface.pth")
    det = create_detector("resnet50", weights_dir=str(tmp_path))
    assert det.info["weights"] == str(tmp_path / "retinaface.pth") and len(det.info["weights_sha256"]) == 64
    for k, v in net.state_dict().items():
        assert torch.equal(det.backend.net.state_dict()[k], v), k
    bad = tmp_path / "bad" / "retinaface.pth"
    bad.parent.mkdir()
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="architecture"):
        create_detector("resnet50", weights_path=str(bad))
