"""Training runs as a user drives them: the config is saved at the start and `--resume NAME` reuses it,
an existing run name is not silently continued, limit= picks the same rows every time, and each
epoch line is printed once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig
from facebatch.training.run import limited_paths

REPO = Path(__file__).resolve().parent.parent


def test_limited_paths_is_a_fixed_spread_subset():
    rows = [{"path": f"/d/person{i // 10:02d}_{i % 10}.jpg"} for i in range(300)]
    a = limited_paths(rows, 50)
    assert a == limited_paths(list(reversed(rows)), 50) and len(a) == 50  # order of arrival does not matter
    assert len({p.split("_")[0] for p in a}) > 15  # spread over people, not the first five alphabetically
    assert limited_paths(rows + rows, 50) == a  # repeated rows (several faces) count once


@pytest.fixture(scope="module")
def kp_data(ray_session, udacity_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("kp_resume") / "pre"
    run_preprocess(PreprocessConfig(input=str(udacity_subset), output=str(out), format="udacity68",
                                    val_fraction=0.3, progress="none", crop=CropConfig(crop_size=64)))
    return out


def _train(args, tmp_path, timeout=300):
    import ray
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "facebatch.cli", "train", "keypoints", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path, env=env)


def test_config_saved_at_start_resume_reuses_it_and_names_are_not_reused(ray_session, kp_data, tmp_path):
    base = ["data=" + json.dumps(str(kp_data)), "input_size=64", "batch_size=8", "num_workers=1",
            "cpus_per_worker=0.5", "model_kwargs={\"pretrained\": false}", "storage_path=\"runs\"", "name=\"r1\"",
            "export=null", "limit=20"]
    first = _train(["--config", "keypoints68", *base, "epochs=1"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = json.loads((tmp_path / "runs" / "r1" / "facebatch_config.json").read_text())
    assert saved["input_size"] == 64 and saved["name"] == "r1" and saved["limit"] == 20
    out = first.stdout + first.stderr
    assert out.count("epoch 1/1 ") == 1, out[-3000:]  # each epoch line once
    # the same name again without --resume: refused, nothing trained
    again = _train(["--config", "keypoints68", *base, "epochs=1"], tmp_path, timeout=120)
    assert again.returncode == 2 and "--resume r1" in again.stderr and "Traceback" not in again.stderr
    # --resume without --config continues with the saved config; only epochs is changed
    resumed = _train(["--resume", "r1", "epochs=2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert "load_state_dict" not in text, text[-3000:]
    # Ray Train's own PlacementGroupCleaner sometimes logs a traceback under load (harmless, not ours)
    ours = [ln for ln in text.splitlines() if "Traceback" in ln and "PlacementGroupCleaner" not in ln]
    assert not ours, text[-3000:]
    assert text.count("epoch 2/2 ") == 1 and "epoch 1/2 " not in text  # epoch 1 restored, not retrained
    hist = json.loads((tmp_path / "runs" / "r1" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    summary = json.loads((tmp_path / "runs" / "r1" / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] == 20  # limit=20 picked the same rows both times
