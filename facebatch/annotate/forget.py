"""Erase photos' faces from an annotate output, its people state and a gallery (GDPR Art. 17).

    facebatch forget --annotations DST --path 's3://photos/2024/party/*.jpg'
    facebatch forget --annotations DST --person Alice --gallery people.npz
    facebatch forget --annotations DST --person 12          # a person_id of DST/_people/people.parquet

What is erased, per selected **photo** (every face in it: a photo is never annotated again, so a
face could not be told from the others later without keeping its biometric data):

* every row of the photo in every run folder: the part files that hold them are rewritten without
  them (embedding, crop, box, landmarks, keypoints, attributes, identity name: nothing is left);
  ``report.html`` of those runs is made again from the rewritten parts;
* a new run folder (the forget's own, ``run=FORGET_ID``) holds one row per selected live photo with
  status ``erased`` and no face data; the manifest records it (status ``erased``), and
  ``_state/erased.parquet`` keeps the path so that no later run annotates it again: not a nightly
  run, not ``--full``, not a model-upgrade re-annotation, not after the object is deleted and
  uploaded again;
* ``DST/_people/``: the photos' faces leave their persons (centres, counts and representative
  faces are computed again from the faces left); with ``--person`` the person's name, centre and
  representative face are removed and the history keeps no name for it;
* ``--gallery G`` with ``--person``: the person's entry (name and centroid) is removed from G. A
  gallery keeps one averaged centroid per name and no per-photo data, so ``--path`` leaves it as it is.

``--person NAME_OR_ID`` selects the photos with a face of that person in ``_people/`` (a whole
number is a ``person_id``, merged ids are followed; otherwise a person's ``name``), and, for a
name, the photos whose ``identity`` column (a gallery match) is that name. ``--path GLOB`` selects
the photos whose ``path`` matches (``fnmatch``: ``*`` also matches ``/``); a GLOB that does not
start with ``/`` or a scheme matches the end of the path (``party/*.jpg``).

Atomic like a run: the annotate lock is held. New files are written under
``_state/forget/FORGET_ID/`` first, then ``_state/forget.json`` names them (the commit point), then
each file is moved over the one it replaces. Killed before the commit point, the old files stand
and the staging is removed by the next run or forget; killed after it, the next run or forget
(or the same command again) finishes the moves. ``_state/erasures.parquet`` records each forget:
when, the selector (a name given to ``--person`` is not recorded, the person ids are), how many
photos and faces, and its run id. No biometric data.

On S3 with versioning on, old object versions keep the erased bytes: expire noncurrent versions
with a lifecycle rule.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema as S
from ..batch.write import is_local, write_atomic, write_table_atomic
from ..storage import filesystem, join, storage_options
from . import state as ST

FORGET_DIR = "forget"  # _state/forget/FORGET_ID/: staged files of a forget in progress
JOURNAL = "forget.json"  # _state/forget.json: the commit point of a forget; removed when done
PLAN = "plan.json"
PATHS = "paths.parquet"
NAME_WITHHELD = "(name withheld)"

ERASURES_SCHEMA = pa.schema([
    pa.field("forget_id", pa.string()), pa.field("at", pa.timestamp("ms", tz="UTC")),
    pa.field("selector", pa.string()), pa.field("value", pa.string()), pa.field("person_ids", pa.string()),
    pa.field("photos", pa.int64()), pa.field("faces", pa.int64()), pa.field("rows_removed", pa.int64()),
    pa.field("parts_rewritten", pa.int64()), pa.field("gallery_entries_removed", pa.int64()),
    pa.field("people_forgotten", pa.int64())])


@dataclass
class _Plan:
    """What one forget erases, found before anything is written."""

    forget_id: str
    paths: list[str]  # every selected photo, live or only in history
    live: pa.Table  # manifest rows of the selected photos that are live (they get an erased row)
    faces: int  # live faces of the selected photos
    parts: dict[str, int]  # part file -> rows of selected photos in it
    person_ids: list[int] = field(default_factory=list)
    gallery: str | None = None
    gallery_names: list[str] = field(default_factory=list)
    selector: str = "path"
    value: str = ""
    already: int = 0  # selected photos erased by an earlier forget (nothing left to do for them)

    @property
    def rows_removed(self) -> int:
        return sum(self.parts.values())


# ---- the API -------------------------------------------------------------------------------------

def forget(dst: str, paths: Sequence[str] = (), person: str | None = None, gallery: str | None = None,
           options: dict | None = None, lock_ttl_s: float = 900.0, dry_run: bool = False,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Erase the photos selected by ``paths`` (globs) or ``person`` from ``dst`` (and ``gallery``);
    returns the record written to ``_state/erasures.parquet`` (with ``dry_run``: what would be erased).

    Raises ``ValueError`` for bad options or when nothing matches, ``FileNotFoundError`` when
    ``dst`` is no annotate output, :class:`~facebatch.annotate.lock.LockHeld` while a run holds it.
    """
    from .lock import RunLock
    paths = [p for p in (paths or []) if p]
    if bool(paths) == (person is not None):
        raise ValueError("give either --path GLOB (repeatable) or --person NAME_OR_ID")
    if person is not None and not str(person).strip():
        raise ValueError("--person must not be empty")
    if gallery and not os.path.isfile(gallery):
        raise FileNotFoundError(f"--gallery {gallery!r} not found")
    options = storage_options() if options is None else options
    fs, root = filesystem(dst, options)
    if not fs.exists(join(root, ST.STATE_DIR)) and not ST.run_folders(dst, options):
        raise FileNotFoundError(f"{dst!r} is not an annotate output (no _state/ and no run folders)")
    forget_id = ST.new_run_id()
    if dry_run:
        plan = _plan(dst, options, forget_id, paths, person, gallery)
        return {"dry_run": True, **_record(plan)}
    with RunLock(dst, options, forget_id, lock_ttl_s):
        finish_pending(dst, options, log)
        ST.recover(dst, options, log=log)
        plan = _plan(dst, options, forget_id, paths, person, gallery)
        if not plan.paths and not plan.gallery_names and plan.already:
            log(f"[facebatch] forget: the {plan.already} selected photo(s) were erased before; nothing to do")
            return {**_record(plan), "already_erased": plan.already, "forget_id": None}
        if not plan.paths and not plan.gallery_names:
            what = f"--person {person}" if person is not None else "--path " + " ".join(paths)
            raise ValueError(f"nothing in {dst} matches {what}" + (f" (nor in {gallery})" if gallery else ""))
        journal = _stage(dst, options, plan)
        _write_json(fs, join(root, ST.STATE_DIR, JOURNAL), journal)  # the commit point
        record = _finish(dst, options, journal, log)
    log(f"[facebatch] forget {forget_id}: erased {record['photos']} photo(s), {record['faces']} face(s); "
        f"{record['parts_rewritten']} part file(s) rewritten, {record['gallery_entries_removed']} gallery "
        f"entr{'y' if record['gallery_entries_removed'] == 1 else 'ies'} removed")
    return record


