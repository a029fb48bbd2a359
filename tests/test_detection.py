"""The mobilenet detector on real faces: found, landmarks where the labels say, left/right not swapped."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facebatch.detection import create_detector, pack_by_size
from facebatch.detection.anchors import prior_boxes
from facebatch.detection.mobilenet import RetinaFaceMobileNet
from facebatch.detection.quality import five_from_ibug68, landmark_errors, match_labelled_face
from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.weights import WeightsError, WeightsNotFoundError, find_weights


def _load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def udacity_sample(udacity_root):
    labels = read_udacity68_csv(udacity_root / "training_frames_keypoints.csv")
    names = sorted(labels)[::35]  # ~100 images spread over all people
    return [(n, _load(udacity_root / "training" / n), labels[n]) for n in names]


def test_priors_match_feature_maps():
    net = RetinaFaceMobileNet().eval()
    for h, w in [(64, 96), (100, 77), (640, 480)]:
        with torch.no_grad():
            loc, conf, landm = net(torch.zeros(1, 3, h, w))
        assert loc.shape[1] == conf.shape[1] == landm.shape[1] == prior_boxes(h, w).shape[0]


def test_pack_by_size_keeps_every_index_once():
    shapes = [(100, 100), (500, 400), (90, 120), (480, 500), (100, 90), (30, 30)]
    groups = pack_by_size(shapes, max_batch=3)
    assert sorted(i for g in groups for i in g) == list(range(len(shapes)))
    assert all(len(g) <= 3 for g in groups)
    assert any({1, 3} <= set(g) for g in groups)  # the two big ones share a batch


def test_udacity68_found_and_landmarks_agree(mobilenet_detector, udacity_sample):
    images = [img for _, img, _ in udacity_sample]
    results = mobilenet_detector.detect(images)  # one call: sizes differ, batched inside
    found, errors = 0, []
    for (name, _, pts), faces in zip(udacity_sample, results):
        face = match_labelled_face(faces, pts)
        if face is not None:
            found += 1
            errors.append(landmark_errors(face, pts))
    assert found / len(udacity_sample) >= 0.99
    errors = np.array(errors)
    assert np.median(errors) <= 0.10
    # Left/right not swapped: each eye/mouth landmark is nearer its own labelled point than the other side's.
    same, crossed = [], []
    for (name, _, pts), faces in zip(udacity_sample, results):
        face = match_labelled_face(faces, pts)
        if face is None:
            continue
        ref = five_from_ibug68(pts)
        for a, b in [(0, 1), (3, 4)]:
            same.append(np.linalg.norm(face.landmarks[a] - ref[a]) + np.linalg.norm(face.landmarks[b] - ref[b]))
            crossed.append(np.linalg.norm(face.landmarks[a] - ref[b]) + np.linalg.norm(face.landmarks[b] - ref[a]))
    assert np.mean(np.array(same) < np.array(crossed)) > 0.95


def test_batched_equals_one_at_a_time(mobilenet_detector, udacity_sample):
    images = [img for _, img, _ in udacity_sample[:12]]
    batched = mobilenet_detector.detect(images)
    for img, faces in zip(images, batched):
        single = mobilenet_detector.detect([img])[0]
        assert len(single) == len(faces)
        for a, b in zip(single, faces):
            # Zero padding to the batch's size shifts border features a little: allow 3% of the face size.
            tol = 0.03 * (a.box[2] - a.box[0])
            np.testing.assert_allclose(a.box, b.box, atol=tol)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=tol)
            assert abs(a.score - b.score) < 0.02


def test_large_image_is_downscaled_and_mapped_back(mobilenet_detector, udacity_sample):
    name, img, pts = udacity_sample[0]
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.BILINEAR))
    det = create_detector("mobilenet", max_side=320, weights_dir=str(mobilenet_detector.backend.weights_path.parent))
    face = match_labelled_face(det.detect([big])[0], pts * 4)
    assert face is not None
    assert np.median(landmark_errors(face, pts * 4)) <= 0.15


def test_config_travels_whole_and_gives_the_same_faces(mobilenet_detector, udacity_sample):
    """``create_detector(DetectorConfig)`` (the config as actors get it, through JSON) gives the
    detector the backend name and keyword options give: same config, same faces."""
    import json

    from facebatch.detection import DetectorConfig
    wd = str(mobilenet_detector.backend.weights_path.parent)
    cfg = DetectorConfig.from_dict(json.loads(json.dumps(DetectorConfig(max_side=320, weights_dir=wd).to_dict())))
    a, b = create_detector(cfg), create_detector("mobilenet", max_side=320, weights_dir=wd)
    assert a.config == b.config == cfg and a.info == b.info
    images = [img for _, img, _ in udacity_sample[:3]]
    for fa, fb in zip(a.detect(images, exact=True), b.detect(images, exact=True)):
        assert len(fa) == len(fb) and all(np.array_equal(x.box, y.box) for x, y in zip(fa, fb))


def test_genki_faces_found(mobilenet_detector, genki_root):
    files = sorted((genki_root / "files").glob("*.jpg"))[::40]  # 100 unaligned photos
    results = mobilenet_detector.detect([_load(f) for f in files])
    rate = np.mean([len(r) > 0 for r in results])
    assert rate >= 0.98, f"faces found in only {rate:.1%} of genki4k sample"


def test_no_face_gives_no_detections(mobilenet_detector):
    rng = np.random.default_rng(0)
    blank = np.full((300, 400, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert mobilenet_detector.detect([blank, noise]) == [[], []]


def test_missing_weights_error_names_file_and_places(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEBATCH_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("FACEBATCH_DATA", str(tmp_path / "nodata"))
    with pytest.raises(WeightsNotFoundError) as err:
        find_weights("mobilenet0.25_Final.pth", tmp_path / "arg")
    msg = str(err.value)
    assert "mobilenet0.25_Final.pth" in msg and str(tmp_path / "arg") in msg and str(tmp_path / "env") in msg
    assert "--weights-dir" in msg


def test_corrupt_and_mismatched_weights_give_clear_errors(tmp_path, mobilenet_weights):
    bad = tmp_path / "mobilenet0.25_Final.pth"
    bad.write_bytes(mobilenet_weights.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="corrupt"):
        create_detector("mobilenet", weights_path=str(bad))
    state = torch.load(mobilenet_weights, map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="does not match"):
        create_detector("mobilenet", weights_path=str(bad))


def test_inference_network_matches_the_published_one(mobilenet_detector, udacity_sample):
    """The folded, channels-last copy that forward runs gives the strictly loaded network's outputs."""
    backend = mobilenet_detector.backend
    imgs = [backend.to_tensor(img, 1.0) for _, img, _ in udacity_sample[:4]]
    h = max(t.shape[1] for t in imgs) // 32 * 32 + 32
    w = max(t.shape[2] for t in imgs) // 32 * 32 + 32
    batch = torch.zeros((len(imgs), 3, h, w))
    for k, t in enumerate(imgs):
        batch[k, :, : t.shape[1], : t.shape[2]] = t
    with torch.inference_mode():
        ref = backend.net(batch)
        fast = backend.fast_net(batch.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, fast):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()
    assert backend.fast_net is not backend.net


