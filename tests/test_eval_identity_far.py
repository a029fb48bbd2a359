"""The identity ``unknown`` threshold at a stated false-accept rate, on real celeba6k photos.

`facebatch evaluate identity` with the shipped ``attributes`` model over a small raw celeba6k
subset (people the model never trained on, through detection on the embedded Ray) reports the
threshold and TAR at FAR 1% and writes roc.csv / roc.png; tools/set_identity_threshold.py and
tools/release_model.py --identity-eval store that threshold in a model file (a temporary copy,
never the shipped one) and FaceAnalyzer then takes its ``unknown`` decision from it.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facebatch.formats.base import assign_split

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _link(root: Path, part: str, person: Path, files) -> None:
    (root / part / person.name).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / part / person.name / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def identity_eval(ray_session, celeba_root, tmp_path_factory):
    """8 unseen (hashed val) people x 12 photos for the pairs, 2 trained people x 3 photos for the gallery."""
    from facebatch.evaluation.cli import evaluate_identity  # raw datasets: preprocessed first
    from facebatch.modelio import read_model_file, resolve_model_path
    known = set(read_model_file(resolve_model_path("attributes"))["meta"]["identities"])
    people = sorted(p for p in (celeba_root / "train_dataset").iterdir() if p.is_dir())  # it holds a .DS_Store
    unseen = [p for p in people if p.name not in known and assign_split(p.name, 0.1) == "val"][:8]
    trained = [p for p in people if p.name in known and assign_split(p.name, 0.1) == "train"][:2]
    assert len(unseen) == 8 and len(trained) == 2
    root = tmp_path_factory.mktemp("celeba_far")
    for p in unseen:
        _link(root / "data", "train_dataset", p, sorted(p.glob("*.jpg"))[:12])
    for p in trained:
        _link(root / "data", "train_dataset", p, sorted(p.glob("*.jpg"))[:3])
    (root / "data" / "list_attr_celeba.txt").symlink_to(celeba_root / "list_attr_celeba.txt")
    out = root / "ev"
    m = evaluate_identity("attributes", str(root / "data"), "celeba", str(out), far=0.01)
    return {"metrics": m, "out": out, "root": root, "unseen": unseen, "trained": trained}


def test_threshold_and_tar_at_one_percent_far(identity_eval):
    m, out = identity_eval["metrics"], identity_eval["out"]
    assert m["verification_persons"] == 8 and m["verification_failed"] == 0, m
    assert m["verification_accuracy"] > 0.6 and m["verification_roc_auc"] > 0.7, m  # card: 0.769 / 0.84 on 32 people
    p = m["verification_at_far"]
    assert m["verification_far"] == 0.01 and p["far_target"] == 0.01
    assert p["n_diff"] == p["n_same"] == m["verification_pairs"] // 2 >= 400
    assert p["n_false_accept"] <= 0.01 * p["n_diff"] and p["far"] <= 0.01
    assert 0.0 < m["verification_tar_at_far"] <= 1.0 and m["verification_tar_at_far"] == p["tar"]
    t = m["verification_threshold_at_far"]
    assert -1.0 <= t <= 1.0 and t == p["threshold"]
    assert t > m["verification_threshold"]  # 1% FAR is stricter than the best-accuracy threshold
    assert json.loads((out / "metrics.json").read_text()) == m

    with open(out / "roc.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["far", "tar", "threshold"]
    assert rows[0]["threshold"] == "inf" and float(rows[-1]["far"]) == 1.0 and float(rows[-1]["tar"]) == 1.0
    far = np.array([float(r["far"]) for r in rows])
    assert (np.diff(far) >= 0).all()
    at = next(r for r in rows if r["threshold"] != "inf" and abs(float(r["threshold"]) - t) < 5e-7)
    assert int(at["false_accepts"]) == p["n_false_accept"] and int(at["true_accepts"]) == p["n_true_accept"]

    png = (out / "roc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(out / "roc.png") as im:
        im.verify()
    with Image.open(out / "roc.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300


def test_model_threshold_drives_the_unknown_decision(identity_eval, mobilenet_weights, tmp_path, monkeypatch):
    """A model file with verification_threshold in its meta: FaceAnalyzer (and enroll's gallery) use it."""
    monkeypatch.syspath_prepend(str(TOOLS))
    from set_identity_threshold import set_identity_threshold

    from facebatch.commands.enroll import enroll
    from facebatch.imaging import decode_image
    from facebatch.inference import AttributeHead, FaceAnalyzer
    from facebatch.modelio import read_model_file, resolve_model_path
    m = identity_eval["metrics"]
    model = tmp_path / "attributes_thr.pt"
    shutil.copyfile(resolve_model_path("attributes"), model)
    entries = set_identity_threshold(model, identity_eval["out"])
    t = m["verification_threshold_at_far"]
    meta = read_model_file(model)["meta"]
    assert meta["verification_threshold"] == entries["verification_threshold"] == t
    assert meta["verification_far"] == 0.01 and meta["verification_tar"] == m["verification_tar_at_far"]
    assert meta["verification_at_far"]["n_diff"] == m["verification_at_far"]["n_diff"]
    shipped = read_model_file(resolve_model_path("attributes"))
    assert 0.2 < shipped["meta"]["verification_threshold"] < 0.6 and shipped["meta"]["verification_far"] == 0.01
    bare = tmp_path / "attributes_bare.pt"  # the same model without a stored threshold
    shipped["meta"] = {k: v for k, v in shipped["meta"].items() if not k.startswith("verification_")}
    torch.save(shipped, bare)

    people = tmp_path / "people"  # two unseen people, two photos each
    unseen = identity_eval["unseen"]
    for p in unseen[:2]:
        (people / p.name).mkdir(parents=True)
        for f in sorted(p.glob("*.jpg"))[:2]:
            (people / p.name / f.name).symlink_to(f)
    g = enroll(str(people), str(tmp_path / "gallery.npz"), model=str(model), weights_dir=str(mobilenet_weights.parent))
    assert g["people"] == 2 and g["images"] == 4

    fa = FaceAnalyzer.load(keypoints=None, attributes=str(model), identity=str(model), gallery=g["gallery"],
                           weights_dir=str(mobilenet_weights.parent))  # this model's own embedding is the identity
    assert fa.identity_threshold == t != 0.5
    assert fa.describe()["gallery"]["threshold"] == t
    plain = FaceAnalyzer(fa.detector, None, AttributeHead.load(str(bare)), fa.gallery)
    # a model file without verification_threshold: the 0.5 default
    assert plain.identity_threshold == 0.5
    assert FaceAnalyzer(fa.detector, None, fa.attributes, fa.gallery, identity_threshold=0.2).identity_threshold == 0.2

    probes = [sorted(unseen[0].glob("*.jpg"))[5], sorted(unseen[2].glob("*.jpg"))[0]]  # enrolled / not enrolled
    faces = fa.analyze([decode_image(p.read_bytes()).image for p in probes], max_faces=1, keypoints=False,
                       attributes=False, identity=True)
    for f in faces:
        assert len(f) == 1
        r = f[0].to_dict(embedding=False)
        assert (r["identity"] != "unknown") == (r["identity_similarity"] >= t), r
    assert faces[1][0].identity in ("unknown", unseen[0].name, unseen[1].name)


def test_release_model_stores_threshold_and_card(identity_eval, tmp_path, monkeypatch):
    """tools/release_model.py --identity-eval into a temporary release folder: meta, ROC figure, card line."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import release_model

    from facebatch.modelio import read_model_file, resolve_model_path
    rel, docs = tmp_path / "release", tmp_path / "docs"
    rel.mkdir(), docs.mkdir()
    monkeypatch.setattr(release_model, "RELEASE_DIR", rel)
    monkeypatch.setattr(release_model, "DOCS_DIR", docs)
    src = tmp_path / "attributes_export.pt"
    shutil.copyfile(resolve_model_path("attributes"), src)
    dst = release_model.main([str(src), "attr_test", "--identity-eval", str(identity_eval["out"]), "--data", "celeba"])
    m = identity_eval["metrics"]
    assert dst == rel / "attr_test.pt"
    meta = read_model_file(dst)["meta"]
    assert meta["verification_threshold"] == m["verification_threshold_at_far"] and meta["verification_far"] == 0.01
    from facebatch.weights import sha256_file
    assert sha256_file(src) == sha256_file(resolve_model_path("attributes"))  # the source file is left as it was
    assert (docs / "roc-attr_test.png").read_bytes() == (identity_eval["out"] / "roc.png").read_bytes()
    card = (rel / "attr_test.md").read_text()
    p = m["verification_at_far"]
    assert (f"unknown below cosine {p['threshold']:.4f}: FAR {p['far']:.4f} on {p['n_diff']} different-person pairs"
            in card)
    assert f"TAR {p['tar']:.4f}" in card and "](../docs/roc-attr_test.png)" in card
    assert f"sha256 `{sha256_file(dst)}`" in card  # the card hashes the file with the threshold in it

    other = tmp_path / "other.pt"  # an evaluation of another file is refused before anything is copied
    obj = read_model_file(src)
    obj["meta"]["note"] = "changed"
    import torch
    torch.save(obj, other)
    with pytest.raises(SystemExit, match="evaluated a file"):
        release_model.main([str(other), "attr_other", "--identity-eval", str(identity_eval["out"])])
    assert not (rel / "attr_other.pt").exists()
