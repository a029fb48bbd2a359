"""``facebatch forget`` on a real annotate output: 9 celeba6k photos (3 people x 3), annotated on a
real local Ray with ``--embeddings --crops --report``, grouped by the people stage, two persons
named and enrolled into a gallery. Then a person is forgotten, and every byte of every file under
DST and the gallery is searched for their photos' embeddings (float32 bytes) and crops (JPEG
bytes): none. A nightly run, a ``--full`` run and a model-upgrade run do not bring them back;
``--path`` works the same; a forget stopped before or after its commit point is finished."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from facebatch.annotate import forget as F
from facebatch.annotate import state as ST
from facebatch.annotate.config import AnnotateConfig
from facebatch.annotate.pipeline import run_annotate
from facebatch.annotations import read_latest
from facebatch.attributes.gallery import Gallery
from facebatch.inference.config import AnalyzerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(inp: Path, dst: Path, **kw) -> AnnotateConfig:
    analyzer = kw.pop("analyzer", AnalyzerConfig(attributes=None))
    return AnnotateConfig(input=str(inp), output=str(dst), analyzer=analyzer, embeddings=True, crops=True,
                          shard_size=3, **kw)


@pytest.fixture(scope="module")
def annotated(ray_session, celeba_root, tmp_path_factory):
    """``(input folder, pristine DST, pristine gallery, {name: photo paths})``."""
    from facebatch.people import load_state, name_person, run_people
    root = tmp_path_factory.mktemp("forget")
    inp = root / "in"
    inp.mkdir()
    dirs = sorted((celeba_root / "train_dataset").glob("celeb_*"), key=lambda p: int(p.name.split("_")[1]))[:3]
    for d in dirs:
        for f in sorted(d.glob("*.jpg"))[:3]:
            (inp / f"{d.name}_{f.name}").symlink_to(f)
    dst, gallery = root / "dst", root / "gallery.npz"
    run_annotate(_cfg(inp, dst, report=True))
    run_people(str(dst))
    st = load_state(str(dst))
    who = {}
    for name, d in (("Alice", dirs[0]), ("Bob", dirs[1])):
        mine = st.faces.filter(pc.starts_with(st.faces["path"], str(inp / d.name)))
        pid = pc.mode(mine["person_id"])[0]["mode"].as_py()
        assert pid is not None, f"the people stage found no person for {d.name}"
        name_person(str(dst), pid, name, gallery=str(gallery))
        who[name] = sorted(str(p) for p in inp.glob(f"{d.name}_*.jpg"))
    assert Gallery.load(gallery).names == ["Alice", "Bob"]
    return inp, dst, gallery, who


@pytest.fixture()
def copy(annotated, tmp_path):
    """A copy of the pristine output and gallery for one test."""
    inp, dst, gallery, who = annotated
    shutil.copytree(dst, tmp_path / "dst")
    shutil.copy(gallery, tmp_path / "gallery.npz")
    return inp, tmp_path / "dst", tmp_path / "gallery.npz", who


def _needles(dst: Path, paths: list[str]) -> list[bytes]:
    """Pieces of the photos' embeddings (float32) and crops (JPEG entropy-coded data: the headers are
    the same in every crop) as they were stored."""
    out = []
    for r in read_latest(str(dst), columns=["embedding", "crop"]).to_pylist():
        if r["path"] in paths and r["face_index"] >= 0:
            e, c = np.asarray(r["embedding"], np.float32).tobytes(), r["crop"]
            out += [e[i:i + 32] for i in range(0, len(e) - 32, 64)]
            start = c.index(b"\xff\xda") + 64
            out += [c[i:i + 48] for i in range(start, len(c) - 48, max(48, (len(c) - start) // 8))]
    return out


def _files(*roots: Path) -> list[Path]:
    out = []
    for r in roots:
        out += [r] if r.is_file() else [Path(d) / f for d, _, fs in os.walk(r) for f in fs]
    return out


def _found(needles: list[bytes], *roots: Path) -> dict[str, int]:
    """File -> how many needles its bytes contain."""
    hits = {}
    for p in _files(*roots):
        b = p.read_bytes()
        n = sum(x in b for x in needles)
        if n:
            hits[str(p)] = n
    return hits


def _values_left(dst: Path, paths: list[str]) -> list[str]:
    """Parquet files under DST whose decoded rows still hold a face of ``paths`` (values, whatever
    the encoding)."""
    left = []
    for p in _files(dst):
        if p.suffix != ".parquet":
            continue
        t = pq.read_table(p)
        cols = {"path", "rep_path"} & set(t.column_names)
        for c in cols:
            rows = t.filter(pc.fill_null(pc.is_in(t[c], value_set=pa.array(paths)), False))
            if c == "path" and "status" in t.column_names:
                rows = rows.filter(pc.not_equal(rows["status"], "erased"))
            if c == "path" and p.name in ("erased.parquet", "deleted.parquet", "manifest.parquet"):
                continue  # paths and listing fields only, no face data
            if rows.num_rows:
                left.append(f"{p} ({c})")
    return left


def test_forget_a_person_leaves_no_trace_and_stays_forgotten(copy):
    inp, dst, gallery, who = copy
    alice = who["Alice"]
    needles = _needles(dst, alice)
    assert len(needles) > 20
    before = _found(needles, dst)
    assert before and sum(before.values()) == len(needles)  # the search works: every piece is there

    rec = F.forget(str(dst), person="Alice", gallery=str(gallery))
    assert (rec["photos"], rec["faces"], rec["gallery_entries_removed"], rec["people_forgotten"]) == (3, 3, 1, 1)
    assert _found(needles, dst, gallery) == {}
    assert _values_left(dst, alice) == []
    for p in _files(dst, gallery):
        assert b"Alice" not in p.read_bytes(), p
    assert Gallery.load(gallery).names == ["Bob"]
    live = {r["path"]: r for r in read_latest(str(dst), columns=["status", "box", "embedding"]).to_pylist()}
    for p in alice:
        r = live[p]
        assert (r["status"], r["face_index"], r["box"], r["embedding"]) == ("erased", -1, None, None)
    assert sum(r["status"] == "ok" for r in live.values()) == 6
    assert not (dst / "_state" / F.JOURNAL).exists() and not (dst / "_state" / F.FORGET_DIR).exists()
    assert list(dst.glob("dt=*/run=*/report.html"))  # made again without the erased faces
    from facebatch.people import load_state
    st = load_state(str(dst))
    gone = [r for r in st.people.to_pylist() if r["person_id"] in {int(i) for i in rec["person_ids"].split(",")}]
    assert gone and all(r["name"] is None and r["centre"] is None and r["rep_path"] is None for r in gone)
    assert not set(st.faces["path"].to_pylist()) & set(alice)
    er = F.load_erasures(str(dst)).to_pylist()
    assert len(er) == 1 and er[0]["forget_id"] == rec["forget_id"] and er[0]["selector"] == "person"
    assert er[0]["value"] == F.NAME_WITHHELD and er[0]["faces"] == 3 and er[0]["photos"] == 3
    assert (dst / f"dt={ST.run_date(rec['forget_id'])}" / f"run={rec['forget_id']}" / "_SUCCESS").exists()

    # later runs never bring the faces back: nightly, --full, a model upgrade
    s1 = run_annotate(_cfg(inp, dst))
    assert (s1["processed"], s1["erased"], s1["unchanged"]) == (0, 3, 6)
    s2 = run_annotate(_cfg(inp, dst, full=True))
    assert (s2["processed"], s2["erased"]) == (6, 3)
    s3 = run_annotate(_cfg(inp, dst, analyzer=AnalyzerConfig(attributes=None, keypoints="keypoints15")))
    assert (s3["reannotated"], s3["processed"], s3["erased"]) == (6, 6, 3)
    assert _found(needles, dst, gallery) == {}
    live = read_latest(str(dst), columns=["status"])
    assert {r["status"] for r in live.to_pylist() if r["path"] in alice} == {"erased"}
    with pytest.raises(ValueError, match="nothing"):  # the name is gone too
        F.forget(str(dst), person="Alice")
    assert F.forget(str(dst), paths=alice)["already_erased"] == 3  # nothing left to do

    # --path: one of Bob's photos (a glob matching the end of the path); his person keeps the others
    bob1 = who["Bob"][0]
    more = _needles(dst, [bob1])
    assert _found(more, dst)
    rec2 = F.forget(str(dst), paths=[Path(bob1).name])
    assert (rec2["photos"], rec2["faces"], rec2["selector"]) == (1, 1, "path")
    assert _found(more, dst) == {} and _values_left(dst, [bob1]) == []
    assert Gallery.load(gallery).names == ["Bob"]  # a gallery has nothing per photo
    assert [r["forget_id"] for r in F.load_erasures(str(dst)).to_pylist()] == [rec["forget_id"], rec2["forget_id"]]
    erased = set(ST.load_erased(str(dst), {})["path"].to_pylist())
    assert erased == set(alice) | {bob1}


def test_forget_stopped_before_its_commit_point_leaves_the_old_files(copy, monkeypatch):
    _inp, dst, gallery, who = copy
    snapshot = {str(p): p.read_bytes() for p in _files(dst, gallery)}
    real = F._stage

    def stage_then_die(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt("killed before the commit point")
    monkeypatch.setattr(F, "_stage", stage_then_die)
    with pytest.raises(KeyboardInterrupt):
        F.forget(str(dst), person="Alice", gallery=str(gallery))
    monkeypatch.undo()
    for p, b in snapshot.items():  # every old file is as it was
        assert Path(p).read_bytes() == b, p
    (dst / "_state" / "lock.json").unlink(missing_ok=True)  # a killed process leaves its lock; this one is alive
    rec = F.forget(str(dst), person="Alice", gallery=str(gallery))  # the staging is removed, the forget done
    assert rec["photos"] == 3 and _found(_needles_of(snapshot, who["Alice"]), dst, gallery) == {}
    assert not (dst / "_state" / F.FORGET_DIR).exists() and not list(gallery.parent.glob("*.forget-*"))
    assert len(list(dst.glob("dt=*/run=*"))) == 2  # the annotate run and this forget's, not the stopped one's


def test_forget_stopped_after_its_commit_point_is_finished_by_the_next_run(copy, monkeypatch):
    inp, dst, gallery, who = copy
    needles = _needles(dst, who["Alice"])

    def die(*a, **kw):
        raise KeyboardInterrupt("killed after the commit point")
    monkeypatch.setattr(F, "erase_people", die)  # the parts are swapped; _people, gallery, manifest not yet
    with pytest.raises(KeyboardInterrupt):
        F.forget(str(dst), person="Alice", gallery=str(gallery))
    monkeypatch.undo()
    journal = json.loads((dst / "_state" / F.JOURNAL).read_text())
    assert "Alice" not in json.dumps(journal)
    assert {r["status"] for r in read_latest(str(dst), columns=["status"]).to_pylist()
            if r["path"] in who["Alice"]} == {"erased"}  # readers already see the forget
    (dst / "_state" / "lock.json").unlink(missing_ok=True)
    s = run_annotate(_cfg(inp, dst))  # the next run finishes the forget first
    assert s["recovered"]["forget"]["finished"] == journal["forget_id"] and s["erased"] == 3
    assert _found(needles, dst, gallery) == {} and Gallery.load(gallery).names == ["Bob"]
    assert not (dst / "_state" / F.JOURNAL).exists()
    assert [r["forget_id"] for r in F.load_erasures(str(dst)).to_pylist()] == [journal["forget_id"]]


def _needles_of(snapshot: dict[str, bytes], paths: list[str]) -> list[bytes]:
    """The needles of ``paths`` from a snapshot of the output's files (its parts)."""
    import io
    out = []
    for name, data in snapshot.items():
        if not name.endswith(".parquet") or "/run=" not in name:
            continue
        t = pq.read_table(io.BytesIO(data))
        if "embedding" not in t.column_names:
            continue
        for r in t.to_pylist():
            if r["path"] in paths and r["face_index"] >= 0:
                e = np.asarray(r["embedding"], np.float32).tobytes()
                out += [e[i:i + 32] for i in range(0, len(e) - 32, 64)]
    return out


