"""FaceAnalyzer, the one input contract and the one registry, on real faces (no Ray).

The analyzer must give what the preprocess + evaluation path gives for the same photo: the
same model input tensor, the same outputs, keypoints where the labels are, attributes that
agree with CelebA's labels, and identities from an enroll gallery.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facebatch.imaging import decode_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def analyzer(mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    return FaceAnalyzer.load(weights_path=str(mobilenet_weights))


def _udacity(udacity_root, n=6):
    with open(udacity_root / "training_frames_keypoints.csv") as f:
        rows = sorted(list(csv.reader(f))[1:])
    picked = rows[:: len(rows) // n][:n]
    images = [decode_image((udacity_root / "training" / r[0]).read_bytes()).image for r in picked]
    labels = [np.asarray(r[1:], np.float32).reshape(68, 2) for r in picked]
    return [r[0] for r in picked], images, labels


# ----------------------------------------------------------------------------- registry
def test_every_registered_model_builds_runs_and_round_trips(tmp_path):
    from facebatch.inference import AttributeHead, KeypointHead
    from facebatch.modelio import load_model, read_model_file, save_model_file
    from facebatch.models import (ATTRIBUTE_LOGITS, BINARY_LOGITS, CLASS_LOGITS, POINTS, RECONSTRUCTION,
                                  create_model, registry)
    specs = registry()
    assert {"mobilenet_face_kp", "resolution_ensemble", "multitask", "seed002_cnn", "seed003_cnn"} <= set(specs)
    assert set(registry("keypoints")) | set(registry("attributes")) == set(specs)
    for name, spec in specs.items():
        torch.manual_seed(0)
        model = create_model(name, **spec.example).eval()
        s = spec.example_input
        x = torch.rand(2, spec.channels, s, s)
        with torch.no_grad():
            y = model(x)
        if POINTS in spec.outputs:
            assert y.shape == (2, spec.example["n_points"] * 2), name
        if ATTRIBUTE_LOGITS in spec.outputs:
            assert y["smile"].shape == (2,) and y["embedding"].shape[0] == 2, name
        if BINARY_LOGITS in spec.outputs:
            assert y.shape == (2, 2), name
        if CLASS_LOGITS in spec.outputs:
            assert y.shape == (2, spec.example["n_classes"]), name
        if RECONSTRUCTION in spec.outputs:
            assert y.shape == x.shape, name
        path = save_model_file(tmp_path / f"{name}.pt", spec.task, name, spec.example, model,
                               {"input_size": s, "grey": spec.channels == 1, "scheme": "ibug68" if
                                spec.example.get("n_points") == 68 else "kaggle15", "attributes": ["smile"]})
        assert read_model_file(path)["model"] == name
        again, info = load_model(str(path))
        with torch.no_grad():
            y2 = again(x)
        for a, b in zip(*(list(v.values()) if isinstance(v, dict) else [v] for v in (y, y2))):
            torch.testing.assert_close(a, b)
        if spec.task == "keypoints" and spec.example.get("n_points") in (15, 68):
            assert KeypointHead(again, info).predict(x).shape == (2, spec.example["n_points"], 2)
        if spec.task == "attributes" and RECONSTRUCTION not in spec.outputs:
            AttributeHead(again, info).outputs(x)  # interprets every kind without a name branch


def test_fixed_input_models_refuse_other_sizes():
    from facebatch.models import create_model
    with pytest.raises(ValueError, match="input_size=64"):
        create_model("seed002_cnn", input_size=96)
    with pytest.raises(ValueError, match="unknown attributes model 'nope'"):
        create_model("nope", task="attributes")


# ----------------------------------------------------------------------------- input contract
def test_preprocess_row_and_analyzer_give_the_same_input_and_outputs(analyzer, udacity_root, celeba_root):
    """The same photo through a preprocess row (the job's pure row code) and through the analyzer."""
    from facebatch.inference import model_input
    from facebatch.preprocess.rows import CropConfig, rows_for_image
    names, images, _ = _udacity(udacity_root, 3)
    images.append(decode_image(next((celeba_root / "test_dataset" / "celeb_0").glob("*.jpg")).read_bytes()).image)
    faces = analyzer.detect(images)
    results = analyzer.analyze(images, faces=faces)
    heads = [analyzer.keypoints, analyzer.attributes]
    for img, fs, res in zip(images, faces, results):
        row = rows_for_image({"status": "ok"}, img, fs, None, CropConfig())[0]
        a = res[0]
        assert np.allclose(a.crop_box, row["crop_box"]) and np.allclose(a.box, row["box"], atol=1e-4)
        from facebatch.inference import face_crop
        _, crop = face_crop(img, fs[0].box, analyzer.keypoints.input.frame)
        assert crop == row["crop"]  # the same JPEG bytes: the round trip is kept and deterministic
        for head in heads:
            x_row = model_input([row["crop"]], head.input)
            x_fa = model_input([crop], head.input)
            assert (x_row - x_fa).abs().max() <= 1e-6
        unit = analyzer.keypoints.predict(model_input([row["crop"]], analyzer.keypoints.input))[0]
        side = row["crop_box"][2] - row["crop_box"][0]
        want = unit * side + np.asarray(row["crop_box"][:2])
        np.testing.assert_allclose(np.asarray(a.keypoints68).reshape(68, 2), want, atol=1e-3)
        sc = analyzer.attributes.scores(model_input([row["crop"]], analyzer.attributes.input))
        assert a.attributes["smile"] == pytest.approx(float(sc["smile"][0]), abs=1e-5)


def test_model_input_follows_the_model_meta():
    from facebatch.inference import InputSpec, model_input
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 255
    x = model_input([rgb], InputSpec(20, grey=True))
    assert x.shape == (1, 1, 20, 20) and float(x[0, 0, 5, 5]) == pytest.approx(76 / 255, abs=1e-6)  # L of pure red
    spec = InputSpec.from_meta({"input_size": 32, "crop_frame": {"margin": 0.1, "crop_size": 128, "jpeg_quality": None}})
    assert spec.frame.margin == 0.1 and spec.frame.jpeg_quality is None
    assert InputSpec.from_meta({"input_size": 160}).frame.crop_size == 256  # files without a frame: preprocess defaults
    with pytest.raises(ValueError):
        model_input([rgb.astype(np.float32)], InputSpec(20))


# ----------------------------------------------------------------------------- analyzer on real faces
def test_keypoints_land_on_the_labels(analyzer, udacity_root):
    from facebatch.keypoints.metrics import nme_interocular
    from facebatch.keypoints.schemes import IBUG68
    _, images, labels = _udacity(udacity_root, 8)
    res = analyzer.analyze(images)
    assert all(len(r) >= 1 for r in res)
    pred = np.stack([np.asarray(r[0].keypoints68).reshape(68, 2) for r in res])
    nme = nme_interocular(pred, np.stack(labels), IBUG68)
    assert nme < 0.08, nme  # the card reports 0.045 on held-out people
    k15 = np.asarray(res[0][0].keypoints15).reshape(15, 2)
    assert np.allclose(k15[0], pred[0][42:48].mean(0), atol=1e-3)  # Kaggle left-eye centre = iBUG 42-47 mean


def test_coordinates_are_in_the_pixels_passed_in(analyzer, udacity_root):
    _, images, _ = _udacity(udacity_root, 2)
    img = images[0]
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.BICUBIC))
    small, large = analyzer.analyze([img, big])
    a, b = small[0], large[0]
    assert np.allclose(np.asarray(b.box) / 2, a.box, atol=4)
    kp_a, kp_b = np.asarray(a.keypoints68).reshape(68, 2), np.asarray(b.keypoints68).reshape(68, 2)
    iod = np.linalg.norm(kp_a[36] - kp_a[45])
    assert np.median(np.linalg.norm(kp_b / 2 - kp_a, axis=1)) < 0.05 * iod


