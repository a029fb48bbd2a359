"""The annotate job's listing and reads without Ray: the streaming lister gives exactly what the
preprocess lister gives (locally and on S3 through moto's server), shards are planned from Arrow,
and an object changed between listing and reading (same size, other bytes) gets a read_error row
that the next run's diff picks up again."""
from __future__ import annotations

import os
import pickle
import time

import pyarrow as pa
import pytest

from facebatch.annotate import state as ST
from facebatch.annotate.read import read_object
from facebatch.batch.listing import etag_of, mtime_of
from facebatch.batch.retry import RetryPolicy
from facebatch.formats.sources import list_inputs
from facebatch.storage import storage_options


def _tree(root) -> None:
    files = {"a.jpg": b"A" * 10, "sub/b.png": b"B" * 20, "sub/deeper/c.JPEG": b"C" * 30, "d.gif": b"D",
             ".hidden.jpg": b"h", ".cache/e.jpg": b"e", "__MACOSX/f.jpg": b"f", "notes.txt": b"t",
             "sub/g.webp": b"G" * 5}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _expected(src: str, fs=None):
    """The listing as the preprocess lister sees it (one record and info dict per file)."""
    records, listing = list_inputs(src, "folder", None, filesystem=fs)
    rows = [(r.path, etag_of(listing.info[r.path]), listing.info[r.path].get("size"),
             mtime_of(listing.info[r.path])) for r in records]
    return sorted(rows), listing.report()


def _rows(t: pa.Table):
    return list(zip(*(t[c].to_pylist() for c in ("path", "etag", "size", "mtime"))))


def test_local_listing_equals_preprocess_lister(tmp_path):
    _tree(tmp_path)
    got, report = ST.list_source(str(tmp_path), {})
    want, want_report = _expected(str(tmp_path))
    assert _rows(got) == want
    assert got["path"].to_pylist() == sorted(got["path"].to_pylist())
    # the preprocess lister also counts the "emptydir/" folder marker as a skipped file; this one
    # drops it silently (it is no object a user put there)
    assert report["count"] == want_report["count"] == 4
    assert report["by_reason"] == want_report["by_reason"]


def test_s3_listing_equals_preprocess_lister(s3_server, tmp_path):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    bucket = f"lst{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    _tree(tmp_path)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            fs.pipe(f"{bucket}/in/{p.relative_to(tmp_path).as_posix()}", p.read_bytes())
    fs.pipe(f"{bucket}/in/emptydir/", b"")  # a folder marker object
    fs.pipe(f"{bucket}/other/x.jpg", b"x")   # beside the prefix: not listed
    opts = storage_options(s3_server)
    got, report = ST.list_source(f"s3://{bucket}/in", opts)
    fs.invalidate_cache()
    want, want_report = _expected(f"s3://{bucket}/in", fs)
    assert _rows(got) == want
    assert [p.split("/in/")[1] for p, _, _, _ in want] == ["a.jpg", "d.gif", "sub/b.png", "sub/deeper/c.JPEG", "sub/g.webp"], want
    assert all(e for _, e, _, _ in want)
    # the preprocess lister also counts the "emptydir/" folder marker as a skipped file; this one
    # drops it silently (it is no object a user put there)
    assert report["count"] == 4 and want_report["count"] == 5


def test_plan_todo_shards_are_the_listing_in_order(tmp_path):
    _tree(tmp_path)
    listing, _ = ST.list_source(str(tmp_path), {})
    shards = ST.plan_todo(listing, 2)
    assert [len(pickle.loads(s)) for s in shards] == [2, 2, 1]
    assert [o for s in shards for o in pickle.loads(s)] == listing.to_pylist()
    with pytest.raises(ValueError):
        ST.plan_todo(listing, 0)


def _listed(path: str, options: dict) -> dict:
    t, _ = ST.list_source(path.rsplit("/", 1)[0], options)
    return next(r for r in t.to_pylist() if r["path"] == path)


def test_local_same_size_change_after_listing_is_a_read_error(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"1" * 100)
    os.utime(p, (1_700_000_000, 1_700_000_000))
    src = _listed(str(p), {})
    base, data = read_object(src, {}, RetryPolicy(budget_s=0))
    assert data == b"1" * 100 and "status" not in base
    p.write_bytes(b"2" * 100)  # same size, other bytes, new mtime
    base, data = read_object(src, {}, RetryPolicy(budget_s=0))
    assert data is None and base["status"] == "read_error"
    assert "changed since it was listed" in base["error"] and "mtime" in base["error"]
    p.unlink()
    base, data = read_object(src, {}, RetryPolicy(budget_s=0))
    assert data is None and base["status"] == "read_error" and "FileNotFound" in base["error"]


def test_s3_same_size_change_after_listing_is_a_read_error(s3_server):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    bucket = f"chg{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/in/x.jpg", b"1" * 100)
    opts = storage_options(s3_server)
    src = _listed(f"s3://{bucket}/in/x.jpg", opts)
    assert src["etag"]
    base, data = read_object(src, opts, RetryPolicy(budget_s=0))
    assert data == b"1" * 100 and "status" not in base
    fs.pipe(f"{bucket}/in/x.jpg", b"2" * 100)  # same size, another ETag
    base, data = read_object(src, opts, RetryPolicy(budget_s=0))
    assert data is None and base["status"] == "read_error"
    assert "changed since it was listed" in base["error"] and "ETag" in base["error"]


def test_next_run_picks_a_read_error_up_again():
    listing = pa.table({"path": ["a", "b"], "etag": ["e1", "e2"], "size": [1, 2], "mtime": [1.0, 2.0]},
                       schema=ST.LISTING_SCHEMA)
    manifest = pa.table({"path": ["a", "b"], "etag": ["e1", "e2"], "size": [1, 2], "mtime": [1.0, 2.0],
                         "sha256": [None, "s"], "run_id": ["r1", "r1"], "status": ["read_error", "ok"],
                         "models": [None, None], "identity_model": [None, None]},
                        schema=ST.MANIFEST_SCHEMA)
    d = ST.diff(listing, manifest)
    assert d.retry["path"].to_pylist() == ["a"] and d.unchanged["path"].to_pylist() == ["b"]
    changed = listing.set_column(1, "etag", pa.array(["e1x", "e2"]))  # and changed since: redone too
    assert ST.diff(changed, manifest).todo["path"].to_pylist() == ["a"]