def finish_pending(dst: str, options: dict, log: Callable[[str], None] = print) -> dict | None:
    """Finish a forget that was killed after its commit point, or remove the staging of one killed
    before it. Call it holding the lock (annotate runs and forgets do, first). Returns what it did."""
    fs, root = filesystem(dst, options)
    state = join(root, ST.STATE_DIR)
    jpath = join(state, JOURNAL)
    done: dict = {}
    if fs.exists(jpath):
        with fs.open(jpath, "rb") as f:
            journal = json.loads(f.read())
        log(f"[facebatch] finishing forget {journal['forget_id']} (it was stopped after its commit point)")
        _finish(dst, options, journal, log)
        done["finished"] = journal["forget_id"]
    staging = join(state, FORGET_DIR)
    if fs.exists(staging):
        rolled = []
        for d in fs.ls(staging, detail=False):
            fid = d.rstrip("/").rsplit("/", 1)[-1]
            _roll_back(dst, options, fid)
            rolled.append(fid)
        if rolled:
            log(f"[facebatch] removed the staged files of {len(rolled)} forget(s) stopped before their commit "
                f"point (nothing was erased; run them again): {', '.join(rolled)}")
            done["rolled_back"] = rolled
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
    return done or None


def load_erasures(dst: str, options: dict | None = None) -> pa.Table:
    """``_state/erasures.parquet`` (empty when nothing was ever erased)."""
    options = storage_options() if options is None else options
    fs, root = filesystem(dst, options)
    t = ST._read_parquet(fs, join(root, ST.STATE_DIR, ST.ERASURES))
    return ERASURES_SCHEMA.empty_table() if t is None else ST.conform(t, ERASURES_SCHEMA)


