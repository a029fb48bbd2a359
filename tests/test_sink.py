"""The Sink seam: a JSON-lines sink defined here (test-only) plugged into the annotate job on real
photos receives exactly the rows the default Parquet sink writes; the job's end check and its
commit go through the sink too. Plus the Parquet sink's atomic, rerun-safe parts (no Ray)."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from facebatch.annotate.config import AnnotateConfig
from facebatch.annotate.pipeline import run_annotate
from facebatch.annotations import read_latest
from facebatch.batch.shards import part_name
from facebatch.batch.sink import ParquetSink, Sink
from facebatch.inference.config import AnalyzerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_PHOTOS = 6
IGNORED = ("run_id", "annotated_at")  # differ between two runs by design


def _plain(v):
    """JSON for the values rows hold besides str/int/float/list: bytes, timestamps, numpy."""
    if isinstance(v, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dt.datetime):
        return {"time": v.isoformat()}
    if isinstance(v, (np.generic, np.ndarray)):
        return v.tolist()
    raise TypeError(f"no JSON for {type(v).__name__}")


def _unplain(v):
    if isinstance(v, dict) and set(v) == {"base64"}:
        return base64.b64decode(v["base64"])
    if isinstance(v, dict) and set(v) == {"time"}:
        return dt.datetime.fromisoformat(v["time"])
    return v


class JsonlSink(Sink):
    """Test-only: ``FOLDER/part-NNNNN.jsonl`` per shard, one JSON object per row (written whole,
    then renamed); the commit writes ``COMMITTED``. It never calls ``to_table``: it stores the rows
    as the job handed them over."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def write_part(self, shard_id, rows, to_table) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, part_name(shard_id, ".jsonl"))
        with open(path + ".tmp", "w") as f:
            for r in rows:
                f.write(json.dumps(r, default=_plain) + "\n")
        os.replace(path + ".tmp", path)

    def parts(self) -> list[str]:
        return sorted(str(p) for p in Path(self.folder).glob("part-*.jsonl"))

    def rows(self) -> list[dict]:
        out = []
        for p in self.parts():
            with open(p) as f:
                out.extend({k: _unplain(v) for k, v in json.loads(line).items()} for line in f)
        return out

    def keys(self) -> list[tuple[str, int]]:
        return [(r["path"], max(0, r["face_index"] or 0)) for r in self.rows()]

    def commit(self, summary: dict) -> None:
        Path(self.folder, "COMMITTED").write_text(json.dumps({"run_id": summary["run_id"], "rows": summary["rows"]}))


@pytest.fixture(scope="module")
def photos(udacity_subset, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sink_in")
    for p in sorted((udacity_subset / "training").iterdir())[:N_PHOTOS]:
        (d / p.name).symlink_to(p.resolve())
    return d


def _sorted(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t, sort_keys=[("path", "ascending"), ("face_index", "ascending")]))


def test_a_jsonl_sink_in_the_annotate_job_gets_the_parquet_rows(ray_session, photos, tmp_path):
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors get JsonlSink by value

    def cfg(out: Path) -> AnnotateConfig:
        return AnnotateConfig(input=str(photos), output=str(out), analyzer=AnalyzerConfig(), crops=True,
                              shard_size=3)

    parquet = run_annotate(cfg(tmp_path / "parquet"))
    made: dict[str, JsonlSink] = {}

    def jsonl(run_id: str) -> JsonlSink:
        made[run_id] = JsonlSink(str(tmp_path / "jsonl" / run_id))
        return made[run_id]

    summary = run_annotate(cfg(tmp_path / "jsonl_dst"), sink=jsonl)
    sink = made[summary["run_id"]]

    # the job checked and committed through the sink: its parts, its rows, its commit
    assert len(sink.parts()) == 2 and json.loads(Path(sink.folder, "COMMITTED").read_text()) == {
        "run_id": summary["run_id"], "rows": summary["rows"]}
    assert summary["processed"] == parquet["processed"] == N_PHOTOS and summary["rows"] == parquet["rows"]
    assert not list((tmp_path / "jsonl_dst").glob("dt=*/run=*/part-*.parquet"))  # nothing went to Parquet

    # the rows it received are the Parquet rows: the same values once in the Parquet schema
    want = _sorted(read_latest(str(tmp_path / "parquet")))
    got = _sorted(pa.Table.from_pylist(sink.rows(), schema=want.schema.remove_metadata()))
    assert got.num_rows == want.num_rows >= N_PHOTOS
    assert want.column("crop").null_count < want.num_rows  # binary crops went through JSON too
    for name in want.column_names:
        if name not in IGNORED:
            assert got.column(name).equals(want.column(name)), name
    assert {r["run_id"] for r in sink.rows()} == {summary["run_id"]}


def test_parquet_sink_replaces_a_part_atomically_and_reads_keys(tmp_path):
    from facebatch import schema as S
    sink = ParquetSink(str(tmp_path / "out"))

    def table(rows):
        return S.to_table(rows)
    sink.write_part(3, [{S.PATH: "a", S.STATUS: "ok", S.FACE_INDEX: 0}, {S.PATH: "a", S.STATUS: "ok", S.FACE_INDEX: 1}],
                    table)
    sink.write_part(3, [{S.PATH: "b", S.STATUS: "no_face", S.FACE_INDEX: -1}], table)  # a rerun of shard 3
    sink.write_part(4, [{S.PATH: "c", S.STATUS: "read_error", S.FACE_INDEX: None}], table)
    assert [Path(p).name for p in sink.parts()] == ["part-00003.parquet", "part-00004.parquet"]
    assert sorted(sink.keys()) == [("b", 0), ("c", 0)]
    assert sorted(os.listdir(tmp_path / "out")) == ["part-00003.parquet", "part-00004.parquet"]  # no temp files
    assert pq.read_table(sink.parts()[0]).num_rows == 1


def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    from facebatch.batch.write import write_atomic
    from facebatch.storage import filesystem
    fs, root = filesystem(str(tmp_path))
    target = f"{root}/part-00000.parquet"
    write_atomic(fs, target, lambda f: f.write(b"old"))

    def half_then_fail(f):
        f.write(b"ne")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(fs, target, half_then_fail)
    assert os.listdir(tmp_path) == ["part-00000.parquet"] and Path(target).read_bytes() == b"old"
