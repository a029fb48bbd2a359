"""The people stage on real faces: 10 celeba6k people x 6 photos and 4 udacity68 people x 6 frames,
embedded once per module with the shipped ``identity`` model and written as annotate runs.

Covers two nights (70% then 30%), stable ids, naming surviving a rerun (and a gallery), a merge, a
deleted and a re-annotated photo, gated faces, the bounded-memory path with tiny blocks, s3, the CLI.
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from facebatch.evaluation.people import bcubed_prf, singletons
from facebatch.people import load_state, name_person, run_people
from facebatch.people.state import save_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CELEBA_PEOPLE, UDACITY_PEOPLE, PER_PERSON = 10, 4, 6


def threshold() -> float:
    from facebatch.identity.meta import identity_meta
    t = identity_meta("identity").get("verification_threshold")
    if t is None:
        pytest.skip("facebatch/release/identity.json has no fitted verification_threshold yet")
    return float(t)


@pytest.fixture(scope="module")
def faces(celeba_root, udacity_root) -> pa.Table:
    """One row per photo (largest face): path, person, box, score, face_size, keypoints68, embedding, crop."""
    from PIL import Image

    from facebatch.geometry import square_crop_box
    from facebatch.inference import FaceAnalyzer
    photos = []
    for d in sorted((celeba_root / "train_dataset").glob("celeb_*"), key=lambda p: int(p.name.split("_")[1]))[:CELEBA_PEOPLE]:
        photos += [(p, d.name) for p in sorted(d.glob("*.jpg"))[:PER_PERSON]]
    frames = sorted((udacity_root / "training").glob("*.jpg"))
    names = sorted({re.sub(r"_\d+$", "", p.stem) for p in frames})[::60][:UDACITY_PEOPLE]
    for n in names:
        photos += [(p, n) for p in [f for f in frames if re.sub(r"_\d+$", "", f.stem) == n][:PER_PERSON]]
    fa = FaceAnalyzer.load(identity="identity", attributes=None)
    rows = []
    for i in range(0, len(photos), 16):
        part = photos[i:i + 16]
        images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in part]
        for (p, person), im, res in zip(part, images, fa.analyze(images, max_faces=1, attributes=False)):
            f = res[0]
            x1, y1, x2, y2 = square_crop_box(f.box, 0.2)  # the crop annotate --crops stores
            buf = io.BytesIO()
            Image.fromarray(im).crop((x1, y1, x2, y2)).resize((256, 256)).save(buf, "JPEG", quality=90)
            rows.append({"path": str(p), "person": person, "box": f.box, "score": f.score, "face_size": f.face_size,
                         "keypoints68": f.keypoints68, "embedding": f.embedding, "crop": buf.getvalue()})
    return pa.Table.from_pylist(rows)


def write_run(dst: Path | str, rows: pa.Table, run_id: str, deleted=(), fs=None, embedding: bool = True) -> None:
    """An annotate run folder (parts, _deleted.parquet, _SUCCESS) holding these face rows."""
    import fsspec
    fs = fs or fsspec.filesystem("file")
    d = f"{dst}/dt={run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}/run={run_id}"
    fs.makedirs(d, exist_ok=True)
    n = rows.num_rows
    out = pa.table({"path": rows["path"], "status": pa.array(["ok"] * n), "face_index": pa.array([0] * n, pa.int32()),
                    "box": rows["box"].cast(pa.list_(pa.float32(), 4)), "score": rows["score"].cast(pa.float32()),
                    "face_size": rows["face_size"].cast(pa.float32()),
                    "keypoints68": rows["keypoints68"].cast(pa.list_(pa.float32())),
                    "embedding": rows["embedding"].cast(pa.list_(pa.float32())), "crop": rows["crop"],
                    "run_id": pa.array([run_id] * n)})
    if not embedding:  # a run made without --embeddings
        out = out.drop_columns(["embedding"])
    with fs.open(f"{d}/part-00000.parquet", "wb") as f:
        pq.write_table(out, f)
    if deleted:
        with fs.open(f"{d}/_deleted.parquet", "wb") as f:
            pq.write_table(pa.table({"path": list(deleted), "deleted_run_id": [run_id] * len(deleted)}), f)
    with fs.open(f"{d}/_SUCCESS", "wb") as f:
        f.write(run_id.encode())


def run_id(day: int) -> str:
    return f"202612{day:02d}T000000000000Z-abcdef"


def persons(dst) -> dict[str, int | None]:
    f = load_state(str(dst)).faces
    return dict(zip(f["path"].to_pylist(), f["person_id"].to_pylist()))


def bcubed(dst, faces: pa.Table, celeba_only: bool = False) -> float:
    """BCubed F of the persons over the clusterable faces (a face in no person counts alone)."""
    st = load_state(str(dst)).faces.filter(pc.field("quality_ok"))
    truth = dict(zip(faces["path"].to_pylist(), faces["person"].to_pylist()))
    paths = [p for p in st["path"].to_pylist() if not celeba_only or "celeba6k" in p]
    got = dict(zip(st["path"].to_pylist(), st["person_id"].to_pylist()))
    pred = singletons(np.array([-1 if got[p] is None else got[p] for p in paths]))
    return bcubed_prf(pred, [truth[p] for p in paths])["f"]


@pytest.fixture(scope="module")
def two_nights(faces, tmp_path_factory):
    """70% of each person's photos on night 1, the rest on night 2 (one state, kept for later tests)."""
    dst = tmp_path_factory.mktemp("people")
    rank = pc.rank(faces["path"]).to_numpy()  # a fixed, person-independent order
    first = np.zeros(faces.num_rows, bool)
    for person in set(faces["person"].to_pylist()):
        idx = np.flatnonzero(np.asarray(faces["person"].to_pylist()) == person)
        first[idx[np.argsort(rank[idx])][:int(round(0.7 * len(idx)))]] = True
    write_run(dst, faces.filter(pa.array(first)), run_id(1))
    s1 = run_people(str(dst), threshold=threshold(), run_id="p1")
    night1 = persons(dst)
    write_run(dst, faces.filter(pa.array(~first)), run_id(2))
    s2 = run_people(str(dst), threshold=threshold(), run_id="p2")
    return dst, first, s1, night1, s2