# ---- finding what to erase -----------------------------------------------------------------------

def _matcher(globs: Sequence[str]) -> Callable[[str], bool]:
    pats = []
    for g in globs:
        pats.append(g)
        if not (g.startswith("/") or "://" in g or g.startswith("*")):
            pats.append("*/" + g)
    return lambda p: any(fnmatch.fnmatchcase(p, g) for g in pats)


def _history(dst: str, options: dict) -> tuple[pa.Table, list[str]]:
    """``(path, identity, part) of every row of every finished run, the part files)``."""
    fs, _ = filesystem(dst, options)
    tables, parts = [], []
    for _rid, folder, ok in ST.run_folders(dst, options):
        if not ok:
            continue
        for p in ST.run_parts(fs, folder):
            with fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                has_id = S.IDENTITY in pf.schema_arrow.names
                t = pf.read(columns=[S.PATH] + ([S.IDENTITY] if has_id else []))
            ident = t[S.IDENTITY] if has_id else pa.nulls(t.num_rows, pa.string())
            tables.append(pa.table({"path": t[S.PATH], "identity": ident.cast(pa.string()),
                                    "part": pa.array([len(parts)] * t.num_rows, pa.int32())}))
            parts.append(p)
    if not tables:
        return pa.table({"path": pa.array([], pa.string()), "identity": pa.array([], pa.string()),
                         "part": pa.array([], pa.int32())}), parts
    return pa.concat_tables(tables), parts


def _people_targets(dst: str, options: dict, person: str) -> tuple[list[int], set[str], list[str]]:
    """``(person ids, their photos' paths, their names)`` of ``person`` in ``DST/_people/``."""
    from ..people.state import MERGED, load_state, people_root
    fs, root = people_root(dst, options)
    if not fs.exists(root):
        return [], set(), []
    st = load_state(dst, options)
    people = {r["person_id"]: r for r in st.people.to_pylist()}
    key = str(person).strip()
    if key.isdigit() and int(key) in people:
        start = [int(key)]
    else:
        start = [pid for pid, r in people.items() if r["name"] == key]
    ids: set[int] = set()
    for pid in start:  # follow merges forward to the person the faces are with now
        seen = set()
        while people[pid]["status"] == MERGED and people[pid]["merged_into"] in people and pid not in seen:
            seen.add(pid)
            pid = int(people[pid]["merged_into"])
        ids.add(pid)
    grew = True
    while grew:  # and every id merged into them
        more = {pid for pid, r in people.items() if r["merged_into"] is not None and int(r["merged_into"]) in ids}
        grew = bool(more - ids)
        ids |= more
    faces = st.faces.filter(pc.is_in(st.faces["person_id"], value_set=pa.array(sorted(ids), pa.int64())))
    names = sorted({people[i]["name"] for i in ids if people[i]["name"]})
    return sorted(ids), set(faces["path"].to_pylist()), names