def test_batched_equals_one_by_one_and_several_faces(analyzer, udacity_root, celeba_root):
    _, images, _ = _udacity(udacity_root, 3)
    both = analyzer.analyze(images)
    for img, r in zip(images, both):
        one = analyzer.analyze([img])[0]
        assert len(one) == len(r)
        np.testing.assert_allclose(one[0].keypoints68, r[0].keypoints68, atol=1e-3)
        assert one[0].labels == r[0].labels
    # two real faces side by side, the larger on the right: two faces, largest first
    a = decode_image(next((celeba_root / "test_dataset" / "celeb_1").glob("*.jpg")).read_bytes()).image
    b = np.asarray(Image.fromarray(a).resize((a.shape[1] * 2, a.shape[0] * 2)))
    canvas = np.zeros((b.shape[0], a.shape[1] + b.shape[1] + 20, 3), np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:, a.shape[1] + 20:] = b
    faces = analyzer.analyze([canvas, np.full((120, 160, 3), 127, np.uint8)])
    assert len(faces[0]) == 2 and faces[0][0].box[0] > a.shape[1] and faces[0][1].box[2] < a.shape[1] + 20
    assert faces[0][0].face_size > faces[0][1].face_size
    assert faces[1] == []  # a flat grey image has no face
    d = faces[0][0].to_dict(embedding=False)
    assert len(d["box"]) == 4 and len(d["landmarks"]) == 10 and len(d["keypoints68"]) == 136
    assert len(d["keypoints15"]) == 30 and "embedding" not in d and isinstance(d["smile_label"], bool)


