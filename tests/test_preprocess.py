"""The preprocess job end to end on a local Ray: keypoints in crops, S3 in and out, kill and resume, early errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facebatch import schema as S
from facebatch.detection import DetectorConfig
from facebatch.detection.quality import five_from_ibug68
from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig

REPO = Path(__file__).resolve().parent.parent


def _cfg(inp, out, fmt="udacity68", **kw) -> PreprocessConfig:
    kw.setdefault("progress", "none")
    return PreprocessConfig(input=str(inp), output=str(out), format=fmt, **kw)


def _rows(out) -> list[dict]:
    return sorted(pq.read_table(str(out)).to_pylist(), key=lambda r: (r["path"], r["face_index"]))


def test_udacity_subset_keypoints_land_on_landmarks(ray_session, udacity_subset, tmp_path):
    summary = run_preprocess(_cfg(udacity_subset, tmp_path / "out", shard_size=8))
    assert summary["inputs"] == summary["rows"] == summary["rows_in_files"] == 24
    assert summary["status_counts"] == {"ok": 24}
    rows = _rows(tmp_path / "out")
    assert {r["split"] for r in rows} <= {"train", "val"}
    for r in rows:
        kp = np.array(r["keypoints"]).reshape(68, 2)
        norm = np.array(r["keypoints_norm"]).reshape(68, 2)
        crop = np.array(r["keypoints_crop"]).reshape(68, 2)
        np.testing.assert_allclose(crop, norm * r["crop_size"], atol=1e-3)
        # The labelled eyes/nose/mouth, moved into the crop, sit near the detector's landmarks moved the same way.
        x1, y1, x2, _ = r["crop_box"]
        lm_norm = (np.array(r["landmarks"]).reshape(5, 2) - [x1, y1]) / (x2 - x1)
        err = np.linalg.norm(five_from_ibug68(norm) - lm_norm, axis=1)
        iod = np.linalg.norm(norm[36] - norm[45])
        assert np.median(err) / iod < 0.15, r["path"]
        assert 0.2 < norm[:, 0].mean() < 0.8 and 0.2 < norm[:, 1].mean() < 0.8
    meta = S.read_metadata(pq.read_schema(str(tmp_path / "out" / "part-00000.parquet")))
    assert meta["schema_version"] == S.SCHEMA_VERSION
    assert meta["detector"]["backend"] == "mobilenet" and len(meta["detector"]["weights_sha256"]) == 64
    assert meta["config"]["format"] == "udacity68" and meta["version"]
    saved = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert saved["rows_check"] == "ok"


def test_output_reads_back_with_ray_data(ray_session, udacity_subset, tmp_path):
    import ray
    run_preprocess(_cfg(udacity_subset, tmp_path / "out", limit=8, crop=CropConfig(crop_size=96)))
    ds = ray.data.read_parquet(str(tmp_path / "out"))
    assert ds.count() == 8
    batch = ds.take_batch(8)
    assert set(batch["status"]) == {"ok"} and len(batch["crop"][0]) > 100


def test_s3_in_and_out(ray_session, s3_server, udacity_subset, tmp_path):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("fb-in")
    fs.mkdir("fb-out")
    files = sorted((udacity_subset / "training").iterdir())[:6]
    for f in files:
        fs.put(str(f.resolve()), f"fb-in/photos/{f.name}")
    cfg = _cfg("s3://fb-in/photos", "s3://fb-out/faces", fmt="folder", s3_endpoint_url=s3_server, shard_size=4)
    summary = run_preprocess(cfg)
    assert summary["inputs"] == summary["rows"] == 6 and summary["status_counts"] == {"ok": 6}
    parts = sorted(fs.glob("fb-out/faces/part-*.parquet"))
    assert [p.rsplit("/", 1)[1] for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    with fs.open(parts[0], "rb") as f:
        table = pq.read_table(f)
    assert table.column("path")[0].as_py().startswith("s3://fb-in/photos/")
    assert fs.exists("fb-out/faces/_summary.json") and fs.exists("fb-out/faces/_done/part-00001.json")


def test_bad_options_fail_before_work(tmp_path, udacity_subset):
    with pytest.raises(FileNotFoundError, match="nope"):
        run_preprocess(_cfg(tmp_path / "nope", tmp_path / "out", fmt="folder"))
    with pytest.raises(ValueError, match="--format"):
        run_preprocess(_cfg(udacity_subset, tmp_path / "out", fmt="pascalvoc"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write"):
        run_preprocess(_cfg(udacity_subset, blocker / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_reports_errors_without_traceback(udacity_subset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "facebatch.cli", "preprocess", "--input", str(tmp_path / "missing"),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_killed_run_resumes_to_identical_output(ray_session, udacity_subset, tmp_path):
    import ray
    full = tmp_path / "full"
    run_preprocess(_cfg(udacity_subset, full, shard_size=2))
    part = tmp_path / "part"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "facebatch.cli", "preprocess", "--input", str(udacity_subset), "--format",
            "udacity68", "--output", str(part), "--shard-size", "2", "--workers", "1", "--progress", "log"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    def n_done() -> int:
        return len(list((part / "_done").glob("*.json"))) if (part / "_done").exists() else 0

    deadline = time.time() + 240
    while time.time() < deadline and n_done() < 3 and proc.poll() is None:
        time.sleep(0.2)
    done_before = len(list((part / "_done").glob("*.json")))
    os.killpg(proc.pid, signal.SIGKILL)  # kill the driver for real, mid-run
    proc.wait()
    assert 1 <= done_before < 12, f"kill came at {done_before} of 12 shards"
    summary = run_preprocess(_cfg(udacity_subset, part, shard_size=2, resume=True))
    assert summary["shards_skipped_resume"] >= done_before
    assert summary["inputs"] == summary["rows"] == 24
    a, b = _rows(full), _rows(part)
    assert len(a) == len(b) == 24
    for ra, rb in zip(a, b):
        assert ra == rb


def test_resume_refuses_changed_options(ray_session, udacity_subset, tmp_path):
    run_preprocess(_cfg(udacity_subset, tmp_path / "o", limit=4))
    with pytest.raises(ValueError, match="--resume"):
        run_preprocess(_cfg(udacity_subset, tmp_path / "o", limit=4, resume=True, crop=CropConfig(crop_size=128)))


def test_splits_option_detects_only_those_people(ray_session, udacity_subset, tmp_path):
    """--splits val: only the hashed validation people are read and detected, with their split."""
    from facebatch.formats.base import assign_split
    from facebatch.formats.udacity68 import person_of
    names = sorted(p.name for p in (udacity_subset / "training").glob("*.jpg"))
    want = {n for n in names if assign_split(person_of(n), 0.25) == "val"}
    assert 0 < len(want) < len(names)
    run_preprocess(_cfg(udacity_subset, tmp_path / "out", splits=("val",), val_fraction=0.25))
    rows = _rows(tmp_path / "out")
    assert {Path(r["path"]).name for r in rows} == want and {r["split"] for r in rows} == {"val"}
    with pytest.raises(ValueError, match="--splits takes train, val and/or test"):
        run_preprocess(_cfg(udacity_subset, tmp_path / "o2", splits=("validation",)))