def _plan(dst: str, options: dict, forget_id: str, globs: Sequence[str], person: str | None,
          gallery: str | None) -> _Plan:
    hist, parts = _history(dst, options)
    uniq = pc.unique(hist["path"]).to_pylist()
    person_ids: list[int] = []
    names: list[str] = []
    if person is None:
        match = _matcher(globs)
        chosen = {p for p in uniq if match(p)}
        manifest, _ = ST.load_manifest(dst, options)
        if manifest is not None:  # objects known to the manifest only (none expected, but be thorough)
            chosen |= {p for p in manifest["path"].to_pylist() if match(p)}
        selector, value = "path", " ".join(globs)
    else:
        person_ids, chosen, names = _people_targets(dst, options, person)
        key = str(person).strip()
        if not key.isdigit():
            names = sorted(set(names) | {key})
        if names:  # photos whose gallery match (identity column) is the person
            chosen |= set(hist.filter(pc.is_in(hist["identity"], value_set=pa.array(names)))["path"].to_pylist())
        selector = "person"
        value = key if key.isdigit() else NAME_WITHHELD
    erased_before = set(ST.load_erased(dst, options)["path"].to_pylist())
    already = len(chosen & erased_before)
    chosen -= erased_before
    chosen_arr = pa.array(sorted(chosen), pa.string())
    hits = hist.filter(pc.is_in(hist["path"], value_set=chosen_arr))
    per_part = hits.group_by("part").aggregate([("path", "count")]).to_pylist() if hits.num_rows else []
    manifest, _ = ST.load_manifest(dst, options)
    live = manifest.filter(pc.is_in(manifest["path"], value_set=chosen_arr)) if manifest is not None else \
        ST.MANIFEST_SCHEMA.empty_table()
    live = live.filter(pc.not_equal(live["status"], S.ERASED))
    faces = 0
    if live.num_rows:
        lt = ST.read_latest(dst, columns=[S.STATUS], options=options)
        lt = lt.filter(pc.is_in(lt["path"], value_set=live["path"]))
        faces = int(pc.sum(pc.and_(pc.equal(lt[S.STATUS], S.OK), pc.greater_equal(lt[S.FACE_INDEX], 0))).as_py() or 0)
    g_names: list[str] = []
    if gallery and names:
        from ..attributes.gallery import Gallery
        g_names = [n for n in Gallery.load(gallery).names if n in names]
    return _Plan(forget_id, sorted(chosen), live, faces, {parts[r["part"]]: r["path_count"] for r in per_part},
                 person_ids, gallery, g_names, selector, value, already)


def _record(plan: _Plan, people_forgotten: int = 0) -> dict:
    return {"forget_id": plan.forget_id, "selector": plan.selector, "value": plan.value,
            "person_ids": ",".join(str(i) for i in plan.person_ids) or None, "photos": len(plan.paths),
            "faces": plan.faces, "rows_removed": plan.rows_removed, "parts_rewritten": len(plan.parts),
            "gallery_entries_removed": len(plan.gallery_names), "people_forgotten": people_forgotten,
            "already_erased": plan.already}


# ---- staging (before the commit point) -----------------------------------------------------------

def _rel(root: str, path: str) -> str:
    return path[len(root):].lstrip("/") if path.startswith(root) else path


def _stage(dst: str, options: dict, plan: _Plan) -> dict:
    """Write every new file where no reader looks (or, for the forget's run folder, without
    ``_SUCCESS``); returns the journal."""
    fs, root = filesystem(dst, options)
    fid = plan.forget_id
    staging = join(root, ST.STATE_DIR, FORGET_DIR, fid)
    fs.makedirs(staging, exist_ok=True)
    g_staged = None
    if plan.gallery and plan.gallery_names:
        base = plan.gallery[:-4] if plan.gallery.endswith(".npz") else plan.gallery
        g_staged = f"{base}.forget-{fid}.npz"
    _write_json(fs, join(staging, PLAN), {"forget_id": fid, "gallery_staged": g_staged})
    drop = pa.array(plan.paths, pa.string())
    swaps = []
    for k, (part, _n) in enumerate(sorted(plan.parts.items())):
        with fs.open(part, "rb") as f:
            t = pq.read_table(f)
        kept = t.filter(pc.invert(pc.is_in(t[S.PATH], value_set=drop)))
        staged = join(staging, f"part-{k:05d}.parquet")
        write_table_atomic(fs, staged, kept.replace_schema_metadata(t.schema.metadata))
        swaps.append([_rel(root, staged), _rel(root, part)])
    write_table_atomic(fs, join(staging, PATHS), pa.table({"path": drop}))
    folder = ST.run_dir(root, fid)
    fs.makedirs(folder, exist_ok=True)
    if plan.live.num_rows:
        write_table_atomic(fs, join(folder, "part-00000.parquet"), _erased_rows(plan.live, fid))
    with fs.open(join(folder, ST.SUMMARY), "w") as f:
        json.dump({"kind": "forget", "run_id": fid, **_record(plan)}, f, indent=2)
    if g_staged:
        _staged_gallery(plan.gallery, plan.gallery_names, g_staged)
    reports = sorted({_rel(root, p.rsplit("/", 1)[0]) for p in plan.parts})
    return {"forget_id": fid, "swaps": swaps, "reports": reports, "paths": _rel(root, join(staging, PATHS)),
            "run_folder": _rel(root, folder), "person_ids": plan.person_ids,
            "gallery": {"path": plan.gallery, "staged": g_staged} if g_staged else None, "record": _record(plan)}