def test_two_nights_keep_ids_and_new_faces_join_known_people(faces, two_nights):
    dst, first, s1, night1, s2 = two_nights
    after = persons(dst)
    had = [p for p, pid in night1.items() if pid is not None]
    assert len(had) >= 0.9 * (first.sum() - s1["gated"]), s1
    assert np.mean([after[p] == night1[p] for p in had]) >= 0.99
    truth = dict(zip(faces["path"].to_pylist(), faces["person"].to_pylist()))
    major = {pid: Counter(truth[p] for p in had if night1[p] == pid).most_common(1)[0][0]
             for pid in set(night1.values()) - {None}}
    ok = dict(zip(*load_state(str(dst)).faces.select(["path", "quality_ok"]).to_pydict().values()))
    # celeba6k's photos: the targets. udacity68's video frames are harder for the identity model: one
    # person's clips often stay apart (its night-2 frames of a new clip make a new person; BCubed F
    # 0.85 on all of udacity68, docs/MODELS.md), so they are held to a lower bound below.
    late = [p for p, f in zip(faces["path"].to_pylist(), first) if not f and ok[p] and "celeba6k" in p]
    joined = [p for p in late if after[p] in major and major[after[p]] == truth[p]]
    assert len(joined) >= 0.9 * len(late), (s2, len(joined), len(late))
    assert s2["assigned_to_existing"] >= len(joined) and s2["new_faces"] == (~first).sum()
    assert bcubed(dst, faces, celeba_only=True) >= 0.95
    assert bcubed(dst, faces) >= 0.85