def test_pack_by_padded_shape_groups_only_identical_padded_inputs():
    from facebatch.detection import pack_by_padded_shape
    shapes = [(100, 100), (120, 127), (128, 128), (129, 100), (100, 100)]
    groups = pack_by_padded_shape(shapes, 32, max_batch=2)
    assert sorted(i for g in groups for i in g) == list(range(5))
    pad = lambda s: (-(-s[0] // 32) * 32, -(-s[1] // 32) * 32)  # noqa: E731
    for g in groups:
        assert len(g) <= 2 and len({pad(shapes[i]) for i in g}) == 1
    assert groups == [[0, 1], [2, 4], [3]]  # 100, 120, 127 and 128 all pad to 128; 129 pads to 160


def test_small_images_are_upscaled_for_detection(mobilenet_detector, udacity_root):
    """A real face shrunk to a 44 px wide image (about 15 px face): the network at native size
    misses it; an upscaled look (always, or as a retry where nothing was found) finds it and the
    box maps back to the small image. A face found at native size keeps its box with retry."""
    from PIL import Image
    from facebatch.detection import create_detector
    img = Image.open(udacity_root / "training" / "Cameron_Diaz_50.jpg").convert("RGB")
    small = np.asarray(img.resize((max(1, img.width // 4), max(1, img.height // 4)), Image.BILINEAR))
    wd = str(mobilenet_detector.backend.weights_path.parent)
    det = {m: create_detector("mobilenet", min_side=256, upscale=m, weights_dir=wd) for m in ("always", "retry", "never")}
    assert det["always"].scale_for(*small.shape[:2]) == 256 / max(small.shape[:2])
    assert det["retry"].scale_for(*small.shape[:2]) == 1.0 and det["retry"].scale_for(*small.shape[:2], retry=True) > 1
    assert create_detector("mobilenet", min_side=256, max_side=200, upscale="always",
                           weights_dir=wd).scale_for(100, 50) == 2.0  # capped at max_side
    assert det["never"].detect([small])[0] == []
    for mode in ("always", "retry"):
        (face, *_) = det[mode].detect([small])[0]
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= small.shape[1] + 2 and 0 <= y0 < y1 <= small.shape[0] + 2, mode
    full = np.asarray(img)
    native, retried = det["never"].detect([full])[0], det["retry"].detect([full])[0]
    assert native and np.allclose(native[0].box, retried[0].box)