def _erased_rows(live: pa.Table, forget_id: str) -> pa.Table:
    """One row per erased live photo: its path and listing fields, status ``erased``, nothing else."""
    from .rows import to_table
    now = _dt.datetime.now(_dt.timezone.utc)
    rows = [{S.PATH: r["path"], "etag": r["etag"], "size": r["size"], "mtime": r["mtime"], S.STATUS: S.ERASED,
             S.FACE_INDEX: -1, "run_id": forget_id, "annotated_at": now} for r in live.to_pylist()]
    return to_table(rows, [])


def _staged_gallery(gallery: str, names: list[str], staged: str) -> None:
    """The gallery without ``names``, written to ``staged``."""
    from ..attributes.gallery import Gallery
    g = Gallery.load(gallery)
    keep = [i for i, n in enumerate(g.names) if n not in set(names)]
    out = Gallery(g.emb_dim, g.metadata)
    out.names = [g.names[i] for i in keep]
    out.means, out.counts = g.means[keep], g.counts[keep]
    out.save(staged)


def _roll_back(dst: str, options: dict, fid: str) -> None:
    """Remove what a forget stopped before its commit point wrote (the old files were never touched)."""
    fs, root = filesystem(dst, options)
    staging = join(root, ST.STATE_DIR, FORGET_DIR, fid)
    plan_path = join(staging, PLAN)
    if fs.exists(plan_path):
        with fs.open(plan_path, "rb") as f:
            g = json.loads(f.read()).get("gallery_staged")
        if g and os.path.exists(g):
            os.remove(g)
    folder = ST.run_dir(root, fid)
    if fs.exists(folder) and not fs.exists(join(folder, ST.SUCCESS)):
        fs.rm(folder, recursive=True)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)


# ---- after the commit point: idempotent, finished by whoever comes next --------------------------

def _finish(dst: str, options: dict, journal: dict, log: Callable[[str], None]) -> dict:
    fs, root = filesystem(dst, options)
    fid = journal["forget_id"]
    folder = join(root, journal["run_folder"])
    if not fs.exists(join(folder, ST.SUCCESS)):  # readers see the erased rows from here on
        with fs.open(join(folder, ST.SUCCESS), "w") as f:
            f.write(fid)
    for staged, target in journal["swaps"]:  # the old rows go
        if fs.exists(join(root, staged)):
            _replace(fs, join(root, staged), join(root, target))
    for rel in journal["reports"]:
        _redo_report(dst, options, join(root, rel), log)
    with fs.open(join(root, journal["paths"]), "rb") as f:
        paths = pq.read_table(f)["path"].to_pylist()
    forgotten = erase_people(dst, paths, journal.get("person_ids") or [], fid, options)
    g = journal.get("gallery")
    if g and os.path.exists(g["staged"]):
        os.replace(g["staged"], g["path"])
    ST.apply_run(dst, options, fid, folder)
    state = join(root, ST.STATE_DIR)
    now = _dt.datetime.now(_dt.timezone.utc)
    erased = ST.load_erased(dst, options)
    erased = erased.filter(pc.not_equal(erased["forget_id"], fid)) if erased.num_rows else erased
    add = pa.table({"path": pa.array(paths, pa.string()), "forget_id": pa.array([fid] * len(paths), pa.string()),
                    "erased_at": pa.array([now] * len(paths), ST.ERASED_SCHEMA.field("erased_at").type)})
    write_table_atomic(fs, join(state, ST.ERASED), pa.concat_tables([erased, add]))
    record = {**journal["record"], "people_forgotten": forgotten.get("people_forgotten", 0)}
    hist = load_erasures(dst, options)
    hist = hist.filter(pc.not_equal(hist["forget_id"], fid)) if hist.num_rows else hist
    row = pa.Table.from_pylist([{**record, "at": now}], schema=ERASURES_SCHEMA)
    write_table_atomic(fs, join(state, ST.ERASURES), pa.concat_tables([hist, row]))
    staging = join(state, FORGET_DIR, fid)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    if fs.exists(join(state, FORGET_DIR)) and not fs.ls(join(state, FORGET_DIR)):
        fs.rm(join(state, FORGET_DIR), recursive=True)
    fs.rm(join(state, JOURNAL))
    return record


