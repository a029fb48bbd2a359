"""The shard machinery's pure parts (no Ray): input hashes, resume plans, the set-based output
check, retry classification and backoff, option checks, the lister's skipped files, progress."""
from __future__ import annotations

import errno
import io
import time

import pytest

from facebatch.batch.check import OutputCheckError, check_output_paths
from facebatch.batch.listing import input_fingerprint
from facebatch.batch.progress import Progress
from facebatch.batch.retry import RetriesExhausted, RetryPolicy, call_with_retries
from facebatch.batch.shards import MARKER_VERSION, plan_resume, plan_shards, shard_inputs_hash
from facebatch.batch.workers import plan_workers
from facebatch.preprocess.config import PreprocessConfig
from facebatch.storage import is_transient


def _hashes(paths, size=10):
    shards = plan_shards(sorted(paths), size)
    return [shard_inputs_hash(input_fingerprint(p, 1, 1) for p in s) for s in shards]


def test_new_input_changes_every_later_shard_hash_only():
    old = [f"img{i:02d}.jpg" for i in range(10)]
    a = _hashes(old, 2)
    b = _hashes(old + ["AAA_new.jpg"], 2)
    assert len(b) == 6
    assert all(x != y for x, y in zip(a, b))  # the new first file shifts every shard
    c = _hashes(old + ["zzz_new.jpg"], 2)
    assert c[:5] == a and len(c) == 6  # a file sorted last changes nothing before it
    assert shard_inputs_hash(["a", "b"]) == shard_inputs_hash(["b", "a"])
    assert input_fingerprint("p", 1, 2) != input_fingerprint("p", 1, 3)  # mtime / ETag
    assert input_fingerprint("p", 1, 2, {"kp": 1}) != input_fingerprint("p", 1, 2, {"kp": 2})  # labels


def _marker(h, counts=None):
    return {"inputs_sha256": h, "marker_version": MARKER_VERSION, "input_status_counts": counts or {"ok": 2}}


def test_plan_resume_skips_only_unchanged_clean_shards():
    hashes = ["h0", "h1", "h2", "h3"]
    markers = {0: _marker("h0"), 1: _marker("OLD"), 2: _marker("h2", {"ok": 1, "read_error": 1}),
               5: _marker("h5"), 3: {"n_inputs": 2}}  # 3: an old marker without a hash
    plan = plan_resume(hashes, markers)
    assert plan.skip == [0]
    assert plan.changed == [1, 3] and plan.retry == {2: {"read_error": 1}} and plan.stale == [5]
    assert sorted(plan.todo) == [1, 2, 3]
    text = plan.describe()
    assert "inputs changed" in text and "1 read_error" in text and "stale" in text
    # decode errors are not retried: the same bytes decode the same way
    assert plan_resume(["h"], {0: _marker("h", {"decode_error": 1})}).skip == [0]


def test_output_check_is_by_set_not_count():
    listed = ["a", "b", "c"]
    assert check_output_paths(listed, [("a", 0), ("b", 0), ("c", 0)], False) == {"inputs": 3, "rows": 3}
    with pytest.raises(OutputCheckError, match=r"1 inputs without a row \(c\).*1 inputs with repeated rows \(a\)"):
        check_output_paths(listed, [("a", 0), ("a", 0), ("b", 0)], False)  # right count, wrong set
    with pytest.raises(OutputCheckError, match="not in the listing"):
        check_output_paths(listed, [("a", 0), ("b", 0), ("c", 0), ("x", 0)], False)
    # several faces per input are fine with all_faces, a repeated face is not
    assert check_output_paths(["a"], [("a", 0), ("a", 1)], True)["rows"] == 2
    with pytest.raises(OutputCheckError):
        check_output_paths(["a"], [("a", 0), ("a", 0)], True)
    with pytest.raises(OutputCheckError):
        check_output_paths(["a"], [("a", 0), ("a", 1)], False)


class FakeClientError(Exception):
    def __init__(self, code, status):
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class EndpointConnectionError(Exception):  # matched by name, like botocore's
    pass


