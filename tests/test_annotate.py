"""The annotate job end to end on a real local Ray: same answers as FaceAnalyzer, keypoints that land
on real labels, every bad input with its status, several faces, big photos decoded at reduced scale."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badimages import two_faces, write_all, load_faces
from facebatch.annotate.config import AnnotateConfig
from facebatch.annotate.pipeline import run_annotate
from facebatch.inference import AnalyzerConfig
from facebatch.annotations import read_latest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


BIG_OFFSET, BIG_FACTOR = (400, 300), 3


def _big_jpeg(src: Path, dst: Path) -> None:
    """A 3200x2400 photo: ``src`` upscaled 3x, pasted at ``BIG_OFFSET`` on a textured background."""
    rng = np.random.default_rng(0)
    bg = rng.integers(90, 160, size=(2400 // 8, 3200 // 8, 3), dtype=np.uint8)
    canvas = Image.fromarray(bg).resize((3200, 2400), Image.BICUBIC)
    im = Image.open(src).convert("RGB")
    canvas.paste(im.resize((im.width * BIG_FACTOR, im.height * BIG_FACTOR), Image.BICUBIC), BIG_OFFSET)
    canvas.save(dst, quality=90)


@pytest.fixture(scope="module")
def mixed_run(ray_session, udacity_subset, tmp_path_factory):
    """One annotate run over 24 udacity68 photos, the bad inputs, two pasted faces and one 3200x2400
    photo (decoded at 1/4 for detection; its face's crop re-cut from a 1/2-scale decode)."""
    root = tmp_path_factory.mktemp("annotate_mixed")
    inp = root / "in"
    inp.mkdir()
    for p in sorted((udacity_subset / "training").iterdir()):
        (inp / p.name).symlink_to(p.resolve())
    bad = write_all(inp / "bad")
    big_src = sorted((udacity_subset / "training").iterdir())[0].resolve()
    _big_jpeg(big_src, inp / "big_upscaled.jpg")
    out = root / "out"
    # a test-only head, named in the config: all it takes for its column in rows and report (issue 20)
    cfg = AnnotateConfig(input=str(inp), output=str(out), shard_size=8, max_pixels=40_000_000, report=True,
                         max_failure_rate=1.0, analyzer=AnalyzerConfig(heads=("tests.brightness_head:brightness",)))
    summary = run_annotate(cfg)
    return {"inp": inp, "out": out, "summary": summary, "bad": bad, "big_src": big_src,
            "table": read_latest(str(out))}


def test_every_input_has_rows_and_summary_keys(mixed_run):
    s, t = mixed_run["summary"], mixed_run["table"]
    n_in = 24 + len(mixed_run["bad"]) + 1
    for k in ("run_id", "listed", "new", "changed", "unchanged", "deleted", "processed", "rows", "failed",
              "status_counts", "wall_s", "images_per_s"):
        assert k in s, k
    assert s["listed"] == s["new"] == s["processed"] == n_in
    assert len(set(t.column("path").to_pylist())) == n_in and t.num_rows == s["rows"]
    assert sum(s["status_counts"].values()) == n_in
    run = Path(s["run_folder"])
    assert (run / "_SUCCESS").exists() and (run / "report.html").exists()
    assert run.parent.name.startswith("dt=") and run.name == f"run={s['run_id']}"
    saved = json.loads((run / "_summary.json").read_text())
    assert saved["processed"] == n_in
    # the output is a plain hive-partitioned dataset
    import pyarrow.dataset as ds
    d = ds.dataset(str(mixed_run["out"]), partitioning="hive", format="parquet",
                   exclude_invalid_files=True, ignore_prefixes=["_", "."])
    assert d.to_table(columns=["path", "run"]).num_rows == s["rows"]
    # file metadata: models with sha256, detector config, code version
    import pyarrow.parquet as pq
    from facebatch.annotate.rows import read_metadata
    md = read_metadata(pq.read_schema(next(run.glob("part-*.parquet"))))
    assert md["models"]["keypoints"]["sha256"] and md["models"]["attributes"]["sha256"]
    assert md["models"]["detector"]["config"]["max_side"] == 640 and "version" in md
    # off by default: embeddings (biometric: no identity model runs, so no column) and crops
    assert "embedding" not in t.column_names and t.column("crop").null_count == t.num_rows
    # the named head's regression output: a column filled for every face, in the report's histograms
    ok = [r for r in t.select(["status", "brightness"]).to_pylist() if r["status"] == "ok"]
    assert ok and all(0.0 < r["brightness"] < 1.0 for r in ok)
    assert {"name": "brightness", "kind": "regression"} in s["outputs"]
    assert "<b>brightness</b>" in (run / "report.html").read_text()


def test_bad_inputs_each_with_status_and_many_faces(mixed_run):
    rows = mixed_run["table"].to_pylist()
    by = {}
    for r in rows:
        by.setdefault(Path(r["path"]).name, []).append(r)
    for bad in mixed_run["bad"]:
        got = by[bad.path.name]
        if bad.status != "ok":
            assert [r["status"] for r in got] == [bad.status], bad.name
            assert got[0]["error"] and got[0]["face_index"] == -1 and got[0]["box"] is None
        elif bad.faces == 0:
            assert len(got) == 1 and got[0]["status"] == "no_face" and got[0]["n_faces"] == 0
        elif bad.faces is not None:
            assert {r["status"] for r in got} == {"ok"}, bad.name
            assert len(got) == bad.faces == got[0]["n_faces"], bad.name
            assert [r["face_index"] for r in got] == list(range(bad.faces))
            if bad.size:
                assert (got[0]["width"], got[0]["height"]) == bad.size, bad.name
    two = by["two_faces.jpg"]
    assert len(two) == 2 and two[0]["face_size"] >= two[1]["face_size"] * 0.999
    assert two[0]["box"] != two[1]["box"]


def test_rows_equal_face_analyzer(mixed_run):
    """Annotate rows equal ``FaceAnalyzer.analyze`` on each image alone (boxes and landmarks within
    1e-4 px, the same labels, scores within 1e-4).

    Detection batches only images with the same padded input (``BatchDetector.detect(exact=True)``),
    so an image's answer does not depend on what else was in the job's batch: each image is given
    to the analyzer by itself here. The 3200x2400 photo is left out: the job detects it at 1/4 scale
    (checked in ``test_big_photo_decoded_small_keeps_original_pixels``)."""
    from facebatch.imaging import decode_scaled
    from facebatch.inference import FaceAnalyzer
    fa = FaceAnalyzer.load()
    by = {}
    for r in mixed_run["table"].to_pylist():
        by.setdefault(r["path"], []).append(r)
    attrs = fa.attribute_names
    assert attrs[:2] == ["smile", "eyeglasses"] and len(attrs) == 39  # the shipped model's CelebA attributes
    compared = 0
    for p in sorted(by):
        if "big_" in p:
            continue
        d = decode_scaled(Path(p).read_bytes(), max_side=640, max_pixels=40_000_000)
        if d.image is None:
            continue
        assert d.scale == 1, p  # up to --max-side decoded in full
        res = fa.analyze([d.image], embedding=False)[0]
        got = by[p]
        if not res:
            assert [r["status"] for r in got] == ["no_face"], p
            continue
        assert len(got) == len(res), p
        for r, f in zip(got, res):
            e = f.to_dict(embedding=False)
            np.testing.assert_allclose(r["box"], e["box"], rtol=0, atol=1e-4, err_msg=p)
            np.testing.assert_allclose(r["landmarks"], e["landmarks"], rtol=0, atol=1e-4, err_msg=p)
            np.testing.assert_allclose(r["keypoints68"], e["keypoints68"], rtol=0, atol=1e-3, err_msg=p)
            for a in attrs:
                assert r[f"{a}_label"] == e[f"{a}_label"], (p, a)
                assert abs(r[a] - e[a]) < 1e-4, (p, a)
            compared += 1
    assert compared >= 30


def test_big_photo_decoded_small_keeps_original_pixels(mixed_run):
    """The 3200x2400 photo is detected at 1/4 scale; its face's crop is cut from that decode when the
    crop square (~800 px) still spans the 192 px the keypoint model takes at 1/4, else from a 1/2
    decode; coordinates are in its own full-size pixels either way: those of the small photo x3 +
    the paste offset (keypoints within 3% of the face size on average, box corners within 6%: a
    wrong scale would be off by 100% or more). The re-decode itself is checked against full-size
    decoding in test_annotate_decode.py."""
    rows = {Path(r["path"]).name: r for r in mixed_run["table"].to_pylist() if r["face_index"] in (0, -1)}
    big, small = rows["big_upscaled.jpg"], rows[mixed_run["big_src"].name]
    side = big["crop_box"][2] - big["crop_box"][0]
    assert mixed_run["summary"]["redecoded_for_crops"] == (0 if side / 4 >= 192 else 1), side
    assert big["status"] == "ok" and (big["width"], big["height"]) == (3200, 2400)
    off = np.array(BIG_OFFSET * 2, np.float64)
    tol = 0.03 * big["face_size"]
    # the detector sees the face at another scale and on another background: boxes move a few %
    np.testing.assert_allclose(big["box"], np.array(small["box"]) * BIG_FACTOR + off, atol=2 * tol)
    kp_big = np.asarray(big["keypoints68"]).reshape(-1, 2)
    kp_small = np.asarray(small["keypoints68"]).reshape(-1, 2) * BIG_FACTOR + off[:2]
    assert np.linalg.norm(kp_big - kp_small, axis=1).mean() < tol
    assert abs(big["smile"] - small["smile"]) < 0.2


def test_keypoints_reproduce_evaluate_nme(mixed_run, udacity_subset, tmp_path):
    """On udacity68 the annotated keypoints68 of the largest face give the evaluate command's NME."""
    from facebatch.evaluation.cli import evaluate_keypoints
    from facebatch.formats.udacity68 import read_udacity68_csv
    from facebatch.keypoints.metrics import nme_interocular
    labels = read_udacity68_csv(str(udacity_subset / "training_frames_keypoints.csv"))
    rows = {Path(r["path"]).name: r for r in mixed_run["table"].to_pylist() if r["face_index"] == 0}
    names = sorted(labels)
    pred = np.stack([np.asarray(rows[n]["keypoints68"], np.float32).reshape(68, 2) for n in names])
    tgt = np.stack([np.asarray(labels[n], np.float32).reshape(68, 2) for n in names])
    ours = nme_interocular(pred, tgt, "ibug68")
    metrics = evaluate_keypoints("keypoints68", str(udacity_subset), "udacity68", str(tmp_path / "eval"), n_pictures=4)
    assert metrics["n_images"] == len(names) and metrics["failed"] == 0
    assert abs(ours - metrics["nme_interocular"]) < 1e-4, (ours, metrics["nme_interocular"])
    assert ours < 0.1
