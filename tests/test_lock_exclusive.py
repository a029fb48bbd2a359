"""The output lock is exclusive (issue 23): on S3 a conditional create (If-None-Match: *) and renewals
conditional on the lock's ETag (If-Match), on moto's S3 server over loopback; locally an exclusive
create. Two `facebatch annotate` processes started together against one output: exactly one
proceeds, the other exits 75 with a line naming the holder's run id and when its lock expires.
A store that ignores or refuses conditional writes gets the old best-effort lock and a warning
naming the store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from facebatch.annotate import lock as L
from facebatch.annotate.lock import LockHeld, RunLock
from facebatch.storage import storage_options

REPO = Path(__file__).resolve().parents[1]

# `facebatch annotate` with RunLock.acquire held back until every process of the race is there
RACER = """
import os, pathlib, sys, time
from facebatch.annotate import lock as L
bar, n = pathlib.Path(os.environ["FB_RACE_DIR"]), int(os.environ["FB_RACE_N"])
acquire = L.RunLock.acquire
def together(self):
    (bar / str(os.getpid())).touch()
    t0 = time.time()
    while len(list(bar.iterdir())) < n and time.time() - t0 < 180:
        time.sleep(0.002)
    return acquire(self)
L.RunLock.acquire = together
from facebatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture()
def s3_out(s3_server):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    bucket = f"fb-lock-{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    L._PROBED.clear()
    yield fs, bucket, storage_options(s3_server)
    L._PROBED.clear()


@pytest.fixture()
def two_photos(udacity_subset, tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for f in sorted((udacity_subset / "training").iterdir())[:2]:
        (d / f.name).symlink_to(f.resolve())
    return d


@pytest.mark.parametrize("where", ["s3", "local"])
def test_two_annotate_runs_started_together_one_proceeds(ray_session, s3_server, two_photos, tmp_path, where):
    import ray
    import s3fs
    if where == "s3":
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
        bucket = f"fb-race-{int(time.time() * 1000) % 10**9}"
        fs.mkdir(bucket)
        dst = f"s3://{bucket}/out"
    else:
        fs, dst = None, str(tmp_path / "out")
    race = tmp_path / "race"
    race.mkdir()
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1",
           "FB_RACE_DIR": str(race), "FB_RACE_N": "2", "AWS_ENDPOINT_URL": s3_server}
    args = ["annotate", "--input", str(two_photos), "--output", dst, "--keypoints", "none", "--attributes", "none",
            "--workers", "1"]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300))
        finally:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 75], [(c, e[-2000:]) for c, (_, e) in zip(codes, outs)]
    win, lose = (0, 1) if codes[0] == 0 else (1, 0)
    if fs is not None:
        runs = [p for p in fs.glob(f"{bucket}/out/dt=*/run=*") if fs.exists(f"{p}/_SUCCESS")]
        left_lock = fs.exists(f"{bucket}/out/_state/lock.json")
    else:
        runs = [str(p) for p in Path(dst).glob("dt=*/run=*") if (p / "_SUCCESS").exists()]
        left_lock = (Path(dst) / "_state" / "lock.json").exists()
    assert len(runs) == 1, runs  # one run wrote the output
    run_id = runs[0].rsplit("run=", 1)[1]
    err = outs[lose][1]
    line = [ln for ln in err.splitlines() if "another run holds" in ln]
    assert len(line) == 1 and "Traceback" not in err, err[-3000:]
    assert f"run {run_id} " in line[0] and f"pid {procs[win].pid}" in line[0], line[0]
    assert "lock expires 20" in line[0] and "Z (in " in line[0], line[0]  # the holder's expiry, in UTC
    assert "best effort" not in outs[win][1] + err  # moto honours conditional writes: no fallback
    assert not left_lock, "the winner released its lock"


def _race(dst: str, options: dict, n: int = 8) -> tuple[list[RunLock], list[str]]:
    """``n`` threads acquire the lock of ``dst`` at the same moment: (winners, LockHeld messages)."""
    bar = threading.Barrier(n)
    won, held, errors = [], [], []

    def go(i: int) -> None:
        lk = RunLock(dst, options, f"run-{i}", ttl_s=60)
        bar.wait()
        try:
            won.append(lk.acquire())
        except LockHeld as exc:
            held.append(str(exc))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return won, held