def test_transient_classification():
    assert is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNRESET, "reset"))
    assert is_transient(FakeClientError("SlowDown", 503))
    assert is_transient(FakeClientError("InternalError", 500))
    assert is_transient(EndpointConnectionError("Could not connect to the endpoint URL"))
    wrapped = OSError("s3 failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient(wrapped)  # s3fs wraps botocore errors
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(FakeClientError("AccessDenied", 403))
    assert not is_transient(ValueError("bad data"))


def test_retries_back_off_then_give_up():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError("refused")
        return "ok"
    assert call_with_retries(flaky, RetryPolicy(budget_s=60, base_s=1, cap_s=8), "read x", sleep=waits.append) == "ok"
    assert len(calls) == 4 and len(waits) == 3 and waits[0] < waits[1] < waits[2]  # growing backoff
    with pytest.raises(FileNotFoundError):  # not transient: at once, unchanged
        call_with_retries(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), RetryPolicy(), "r",
                          sleep=waits.append)
    waits.clear()
    with pytest.raises(RetriesExhausted, match="still failing after"):
        call_with_retries(lambda: (_ for _ in ()).throw(TimeoutError("t")), RetryPolicy(budget_s=10, base_s=1),
                          "read y", sleep=waits.append)
    assert 8 <= sum(waits) <= 10.01  # the budget bounds the waiting
    assert list(RetryPolicy(budget_s=0).delays()) == []


def test_options_checked_before_work():
    def cfg(**kw):
        return PreprocessConfig(input="x", output="y", **kw)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="--limit must be at least 1"):
            cfg(limit=limit).validate()
    with pytest.raises(ValueError, match="unknown --device 'gpu'"):
        c = cfg()
        c.detector.device = "gpu"
        c.validate()
    c = cfg()
    c.detector.device = "cuda"
    c.validate()
    assert c.gpus_per_worker == 1.0  # a CUDA detector gets a GPU for its actor
    with pytest.raises(ValueError, match="no GPUs"):
        plan_workers(c, 2, 0)
    with pytest.raises(ValueError, match="--cpus-per-worker 8 but the largest node has 2 CPUs"):
        plan_workers(cfg(cpus_per_worker=8).validate(), 2, 0)
    with pytest.raises(ValueError, match="largest node has 4"):
        plan_workers(cfg(cpus_per_worker=6).validate(), 8, 0, node_cpus=4)
    with pytest.raises(ValueError, match="--workers 3 x --cpus-per-worker 1"):
        plan_workers(cfg(workers=3, cpus_per_worker=1).validate(), 2, 0)
    assert plan_workers(cfg().validate(), 2, 0)[0] == 2
    assert PreprocessConfig(input="x", output="y").max_failure_rate == 0.05


def test_lister_takes_gif_and_counts_skipped(tmp_path):
    from PIL import Image
    from facebatch.formats.sources import list_inputs
    for name in ("a.jpg", "b.gif", "c.PNG"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"x")
    records, listing = list_inputs(str(tmp_path), "folder")
    assert [r.path.rsplit("/", 1)[1] for r in records] == ["a.jpg", "b.gif", "c.PNG"]
    rep = listing.report()
    assert rep["count"] == 3 and rep["by_reason"] == {"hidden": 2, "not an image extension": 1}
    assert any(e.endswith("notes.txt") for e in rep["examples"])
    assert all(listing.info[r.path]["size"] > 0 for r in records)  # for the input hashes


def test_progress_rate_leaves_out_resumed_inputs_and_heartbeats():
    out = io.StringIO()
    p = Progress(total=100, mode="log", every=0.3, initial=90, stream=out)
    p.t0 -= 10  # ten seconds into this run
    p.update(5, {"ok": 5})
    assert p.rate() == pytest.approx(0.5, rel=0.1)  # 5 new inputs in 10 s, not 95
    p.waiting_for = "3 shards: reading"
    time.sleep(1.0)  # nothing finishes: the heartbeat still speaks
    p.close()
    lines = out.getvalue().splitlines()
    assert any("waiting for 3 shards: reading" in ln for ln in lines), lines
    assert "+90 done before" in lines[0] and " 0.5 img/s" in lines[0]