def test_attributes_agree_with_celeba_labels(analyzer, celeba_root):
    labels = {}
    with open(celeba_root / "list_attr_celeba.txt") as f:
        names = f.readlines()[1].split()
    with open(celeba_root / "list_attr_celeba.txt") as f:
        for line in f.readlines()[2:]:
            p = line.split()
            labels[p[0]] = {"smile": p[1 + names.index("Smiling")] == "1"}
    files = sorted((celeba_root / "test_dataset").glob("celeb_1*/*.jpg"))[:40]
    res = analyzer.analyze([decode_image(f.read_bytes()).image for f in files])
    agree = [r[0].labels["smile"] == labels[f.name]["smile"] for f, r in zip(files, res) if r]
    assert len(agree) >= 38 and np.mean(agree) >= 0.85, np.mean(agree)
    assert "embedding" not in res[0][0].to_dict()  # identity is opt-in: no identity model, no embedding
    from facebatch.inference import FaceAnalyzer
    lda = FaceAnalyzer.load(detector=analyzer.detector, keypoints=None, attributes=None, identity="attributes")
    emb = np.asarray(lda.analyze([decode_image(files[0].read_bytes()).image])[0][0].embedding)
    want = analyzer.attributes.meta["emb_dim"]  # the attributes model's LDA embedding (167), still selectable
    assert emb.shape == (want,) and abs(np.linalg.norm(emb) - 1) < 1e-4


def test_gallery_identity_and_enroll_in_process(celeba_root, mobilenet_weights, tmp_path, forbid_ray_init):
    """enroll and --match run in this process (no Ray) and name people from their unseen photos."""
    from facebatch.commands.enroll import enroll, match
    from facebatch.inference import FaceAnalyzer
    from facebatch.modelio import read_model_file, resolve_model_path
    known = set(read_model_file(resolve_model_path("attributes"))["meta"]["identities"])  # the identity model was fitted on these
    people = sorted(p.name for p in (celeba_root / "train_dataset").iterdir() if p.is_dir() and p.name not in known)[:4]  # none fitted on
    root = tmp_path / "people"
    for p in people:
        (root / p).mkdir(parents=True)
        for f in sorted((celeba_root / "train_dataset" / p).glob("*.jpg"))[:6]:
            (root / p / f.name).symlink_to(f)
    (root / people[0] / "broken.jpg").write_bytes(b"not a jpeg")
    summary = enroll(str(root), str(tmp_path / "g.npz"), weights_path=str(mobilenet_weights))
    assert summary["people"] == 4 and summary["images"] == 24
    assert [r["status"] for r in summary["no_face"]] == ["decode_error"]
    probes = tmp_path / "probe"
    probes.mkdir()
    for p in people:
        for f in sorted((celeba_root / "test_dataset" / p).glob("*.jpg"))[:2]:
            (probes / f"{p}__{f.name}").symlink_to(f)
    found = match(str(probes), summary["gallery"], threshold=-1.0, weights_path=str(mobilenet_weights))
    right = [Path(r["path"]).name.split("__")[0] == r["person"] for r in found]
    assert len(found) == 8 and all(right), found  # the identity model on people it never saw
    fa = FaceAnalyzer.load(weights_path=str(mobilenet_weights), gallery=summary["gallery"], identity_threshold=0.99)
    img = decode_image(next((celeba_root / "test_dataset" / people[1]).glob("*.jpg")).read_bytes()).image
    face = fa.analyze([img])[0][0]
    assert face.identity == "unknown" and face.identity_similarity < 0.99  # below a strict threshold
    fa.identity_threshold = -1.0
    assert fa.analyze([img])[0][0].identity in people
    d = fa.describe()
    assert d["identity"]["name"] == "identity" and d["identity"]["embedding_dim"] == 128 and d["attributes"]["sha256"]


def test_callable_for_ray_data_and_serve(analyzer, udacity_root):
    _, images, _ = _udacity(udacity_root, 2)
    out = analyzer({"path": np.array(["a", "b", "c"]), "image": [images[0], None, images[1]]})
    assert list(out["path"]) == ["a", "b", "c"] and out["faces"][1] == [] and len(out["faces"][0]) >= 1
    assert "image" not in out
    lists = analyzer(images)
    assert len(lists) == 2 and lists[0][0]["box"] == pytest.approx(out["faces"][0][0]["box"], abs=1e-4)


def test_analyze_command_prints_one_line_per_image(udacity_root, tmp_path, capsys, mobilenet_weights):
    from facebatch.cli import main
    names, _, _ = _udacity(udacity_root, 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    files = [str(udacity_root / "training" / n) for n in names] + [str(bad)]
    assert main(["analyze", *files, "--weights-dir", str(mobilenet_weights.parent)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["status"] for x in lines] == ["ok", "ok", "empty_file"]
    f = lines[0]["faces"][0]
    assert len(f["keypoints68"]) == 136 and "smile" in f and "embedding" not in f
    assert main(["analyze", "--only", "detect", files[0], "--weights-dir", str(mobilenet_weights.parent)]) == 0
    f = json.loads(capsys.readouterr().out.splitlines()[0])["faces"][0]
    assert "keypoints68" not in f and "smile" not in f  # no keypoint head, no keypoint columns
    assert main(["analyze", str(tmp_path / "missing.jpg")]) == 2


def test_cli_errors_are_one_line_and_verbose_adds_the_traceback(tmp_path, capsys):
    from facebatch.cli import main
    missing = str(tmp_path / "nope.jpg")
    assert main(["analyze", missing]) == 2
    err = capsys.readouterr().err
    assert "no such image file" in err and "Traceback" not in err
    assert main(["-v", "analyze", missing]) == 2
    assert "Traceback" in capsys.readouterr().err
