"""Training runs as a user drives them: the config is saved at the start and `--resume NAME` reuses it,
an existing run name is not silently continued, limit= picks the same rows every time, and each
epoch line is printed once."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import facebatch
from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig
from facebatch.training.run import limited_paths

REPO = Path(__file__).resolve().parent.parent
_SOURCE = re.compile(r"^(?:\x1b\[[0-9;]*m)?(\([^()]*pid=\d+[^()]*\))(?:\x1b\[[0-9;]*m)?\s?")  # Ray's "(Actor pid=N) "
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+')


def tracebacks(text: str) -> list[list[str]]:
    """The Python tracebacks in a process's output, each as its lines. Ray streams every actor's lines
    prefixed with ``(Name pid=N)``, interleaved: lines are grouped by that prefix, so another process's
    line does not cut a traceback short. A traceback ends at its first unindented line (the error)."""
    found, open_ = [], {}
    for line in text.splitlines():
        m = _SOURCE.match(line)
        source, body = (m.group(1), line[m.end():]) if m else ("", line)
        if body.startswith("Traceback (most recent call last)"):
            open_[source] = [body]
            found.append(open_[source])
        elif source in open_:
            open_[source].append(body)
            if body and not body[0].isspace():
                del open_[source]
    return found


def ours(tb: list[str], package: Path = Path(facebatch.__file__).parent) -> bool:
    """False only for a traceback Ray raised and printed about itself: every frame in Ray's package or
    Python's standard library (Ray Train's PlacementGroupCleaner under load, for one). A frame in facebatch,
    in any other library, or no frame at all: ours, so the test fails."""
    import ray
    frames = [m.group(1) for ln in tb if (m := _FRAME.match(ln))]
    ray_dir, stdlib = str(Path(ray.__file__).parent), sysconfig.get_paths()["stdlib"]
    return (not frames or any(f.startswith(str(package)) for f in frames)
            or not all(f.startswith((ray_dir, stdlib)) for f in frames))


def test_ray_own_tracebacks_are_told_from_ours():
    """The check must be able to fail: a facebatch frame (or none, or another library's) counts as ours."""
    import ray
    ray_file, lib = Path(ray.__file__).parent / "train" / "x.py", sysconfig.get_paths()["stdlib"] + "/threading.py"
    esc = "\x1b[36m(TrainController pid=7)\x1b[0m "
    text = "\n".join([
        "[facebatch train] r1: 14 train / 6 val rows",
        esc + "Failed to stop PlacementGroupCleaner gracefully.", esc + "Traceback (most recent call last):",
        "\x1b[36m(RayTrainWorker pid=8)\x1b[0m [facebatch train] epoch 1/1 ...",  # another process, between
        esc + f'  File "{lib}", line 1045, in _bootstrap_inner', esc + "    self.run()",
        esc + f'  File "{ray_file}", line 3, in stop', esc + "    ray.get(ref, timeout=12)",
        esc + "ray.exceptions.GetTimeoutError: Get timed out",
        "Traceback (most recent call last):", f'  File "{REPO / "facebatch" / "cli.py"}", line 9, in main',
        f'  File "{ray_file}", line 3, in fit', "ValueError: ours",
        esc + "Traceback (most recent call last):", esc + "KeyError: 'no frame'"])
    found = tracebacks(text)
    assert [len(tb) for tb in found] == [6, 4, 2]
    assert [ours(tb) for tb in found] == [False, True, True]
    assert ours([f'  File "/elsewhere/site-packages/torch/x.py", line 1, in f', f'  File "{ray_file}", line 2, in g'])


def _our_tracebacks(text: str) -> list[str]:
    return ["\n".join(tb) for tb in tracebacks(text) if ours(tb)]


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
    assert not _our_tracebacks(out), out[-3000:]
    # the same name again without --resume: refused, nothing trained
    again = _train(["--config", "keypoints68", *base, "epochs=1"], tmp_path, timeout=120)
    assert again.returncode == 2 and "--resume r1" in again.stderr and "Traceback" not in again.stderr
    # --resume without --config continues with the saved config; only epochs is changed
    resumed = _train(["--resume", "r1", "epochs=2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert "load_state_dict" not in text, text[-3000:]
    # Ray Train's own PlacementGroupCleaner may print a traceback of Ray's frames only (under load, or with
    # another Ray on the machine); a traceback through facebatch fails the test
    assert not _our_tracebacks(text), "\n\n".join(_our_tracebacks(text))
    assert text.count("epoch 2/2 ") == 1 and "epoch 1/2 " not in text  # epoch 1 restored, not retrained
    hist = json.loads((tmp_path / "runs" / "r1" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    summary = json.loads((tmp_path / "runs" / "r1" / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] == 20  # limit=20 picked the same rows both times