def test_a_rerun_changes_nothing_and_names_survive(faces, two_nights):
    dst = two_nights[0]
    before = persons(dst)
    pid = Counter(v for v in before.values() if v is not None).most_common(1)[0][0]
    name_person(str(dst), pid, "Alice")
    s = run_people(str(dst), threshold=threshold(), run_id="p3")
    assert persons(dst) == before and s["new_faces"] == 0 and s["new_persons"] == 0
    people = load_state(str(dst)).people
    row = people.filter(pc.equal(people["person_id"], pid)).to_pylist()[0]
    assert row["name"] == "Alice" and row["last_run"] == "p2"
    with pytest.raises(ValueError, match="already person"):
        name_person(str(dst), next(v for v in before.values() if v not in (None, pid)), "Alice")


def test_name_enrolls_best_faces_into_a_gallery(faces, two_nights, tmp_path):
    from facebatch.attributes.gallery import Gallery
    dst = two_nights[0]
    f = load_state(str(dst)).faces
    pid = Counter(v for v in f["person_id"].to_pylist() if v is not None).most_common(2)[1][0]
    out = name_person(str(dst), pid, "Bob", gallery=str(tmp_path / "g.npz"), max_faces=3)
    assert out["enrolled_faces"] == 3 and out["gallery_people"] == 1
    g = Gallery.load(tmp_path / "g.npz")
    mine = f.filter(pc.equal(f["person_id"], pid))["path"].to_pylist()
    emb = np.stack([e for p, e in zip(faces["path"].to_pylist(), faces["embedding"].to_pylist()) if p in mine])
    assert {n for n, _ in g.match(emb, threshold())} == {"Bob"}


def test_a_split_person_is_merged_into_the_older_id(faces, tmp_path):
    from facebatch.people.live import embeddings
    people = faces["person"].to_pylist()
    emb, _ = embeddings(faces)
    tight = lambda who: (lambda x: (x @ x.T).mean())(emb[[i for i, p in enumerate(people) if p == who]])  # noqa: E731
    target = max((p for p in set(people) if p.startswith("celeb_")), key=tight)  # clearly one person
    later = [i for i, p in enumerate(people) if p == target][-2:]
    keep = np.ones(faces.num_rows, bool)
    keep[later] = False
    write_run(tmp_path, faces.filter(pa.array(keep)), run_id(1))
    run_people(str(tmp_path), threshold=threshold(), run_id="p1")
    st = load_state(str(tmp_path))
    got = persons(tmp_path)
    mine = [p for i, p in enumerate(faces["path"].to_pylist()) if people[i] == target and got.get(p) is not None]
    assert len(mine) >= 3 and len({got[p] for p in mine}) == 1
    old, newer = got[mine[0]], st.next_id
    # fake an earlier over-split: two of the person's faces moved to a newer person
    split = pc.is_in(st.faces["path"], pa.array(mine[:2]))
    st.faces = st.faces.set_column(3, "person_id", pc.if_else(split, pa.scalar(newer, pa.int64()), st.faces["person_id"]))
    row = {**st.people.filter(pc.equal(st.people["person_id"], old)).to_pylist()[0], "person_id": newer, "n_faces": 2}
    st.people = pa.concat_tables([st.people, pa.Table.from_pylist([row], schema=st.people.schema)])
    st.meta["next_id"] = newer + 1
    save_state(str(tmp_path), st, "p1b")
    assert {persons(tmp_path)[p] for p in mine} == {old, newer}
    write_run(tmp_path, faces.take(later), run_id(2))  # night 2: the person's last two photos
    s = run_people(str(tmp_path), threshold=threshold(), run_id="p2")
    assert s["merged"] >= 1
    assert {persons(tmp_path)[p] for p in mine} == {old}
    st = load_state(str(tmp_path))
    ev = st.history.filter(pc.equal(st.history["event"], "merged_into")).to_pylist()
    assert any(e["person_id"] == newer and e["other_id"] == old and e["run_id"] == "p2" for e in ev)
    gone = st.people.filter(pc.equal(st.people["person_id"], newer)).to_pylist()[0]
    assert gone["status"] == "merged" and gone["merged_into"] == old


