"""evaluate keypoints scores the labelled face, not the largest one (300-W protocol)."""
from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from facebatch.geometry import box_iou, match_labelled_face


def test_match_labelled_face_picks_the_box_holding_the_points():
    pts = np.array([[110, 110], [130, 110], [120, 130], [np.nan, np.nan]])
    boxes = [[0, 0, 400, 400], [100, 100, 140, 140], [300, 300, 350, 350]]
    assert match_labelled_face(boxes, pts) == 1  # both 0 and 1 hold the centre; 1 overlaps the extent best
    assert match_labelled_face([[300, 300, 350, 350]], pts) is None
    assert match_labelled_face([], pts) is None
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == 1 / 7


def test_evaluate_keypoints_scores_the_labelled_face_in_a_group_photo(ray_session, udacity_root, celeba_root,
                                                                     tmp_path):
    """A udacity68 frame pasted beside a larger CelebA face: the labels belong to the smaller one."""
    from facebatch.evaluation.cli import evaluate_keypoints  # raw datasets: preprocessed first
    with open(udacity_root / "training_frames_keypoints.csv") as f:
        rows = sorted(list(csv.reader(f)))
    picked = [r for r in rows if r[0].endswith(".jpg")][::700][:4]
    root = tmp_path / "group"
    (root / "training").mkdir(parents=True)
    big = Image.open(next((celeba_root / "test_dataset" / "celeb_7").glob("*.jpg"))).convert("RGB")
    out_rows = []
    for r in picked:
        small = Image.open(udacity_root / "training" / r[0]).convert("RGB")
        big_r = big.resize((int(big.width * small.height * 1.6 / big.height), int(small.height * 1.6)))
        canvas = Image.new("RGB", (small.width + big_r.width + 10, big_r.height), (90, 90, 90))
        canvas.paste(small, (0, 0))
        canvas.paste(big_r, (small.width + 10, 0))
        canvas.save(root / "training" / r[0], quality=95)
        out_rows.append(r)  # labels unchanged: the small face sits at the origin
    with open(root / "training_frames_keypoints.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file"] + [f"{a}{k}" for k in range(68) for a in "xy"])
        w.writerows(out_rows)
    m = evaluate_keypoints("keypoints68", str(root), "udacity68", str(tmp_path / "ev"))
    assert m["n_images"] == 4 and m["failed"] == 0
    assert m["nme_interocular"] < 0.08, m  # scoring the CelebA face instead would be far above 0.3


def test_evaluate_with_degrade_moves_labels_and_records_the_spec(ray_session, udacity_root, tmp_path):
    """--degrade scale=0.5 halves the images before detection; labels follow, so the NME stays sane,
    and the spec is in metrics.json. Parquet input is refused."""
    import json

    import pytest

    from conftest import udacity_layout
    from facebatch.evaluation.cli import evaluate_keypoints  # raw datasets: preprocessed first
    root = udacity_layout(tmp_path / "u", udacity_root, lambda body: body[::500][:6])
    m = evaluate_keypoints("keypoints68", str(root), "udacity68", str(tmp_path / "ev"), degrade="scale=0.5")
    assert m["degrade"]["scale"] == 0.5 and m["n_images"] == 6
    assert m["nme_interocular"] < 0.12, m
    pre = tmp_path / "ev" / "preprocess"
    import pyarrow.parquet as pq
    t = pq.read_table(str(pre), columns=["path", "width", "keypoints"]).to_pylist()
    from PIL import Image
    for r in t:
        w0 = Image.open(r["path"]).width
        assert r["width"] == round(w0 * 0.5)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["degrade"]["spec"] == "scale=0.5"
    with pytest.raises(ValueError, match="preprocess output"):
        evaluate_keypoints("keypoints68", str(pre), None, str(tmp_path / "ev2"), degrade="jpeg=30")


def test_preprocess_rows_take_the_labelled_face_not_the_largest():
    """A labelled photo with a larger bystander: the row (and its keypoint labels) is the labelled face."""
    from types import SimpleNamespace

    from facebatch import schema as S
    from facebatch.preprocess.rows import CropConfig, rows_for_image
    image = np.zeros((400, 400, 3), np.uint8)
    from facebatch.detection import Face
    small = Face(np.array([100, 100, 140, 140], np.float32), 0.9, np.zeros((5, 2), np.float32))
    big = Face(np.array([200, 200, 380, 380], np.float32), 0.99, np.zeros((5, 2), np.float32))
    rec = SimpleNamespace(keypoints=np.array([[110, 110], [130, 110], [120, 130]], np.float32),
                          keypoint_scheme="ibug68", attributes=None, identity=None, person="p")
    base = {S.STATUS: S.OK, S.PATH: "x.jpg"}
    cfg = CropConfig(crop_size=64, keep_crops=False)
    (row,) = rows_for_image(base, image, [big, small], rec, cfg)
    assert row[S.BOX] == [100, 100, 140, 140] and row[S.FACE_INDEX] == 1 and row[S.KEYPOINTS_NORM] is not None
    rec.keypoints = rec.keypoints + 1000  # matches no face: the largest, without keypoint labels, saying why
    (row,) = rows_for_image(base, image, [big, small], rec, cfg)
    assert row[S.BOX] == [200, 200, 380, 380] and row[S.KEYPOINTS_NORM] is None and "match no detected" in row[S.ERROR]
    rows = rows_for_image(base, image, [big, small], rec, CropConfig(crop_size=64, keep_crops=False, all_faces=True))
    assert len(rows) == 2


def test_a_raw_dataset_needs_the_preprocess_step_passed_in(tmp_path):
    """Evaluation does not import the preprocess job: without ``prepare`` a raw dataset is refused,
    naming the way out; with one, it is called with the evaluation's options."""
    import pytest

    from facebatch.evaluation.common import load_rows
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(ValueError, match="prepare=facebatch.evaluation.cli.preprocess_raw"):
        load_rows(str(raw), "udacity68", tmp_path / "ev")
    calls = []

    def prepare(src, output, fmt, **options):
        calls.append((src, output, fmt, options))
        raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        load_rows(str(raw), "udacity68", tmp_path / "ev", limit=3, all_faces=True, prepare=prepare)
    assert calls == [(str(raw), str(tmp_path / "ev" / "preprocess"), "udacity68",
                      {"labels": None, "limit": 3, "crop_size": 256, "all_faces": True, "degrade": None,
                       "address": None})]
