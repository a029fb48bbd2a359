"""Attribute training glue: the task's pieces on synthetic Parquet, then a tiny real run through
Ray Train (celeba + genki subsets) with export, evaluate attributes/identity and enroll."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from facebatch import schema as S
from facebatch.attributes.losses import MarginHead
from facebatch.attributes.metrics import BINARY_KEYS
from facebatch.training.attribute_task import AttributeTask, apply_margin
from facebatch.training.config import load_config

CELEBA_PEOPLE_TRAIN, CELEBA_PEOPLE_VAL, CELEBA_TRAIN_IMAGES, CELEBA_TEST_IMAGES = 4, 2, 5, 2
VAL_FRACTION = 0.3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


# ---------------------------------------------------------------------------------- synthetic


def _jpeg(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def synthetic_parquet(tmp_path_factory) -> Path:
    """Rows like celeba (identity, smile, eyeglasses) and genki (smile only), plus a failed row."""
    import pyarrow.parquet as pq
    rows = []
    for i in range(24):
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        person = f"p{i % 4}" if split != "val" else "pv"
        attrs = {"smile": i % 2, "eyeglasses": int(i % 5 == 0)}
        rows.append({S.PATH: f"c{i}.jpg", S.STATUS: S.OK, S.CROP: _jpeg(i), S.ATTRIBUTES: json.dumps(attrs),
                     S.IDENTITY: person, S.PERSON: person, S.SPLIT: split, S.FACE_INDEX: 0})
    for i in range(6):
        rows.append({S.PATH: f"g{i}.jpg", S.STATUS: S.OK, S.CROP: _jpeg(100 + i),
                     S.ATTRIBUTES: json.dumps({"smile": int(i < 3)}), S.PERSON: f"g{i}",
                     S.SPLIT: "train" if i < 4 else "val", S.FACE_INDEX: 0})
    rows.append({S.PATH: "bad.jpg", S.STATUS: S.NO_FACE, S.SPLIT: "train", S.FACE_INDEX: -1,
                 S.ATTRIBUTES: json.dumps({"smile": 1}), S.IDENTITY: "p9"})
    out = tmp_path_factory.mktemp("syn") / "pre"
    out.mkdir()
    pq.write_table(S.to_table(rows), out / "part-00000.parquet")
    return out


def _cfg(data, model, attributes, size=32, **kw):
    over = [f"data={json.dumps(str(data))}", "task=\"attributes\"", f"model={json.dumps(model)}",
            f"attributes={json.dumps(attributes)}", f"input_size={size}"] + [f"{k}={json.dumps(v)}" for k, v in kw.items()]
    return load_config(None, over)


def _batch(data) -> dict:
    import pyarrow.parquet as pq
    t = pq.read_table(str(data), columns=AttributeTask.columns)
    return {c: np.array(t.column(c).to_pylist(), dtype=object) for c in AttributeTask.columns}


def test_margin_in_the_loss_equals_the_margin_head():
    torch.manual_seed(0)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 2, -1, 4, 1, 3])
    for kind, m in (("cosface", 0.35), ("arcface", 0.5)):
        head = MarginHead(8, 5, s=30.0, m=m, kind=kind)
        assert torch.allclose(apply_margin(head(emb), labels, 30.0, m, kind), head(emb, labels), atol=1e-4)


def test_multitask_task_decode_loss_metrics(synthetic_parquet):
    cfg = _cfg(synthetic_parquet, "multitask", ["smile", "eyeglasses", "identity"],
               model_kwargs={"backbone": "resnet_small", "resnet_widths": [8, 8, 16, 16]})
    task = AttributeTask(cfg)
    # identities: sorted training identities; genki rows and the failed row bring none
    assert task.identities == ["p0", "p1", "p2", "p3"] and cfg.model_kwargs["n_identities"] == 4
    assert cfg.model_kwargs["eyeglasses_pos_weight"] == pytest.approx(12 / 4)  # 16 celeba train rows, 4 positive
    tr = task.decode(_batch(synthetic_parquet), ["train"])
    assert tr["image"].shape == (20, 32, 32, 3) and tr["image"].dtype == np.uint8
    assert np.isnan(tr["y_eyeglasses"][-4:]).all() and (tr["y_identity"][-4:] == -1).all()  # genki rows
    va = task.decode(_batch(synthetic_parquet), ["val"])
    assert (va["y_identity"] == -1).all() and len(va["image"]) == 6  # val person unseen in training
    model = task.build_model()
    x, y = task.inputs(tr, train=True, rng=np.random.default_rng(0))
    assert x.shape == (20, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and set(y) == {"smile", "eyeglasses", "identity"}
    loss = task.loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        sums = task.metric_sums(task.predict(model, x), y)
    assert sums.shape == (task.n_metric_sums,) == (10,)
    assert float(sums[0:4].sum()) == 20 and float(sums[4:8].sum()) == 16 and float(sums[8]) == 16
    m = task.finalize(sums)
    assert 0 <= m["val_score"] <= 1 and 0 <= m["val_identity_top1"] <= 1 and m["n_val_smile"] == 20
    # val: no known identity -> top-1 undefined, score from the attributes only
    xv, yv = task.inputs(va, train=False, rng=None)
    with torch.no_grad():
        mv = task.finalize(task.metric_sums(task.predict(model, xv), yv))
    assert math.isnan(mv["val_identity_top1"]) and mv["val_score"] == pytest.approx(
        (mv["val_smile_balanced_accuracy"] + mv["val_eyeglasses_balanced_accuracy"]) / 2)
    # a lone training row is repeated (BatchNorm1d), never dropped
    one = {k: v[:1] for k, v in tr.items()}
    x1, y1 = task.inputs(one, train=True, rng=np.random.default_rng(0))
    assert len(x1) == 2 and len(y1["smile"]) == 2
    flip = AttributeTask(_cfg(synthetic_parquet, "multitask", ["smile", "identity"], flip_test=True,
                              model_kwargs={"backbone": "resnet_small", "resnet_widths": [8, 8, 16, 16]}))
    with torch.no_grad():
        net = flip.build_model().eval()
        out = flip.predict(net, x[:4])
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(4), atol=1e-5) and flip.n_metric_sums == 6
    kwargs, meta = task.export(model)
    assert meta["attributes"] == ["smile", "eyeglasses"] and meta["identities"] == task.identities
    assert "eyeglasses_pos_weight" not in kwargs and kwargs["n_identities"] == 4


@pytest.mark.parametrize("model,attrs,size", [("seed002_cnn", ["smile"], 64), ("seed004_cnn", ["eyeglasses"], 160),
                                              ("seed003_cnn", ["identity"], 32),
                                              ("seed002_autoencoder", ["smile"], 64)])
def test_seed_models_through_the_task(synthetic_parquet, model, attrs, size):
    task = AttributeTask(_cfg(synthetic_parquet, model, attrs, size=size, augment=None))
    batch = task.decode(_batch(synthetic_parquet), ["train", "val"])
    net = task.build_model()
    x, y = task.inputs(batch, train=True, rng=np.random.default_rng(0))
    loss = task.loss(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    net.eval()
    with torch.no_grad():
        m = task.finalize(task.metric_sums(task.predict(net, x), y))
    assert task.monitor in m and np.isfinite(m[task.monitor])
    if model == "seed003_cnn":
        assert net.classifier[-1].out_features == 4 and m["n_val_identity"] == 16  # val person unknown
    if model == "seed002_autoencoder":
        assert task.mode == "min" and m["n_val_pos"] > 0 and m["n_val_neg"] > 0
        _, meta = task.export(net)
        assert meta["threshold"] == pytest.approx(float(net.threshold)) and meta["threshold_n"] == 11


def test_scores_and_embeddings_of_each_model_kind():
    """Output meaning comes from the registry spec: sigmoid scores at stored (or 0.5) thresholds for
    multitask, softmax for 2-way seeds, the negated error for the autoencoder; unit embeddings."""
    from facebatch.inference import AttributeHead
    from facebatch.models import create_model
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    mt = create_model("multitask", backbone="resnet_small", resnet_widths=[8, 8, 16, 16], input_size=64,
                      n_identities=3).eval()
    ae = create_model("seed002_autoencoder").eval()
    ae.fit_threshold([0.1, 0.2], quantile=1.0)
    s3 = create_model("seed003_cnn", n_classes=5).eval()
    s2 = create_model("seed002_cnn").eval()
    meta = {"input_size": 64}
    head = AttributeHead(mt, {"model": "multitask", "meta": {**meta, "attributes": ["smile", "eyeglasses"],
                                                             "thresholds": {"smile": 0.3}}})
    sc = head.scores(x)
    assert set(sc) == {"smile", "eyeglasses"} and all(((s >= 0) & (s <= 1)).all() for s in sc.values())
    assert head.thresholds == {"smile": 0.3, "eyeglasses": 0.5}
    with torch.no_grad():
        want = torch.sigmoid(mt(x)["smile"]).numpy()
    np.testing.assert_allclose(sc["smile"], want, atol=1e-6)
    ae_head = AttributeHead(ae, {"model": "seed002_autoencoder", "path": "ae", "meta": {**meta, "attributes": ["smile"]}})
    assert ae_head.thresholds["smile"] == pytest.approx(-0.2, abs=1e-6) and (ae_head.scores(x)["smile"] <= 0).all()
    s2_head = AttributeHead(s2, {"model": "seed002_cnn", "meta": {**meta, "attributes": ["smile"]}})
    with torch.no_grad():
        np.testing.assert_allclose(s2_head.scores(x)["smile"], torch.softmax(s2(x), 1)[:, 1].numpy(), atol=1e-6)
    assert not s2_head.has_embedding
    with pytest.raises(ValueError, match="no identity embedding"):
        s2_head.embed(x)
    for net, name, d in ((mt, "multitask", 128), (s3, "seed003_cnn", 512)):
        e = AttributeHead(net, {"model": name, "meta": meta}).embed(x)
        assert e.shape == (3, d) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_bad_task_configs_fail_clearly(synthetic_parquet):
    with pytest.raises(ValueError, match="input_size=160"):
        AttributeTask(_cfg(synthetic_parquet, "seed004_cnn", ["eyeglasses"], size=64))
    with pytest.raises(ValueError, match="one binary attribute"):
        AttributeTask(_cfg(synthetic_parquet, "seed002_cnn", ["smile", "eyeglasses"], size=64))
    with pytest.raises(ValueError, match=r"\[.age.\] have no label"):
        AttributeTask(_cfg(synthetic_parquet, "multitask", ["age"]))
    with pytest.raises(ValueError, match="unknown augment"):
        AttributeTask(_cfg(synthetic_parquet, "multitask", ["smile"], augment={"rotate_deg": 5}))
    with pytest.raises(FileNotFoundError, match="preprocess"):
        AttributeTask(_cfg(synthetic_parquet.parent / "missing", "multitask", ["identity"]))


def test_batched_augmentation_is_flip_plus_colour_jitter():
    from facebatch.keypoints.augment import color_jitter
    from facebatch.training.attribute_task import AttrAugment
    task = AttributeTask.__new__(AttributeTask)
    x = torch.rand(3, 3, 16, 16)
    task.aug = AttrAugment(flip_p=1.0)
    out = task._augment(x, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    rng.random(3)
    f = [1 + rng.uniform(-0.2, 0.2, 3) for _ in range(3)]
    ref = torch.stack([color_jitter(x[i].flip(-1), f[0][i], f[1][i], f[2][i]) for i in range(3)])
    assert torch.allclose(out, ref, atol=1e-6)


def test_shift_augmentation_translates_each_image():
    from facebatch.training.attribute_task import AttrAugment
    task = AttributeTask.__new__(AttributeTask)
    x = torch.rand(6, 3, 8, 8)
    task.aug = AttrAugment(flip_p=0.0, brightness=0, contrast=0, saturation=0, shift=0.25)  # up to 2 px
    out = task._augment(x, np.random.default_rng(3))
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    offsets = []
    for i in range(6):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.allclose(out[i], padded[i, :, dy:dy + 8, dx:dx + 8], atol=1e-6)]
        assert hits, f"image {i} is not a shifted copy"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # drawn per image


def test_cli_lists_the_new_commands(capsys):
    from facebatch.cli import main
    assert main(["enroll"]) == 2 and "enroll needs --input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "identity", "--help"])
    assert "verification" in capsys.readouterr().out


def test_shipped_attribute_configs_load():
    for name in ("attributes", "seed002_cnn", "seed002_autoencoder", "seed004_cnn", "seed003_cnn"):
        cfg = load_config(name)
        assert cfg.task == "attributes" and cfg.epochs >= 1
    assert load_config("attributes").export == "runs/exports/attributes.pt"


def test_no_training_config_writes_into_the_shipped_models():
    """Releasing is an explicit step (tools/release_model.py): a training run never overwrites
    facebatch/release/."""
    from facebatch.training.config import CONFIG_DIR
    for path in sorted(Path(CONFIG_DIR).glob("*.json")):
        export = json.loads(path.read_text()).get("export") or ""
        assert "release" not in Path(export).parts, f"{path.name} exports into {export}"


# ---------------------------------------------------------------------------------- real, through Ray


def _celeba_subset(root: Path, celeba_root: Path) -> tuple[Path, list[str], list[str]]:
    """A celeba6k-layout folder of symlinks: train people (one with eyeglasses) and val people."""
    from facebatch.formats.base import assign_split
    from facebatch.formats.labelfiles import parse_celeba_attrs
    attrs = parse_celeba_attrs((celeba_root / "list_attr_celeba.txt").read_text(), "attrs")
    people = sorted(p.name for p in (celeba_root / "train_dataset").iterdir() if p.is_dir() and not p.name.startswith("."))
    train_p, val_p = [], []
    for p in people:
        files = sorted((celeba_root / "train_dataset" / p).glob("*.jpg"))
        glasses = sum(attrs[f.name]["eyeglasses"] for f in files[:CELEBA_TRAIN_IMAGES])
        if assign_split(p, VAL_FRACTION) == "val":
            if len(val_p) < CELEBA_PEOPLE_VAL:
                val_p.append(p)
        elif len(train_p) < CELEBA_PEOPLE_TRAIN and (glasses or len(train_p) < CELEBA_PEOPLE_TRAIN - 1):
            train_p.append(p)
        if len(train_p) == CELEBA_PEOPLE_TRAIN and len(val_p) == CELEBA_PEOPLE_VAL:
            break
    root.mkdir(parents=True)
    (root / "list_attr_celeba.txt").symlink_to(celeba_root / "list_attr_celeba.txt")
    for p in train_p + val_p:
        for part, n in (("train_dataset", CELEBA_TRAIN_IMAGES), ("test_dataset", CELEBA_TEST_IMAGES)):
            (root / part / p).mkdir(parents=True)
            for f in sorted((celeba_root / part / p).glob("*.jpg"))[:n]:
                (root / part / p / f.name).symlink_to(f)
    return root, train_p, val_p


@pytest.fixture(scope="module")
def attr_data(ray_session, celeba_root, genki_root, mobilenet_weights, tmp_path_factory):
    from facebatch.preprocess.config import PreprocessConfig
    from facebatch.preprocess.pipeline import run_preprocess
    from facebatch.preprocess.rows import CropConfig
    base = tmp_path_factory.mktemp("attr")
    celeba, train_p, val_p = _celeba_subset(base / "celeba", celeba_root)
    genki = base / "genki"
    (genki / "files").mkdir(parents=True)
    (genki / "labels.txt").symlink_to(genki_root / "labels.txt")
    for n in range(1, 4001, 200):  # spread over the file: smiling and not
        (genki / "files" / f"file{n:04d}.jpg").symlink_to(genki_root / "files" / f"file{n:04d}.jpg")
    outs = {}
    for name, src, fmt in (("celeba", celeba, "celeba"), ("genki", genki, "genki")):
        outs[name] = base / f"pre-{name}"
        run_preprocess(PreprocessConfig(input=str(src), output=str(outs[name]), format=fmt, val_fraction=VAL_FRACTION,
                                        progress="none", crop=CropConfig(crop_size=96)))
    return {"base": base, "celeba_raw": celeba, "train_people": train_p, "val_people": val_p, **outs}


def test_multitask_train_export_evaluate_enroll(ray_session, attr_data, tmp_path):
    from facebatch.commands.enroll import enroll, match
    from facebatch.evaluation.attributes import evaluate_attributes
    from facebatch.evaluation.identity import evaluate_identity
    from facebatch.modelio import load_model
    from facebatch.training.run import train
    export = tmp_path / "attr.pt"
    cfg = load_config("attributes", [
        "data=" + json.dumps([str(attr_data["celeba"]), str(attr_data["genki"])]), "input_size=64", "epochs=2",
        "batch_size=16", "num_workers=2", "cpus_per_worker=0.5", "name=\"a1\"",
        "storage_path=" + json.dumps(str(tmp_path / "runs")), "export=" + json.dumps(str(export))])
    summary = train(cfg)
    n_people = len(attr_data["train_people"])
    # celeba train rows of the train people + genki train rows; val: val people + genki val rows
    assert summary["epochs_run"] == 2 and summary["n_train"] > n_people * 4 and summary["n_val"] > 0
    best = summary["best"]
    assert 0 <= best["val_score"] <= 1 and best["n_val_smile"] > 0 and best["n_val_identity"] == 0
    hist = json.loads((tmp_path / "runs" / "a1" / "history.json").read_text())
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)
    assert cfg.keep == "last" and summary["best_epoch"] == 2 and summary["best"] == hist[-1]  # the final weights

    model, info = load_model(str(export))
    meta = info["meta"]
    assert meta["attributes"] == ["smile", "eyeglasses"] and meta["input_size"] == 64
    assert meta["identities"] == sorted(attr_data["train_people"]) and info["model_kwargs"]["n_identities"] == n_people
    assert meta["crop_frame"] == {"margin": 0.2, "crop_size": 96, "jpeg_quality": 95}  # the fixture's crops
    assert export.stat().st_size < 25e6

    ev = evaluate_attributes(str(export), str(attr_data["celeba"]), None, str(tmp_path / "ev-celeba"))
    assert set(ev) == {"smile", "eyeglasses", "summary"} and ev["summary"]["n_attributes"] == 2
    assert ev["summary"]["mean_accuracy"] == pytest.approx((ev["smile"]["accuracy"] + ev["eyeglasses"]["accuracy"]) / 2)
    for m in (ev["smile"], ev["eyeglasses"]):
        assert tuple(m) == BINARY_KEYS and m["n"] == len(attr_data["train_people"] + attr_data["val_people"]) * 7
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["balanced_accuracy"] <= 1 and m["failed"] <= m["n"]
        assert sum(map(sum, m["confusion"])) == m["n"]
    saved = json.loads((tmp_path / "ev-celeba" / "metrics.json").read_text())
    assert {k: tuple(v) for k, v in saved.items() if k != "summary"} == {"smile": BINARY_KEYS, "eyeglasses": BINARY_KEYS}
    for f in ("predictions.csv", "confusion_smile.png", "confusion_eyeglasses.png", "attributes.png"):
        assert (tmp_path / "ev-celeba" / f).stat().st_size > 100, f
    ev_g = evaluate_attributes(str(export), str(attr_data["genki"]), None, str(tmp_path / "ev-genki"), splits=["val", "train"])
    assert set(ev_g) == {"smile"} and ev_g["smile"]["n"] == 20  # genki has no eyeglasses label
    assert 0 < ev_g["smile"]["confusion"][1][0] + ev_g["smile"]["confusion"][1][1] < 20  # both classes

    ident = evaluate_identity(str(export), str(attr_data["celeba"]), None, str(tmp_path / "ev-id"))
    assert ident["gallery_persons"] == n_people and ident["n_probe"] == n_people * CELEBA_TEST_IMAGES
    assert 0 <= ident["top1"] <= 1 and 0 <= ident["top1_classifier"] <= 1
    assert ident["verification_persons"] == len(attr_data["val_people"])
    assert 0 <= ident["verification_accuracy"] <= 1
    assert json.loads((tmp_path / "ev-id" / "metrics.json").read_text())["top1"] == ident["top1"]

    # the closed-form identity projection (tools/fit_identity_lda.py) on the train people's photos
    import importlib.util
    tools = Path(__file__).resolve().parent.parent / "tools"
    spec = importlib.util.spec_from_file_location("fit_identity_lda", tools / "fit_identity_lda.py")
    lda_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lda_tool)
    lda_file = tmp_path / "attr_lda.pt"
    assert lda_tool.main([str(export), str(lda_file), "--data", str(attr_data["celeba"]), "--grid", "2",
                          "--pca-dim", "64"]) == 0
    lda_model, lda_info = load_model(str(lda_file))
    lda_meta = lda_info["meta"]["identity_lda"]
    assert lda_meta["people"] == n_people and lda_meta["dim"] == n_people - 1 and lda_meta["left_out_images"] == 0
    assert lda_info["model_kwargs"]["lda_dim"] == n_people - 1 and lda_info["meta"]["emb_dim"] == n_people - 1
    assert "verification_threshold" not in lda_info["meta"]  # belonged to the old embedding
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64)
        a, b = model(x), lda_model(x)
    assert torch.equal(a["smile"], b["smile"]) and b["embedding"].shape == (2, n_people - 1)
    ident2 = evaluate_identity(str(lda_file), str(attr_data["celeba"]), None, str(tmp_path / "ev-id-lda"))
    assert ident2["gallery_persons"] == n_people and 0 <= ident2["verification_accuracy"] <= 1
    assert ident2["top1"] >= 0.5, ident2  # 4 people: chance is 0.25
    with pytest.raises(SystemExit, match="val/test"):
        lda_tool.main([str(export), str(tmp_path / "x.pt"), "--data", str(attr_data["celeba"]), "--splits", "val"])

    # enroll: one folder per person, symlinks to their first three celeba images
    people_dir = tmp_path / "people"
    celeba_raw = attr_data["celeba_raw"]
    for p in attr_data["train_people"][:2]:
        (people_dir / p).mkdir(parents=True)
        for f in sorted((celeba_raw / "train_dataset" / p).iterdir())[:3]:
            (people_dir / p / f.name).symlink_to(f.resolve())
    res = enroll(str(people_dir), str(tmp_path / "gallery"), model=str(export))
    assert res["people"] == 2 and res["images"] + len(res["no_face"]) == 6 and res["gallery"].endswith(".npz")
    probe = sorted((celeba_raw / "test_dataset" / attr_data["train_people"][0]).iterdir())[0]
    found = match(str(probe), res["gallery"], model=str(export), threshold=-1.0)
    assert len(found) == 1 and found[0]["person"] in attr_data["train_people"][:2] and -1 <= found[0]["similarity"] <= 1


def test_degradation_augmentation_and_mixed_threshold_fit(synthetic_parquet):
    """degrade_p turns on what real photos do to crops (training only); thresholds are fitted on
    full and degraded validation faces together, with a bootstrap of their stability."""
    from facebatch.training.attribute_task import fit_thresholds
    mk = {"backbone": "resnet_small", "resnet_widths": [8, 8, 16, 16]}
    plain = AttributeTask(_cfg(synthetic_parquet, "multitask", ["smile", "eyeglasses"], model_kwargs=mk,
                               augment={"flip_p": 0, "brightness": 0, "contrast": 0, "saturation": 0}))
    deg = AttributeTask(_cfg(synthetic_parquet, "multitask", ["smile", "eyeglasses"], model_kwargs=mk,
                             augment={"flip_p": 0, "brightness": 0, "contrast": 0, "saturation": 0,
                                      "degrade_p": 1.0, "degrade_scale": [0.3, 0.5]}))
    batch = plain.decode(_batch(synthetic_parquet), ["train"])
    x0, _ = plain.inputs(batch, train=True, rng=np.random.default_rng(0))
    x1, _ = deg.inputs(batch, train=True, rng=np.random.default_rng(0))
    xv, _ = deg.inputs(batch, train=False, rng=np.random.default_rng(0))
    assert x0.shape == x1.shape and torch.allclose(x0, xv, atol=1e-5)  # validation inputs are never degraded
    assert (x1 - x0).abs().mean() > 0.02
    torch.manual_seed(0)
    net = deg.build_model().eval()
    thr, used, report = fit_thresholds(net, str(synthetic_parquet), ["val", "train"], ["smile", "eyeglasses"], 32,
                                       degrade=["scale=0.5", "jpeg=30"], n_boot=20)
    thr1, used1, _ = fit_thresholds(net, str(synthetic_parquet), ["val", "train"], ["smile"], 32)
    assert used["smile"] == 3 * used1["smile"] and report["degrade"] == ["none", "scale=0.5", "jpeg=30"]
    b = report["bootstrap"]["smile"]
    assert b["n_faces"] == used1["smile"] and b["p05"] <= b["median"] <= b["p95"] and 0 <= b["balanced_accuracy"] <= 1
    assert b["chosen"] == "bootstrap median" and thr["smile"] == b["median"]  # bagged, not the single argmax


def test_crop_frame_comes_from_the_training_data(tmp_path):
    """Exported models record the crop frame of their data; data cropped two ways is refused."""
    import pyarrow.parquet as pq
    from facebatch.training.run import data_crop_frame
    for name, margin in (("a", 0.2), ("b", 0.3)):
        d = tmp_path / name
        d.mkdir()
        meta = {S.META_CONFIG: json.dumps({"crop": {"margin": margin, "crop_size": 128, "jpeg_quality": 90}})}
        pq.write_table(S.to_table([{S.PATH: "x.jpg", S.STATUS: S.OK}], meta), d / "part-00000.parquet")
    assert data_crop_frame(str(tmp_path / "a")) == {"margin": 0.2, "crop_size": 128, "jpeg_quality": 90}
    with pytest.raises(ValueError, match="cropped differently"):
        data_crop_frame([str(tmp_path / "a"), str(tmp_path / "b")])
