"""dlib's face-recognition ResNet read into torch (facebatch.identity), checked against dlib itself.

Real faces: celeba6k (folders per person). dlib (``dlib-bin``) is only the reference here: its
HOG detector and 5-point shape model give the landmarks, ``get_face_chip`` the reference chips,
``compute_face_descriptor`` the reference descriptors. The model files come from the
``face_recognition_models`` package; tests skip clearly where it or the data is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facebatch.identity import (DAT_NAME, DlibFormatError, chip_from_ibug68, chip_from_retinaface, embed,
                                face_chip, find_dat, load_dlib_resnet)
from facebatch.identity.dlibfile import read_network
from facebatch.identity.resnet import convert_dat, dlib_layout
from facebatch.weights import WeightsNotFoundError

PEOPLE, PHOTOS = 20, 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Conversions and ONNX exports go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("fbcache")
        mp.setenv("FACEBATCH_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def dat() -> Path:
    try:
        return find_dat()
    except WeightsNotFoundError:
        pytest.skip(f"{DAT_NAME} not found: pip install face_recognition_models")


@pytest.fixture(scope="module")
def model(dat, cache):
    return load_dlib_resnet(dat)


@pytest.fixture(scope="module")
def faces(celeba_root, dat):
    """Real faces with dlib's 5 landmarks and dlib's own chips: ``(people, images, points, chips)``."""
    dlib = pytest.importorskip("dlib")
    from PIL import Image
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dat.parent / "shape_predictor_5_face_landmarks.dat"))
    people, images, points, chips = [], [], [], []
    for person in sorted((celeba_root / "train_dataset").iterdir())[:PEOPLE]:
        for f in sorted(person.glob("*.jpg"))[:PHOTOS]:
            img = np.asarray(Image.open(f).convert("RGB"))
            dets = detector(img, 1)
            if not dets:
                continue
            shape = predictor(img, max(dets, key=lambda r: r.area()))
            people.append(person.name)
            images.append(img)
            points.append(np.array([[p.x, p.y] for p in shape.parts()], np.float64))
            chips.append(np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25)))
    assert len(chips) >= 50, f"only {len(chips)} faces found by dlib's detector"
    return np.array(people), images, points, np.stack(chips)


@pytest.fixture(scope="module")
def dlib_descriptors(faces, dat):
    dlib = pytest.importorskip("dlib")
    net = dlib.face_recognition_model_v1(str(dat))
    return np.array([np.asarray(d) for d in net.compute_face_descriptor(list(faces[3]))], np.float32)


def test_descriptors_match_dlib(model, faces, dlib_descriptors):
    ours = embed(faces[3], model)
    assert ours.shape == (len(faces[3]), 128) and ours.dtype == np.float32
    diff = np.linalg.norm(ours - dlib_descriptors, axis=1)
    assert diff.max() <= 1e-4, f"max L2 difference to dlib {diff.max():.2e}"  # measured ~1e-6
    norm = embed(faces[3][:4], model, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(norm, ours[:4] / np.linalg.norm(ours[:4], axis=1, keepdims=True), atol=1e-6)


def test_onnxruntime_export_matches(model, faces, dlib_descriptors, cache):
    from facebatch.runtime import accelerate
    x = torch.from_numpy(faces[3][:2]).permute(0, 3, 1, 2).float()
    runner, info = accelerate(model, x, runtime="onnxruntime", what="dlib face descriptor")
    assert info["runtime"] == "onnxruntime", info.get("fallback_reason")
    got = embed(faces[3], runner, batch_size=16)
    ref = embed(faces[3], model)
    assert np.linalg.norm(got - ref, axis=1).max() <= 1e-4  # measured < 1e-6
    assert np.linalg.norm(got - dlib_descriptors, axis=1).max() <= 1e-4


def test_chips_match_dlib_get_face_chip(faces):
    _, images, points, ref = faces
    diffs = np.array([np.abs(face_chip(img, pts).astype(int) - r.astype(int)).mean()
                      for img, pts, r in zip(images, points, ref)])
    assert diffs.max() <= 0.5, f"mean abs pixel difference up to {diffs.max():.3f}"  # measured 0.0


def test_chips_match_dlib_through_its_image_pyramid(faces):
    """Chips more than 2x smaller than their source go through dlib's pyramid_down<2>."""
    dlib = pytest.importorskip("dlib")
    img = np.ascontiguousarray(np.repeat(np.repeat(faces[1][0], 3, axis=0), 3, axis=1))  # 3x: a ~300 px face
    pts = faces[2][0] * 3 + 1
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1),
                                       [dlib.point(int(x), int(y)) for x, y in pts])
    ref = np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25))
    assert np.abs(face_chip(img, pts).astype(int) - ref.astype(int)).mean() <= 0.5


