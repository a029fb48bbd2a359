"""Every awkward input keeps its row with the right status, and the others stay intact."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from badimages import exif_rotated, write_all
from facebatch.detection.quality import five_from_ibug68
from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig


def test_bad_inputs_each_keep_a_row(ray_session, data_root, tmp_path):
    inputs = write_all(tmp_path / "in")
    out = tmp_path / "out"
    cfg = PreprocessConfig(input=str(tmp_path / "in"), output=str(out), format="folder", shard_size=5,
                           max_pixels=40_000_000, progress="none", crop=CropConfig(all_faces=True, crop_size=128))
    summary = run_preprocess(cfg)
    rows = pq.read_table(str(out)).to_pylist()
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(Path(r["path"]).name, []).append(r)
    assert summary["inputs"] == len(inputs) == len(by_path)
    for bad in inputs:
        got = by_path[bad.path.name]
        statuses = {r["status"] for r in got}
        if bad.status != "ok":
            assert statuses == {bad.status}, bad.name
            assert got[0]["error"], f"{bad.name}: a failed row must say why"
            assert len(got) == 1 and got[0]["crop"] is None
        elif bad.faces == 0:
            assert statuses == {"no_face"} and len(got) == 1 and got[0]["n_faces"] == 0, bad.name
        elif bad.faces is not None:
            assert statuses == {"ok"}, f"{bad.name}: {got[0]['status']} {got[0]['error']}"
            assert len(got) == bad.faces == got[0]["n_faces"], bad.name
            assert sorted(r["face_index"] for r in got) == list(range(bad.faces))
        if bad.size and statuses == {"ok"}:
            assert (got[0]["width"], got[0]["height"]) == bad.size, bad.name
        for r in got:
            if r["status"] == "ok":
                crop = np.asarray(Image.open(__import__("io").BytesIO(r["crop"])))
                assert crop.shape == (128, 128, 3)
                lm = np.array(r["landmarks"]).reshape(5, 2)
                # upright: eyes above the nose, nose above the mouth; image-left eye left of the other
                assert lm[0:2, 1].max() < lm[2, 1] < lm[3:5, 1].min(), bad.name
                assert lm[0, 0] < lm[1, 0], bad.name
    assert summary["row_status_counts"].get("ok", 0) >= sum(1 for b in inputs if b.faces)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_photo_keypoints_still_match(ray_session, udacity_root, tmp_path, orientation):
    name = "Luis_Fonsi_21.jpg"
    labels = read_udacity68_csv(udacity_root / "training_frames_keypoints.csv")[name]
    upright = np.asarray(Image.open(udacity_root / "training" / name).convert("RGB"))
    (tmp_path / "img").mkdir()
    bad = exif_rotated(tmp_path / "img", upright, orientation=orientation)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([""] + [str(i) for i in range(136)])
        w.writerow([bad.path.name] + [f"{v:.3f}" for v in labels.reshape(-1)])
    out = tmp_path / "out"
    run_preprocess(PreprocessConfig(input=str(tmp_path / "img"), output=str(out), format="udacity68",
                                    labels=str(tmp_path / "labels.csv"), progress="none"))
    (row,) = pq.read_table(str(out)).to_pylist()
    assert row["status"] == "ok" and (row["width"], row["height"]) == (upright.shape[1], upright.shape[0])
    norm = np.array(row["keypoints_norm"]).reshape(68, 2)
    x1, y1, x2, _ = row["crop_box"]
    lm = (np.array(row["landmarks"]).reshape(5, 2) - [x1, y1]) / (x2 - x1)
    iod = np.linalg.norm(norm[36] - norm[45])
    assert np.median(np.linalg.norm(five_from_ibug68(norm) - lm, axis=1)) / iod < 0.15
    assert lm[0:2, 1].max() < lm[2, 1] < lm[3:5, 1].min()  # crop is upright
