"""Exit statuses a scheduler can act on (issue 23): 0 clean, 1 anything else, 2 bad usage, 3 too many
permanent failures, 75 try again later, 130 Ctrl-C; for annotate and preprocess alike.

The end-to-end cases run the real commands as subprocesses on this session's Ray, reading from
moto's S3 server on 127.0.0.1 through a proxy that goes down for good at the first object read:
every input fails with a transient read error after --retry-seconds, the run exits 75 whatever
--max-failure-rate says and prints the rerun hint, and _summary.json says retryable. With S3 back,
the rerun the hint names exits 0 with every row ok. The scheduler's wrapper
(python -m facebatch.batch.rerun) is checked as a child-process runner and against a real
`ray start --head` Jobs API, where it must return the driver's own status (`ray job submit` says 1).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facebatch.batch.errors import EXHAUSTED, JobFailed, rerun_can_fix
from facebatch.batch.retry import RetriesExhausted, RetryPolicy, call_with_retries, failed_transiently, failure_text
from facebatch.batch.summary import exit_status, retryable_fields
from test_preprocess_safety_proxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]


# ---- the table, without Ray --------------------------------------------------------------------

def test_exit_status_table():
    clean = {"failure_rate": 0.0, **retryable_fields([{"retryable": 0}])}
    assert clean == {"failure_rate": 0.0, "retryable": False, "retryable_inputs": 0}
    assert exit_status(clean, 0.05) == 0
    assert exit_status({"failure_rate": 0.5, "retryable_inputs": 0}, 0.05) == 3  # permanent failures
    assert exit_status({"failure_rate": 0.01, "retryable_inputs": 0}, 0.05) == 0  # under the limit
    # transient failures: 75 whatever --max-failure-rate says, above it or under it
    assert exit_status({"failure_rate": 1.0, **retryable_fields([{"retryable": 2}, {}])}, 0.05) == 75
    assert exit_status({"failure_rate": 0.01, "retryable_inputs": 1}, 0.05) == 75
    assert exit_status({"failure_rate": 0.01, "retryable_inputs": 1}, 1.0) == 75


def test_transient_read_errors_are_told_from_permanent_ones():
    def refused():
        raise ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(RetriesExhausted) as ei:
        call_with_retries(refused, RetryPolicy(budget_s=0.0), "read s3://b/" + "x" * 900 + ".jpg")
    row_error = failure_text(ei.value)[:500]  # as the read tasks store it
    assert failed_transiently(row_error) and EXHAUSTED in row_error
    assert not failed_transiently("FileNotFoundError: s3://b/gone.jpg")
    assert not failed_transiently("object changed since it was listed (ETag a read, b listed)")
    assert not failed_transiently(None)
    assert rerun_can_fix(ei.value) and not rerun_can_fix(PermissionError("AccessDenied"))
    assert JobFailed("x").exit_status == 75 and JobFailed("x", retryable=False).exit_status == 1


@pytest.mark.parametrize("raised, status", [
    (JobFailed("storage outage; rerun"), 75),
    (JobFailed("a bug in a worker", retryable=False), 1),
    (ValueError("--shard-size must be at least 1"), 2),
    (KeyboardInterrupt(), 130),
])
def test_top_level_command_maps_errors_to_statuses(monkeypatch, capsys, raised, status):
    import facebatch.annotate.cli as acli
    from facebatch.cli import main

    def run(args):
        raise raised
    monkeypatch.setattr(acli, "run", run)
    assert main(["annotate", "--input", "x", "--output", "y"]) == status
    if status in (1, 2, 75):
        assert "Traceback" not in capsys.readouterr().err


def test_lock_held_is_75(monkeypatch, tmp_path):
    from facebatch.annotate.lock import LockHeld, RunLock
    import facebatch.annotate.cli as acli
    from facebatch.cli import main
    holder = RunLock(str(tmp_path), {}, "run-holder", ttl_s=60).acquire()
    try:
        def run(args):
            RunLock(str(tmp_path), {}, "run-other", ttl_s=60).acquire()
        monkeypatch.setattr(acli, "run", run)
        assert main(["annotate", "--input", "x", "--output", str(tmp_path)]) == LockHeld.exit_status == 75
    finally:
        holder.release()


# ---- the scheduler's wrapper -------------------------------------------------------------------

def _flaky_script(tmp_path: Path, codes: list[int]) -> list[str]:
    """A command that exits ``codes[k]`` on its k-th run (counted in a file)."""
    counter = tmp_path / "runs"
    code = (f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) if p.exists() else 0; "
            f"p.write_text(str(n + 1)); sys.exit({codes!r}[min(n, {len(codes) - 1})])")
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("codes, attempts, status, runs", [
    ([75, 75, 0], 3, 0, 3),   # reruns while 75, stops at the first other status
    ([75, 75, 75], 2, 75, 2),  # out of attempts: the last status
    ([3, 0], 3, 3, 1),         # too many permanent failures: no rerun
    ([2, 0], 3, 2, 1),
])
def test_rerun_wrapper_runs_again_only_on_75(tmp_path, codes, attempts, status, runs):
    from facebatch.batch.rerun import main
    assert main(["--attempts", str(attempts), "--wait", "0", "--", *_flaky_script(tmp_path, codes)]) == status
    assert int((tmp_path / "runs").read_text()) == runs


def test_rerun_wrapper_returns_the_ray_jobs_own_status(tmp_path):
    """Against a real `ray start --head` (Jobs API): the driver's status, not `ray job submit`'s 1."""
    from test_job_submit import RayHead
    from facebatch.batch.rerun import job_exit_status
    assert job_exit_status("FAILED", None, "JOB_SUPERVISOR_ACTOR_DIED") == 75
    assert job_exit_status("FAILED", None, "JOB_ENTRYPOINT_COMMAND_START_ERROR") == 1
    assert job_exit_status("STOPPED", None) == 130 and job_exit_status("SUCCEEDED", 0) == 0
    head = RayHead(num_cpus=1)
    try:
        head.wait_ready()
        env = {**head.env, "PYTHONPATH": str(REPO)}

        def submit(*cmd: str, attempts: int = 1):
            return subprocess.run([sys.executable, "-m", "facebatch.batch.rerun", "--address", head.address,
                                   "--entrypoint-num-cpus", "0", "--attempts", str(attempts), "--wait", "0", "--", *cmd],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        r = submit("python", "-c", "import sys; print('tempfail-job'); sys.exit(75)")
        assert r.returncode == 75, r.stdout[-2000:] + r.stderr[-2000:]
        assert "tempfail-job" in r.stdout and "driver exit status 75" in r.stderr
        r = submit("python", "-c", "import sys; sys.exit(3)", attempts=3)
        assert r.returncode == 3 and r.stderr.count("submitted Ray job") == 1, r.stderr[-2000:]
        r = submit(*["python", "-c", "print('clean')"])
        assert r.returncode == 0 and "clean" in r.stdout, r.stderr[-2000:]
    finally:
        head.stop()


# ---- the commands, end to end --------------------------------------------------------------------

@pytest.fixture()
def s3_photos(s3_server, udacity_subset):
    """Four photos in a fresh bucket, and a proxy in front of moto that the test can take down."""
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    bucket = f"fb-exit-{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    for f in sorted((udacity_subset / "training").iterdir())[:4]:
        fs.put(str(f.resolve()), f"{bucket}/in/{f.name}")
    host, port = s3_server.rsplit("/", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    yield bucket, proxy
    proxy.close()


def _cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    import ray
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "facebatch.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _outage_at_first_read(proxy: FaultProxy, bucket: str) -> None:
    # the listing asks for `?list-type=2&prefix=in%2F`; the first read of an object is a HEAD of its key
    proxy.trigger = f"HEAD /{bucket}/in/".encode()


def test_annotate_exits_75_on_transient_read_errors_then_0(ray_session, s3_photos, tmp_path):
    bucket, proxy = s3_photos
    out = tmp_path / "ann"
    args = ["annotate", "--input", f"s3://{bucket}/in", "--output", str(out), "--keypoints", "none",
            "--attributes", "none", "--s3-endpoint-url", proxy.endpoint, "--workers", "1", "--retry-seconds", "1"]
    _outage_at_first_read(proxy, bucket)
    r = _cli(args)
    assert proxy.refused > 0, "the outage did not hit the reads"
    assert r.returncode == 75, r.stderr[-3000:]
    assert "4 inputs could not be read" in r.stderr and "run the same command again" in r.stderr, r.stderr[-3000:]
    assert "above --max-failure-rate" not in r.stderr and "Traceback" not in r.stderr
    (summary_path,) = out.glob("dt=*/run=*/_summary.json")
    s = json.loads(summary_path.read_text())
    assert s["retryable"] is True and s["retryable_inputs"] == 4 and s["status_counts"] == {"read_error": 4}
    assert s["failure_rate"] == 1.0  # above the default --max-failure-rate 0.05: still 75, not 3

    proxy.up()
    r2 = _cli(args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    latest = max(out.glob("dt=*/run=*/_summary.json"), key=lambda p: p.parent.name)
    s2 = json.loads(latest.read_text())
    assert s2["retried"] == 4 and s2["retryable"] is False and s2["status_counts"].get("read_error") is None


def test_preprocess_exits_75_on_transient_read_errors_then_0_with_resume(ray_session, s3_photos, tmp_path):
    bucket, proxy = s3_photos
    out = tmp_path / "pre"
    args = ["preprocess", "--input", f"s3://{bucket}/in", "--output", str(out), "--s3-endpoint-url", proxy.endpoint,
            "--workers", "1", "--retry-seconds", "1", "--shard-size", "2", "--progress", "none"]
    _outage_at_first_read(proxy, bucket)
    r = _cli(args)
    assert proxy.refused > 0, "the outage did not hit the reads"
    assert r.returncode == 75, r.stderr[-3000:]
    assert "rerun the same command with --resume" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    s = json.loads((out / "_summary.json").read_text())
    assert s["retryable"] is True and s["retryable_inputs"] == 4 and s["failure_rate"] == 1.0

    proxy.up()
    r2 = _cli(args + ["--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    s2 = json.loads((out / "_summary.json").read_text())
    assert s2["retryable"] is False and s2["status_counts"].get("read_error") is None
    assert len(pq.read_table(str(out), columns=["path"])) == 4
    shutil.rmtree(out)


def test_annotate_part_write_outage_stops_75_then_rerun_equals_uninterrupted(ray_session, s3_server, udacity_subset,
                                                                            tmp_path, monkeypatch):
    """The storage-outage drill at small scale (bench/drills.py annotate-write-outage has the figures):
    S3 goes down at the PUT of a part, longer than --retry-seconds; the run stops with the rerun hint
    (a retryable JobFailed: exit 75) and commits nothing; the same command then leaves the same live
    rows as an uninterrupted run."""
    import threading

    import s3fs

    from facebatch.annotate.config import AnnotateConfig
    from facebatch.annotate.pipeline import run_annotate
    from facebatch.annotations import read_latest
    from facebatch.inference.config import AnalyzerConfig
    from facebatch.annotate import pipeline
    from facebatch.storage import storage_options

    def one_attempt(endpoint=None):  # botocore's own retries (3, with backoff) would outlast the short outage
        opts = storage_options(endpoint)
        opts["config_kwargs"] = {"retries": {"max_attempts": 1, "mode": "standard"}}
        return opts
    monkeypatch.setattr(pipeline, "storage_options", one_attempt)
    inp = tmp_path / "in"
    inp.mkdir()
    for f in sorted((udacity_subset / "training").iterdir())[:6]:
        (inp / f.name).symlink_to(f.resolve())
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    bucket = f"fb-wout-{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    host, port = s3_server.rsplit("/", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    try:
        cfg = dict(input=str(inp), analyzer=AnalyzerConfig(keypoints=None, attributes=None), shard_size=2, workers=1)
        dst = f"s3://{bucket}/ann"
        proxy.trigger = b"part-00001.parquet HTTP"  # the request line of the second part's PUT

        def back_up() -> None:  # S3 returns 8 s after it went down (the job retries for 0.5 s)
            while proxy._up.is_set():
                time.sleep(0.05)
            time.sleep(8)
            proxy.up()
        threading.Thread(target=back_up, daemon=True).start()
        with pytest.raises(JobFailed, match=r"could not write shard 1 .*nothing was committed: rerun the same command") as ei:
            run_annotate(AnnotateConfig(output=dst, s3_endpoint_url=proxy.endpoint, retry_s=0.5, **cfg))
        assert ei.value.retryable and ei.value.exit_status == 75
        # the failed run's Ray Data actors live as long as its frames do (the traceback holds them):
        # let them go, else the rerun in this same process waits for their CPUs
        del ei
        import gc
        gc.collect()
        opts = storage_options(s3_server)
        assert read_latest(dst, options=opts).num_rows == 0  # nothing committed
        proxy.up()
        s = run_annotate(AnnotateConfig(output=dst, s3_endpoint_url=proxy.endpoint, **cfg))
        assert s["processed"] == 6 and s["retryable"] is False and len(s["recovered"]["removed_runs"]) == 1
        ref = run_annotate(AnnotateConfig(output=str(tmp_path / "ref"), **cfg))
        assert ref["processed"] == 6
        cols = ["path", "face_index", "status", "n_faces", "box"]
        a = read_latest(dst, options=opts).select(cols).to_pylist()
        b = read_latest(str(tmp_path / "ref")).select(cols).to_pylist()
        assert len(a) == len(b) >= 6 and len({(r["path"], r["face_index"]) for r in a}) == len(a)
        for x, y in zip(a, b):
            assert (x["path"], x["face_index"], x["status"], x["n_faces"]) == (y["path"], y["face_index"], y["status"], y["n_faces"])
            assert x["box"] == pytest.approx(y["box"], abs=1e-3)
    finally:
        proxy.close()