def test_ibug68_chips_match_dlib(data_root):
    """68 annotated points (300-W): both 68-point alignments against dlib's get_face_chip."""
    dlib = pytest.importorskip("dlib")
    import csv
    from PIL import Image
    root = data_root / "300w_train"
    if not root.exists():
        pytest.skip(f"300w_train not found at {root}")
    with open(root / "training_frames_keypoints.csv") as f:
        rows = list(csv.reader(f))[1::400]
    for row in rows:
        img = np.asarray(Image.open(root / "training" / row[0]).convert("RGB"))
        pts = np.rint(np.array(row[1:], float).reshape(68, 2))  # dlib points are integers
        box = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
        for method, idx in (("five", [45, 42, 36, 39, 33]), ("mean_face", range(68))):
            shape = dlib.full_object_detection(box, [dlib.point(int(x), int(y)) for x, y in pts[list(idx)]])
            ref = np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25))
            ours = chip_from_ibug68(img, pts, method=method)
            assert np.abs(ours.astype(int) - ref.astype(int)).mean() <= 0.5, (row[0], method)


def test_ibug68_and_retinaface_chips():
    """The 68-point entry picks dlib's five points; the RetinaFace template maps its own points home."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    pts68 = rng.uniform(80, 200, (68, 2))
    five = pts68[[45, 42, 36, 39, 33]]
    np.testing.assert_array_equal(chip_from_ibug68(img, pts68), face_chip(img, five))
    assert chip_from_ibug68(img, pts68, method="mean_face").shape == (150, 150, 3)
    from facebatch.identity.align import RETINAFACE_TEMPLATE, chip_details
    lm = np.array([[110.0, 120], [170, 118], [141, 150], [118, 182], [165, 180]])
    rect, angle = chip_details(lm, RETINAFACE_TEMPLATE, 150, 0.25)
    assert rect[2] > rect[0] and abs(angle) < 0.1
    assert chip_from_retinaface(img, lm).shape == (150, 150, 3)
    with pytest.raises(ValueError):
        face_chip(img, five[:4])


def test_retinaface_alignment_is_close_to_dlibs(model, faces, mobilenet_detector):
    """Chips from RetinaFace's landmarks give descriptors near those of dlib-aligned chips."""
    people, images, points, _ = faces
    d = []
    for img, pts in list(zip(images, points))[::4]:
        found = mobilenet_detector.detect([img])[0]
        if found:
            lm = max(found, key=lambda f: f.score).landmarks
            e = embed(np.stack([face_chip(img, pts), chip_from_retinaface(img, lm)]), model)
            d.append(np.linalg.norm(e[0] - e[1]))
    assert len(d) >= 10 and np.mean(d) < 0.3, d  # measured mean ~0.17: well under dlib's 0.6 threshold


def test_same_person_is_closer_than_different_people(model, faces):
    people, images, points, _ = faces
    e = embed(np.stack([face_chip(img, p) for img, p in zip(images, points)]), model)
    dist = np.linalg.norm(e[:, None] - e[None], axis=2)
    same = people[:, None] == people[None]
    off = ~np.eye(len(e), dtype=bool)
    assert dist[same & off].mean() < 0.6 < dist[~same].mean()
    nearest = np.where(off, dist, np.inf).argmin(1)
    assert (people[nearest] == people).mean() >= 0.9
    accuracy = ((dist < 0.6) == same)[off].mean()  # dlib's decision threshold
    assert accuracy >= 0.9, accuracy


def test_conversion_is_cached_by_sha256(dat, cache, model):
    from facebatch.identity.resnet import cache_dir
    files = list(cache_dir().glob("dlib_resnet-*.pt"))
    assert len(files) == 1 and files[0].parent == cache / "dlib"
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    assert model.source_sha256[:32] in files[0].name
    again = load_dlib_resnet(dat)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_bad_files_fail_naming_the_file(dat, tmp_path):
    data = dat.read_bytes()
    cut = tmp_path / "truncated.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="truncated.dat"):
        convert_dat(cut)
    layout = dlib_layout()
    layout[-1] = ("con", {**layout[-1][1], "num_filters": 64})  # not the stem dlib wrote
    with pytest.raises(DlibFormatError, match="num_filters=64"):
        read_network(dat, "loss_metric", layout, "input_rgb_image_sized")
    other = dat.parent / "shape_predictor_5_face_landmarks.dat"
    if other.exists():
        with pytest.raises(DlibFormatError, match="shape_predictor_5"):
            convert_dat(other)


def test_missing_model_file_says_how_to_get_it(monkeypatch, tmp_path):
    import facebatch.identity.resnet as resnet
    monkeypatch.setattr(resnet, "_package_models_dir", lambda: [])
    monkeypatch.setenv("FACEBATCH_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("FACEBATCH_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="pip install face_recognition_models"):
        resnet.find_dat()