def test_forget_on_s3_through_the_command(s3_server, capsys):
    """The same on moto's S3 server over loopback, through ``facebatch forget``: two runs written as
    annotate writes them (no Ray needed), one photo erased by a glob."""
    import time

    import s3fs

    from facebatch.annotate.rows import to_table
    from facebatch.cli import main
    from facebatch.storage import storage_options
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    bucket = f"fgt{int(time.time() * 1000) % 10**9}"
    fs.mkdir(bucket)
    dst, opts = f"s3://{bucket}/out", storage_options(s3_server)
    rng = np.random.default_rng(0)
    emb = {p: rng.normal(size=128).astype(np.float32) for p in ("a.jpg", "b.jpg")}
    for k, rid in enumerate(["20260101T000000000000Z-aaaaaa", "20260102T000000000000Z-bbbbbb"]):
        folder = ST.run_dir(f"{bucket}/out", rid)
        rows = [{"path": f"s3://{bucket}/in/{p}", "status": "ok", "face_index": 0, "n_faces": 1, "size": 10 + k,
                 "box": [1.0, 2.0, 3.0, 4.0], "embedding": (e + k).tolist(), "models": '{"detector":"x"}',
                 "identity_model": "i1", "run_id": rid} for p, e in emb.items()]
        with fs.open(f"{folder}/part-00000.parquet", "wb") as f:
            pq.write_table(to_table(rows, [("embedding", "vector")]), f)
        fs.pipe(f"{folder}/_SUCCESS", rid.encode())
        ST.apply_run(dst, opts, rid, folder)
    gone = [(emb["a.jpg"] + k).tobytes()[:64] for k in (0, 1)]
    def objects() -> dict:
        fs.invalidate_cache()  # the forget wrote through another client
        return {p: fs.cat(p) for p in fs.find(f"{bucket}/out")}
    assert sum(any(g in b for b in objects().values()) for g in gone) == 2

    assert main(["forget", "--annotations", dst, "--path", "in/a.jpg", "--s3-endpoint-url", s3_server]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["photos"], rec["faces"], rec["rows_removed"], rec["parts_rewritten"]) == (1, 1, 2, 2)
    assert not any(g in b for g in gone for b in objects().values())
    live = {r["path"]: r for r in read_latest(dst, columns=["status", "embedding"], options=opts).to_pylist()}
    assert live[f"s3://{bucket}/in/a.jpg"]["status"] == "erased" and live[f"s3://{bucket}/in/b.jpg"]["status"] == "ok"
    manifest, _ = ST.load_manifest(dst, opts)
    status = dict(zip(manifest["path"].to_pylist(), manifest["status"].to_pylist()))
    assert status[f"s3://{bucket}/in/a.jpg"] == "erased" and status[f"s3://{bucket}/in/b.jpg"] == "ok"
    assert F.load_erasures(dst, opts).num_rows == 1 and f"{bucket}/out/_state/{F.JOURNAL}" not in objects()
    assert main(["forget", "--annotations", dst, "--path", "*/nothing-*.jpg", "--s3-endpoint-url", s3_server]) == 2