def _replace(fs, src: str, dst: str) -> None:
    if is_local(fs):
        os.replace(src, dst)
    else:  # an object store: copy, then delete (a rerun copies again if stopped in between)
        fs.copy(src, dst)
        fs.rm(src)


def _redo_report(dst: str, options: dict, folder: str, log: Callable[[str], None]) -> None:
    """Make a run's ``report.html`` again from its rewritten parts (its contact sheet showed faces);
    removed when that fails."""
    fs, _ = filesystem(dst, options)
    path = join(folder, "report.html")
    if not fs.exists(path):
        return
    try:
        from .report import write_report
        with fs.open(join(folder, ST.SUMMARY), "rb") as f:
            summary = json.loads(f.read())
        write_report(dst, folder, summary, options)
    except Exception as exc:
        fs.rm(path)
        log(f"[facebatch] removed {path} (could not make it again: {type(exc).__name__}: {exc})")


def _write_json(fs, path: str, obj: dict) -> None:
    data = json.dumps(obj, indent=1).encode()
    write_atomic(fs, path, lambda f: f.write(data))


# ---- DST/_people/ ----------------------------------------------------------------------------------

def erase_people(dst: str, paths: Sequence[str], person_ids: Sequence[int], run_id: str,
                 options: dict | None = None) -> dict:
    """Remove the faces of ``paths`` from ``DST/_people/`` and forget ``person_ids``; idempotent.

    Persons that lost faces get their counts, centre (the normalised sum of their faces' unit
    embeddings), similarities and representative face computed again from the faces left, or are
    ``gone`` with none left. A forgotten person keeps its id and status only: no name (in the
    history either), centre or representative face. A gone or merged person whose representative
    face is erased keeps no centre or representative face. Uses the people package's state API
    (:func:`facebatch.people.state.load_state`/``save_state``: staged, committed, swapped).
    """
    from ..people import live as L
    from ..people.state import ACTIVE, GONE, PeopleState, events, load_state, people_root, save_state
    options = storage_options() if options is None else options
    fs, root = people_root(dst, options)
    if not fs.exists(root):
        return {"people": False, "people_forgotten": 0}
    st = load_state(dst, options)
    drop = pc.is_in(st.faces["path"], value_set=pa.array(sorted(set(paths)), pa.string()))
    targets = {int(i) for i in person_ids}
    lost = set(pc.drop_null(st.faces.filter(drop)["person_id"]).to_pylist()) | targets
    faces = st.faces.filter(pc.invert(drop))
    mine = faces.filter(pc.fill_null(pc.is_in(faces["person_id"], value_set=pa.array(sorted(lost), pa.int64())),
                                     False))
    sims = faces["similarity"].to_numpy(zero_copy_only=False).astype(np.float32)
    recomputed: dict[int, dict] = {}
    if mine.num_rows:
        emb, has = L.embeddings(pa.table({"embedding": L.read_column_for(dst, mine.select(L.KEYS), "embedding",
                                                                        options)}))
        boxes = L.read_column_for(dst, mine.select(L.KEYS), "box", options).to_pylist()
        pids = np.asarray(mine["person_id"].to_pylist(), np.int64)
        rows_of = {k: i for i, k in enumerate(zip(faces["path"].to_pylist(), faces["face_index"].to_pylist(),
                                                  faces["run_id"].to_pylist()))}
        keys = list(zip(mine["path"].to_pylist(), mine["face_index"].to_pylist(), mine["run_id"].to_pylist()))
        for pid in np.unique(pids):
            sel = np.flatnonzero((pids == pid) & has)
            if int(pid) in targets or not len(np.flatnonzero(pids == pid)):
                continue
            centre = emb[sel].sum(0) if len(sel) else None
            if centre is not None and np.linalg.norm(centre) > 0:
                centre = (centre / np.linalg.norm(centre)).astype(np.float32)
                s = emb[sel] @ centre
                for i, v in zip(sel, s):
                    sims[rows_of[keys[i]]] = v
                best = sel[int(np.argmax(s))]
            else:
                centre, best = None, int(np.flatnonzero(pids == pid)[0])
            allp = np.flatnonzero(pids == pid)
            recomputed[int(pid)] = {"n_faces": len(allp), "n_photos": len({keys[i][0] for i in allp}),
                                    "centre": None if centre is None else centre.tolist(),
                                    "rep_path": keys[best][0], "rep_face_index": keys[best][1], "rep_box": boxes[best]}
    faces = faces.set_column(faces.schema.get_field_index("similarity"), "similarity",
                             pa.array(sims, pa.float32(), mask=np.asarray(pc.is_null(faces["person_id"]))))
    erased_paths = set(paths)
    blank = {"centre": None, "rep_path": None, "rep_face_index": None, "rep_box": None}
    rows, forgotten = [], []
    for r in st.people.to_pylist():
        pid = r["person_id"]
        if pid in targets:
            if r["name"] is not None or r["centre"] is not None or r["rep_path"] is not None:
                forgotten.append({"event": "forgotten", "person_id": pid, "n_faces": r["n_faces"]})
            r.update(blank, name=None, n_faces=0, n_photos=0, last_run=run_id,
                     status=GONE if r["status"] == ACTIVE else r["status"])
        elif pid in recomputed:
            r.update(recomputed[pid], last_run=run_id)
        elif pid in lost:  # no face left
            r.update(blank, n_faces=0, n_photos=0, last_run=run_id,
                     status=GONE if r["status"] == ACTIVE else r["status"])
        elif r["rep_path"] in erased_paths:  # a gone or merged person shown by an erased face
            r.update(blank)
        rows.append(r)
    people = pa.Table.from_pylist(rows, schema=st.people.schema) if rows else st.people
    hist = st.history
    if targets and hist.num_rows:
        is_t = pc.fill_null(pc.is_in(hist["person_id"], value_set=pa.array(sorted(targets), pa.int64())), False)
        hist = hist.set_column(hist.schema.get_field_index("name"), "name",
                               pc.if_else(is_t, pa.scalar(None, pa.string()), hist["name"]))
    if forgotten:
        hist = pa.concat_tables([hist, events(run_id, forgotten)])
    save_state(dst, PeopleState(faces, people, hist, st.meta), run_id, options)
    return {"people": True, "people_forgotten": len(forgotten), "faces_removed": int(pc.sum(drop).as_py() or 0)}


