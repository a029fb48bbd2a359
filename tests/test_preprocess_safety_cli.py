"""The preprocess command as a user runs it: bad options fail in seconds with one line and exit 2,
S3 problems name the endpoint and the variable to set, Ctrl-C exits 130 with a resume hint, and
-v keeps the traceback. Each case is a real subprocess, bounded in seconds."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import default_sigint

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 60  # a one-line error must come well within this (imports included, on a loaded 2-core VM)


def _run(args, env=None, timeout=LIMIT_S + 30):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "facebatch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
    return proc, time.time() - t0


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error" in ln.lower()]


@pytest.mark.parametrize("extra, needle", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "-1"], "--limit must be at least 1"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--device", "cuda"], "no GPUs"),
    (["--cpus-per-worker", "8"], "--cpus-per-worker 8"),
])
def test_bad_options_one_line_exit_2_in_seconds(udacity_subset, tmp_path, extra, needle):
    proc, took = _run(["preprocess", "--input", str(udacity_subset), "--format", "udacity68",
                       "--output", str(tmp_path / "o"), *extra])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(_error_lines(proc.stderr)) == 1, proc.stderr[-2000:]
    assert took < LIMIT_S
    assert not (tmp_path / "o" / "_done").exists()  # no work was done


def test_verbose_keeps_the_traceback(udacity_subset, tmp_path):
    proc, _ = _run(["-v", "preprocess", "--input", str(udacity_subset), "--format", "udacity68",
                    "--output", str(tmp_path / "o"), "--limit", "0"])
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "--limit must be at least 1" in proc.stderr


def _no_aws_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # no credentials anywhere, and never ask the (non-loopback) instance metadata service
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    return env


def test_s3_without_credentials_names_endpoint_and_variables(s3_server, tmp_path):
    env = _no_aws_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "facebatch.cli", "preprocess", "--input", "s3://fb-nocreds/x",
                           "--output", str(tmp_path / "o"), "--s3-endpoint-url", s3_server],
                          capture_output=True, text=True, timeout=LIMIT_S + 30, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr and s3_server in proc.stderr


def test_s3_unreachable_endpoint_one_line(tmp_path):
    with __import__("socket").socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, took = _run(["preprocess", "--input", "s3://fb-any/x", "--output", str(tmp_path / "o"),
                       "--s3-endpoint-url", f"http://127.0.0.1:{port}"],
                      env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_EC2_METADATA_DISABLED": "true"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
    assert "AWS_ENDPOINT_URL" in proc.stderr and took < LIMIT_S


def test_ctrl_c_exits_130_with_resume_hint(ray_session, udacity_subset, tmp_path):
    import ray
    out = tmp_path / "o"
    # four links to each image (96 inputs, 48 shards): the first done-marker can reach the disk late
    # (results are consumed in batches), and with 24 inputs the run once finished before the signal came
    src = tmp_path / "in"
    shutil.copytree(udacity_subset, src, symlinks=True)
    for f in sorted((src / "training").glob("*.jpg")):
        for k in range(1, 4):
            (src / "training" / f"{f.stem}_copy{k}.jpg").symlink_to(f.resolve())
    csv = src / "training_frames_keypoints.csv"
    head, *body = csv.read_text().splitlines()
    csv.write_text("\n".join([head] + body + [f"{r.split(',', 1)[0][:-4]}_copy{k}.jpg,{r.split(',', 1)[1]}"
                                               for k in range(1, 4) for r in body]) + "\n")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facebatch.cli", "preprocess", "--input", str(src),
                             "--format", "udacity68", "--output", str(out), "--shard-size", "2", "--workers", "1",
                             "--progress", "log"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(out.glob("_done/*.json")):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    parent = (signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert proc.returncode == 130, (f"parent SIGINT handler, blocked: {parent}", err[-2000:])
    assert "--resume" in err and "shards" in err and "Traceback" not in err, err[-2000:]


def test_clean_run_has_no_ray_error_line_and_a_heartbeat(ray_session, udacity_subset, tmp_path):
    import ray
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    proc, _ = _run(["preprocess", "--input", str(udacity_subset), "--format", "udacity68", "--output",
                    str(tmp_path / "o"), "--limit", "4", "--progress", "log", "--log-every", "0.5"], env=env,
                   timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray Data's actor pool logged an ERROR from core_worker.cc on every run (constructor arguments
    # in the object store with max_restarts > 0)
    assert "max_restarts" not in proc.stderr and "core_worker.cc" not in proc.stderr, proc.stderr[-3000:]
    assert "waiting for" in proc.stderr  # heartbeat while Ray Data starts its workers
    assert "skipped by the lister: 0 files" in proc.stdout
