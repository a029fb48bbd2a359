"""Data safety of the preprocess job on a real local Ray: resume after the input changed, S3 outages
(moto's S3 server behind a proxy that the test takes down), retries on --resume, skipped files."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facebatch.preprocess import pipeline
from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig
from test_preprocess_safety_proxy import FaultProxy


def _cfg(inp, out, **kw) -> PreprocessConfig:
    kw.setdefault("progress", "none")
    kw.setdefault("crop", CropConfig(crop_size=64))
    return PreprocessConfig(input=str(inp), output=str(out), format="folder", **kw)


def _paths(out) -> list[str]:
    return sorted(Path(p).name for p in pq.read_table(str(out), columns=["path"]).column("path").to_pylist())


@pytest.fixture(scope="module")
def ten_images(udacity_subset, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ten")
    for f in sorted((udacity_subset / "training").iterdir())[:11]:
        shutil.copy(f.resolve(), d / f.name)
    return d


def test_resume_after_new_input_redoes_shifted_shards(ray_session, ten_images, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    files = sorted(ten_images.iterdir())
    for f in files[:10]:
        shutil.copy(f, inp / f.name)
    out = tmp_path / "out"
    run_preprocess(_cfg(inp, out, shard_size=2))
    assert len(_paths(out)) == 10
    shutil.copy(files[10], inp / "AAA_new.jpg")  # sorts first: every shard shifts by one
    summary = run_preprocess(_cfg(inp, out, shard_size=2, resume=True))
    names = _paths(out)
    assert names == sorted([f.name for f in files[:10]] + ["AAA_new.jpg"])  # each once, the new one too
    assert summary["inputs"] == summary["rows"] == 11 and summary["rows_check"] == "ok"
    assert summary["shards_skipped_resume"] == 0 and summary["resume"]["changed"] == 5
    # an unchanged input resumes with everything skipped
    again = run_preprocess(_cfg(inp, out, shard_size=2, resume=True))
    assert again["shards_skipped_resume"] == 6 and _paths(out) == names
    # inputs removed: the stale parts beyond the new end go, no row of a deleted file stays
    for f in sorted(inp.iterdir())[5:]:
        f.unlink()
    third = run_preprocess(_cfg(inp, out, shard_size=2, resume=True))
    assert _paths(out) == names[:5] and third["inputs"] == 5
    assert third["resume"]["stale_removed"] == 3


def test_final_check_catches_a_duplicated_row(ray_session, ten_images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_preprocess(_cfg(ten_images, out, shard_size=4, limit=8))
    # a stray copy of a part (e.g. from another tool) doubles rows the markers do not know about
    shutil.copy(out / "part-00000.parquet", out / "part-00009.parquet")
    monkeypatch.setattr(pipeline, "_remove_shards", lambda *a, **k: None)  # keep the stray part
    with pytest.raises(Exception, match="repeated rows"):
        run_preprocess(_cfg(ten_images, out, shard_size=4, limit=8, resume=True))


def test_lister_skips_are_counted_and_gif_is_read(ray_session, ten_images, tmp_path):
    from PIL import Image
    inp = tmp_path / "in"
    inp.mkdir()
    first = sorted(ten_images.iterdir())[0]
    shutil.copy(first, inp / first.name)
    Image.open(first).save(inp / "face.gif")
    (inp / "readme.md").write_text("x")
    (inp / ".DS_Store").write_bytes(b"x")
    summary = run_preprocess(_cfg(inp, tmp_path / "out"))
    assert summary["inputs"] == 2 and summary["status_counts"] == {"ok": 2}  # the GIF is listed and read
    assert summary["skipped"]["count"] == 2
    assert summary["skipped"]["by_reason"] == {"hidden": 1, "not an image extension": 1}
    saved = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert saved["skipped"]["count"] == 2


# ---- S3 through a proxy that goes down --------------------------------------------------------------

@pytest.fixture()
def s3_inputs(s3_server, ten_images):
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    bucket = f"fb-safety-{len(fs.ls('')):03d}"
    fs.mkdir(bucket)
    for f in sorted(ten_images.iterdir())[:8]:
        fs.put(str(f), f"{bucket}/photos/{f.name}")
    host, port = s3_server.rsplit("/", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    yield f"s3://{bucket}/photos", proxy
    proxy.close()


def _outage_after_listing(monkeypatch, proxy, seconds=None):
    """Take S3 down right after the driver listed the inputs (the reads come next); back up
    ``seconds`` after the first refused connection (never with ``None``)."""
    real = pipeline.check_writable

    def check_then_cut(*a, **k):
        real(*a, **k)
        if seconds is None:
            proxy.down()
        else:
            proxy.down_until_hit(seconds)
    monkeypatch.setattr(pipeline, "check_writable", check_then_cut)


def test_short_s3_outage_is_retried_not_a_read_error(ray_session, s3_inputs, tmp_path, monkeypatch):
    uri, proxy = s3_inputs
    _outage_after_listing(monkeypatch, proxy, 10.0)
    summary = run_preprocess(_cfg(uri, tmp_path / "out", shard_size=4, s3_endpoint_url=proxy.endpoint))
    assert proxy.refused > 0, "the outage did not hit the reads"
    assert summary["status_counts"] == {"ok": 8}, summary["status_counts"]
    assert summary["retries"] > 0


def test_resume_retries_read_error_rows(ray_session, s3_inputs, tmp_path, monkeypatch):
    uri, proxy = s3_inputs
    out = tmp_path / "out"
    _outage_after_listing(monkeypatch, proxy)
    first = run_preprocess(_cfg(uri, out, shard_size=4, s3_endpoint_url=proxy.endpoint, retry_s=0.5))
    assert first["status_counts"] == {"read_error": 8}
    monkeypatch.undo()
    proxy.up()
    second = run_preprocess(_cfg(uri, out, shard_size=4, s3_endpoint_url=proxy.endpoint, resume=True))
    assert second["status_counts"] == {"ok": 8} and second["resume"]["retried"] == 2
    assert len(_paths(out)) == 8


def test_s3_output_down_mid_run_stops_with_resume_hint(ray_session, s3_server, s3_inputs, tmp_path):
    uri, proxy = s3_inputs
    bucket = uri.split("/")[2]
    out = f"s3://{bucket}/faces"
    proxy.trigger = f"PUT /{bucket}/faces/part-00002".encode()  # S3 goes away while the third part is written
    with pytest.raises(pipeline.JobFailed, match=r"could not write .*part-0000[0-9].*shards known finished.*--resume"):
        run_preprocess(_cfg(uri, out, shard_size=2, s3_endpoint_url=proxy.endpoint, retry_s=1.0))
    proxy.up()
    summary = run_preprocess(_cfg(uri, out, shard_size=2, s3_endpoint_url=proxy.endpoint, resume=True))
    assert summary["inputs"] == summary["rows"] == 8 and summary["shards_skipped_resume"] >= 1