# ---- the command -----------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotations", required=True, metavar="DST", help="the annotate output (folder or s3:// prefix)")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--path", action="append", default=None, metavar="GLOB",
                     help="erase the photos whose path matches (repeatable; a GLOB without a leading / or scheme "
                          "matches the end of the path)")
    sel.add_argument("--person", default=None, metavar="NAME_OR_ID",
                     help="erase every photo with a face of this person: a person_id or name of DST/_people/, or a "
                          "name in the identity column (gallery matches)")
    p.add_argument("--gallery", default=None, metavar="G", help="also remove the person's entry from this .npz gallery")
    p.add_argument("--dry-run", action="store_true", help="count what would be erased, change nothing")
    p.add_argument("--lock-ttl", type=float, default=900.0, help="seconds the output lock lives unless renewed")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")


def run(args: argparse.Namespace) -> int:
    from ..batch.errors import EXIT_TEMPFAIL
    from .lock import LockHeld
    try:
        out = forget(args.annotations, paths=args.path or (), person=args.person, gallery=args.gallery,
                     options=storage_options(args.s3_endpoint_url), lock_ttl_s=args.lock_ttl, dry_run=args.dry_run)
    except LockHeld as exc:
        print(f"facebatch forget: error: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    print(json.dumps(out, indent=1, default=str))
    return 0