def test_deleted_and_reannotated_photos_leave_their_person(faces, tmp_path):
    write_run(tmp_path, faces, run_id(1))
    run_people(str(tmp_path), threshold=threshold(), run_id="p1")
    st = load_state(str(tmp_path))
    by_person = {}
    for p, pid in zip(st.faces["path"].to_pylist(), st.faces["person_id"].to_pylist()):
        by_person.setdefault(pid, []).append(p)
    pid, paths = next((k, v) for k, v in sorted(by_person.items(), key=lambda kv: str(kv[0])) if k is not None)
    n_before = len(paths)
    # night 2: one photo deleted, one re-annotated (same path, new run)
    again = faces.filter(pc.equal(faces["path"], paths[1]))
    write_run(tmp_path, again, run_id(2), deleted=[paths[0]])
    s = run_people(str(tmp_path), threshold=threshold(), run_id="p2")
    f = load_state(str(tmp_path)).faces
    assert paths[0] not in f["path"].to_pylist() and s["left_faces"] == 2 and s["new_faces"] == 1
    assert persons(tmp_path)[paths[1]] == pid  # the re-annotated face came back to its person
    row = f.filter(pc.equal(f["path"], paths[1])).to_pylist()[0]
    assert row["run_id"] == run_id(2)
    people = load_state(str(tmp_path)).people
    assert people.filter(pc.equal(people["person_id"], pid))["n_faces"].to_pylist() == [n_before - 1]
    # night 3: every photo of that person deleted: gone, forgotten, its id never reused
    write_run(tmp_path, faces.slice(0, 0), run_id(3), deleted=paths)
    s = run_people(str(tmp_path), threshold=threshold(), run_id="p3")
    st = load_state(str(tmp_path))
    assert st.people.filter(pc.equal(st.people["person_id"], pid))["status"].to_pylist() == ["gone"]
    assert s["forgotten"] == 1 and st.next_id > max(st.people["person_id"].to_pylist())
    ev = st.history.filter(pc.equal(st.history["event"], "forgotten")).to_pylist()
    assert [(e["person_id"], e["run_id"]) for e in ev] == [(pid, "p3")]
    with pytest.raises(ValueError, match="gone"):
        name_person(str(tmp_path), pid, "Carol")


def test_gated_faces_get_no_person_and_say_why(faces, tmp_path):
    from PIL import Image, ImageFilter
    rows = faces.to_pylist()
    rows[0]["face_size"] = 20.0
    rows[1]["score"] = 0.6
    blurred = Image.open(io.BytesIO(rows[2]["crop"])).filter(ImageFilter.GaussianBlur(6))
    buf = io.BytesIO()
    blurred.save(buf, "JPEG")
    rows[2]["crop"] = buf.getvalue()
    write_run(tmp_path, pa.Table.from_pylist(rows, schema=faces.schema), run_id(1))
    s = run_people(str(tmp_path), threshold=threshold(), run_id="p1")
    f = load_state(str(tmp_path)).faces.to_pylist()
    got = {r["path"]: (r["gate"], r["person_id"], r["quality_ok"]) for r in f}
    assert got[rows[0]["path"]] == ("small", None, False)
    assert got[rows[1]["path"]] == ("low_score", None, False)
    assert got[rows[2]["path"]] == ("blurry", None, False)
    assert s["gated"] >= 3 and s["gate_reasons"]["small"] >= 1


def test_tiny_blocks_give_the_same_persons(faces, tmp_path):
    for name, block in (("big", 4096), ("tiny", 5)):
        write_run(tmp_path / name, faces, run_id(1))
        run_people(str(tmp_path / name), threshold=threshold(), block=block, run_id="p1")
    assert persons(tmp_path / "big") == persons(tmp_path / "tiny")
    assert bcubed(tmp_path / "tiny", faces, celeba_only=True) >= 0.95


