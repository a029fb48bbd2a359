"""The people state in ``DST/_people/``: schemas, reading, and the atomic swap of its three files.

Layout::

    DST/_people/faces.parquet     one row per live face: path, face_index, run_id, person_id (null:
                                  gated, or in no person yet), similarity (to the person's centre),
                                  quality_ok, gate (the reason when gated)
    DST/_people/people.parquet    one row per person ever made (ids are never reused): person_id,
                                  name, status (active / gone / merged), merged_into, n_faces,
                                  n_photos, first_run, last_run, the representative face (rep_path,
                                  rep_face_index, rep_box) and the centre embedding
    DST/_people/history.parquet   events: created, merged_into, split, named, forgotten (+ run_id)
    DST/_people/_commit.json      the swap log (below)

A run writes the three files under ``_people/.staging/RUN_ID/``, then ``_commit.json`` naming
that folder (the commit point, written atomically), then moves each file into place and marks
the log done. Readers use the staged files while a swap is pending, so they never mix two runs;
the next writer finishes a swap that a killed run left half done. Works on local folders and
``s3://`` (each object appears whole when its upload completes).

``_people/`` holds embeddings (biometric data): delete the folder to forget every person.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..batch.write import write_atomic, write_table_atomic
from ..storage import filesystem, join

PEOPLE_DIR = "_people"
FACES, PEOPLE, HISTORY, COMMIT = "faces.parquet", "people.parquet", "history.parquet", "_commit.json"
FILES = (FACES, PEOPLE, HISTORY)
META = b"facebatch.people"

FACES_SCHEMA = pa.schema([
    ("path", pa.string()), ("face_index", pa.int32()), ("run_id", pa.string()), ("person_id", pa.int64()),
    ("similarity", pa.float32()), ("quality_ok", pa.bool_()), ("gate", pa.string())])
PEOPLE_SCHEMA = pa.schema([
    ("person_id", pa.int64()), ("name", pa.string()), ("status", pa.string()), ("merged_into", pa.int64()),
    ("n_faces", pa.int32()), ("n_photos", pa.int32()), ("first_run", pa.string()), ("last_run", pa.string()),
    ("rep_path", pa.string()), ("rep_face_index", pa.int32()), ("rep_box", pa.list_(pa.float32())),
    ("centre", pa.list_(pa.float32()))])
HISTORY_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("event", pa.string()), ("person_id", pa.int64()), ("other_id", pa.int64()),
    ("name", pa.string()), ("n_faces", pa.int32()), ("at", pa.timestamp("ms", tz="UTC"))])
EVENTS = ("created", "merged_into", "split", "named", "forgotten")
ACTIVE, GONE, MERGED = "active", "gone", "merged"


@dataclass
class PeopleState:
    """The three tables and the run metadata (``next_id``, ``run_id``, ``threshold``, ...)."""

    faces: pa.Table
    people: pa.Table
    history: pa.Table
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "PeopleState":
        return cls(FACES_SCHEMA.empty_table(), PEOPLE_SCHEMA.empty_table(), HISTORY_SCHEMA.empty_table(),
                   {"next_id": 1})

    @property
    def next_id(self) -> int:
        return int(self.meta.get("next_id", 1))


def people_root(dst: str, options: dict | None = None) -> tuple:
    """``(filesystem, path of DST/_people)``."""
    fs, root = filesystem(dst, options)
    return fs, join(root, PEOPLE_DIR)


def _read(fs, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()))


def _log(fs, root: str) -> dict | None:
    p = join(root, COMMIT)
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


def load_state(dst: str, options: dict | None = None) -> PeopleState:
    """The committed state (empty when ``_people/`` does not exist yet)."""
    fs, root = people_root(dst, options)
    log = _log(fs, root)
    if log is None:
        return PeopleState.empty()
    pending = not log.get("done")
    folder = join(root, log["staging"]) if pending else root
    tables = {}
    for name, schema in ((FACES, FACES_SCHEMA), (PEOPLE, PEOPLE_SCHEMA), (HISTORY, HISTORY_SCHEMA)):
        path = join(folder, name)
        if pending and not fs.exists(path):  # already moved into place by the writer
            path = join(root, name)
        tables[name] = _read(fs, path)
    meta = json.loads((tables[PEOPLE].schema.metadata or {}).get(META, b"{}"))
    cast = lambda t, s: t.replace_schema_metadata(None).select(s.names).cast(s)  # noqa: E731
    return PeopleState(cast(tables[FACES], FACES_SCHEMA), cast(tables[PEOPLE], PEOPLE_SCHEMA),
                       cast(tables[HISTORY], HISTORY_SCHEMA), meta)


def finish_swap(dst: str, options: dict | None = None) -> bool:
    """Move the staged files of a pending swap into place and mark it done; True if one was pending."""
    fs, root = people_root(dst, options)
    log = _log(fs, root)
    if log is None or log.get("done"):
        return False
    staging = join(root, log["staging"])
    for name in FILES:
        src = join(staging, name)
        if fs.exists(src):
            fs.mv(src, join(root, name))
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    _write_log(fs, root, {**log, "done": True})
    return True


def _write_log(fs, root: str, log: dict) -> None:
    data = json.dumps(log, indent=1).encode()
    write_atomic(fs, join(root, COMMIT), lambda f: f.write(data))


def save_state(dst: str, state: PeopleState, run_id: str, options: dict | None = None) -> None:
    """Write the state as described in the module doc (stage, commit log, swap)."""
    fs, root = people_root(dst, options)
    finish_swap(dst, options)  # a killed run's swap first: its files are the state we replace
    staging_rel = f".staging/{run_id}"
    staging = join(root, staging_rel)
    fs.makedirs(staging, exist_ok=True)
    meta = {**state.meta, "run_id": run_id}
    people = state.people.replace_schema_metadata({META: json.dumps(meta).encode()})
    for name, table in ((FACES, state.faces), (PEOPLE, people), (HISTORY, state.history)):
        write_table_atomic(fs, join(staging, name), table)
    _write_log(fs, root, {"run_id": run_id, "staging": staging_rel, "done": False,
                          "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    finish_swap(dst, options)


def events(run_id: str, rows: list[dict]) -> pa.Table:
    """History rows of one run: each dict has ``event``, ``person_id`` and optionally ``other_id``,
    ``name``, ``n_faces``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    for r in rows:
        if r["event"] not in EVENTS:
            raise ValueError(f"unknown people event {r['event']!r}; known: {', '.join(EVENTS)}")
    cols = {"run_id": [run_id] * len(rows), "event": [r["event"] for r in rows],
            "person_id": [int(r["person_id"]) for r in rows],
            "other_id": [None if r.get("other_id") is None else int(r["other_id"]) for r in rows],
            "name": [r.get("name") for r in rows], "n_faces": [r.get("n_faces") for r in rows],
            "at": [now] * len(rows)}
    return pa.table(cols, schema=HISTORY_SCHEMA)
