"""Model versions in annotate: the ``models``/``identity_model`` columns, stale objects re-annotated
after the new ones (``--max-reannotate`` spreads them over runs), ``read_latest`` never mixing two
identity models' embeddings, and ``_people/`` re-clustered when the identity model changes.

The diff and the live view are checked on tables (no Ray); the runs on a real local Ray with real
udacity68 and celeba6k photos, kept small (6 photos per output)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facebatch.annotate import state as ST
from facebatch.annotate import versions as V
from facebatch.annotate.config import AnnotateConfig
from facebatch.annotate.pipeline import run_annotate
from facebatch.annotations import read_latest
from facebatch.inference.config import AnalyzerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- no Ray ------------------------------------------------------------------------------------------

def _listing(paths):
    n = len(paths)
    return pa.table({"path": paths, "etag": [None] * n, "size": [1] * n, "mtime": [1.0] * n}, schema=ST.LISTING_SCHEMA)


def _manifest(rows):
    cols = {k: [r.get(k) for r in rows] for k in ST.MANIFEST_SCHEMA.names}
    cols.update(etag=[None] * len(rows), size=[1] * len(rows), mtime=[1.0] * len(rows))
    return pa.table(cols, schema=ST.MANIFEST_SCHEMA)


def test_stale_objects_come_after_new_ones_oldest_first_and_are_capped():
    run = {"detector": "d1", "keypoints": "k2"}
    old = V.dumps({"detector": "d1", "keypoints": "k1"})
    more = V.dumps({"detector": "d1", "keypoints": "k2", "identity": "i1"})  # had more models: not stale
    manifest = _manifest([
        {"path": "a", "run_id": "r3", "status": "ok", "models": old},
        {"path": "b", "run_id": "r1", "status": "no_face", "models": old},
        {"path": "c", "run_id": "r2", "status": "ok", "models": None},  # before models were recorded
        {"path": "d", "run_id": "r1", "status": "decode_error", "models": old},  # a model cannot fix it
        {"path": "e", "run_id": "r1", "status": "ok", "models": more},
        {"path": "f", "run_id": "r1", "status": "erased", "models": None}])
    listing = _listing(["a", "b", "c", "d", "e", "f", "g"])
    d = ST.diff(listing, manifest, models=run, max_reannotate=2)
    assert d.todo["path"].to_pylist() == ["g", "b", "c"]  # new first, then the oldest stale ones
    assert (d.counts()["stale"], d.counts()["reannotated"], d.counts()["stale_left"]) == (3, 2, 1)
    assert d.unchanged["path"].to_pylist() == ["d", "e"] and d.erased["path"].to_pylist() == ["f"]
    assert ST.diff(listing, manifest, models=run, max_reannotate=0).todo["path"].to_pylist() == ["g"]
    assert ST.diff(listing, manifest, models=run).counts()["stale_left"] == 0
    # --full redoes every listed object except the erased ones, and an erased path stays erased
    # when it is listed again after a deletion (it is in erased.parquet, not in the manifest)
    assert ST.diff(listing, manifest, full=True, models=run).todo["path"].to_pylist() == list("abcdeg")
    d = ST.diff(listing, manifest.slice(0, 5), models=run, erased=pa.table({"path": ["f", "g"]}))
    assert d.erased["path"].to_pylist() == ["f", "g"] and "g" not in d.todo["path"].to_pylist()
    assert V.is_stale(more, {**run, "head:brightness": V.ANY})  # a head the object lacks


def _run_folder(dst: Path, run_id: str, rows: list[dict]) -> None:
    d = dst / f"dt={ST.run_date(run_id)}" / f"run={run_id}"
    d.mkdir(parents=True)
    t = pa.Table.from_pylist(rows, schema=pa.schema([
        ("path", pa.string()), ("face_index", pa.int32()), ("status", pa.string()),
        ("embedding", pa.list_(pa.float32())), ("identity_model", pa.string()), ("run_id", pa.string())]))
    pq.write_table(t, d / "part-00000.parquet")
    (d / "_SUCCESS").write_text(run_id)


def test_read_latest_never_mixes_identity_models(tmp_path):
    r1, r2 = "20260101T000000000000Z-aaaaaa", "20260102T000000000000Z-bbbbbb"
    face = lambda p, m, r, v: {"path": p, "face_index": 0, "status": "ok", "embedding": [v, 0.0],  # noqa: E731
                               "identity_model": m, "run_id": r}
    _run_folder(tmp_path, r1, [face("a", "old", r1, 1.0), face("b", "old", r1, 2.0),
                               {"path": "c", "face_index": -1, "status": "no_face", "run_id": r1}])
    _run_folder(tmp_path, r2, [face("a", "new", r2, 3.0)])  # a re-annotated with the new identity model
    t = read_latest(str(tmp_path))
    by = {r["path"]: r for r in t.to_pylist()}
    assert by["a"]["embedding"] == [3.0, 0.0] and by["a"]["identity_model"] == "new"
    assert by["b"]["embedding"] is None and by["b"]["identity_model"] == "old"  # another model: no embedding
    assert by["c"]["status"] == "no_face"
    old = read_latest(str(tmp_path), identity_model="old")
    assert old["path"].to_pylist() == ["b"] and old["embedding"].to_pylist() == [[2.0, 0.0]]
    assert read_latest(str(tmp_path), columns=["embedding"], identity_model="new")["path"].to_pylist() == ["a"]


# ---- real runs -------------------------------------------------------------------------------------

def _folder(tmp_path: Path, files: list[Path]) -> Path:
    inp = tmp_path / "in"
    inp.mkdir()
    for p in files:
        (inp / p.name).symlink_to(p)
    return inp


def _models_by_path(dst: Path) -> dict[str, dict]:
    return {r["path"]: json.loads(r["models"]) for r in read_latest(str(dst), columns=["models"]).to_pylist()}


def test_model_upgrade_reannotates_stale_objects_over_runs(ray_session, udacity_root, tmp_path):
    files = sorted((udacity_root / "training").glob("*.jpg"))
    inp = _folder(tmp_path, files[:: len(files) // 6][:6])
    dst = tmp_path / "out"
    cfg = lambda **kw: AnnotateConfig(input=str(inp), output=str(dst), shard_size=3, **kw)  # noqa: E731

    s1 = run_annotate(cfg(analyzer=AnalyzerConfig(keypoints="keypoints15", attributes=None)))
    assert s1["new"] == 6 and s1["stale"] == 0
    kp15 = s1["model_fingerprints"]["keypoints"]
    assert set(s1["model_fingerprints"]) == {"detector", "keypoints"} and len(kp15) == 12
    rows = read_latest(str(dst), columns=["models"])
    assert rows["identity_model"].null_count == rows.num_rows  # no identity model ran
    manifest, _ = ST.load_manifest(str(dst), {})
    assert set(manifest["models"].to_pylist()) == {V.dumps(s1["model_fingerprints"])}

    upgraded = dict(analyzer=AnalyzerConfig(keypoints="keypoints68", attributes=None))
    dry = run_annotate(cfg(**upgraded, max_reannotate=2, dry_run=True))
    assert (dry["stale"], dry["reannotated"], dry["stale_left"]) == (6, 2, 4) and len(dry["would_process"]) == 2
    s2 = run_annotate(cfg(**upgraded, max_reannotate=2))
    assert (s2["processed"], s2["stale"], s2["reannotated"], s2["stale_left"]) == (2, 6, 2, 4)
    kp68 = s2["model_fingerprints"]["keypoints"]
    assert kp68 != kp15
    by = _models_by_path(dst)
    assert sorted(m["keypoints"] for m in by.values()) == sorted([kp68] * 2 + [kp15] * 4)
    cols = read_latest(str(dst)).column_names
    assert "keypoints68" in cols  # promoted across runs: null in the rows still from keypoints15

    s3 = run_annotate(cfg(**upgraded))  # the rest of the backfill
    assert (s3["processed"], s3["reannotated"], s3["stale_left"]) == (4, 4, 0)
    assert {m["keypoints"] for m in _models_by_path(dst).values()} == {kp68}
    s4 = run_annotate(cfg(**upgraded))
    assert s4["processed"] == 0 and s4["stale"] == 0 and s4["unchanged"] == 6
    # a run with fewer models (no keypoint model) has nothing newer to give: nothing is stale
    s5 = run_annotate(cfg(analyzer=AnalyzerConfig(keypoints=None, attributes=None)))
    assert s5["processed"] == 0 and s5["stale"] == 0


def _alt_identity(tmp_path: Path) -> str:
    """The shipped identity model aligned on keypoints68 instead of RetinaFace's five points: another
    identity model (other embeddings, another fingerprint) from the same network."""
    from facebatch.identity.meta import RELEASE_DIR
    meta = json.loads((RELEASE_DIR / "identity.json").read_text())
    meta.update(name="identity_kp68", align="keypoints68")
    d = tmp_path / "alt"
    d.mkdir()
    shutil.copy(RELEASE_DIR / meta["projection"], d / meta["projection"])
    (d / "identity_kp68.json").write_text(json.dumps(meta))
    return str(d / "identity_kp68.json")


def test_identity_model_change_filters_the_live_view_and_rebuilds_people(ray_session, celeba_root, tmp_path):
    from facebatch.people import load_state, run_people
    people = sorted((celeba_root / "train_dataset").glob("celeb_*"), key=lambda p: int(p.name.split("_")[1]))[:2]
    files = [f for d in people for f in sorted(d.glob("*.jpg"))[:3]]
    inp = tmp_path / "in"
    inp.mkdir()
    for f in files:
        (inp / f"{f.parent.name}_{f.name}").symlink_to(f)
    dst = tmp_path / "out"
    base = dict(input=str(inp), output=str(dst), embeddings=True, shard_size=3)
    s1 = run_annotate(AnnotateConfig(**base, analyzer=AnalyzerConfig(attributes=None)))
    fp1 = s1["model_fingerprints"]["identity"]
    assert s1["identity_model_changed"] is None
    first = read_latest(str(dst), columns=["embedding"])
    assert set(first["identity_model"].to_pylist()) == {fp1} and first["embedding"].null_count == 0
    p1 = run_people(str(dst))
    assert p1["persons"] >= 1

    alt = AnalyzerConfig(attributes=None, identity=_alt_identity(tmp_path))
    s2 = run_annotate(AnnotateConfig(**base, analyzer=alt, max_reannotate=3))
    fp2 = s2["model_fingerprints"]["identity"]
    assert fp2 != fp1 and s2["identity_model_changed"] == {"from": fp1, "to": fp2}
    assert (s2["reannotated"], s2["stale_left"]) == (3, 3)
    # the live view: latest rows; embeddings only from the current identity model
    live = read_latest(str(dst), columns=["embedding"])
    cur = [r for r in live.to_pylist() if r["identity_model"] == fp2]
    prev = [r for r in live.to_pylist() if r["identity_model"] == fp1]
    assert len(cur) == 3 and len(prev) == 3
    assert all(r["embedding"] is not None for r in cur) and all(r["embedding"] is None for r in prev)
    only1 = read_latest(str(dst), columns=["embedding"], identity_model=fp1)
    assert sorted(only1["path"].to_pylist()) == sorted(r["path"] for r in prev)
    assert only1["embedding"].null_count == 0
    e_old = {r["path"]: np.asarray(r["embedding"]) for r in first.to_pylist()}
    for r in cur:  # another model: other embeddings for the same faces
        assert not np.allclose(np.asarray(r["embedding"]), e_old[r["path"]], atol=1e-3)
    # the hook re-clustered _people/ at the end of the run: only the new model's faces are in persons
    rebuilt = s2["people_rebuilt"]
    assert rebuilt is not None and rebuilt["recluster"] and rebuilt["run_id"] == s2["run_id"]
    st = load_state(str(dst))
    assert st.meta["run_id"] == s2["run_id"]
    in_person = {r["path"] for r in st.faces.to_pylist() if r["person_id"] is not None}
    assert in_person and in_person <= {r["path"] for r in cur}

    s3 = run_annotate(AnnotateConfig(**base, analyzer=alt))  # the rest; the model did not change again
    assert (s3["reannotated"], s3["stale_left"]) == (3, 0) and s3["identity_model_changed"] is None
    assert s3.get("people_rebuilt") is None
    assert read_latest(str(dst), identity_model=fp1).num_rows == 0
    assert read_latest(str(dst), columns=["embedding"], identity_model=fp2)["embedding"].null_count == 0


def test_duckdb_recipe_takes_one_identity_model(tmp_path):
    """The DuckDB query of docs/ANNOTATIONS.md returns what read_latest returns (on run folders
    written as annotate writes them)."""
    duckdb = pytest.importorskip("duckdb")
    import re
    r1, r2 = "20260101T000000000000Z-aaaaaa", "20260102T000000000000Z-bbbbbb"
    face = lambda p, m, r, v: {"path": p, "face_index": 0, "status": "ok", "embedding": [v, 0.0],  # noqa: E731
                               "identity_model": m, "run_id": r}
    _run_folder(tmp_path, r1, [face("a", "old", r1, 1.0), face("b", "old", r1, 2.0)])
    _run_folder(tmp_path, r2, [face("a", "new", r2, 3.0)])
    (tmp_path / "_state").mkdir()
    pq.write_table(ST.DELETED_SCHEMA.empty_table(), tmp_path / "_state" / "deleted.parquet")
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ANNOTATIONS.md").read_text()
    sql = re.search(r"```sql\n(.*?)```", doc, re.S).group(1).replace("DST", str(tmp_path))
    got = duckdb.sql(sql).fetchall()
    cols = [d[0] for d in duckdb.sql(sql).description]
    rows = sorted((dict(zip(cols, r)) for r in got), key=lambda r: r["path"])
    assert [r["path"] for r in rows] == ["a", "b"]
    assert rows[0]["embedding"] == [3.0, 0.0] and rows[1]["embedding"] is None