def test_ray_tasks_over_blocks_give_the_same_graph(faces, ray_session):
    from facebatch.people.graph import threshold_graph
    from facebatch.people.live import embeddings
    from facebatch.people.parallel import mapper
    emb, _ = embeddings(faces)
    m = mapper(len(emb), min_faces=1)
    assert m is not None
    a = threshold_graph(emb, threshold(), k=10, block=16)
    b = threshold_graph(emb, threshold(), k=10, block=16, mapper=m)
    assert sorted(zip(a.src.tolist(), a.dst.tolist())) == sorted(zip(b.src.tolist(), b.dst.tolist()))


def test_s3_and_the_cli(faces, s3_server, tmp_path, capsys, monkeypatch):
    import s3fs

    from facebatch.cli import main
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("people-bucket")
    write_run("people-bucket/dst", faces.slice(0, 24), run_id(1), fs=fs)
    assert main(["people", "--annotations", "s3://people-bucket/dst", "--threshold", str(threshold())]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["faces"] == 24 and out["persons"] >= 3
    assert fs.exists("people-bucket/dst/_people/faces.parquet") and not fs.exists("people-bucket/dst/_people/.staging")
    assert main(["people", "forget", "s3://people-bucket/dst"]) == 0
    assert not fs.exists("people-bucket/dst/_people/people.parquet")
    assert main(["people"]) == 2 and "--annotations DST is required" in capsys.readouterr().err
    assert main(["people", "--annotations", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_refuses_without_a_fitted_threshold(faces, tmp_path, monkeypatch):
    import facebatch.identity.meta as meta
    write_run(tmp_path, faces.slice(0, 4), run_id(1))
    monkeypatch.setattr(meta, "identity_meta", lambda name="identity": {"verification_threshold": None})
    with pytest.raises(ValueError, match="pass --threshold"):
        run_people(str(tmp_path))


def test_evaluate_people_on_the_subset(faces, tmp_path):
    from facebatch.evaluation.people import evaluate_people
    celeba = faces.filter(pc.match_substring(faces["path"], "celeba6k")).drop_columns(["crop"])
    pq.write_table(celeba, tmp_path / "faces.parquet")  # the embedding cache --reuse reads
    m = evaluate_people("unused", "folder-per-person", str(tmp_path), threshold=threshold(), reuse=True)
    assert m["one_night"]["all"]["bcubed"]["f"] >= 0.95 and m["one_night"]["all"]["persons_true"] == CELEBA_PEOPLE
    assert m["two_nights"]["kept_id"] >= 0.99 and m["two_nights"]["after_night2"]["all"]["bcubed"]["f"] >= 0.9
    assert json.loads((tmp_path / "metrics.json").read_text())["photos"] == celeba.num_rows
    assert (tmp_path / "predictions.csv").read_text().startswith("path,person,person_id,gate")


def test_recluster_keeps_ids_and_names(faces, two_nights):
    dst = two_nights[0]
    before = persons(dst)
    st = load_state(str(dst))
    named = st.people.filter(pc.is_valid(st.people["name"])).to_pylist()
    s = run_people(str(dst), threshold=threshold(), recluster=True, run_id="p9")
    after = persons(dst)
    assert s["recluster"] and np.mean([after[p] == v for p, v in before.items() if v is not None]) >= 0.95
    people = load_state(str(dst)).people
    for r in named:
        assert people.filter(pc.equal(people["person_id"], r["person_id"]))["name"].to_pylist() == [r["name"]]


def test_runs_without_embeddings_are_gated_not_fatal(faces, tmp_path):
    write_run(tmp_path, faces.slice(0, 6), run_id(1), embedding=False)
    write_run(tmp_path, faces.slice(6, 6), run_id(2))  # (offset, length)
    s = run_people(str(tmp_path), threshold=threshold())
    assert s["faces"] == 12 and s["gate_reasons"]["no_embedding"] == 6 and s["persons"] >= 1