def test_many_contenders_one_winner_s3(s3_out):
    fs, bucket, opts = s3_out
    won, held = _race(f"s3://{bucket}/out", opts)
    assert len(won) == 1 and len(held) == 7, (won, held)
    assert won[0].mode == L.EXCLUSIVE and all(won[0].run_id in h for h in held)
    body = json.loads(fs.cat(f"{bucket}/out/_state/lock.json"))
    assert body["run_id"] == won[0].run_id and body["lock"] == "conditional-write"
    won[0].release()
    assert not fs.exists(f"{bucket}/out/_state/lock.json")
    assert not fs.glob(f"{bucket}/out/_state/.lock-probe-*")  # the probe cleaned up


def test_many_contenders_one_winner_local(tmp_path):
    won, held = _race(str(tmp_path / "out"), {})
    assert len(won) == 1 and len(held) == 7, (won, held)
    assert won[0].mode == L.LOCAL
    won[0].release()
    assert not (tmp_path / "out" / "_state" / "lock.json").exists()
    assert not list((tmp_path / "out" / "_state").glob("lock.json.tmp-*"))


@pytest.mark.parametrize("where", ["s3", "local"])
def test_renewal_and_takeover_are_conditional(s3_out, tmp_path, where):
    """An expired lock is taken over by exactly one run; the old holder then finds it lost: its renewal
    fails and its release leaves the new holder's lock alone."""
    fs, bucket, opts = s3_out
    dst, opts = (f"s3://{bucket}/out", opts) if where == "s3" else (str(tmp_path / "out"), {})
    a = RunLock(dst, opts, "run-a", ttl_s=60).acquire()
    a._stop.set()  # no background renewals: the test renews by hand
    first = a.read()["expires"]
    time.sleep(0.05)
    assert a.renew() and a.read()["expires"] > first
    with pytest.raises(LockHeld, match="run run-a "):
        RunLock(dst, opts, "run-b", ttl_s=60).acquire()
    a.ttl_s = 0.2
    assert a.renew()  # now expires in 0.2 s
    time.sleep(0.4)
    won, held = _race(dst, opts, n=4)  # four runs see it expired at once: one takes it over
    assert len(won) == 1 and len(held) == 3
    assert not a.renew() and a.lost
    a.release()
    assert a.read()["run_id"] == won[0].run_id
    won[0].release()
    assert a.read() is None


def _ignoring(real):
    def call_s3(self, method, *args, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return real(self, method, *args, **kwargs)
    return call_s3


def _refusing(real):
    from botocore.exceptions import ClientError

    def call_s3(self, method, *args, **kwargs):
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "A header you provided implies "
                                         "functionality that is not implemented"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, method)
        return real(self, method, *args, **kwargs)
    return call_s3


@pytest.mark.parametrize("store, said", [(_ignoring, "ignores conditional writes"),
                                         (_refusing, "refuses conditional writes (PutObject with If-None-Match: *: NotImplemented 501)")])
def test_store_without_conditional_writes_falls_back_with_a_warning(s3_out, s3_server, monkeypatch, capsys, store, said):
    import s3fs
    fs, bucket, opts = s3_out
    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", store(s3fs.S3FileSystem.call_s3))
    t0 = time.time()
    a = RunLock(f"s3://{bucket}/out", opts, "run-a", ttl_s=60).acquire()
    err = capsys.readouterr().err
    assert a.mode == L.BEST_EFFORT and time.time() - t0 < 10  # a 501 is an answer, not an outage to retry
    assert said in err and f"{s3_server} (bucket {bucket})" in err and "best effort" in err, err
    with pytest.raises(LockHeld, match="run run-a "):
        RunLock(f"s3://{bucket}/out", opts, "run-b", ttl_s=60).acquire()
    assert a.renew()
    a.release()
    assert a.read() is None
