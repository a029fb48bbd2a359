"""``run_people``: update ``DST/_people/`` from the current live view of an annotate output.

    from facebatch.people import run_people
    summary = run_people("s3://bucket/annotations")           # after an annotate run
    summary["persons"], summary["assigned_to_existing"], summary["new_persons"]

Reads the live faces (:mod:`.live`), matches them with the state by ``(path, face_index,
run_id)``: a face of a photo that was deleted or annotated again is gone from the live view, so
it leaves its person (a person left with no face is marked ``gone``; its id is never reused).
New faces go through the quality gate (:mod:`.quality`; crops are read for the new faces only),
then one night of :mod:`.night`, then the state is written (:mod:`.state`).
"""
from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage import storage_options
from .live import KEYS, current_model, embeddings, model_metadata, points, read_column_for, read_live_faces
from .graph import DEFAULT_BLOCK
from .night import NO_PERSON, Params, carry_ids, run_night, sums_by_person
from .parallel import mapper as ray_mapper
from .quality import QualityGate, gate
from .state import (ACTIVE, FACES_SCHEMA, GONE, MERGED, PEOPLE_SCHEMA, PeopleState, events, finish_swap,
                    load_state, save_state)


def new_run_id() -> str:
    """A run id in annotate's form (``YYYYmmddTHHMMSSffffffZ-xxxxxx``, sorts by time)."""
    import datetime as dt
    import uuid
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def _find(meta, key: str):
    """The first value of ``key`` anywhere in nested dicts/lists (None if absent)."""
    if isinstance(meta, dict):
        if meta.get(key) is not None:
            return meta[key]
        meta = list(meta.values())
    if isinstance(meta, list):
        for v in meta:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _model_key(meta) -> str | None:
    """Which embedding model made the faces, from the runs' model metadata: the identity head's
    network hash, alignment and fitted threshold (a refitted map changes the threshold)."""
    if isinstance(meta, dict):
        if meta.get("dat_sha256"):
            return "/".join(str(meta.get(k)) for k in ("dat_sha256", "align", "projection_sha256",
                                                       "verification_threshold"))
        meta = list(meta.values())
    for v in meta if isinstance(meta, list) else []:
        found = _model_key(v)
        if found:
            return found
    return None


def resolve_threshold(threshold: float | None, model_meta: dict | None = None) -> float:
    """The edge threshold: ``threshold`` if given, else the identity model's fitted
    ``verification_threshold`` (from the runs' model metadata, else the shipped ``identity``)."""
    if threshold is not None:
        if not -1.0 < float(threshold) < 1.0:
            raise ValueError(f"--threshold must be a cosine similarity between -1 and 1, got {threshold}")
        return float(threshold)
    found = _find(model_meta or {}, "verification_threshold")
    if found is None:
        from ..identity.meta import identity_meta
        found = identity_meta("identity").get("verification_threshold")
    if found is None:
        raise ValueError("the identity model has no fitted verification_threshold yet "
                         "(facebatch/release/identity.json); pass --threshold T explicitly")
    return float(found)


def run_people(dst: str, options: dict | None = None, threshold: float | None = None, min_faces: int = 2,
               block: int = DEFAULT_BLOCK, run_id: str | None = None, k: int = 10,
               quality: QualityGate | None = None, recluster: bool = False, ray_min_faces: int | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict:
    """Update ``DST/_people/`` from the live view; returns the night's counts (see docs/ANNOTATIONS.md).

    Args:
        dst: the annotate output (local folder or ``s3://``).
        options: fsspec storage options (default: from the environment).
        threshold: cosine edge threshold; default the identity model's verification threshold.
        min_faces: smallest group of faces that becomes a person.
        block: rows per block of the similarity graph (memory: ``block**2 * 4`` bytes per tile).
        run_id: id recorded in the state and history (annotate passes its own run id).
        k: neighbours per face in the graph.
        quality: the quality gate (default :class:`QualityGate`).
        recluster: cluster every face again from scratch, keeping ids and names by overlap
            (done automatically when the embedding model changed).
        ray_min_faces: use Ray tasks for the graph from this many faces when Ray is initialised.
    """
    t0 = time.time()
    if min_faces < 1:
        raise ValueError(f"--min-faces must be at least 1, got {min_faces}")
    options = storage_options() if options is None else options
    run_id = run_id or new_run_id()
    from ..storage import filesystem
    fs, root = filesystem(dst, options)
    if not fs.exists(root):
        raise FileNotFoundError(f"annotate output {dst!r} not found (--annotations)")
    finish_swap(dst, options)
    state = load_state(dst, options)
    faces = read_live_faces(dst, options)
    if "face_index" not in faces.column_names:
        raise FileNotFoundError(f"no finished annotate run in {dst!r}: run `facebatch annotate --embeddings` first")
    model_meta = model_metadata(dst, options)
    thr = resolve_threshold(threshold, model_meta)
    model = current_model(faces) or _model_key(model_meta) or state.meta.get("embedding_model")
    if state.meta.get("embedding_model") not in (None, model):
        log(f"[people] the embedding model changed ({state.meta['embedding_model'][:12]} -> {str(model)[:12]}): "
            "re-clustering every face, keeping ids and names by overlap")
        recluster = True
    emb, has = embeddings(faces)
    prev = _match(state.faces, faces)
    new = prev < 0
    reason = np.full(faces.num_rows, None, object)
    kept = np.flatnonzero(~new)
    reason[kept] = np.asarray(state.faces["gate"].take(pa.array(prev[kept])).to_pylist(), object)
    regate = new | recluster  # known faces keep their gate result; re-clustering gates every face again
    if regate.any():
        nf = faces.filter(pa.array(regate))
        crops = read_column_for(dst, nf.select(KEYS), "crop", options).to_pylist()
        reason[regate] = gate(nf.num_rows, quality or QualityGate(), has[regate], _floats(nf, "face_size"),
                              _floats(nf, "score"), points(nf, "keypoints68", 136), crops)
    ok = np.equal(reason, None)
    person = np.full(faces.num_rows, NO_PERSON, np.int64)
    old_person = np.asarray(pc.fill_null(state.faces["person_id"], NO_PERSON).take(pa.array(prev[kept])), np.int64)
    person[kept] = old_person
    names = {int(i): n for i, n in zip(state.people["person_id"].to_pylist(), state.people["name"].to_pylist()) if n}
    p = Params(threshold=thr, min_faces=min_faces, k=k, block=block,
               mapper=ray_mapper(faces.num_rows, *([ray_min_faces] if ray_min_faces is not None else [])))
    if recluster:
        fresh = run_night(emb, ok, np.full(len(person), NO_PERSON), np.ones(len(person), bool), {}, 0, p)
        person, ev = carry_ids(np.where(ok, person, NO_PERSON), np.where(fresh.person >= 0, fresh.person, -1),
                               state.next_id)
        created, merged, splits, next_id, assigned = [c for c, _ in ev["created"]], ev["merged"], ev["split"], \
            ev["next_id"], 0
    else:
        res = run_night(emb, ok, person, new, names, state.next_id, p)
        person, created, merged, splits, next_id, assigned = res.person, res.created, res.merged, [], res.next_id, \
            res.assigned_existing
    gone_faces = state.faces.num_rows - int((~new).sum())
    left = np.ones(state.faces.num_rows, bool)
    left[prev[kept]] = False
    touched = set(pc.drop_null(state.faces["person_id"].filter(pa.array(left))).to_pylist())
    before = np.full(len(person), NO_PERSON, np.int64)
    before[kept] = old_person
    touched |= set(np.unique(person[(person >= 0) & (person != before)]).tolist())
    out, summary = _tables(state, faces, emb, person, ok, reason, run_id, created, merged, splits, min_faces,
                           touched)
    out.meta = {**state.meta, "next_id": next_id, "threshold": thr, "min_faces": min_faces, "k": k,
                "embedding_model": model, "gate": json.loads(json.dumps((quality or QualityGate()).__dict__))}
    save_state(dst, out, run_id, options)
    summary.update(run_id=run_id, faces=faces.num_rows, new_faces=int(new.sum()), left_faces=gone_faces,
                   assigned_to_existing=assigned, threshold=thr, recluster=recluster,
                   wall_s=round(time.time() - t0, 3))
    log(f"[people] {summary['persons']} persons, {summary['singletons']} faces in no person, {summary['gated']} gated; "
        f"tonight {summary['new_faces']} new faces: {assigned} joined known persons, {summary['new_persons']} new "
        f"persons, {summary['merged']} merges, {summary['forgotten']} forgotten")
    return summary


def _floats(t: pa.Table, col: str) -> np.ndarray | None:
    return None if col not in t.column_names else np.asarray(pc.fill_null(t[col], float("nan")), np.float64)


def _match(prev: pa.Table, faces: pa.Table) -> np.ndarray:
    """Row of each live face in the previous state's faces (``-1``: new), by path, face_index, run_id."""
    if prev.num_rows == 0:
        return np.full(faces.num_rows, -1, np.int64)
    a = faces.select(KEYS).append_column("_i", pa.array(np.arange(faces.num_rows), pa.int64()))
    b = prev.select(KEYS).cast(a.select(KEYS).schema).append_column("_j", pa.array(np.arange(prev.num_rows), pa.int64()))
    j = a.join(b, keys=KEYS, join_type="left outer")
    out = np.full(faces.num_rows, -1, np.int64)
    i, jj = np.asarray(j["_i"]), np.asarray(pc.fill_null(j["_j"], -1))
    out[i] = jj
    return out


def _tables(state: PeopleState, faces: pa.Table, emb: np.ndarray, person: np.ndarray, ok: np.ndarray,
            reason: np.ndarray, run_id: str, created: list[int], merged: list[tuple[int, int]],
            splits: list[tuple[int, int]], min_faces: int, touched: set[int]) -> tuple[PeopleState, dict]:
    """The new faces/people/history tables and the summary counts (``touched``: persons that
    gained or lost faces tonight: their ``last_run`` becomes this run)."""
    ids, sums, counts = sums_by_person(person, emb)
    centres = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    pos = np.searchsorted(ids, person)
    has = person >= 0
    sim = np.full(len(person), np.nan, np.float32)
    sim[has] = np.einsum("ij,ij->i", emb[has], centres[pos[has]])
    face_tab = pa.table({"path": faces["path"], "face_index": faces["face_index"], "run_id": faces["run_id"],
                         "person_id": pa.array(np.where(has, person, 0), pa.int64(), mask=~has),
                         "similarity": pa.array(sim, pa.float32(), mask=~has), "quality_ok": pa.array(ok),
                         "gate": pa.array(reason.tolist(), pa.string())}, schema=FACES_SCHEMA)
    photos = pa.table({"p": person[has], "path": faces["path"].filter(pa.array(has))}).group_by("p").aggregate(
        [("path", "count_distinct")])
    n_photos = dict(zip(photos["p"].to_pylist(), photos["path_count_distinct"].to_pylist()))
    idx = np.flatnonzero(has)
    rep = {}
    for i in idx[np.lexsort((-sim[idx], person[idx]))]:
        rep.setdefault(int(person[i]), int(i))
    old = {r["person_id"]: r for r in state.people.to_pylist()}
    final = dict(merged)  # merged id -> the id it was merged into (which may be merged later)
    resolve = lambda i: resolve(final[i]) if i in final else i  # noqa: E731
    names = {pid: r["name"] for pid, r in old.items() if r["name"]}
    for drop, _ in merged:  # a merged person's name goes to the survivor (two names never merge)
        if names.get(drop) and not names.get(resolve(drop)):
            names[resolve(drop)] = names[drop]
    ev = [{"event": "created", "person_id": c} for c in created]
    ev += [{"event": "split", "person_id": c, "other_id": src} for c, src in splits]
    ev += [{"event": "merged_into", "person_id": d, "other_id": resolve(d)} for d, _ in merged]
    survivors = {resolve(d) for d, _ in merged}
    box = faces["box"].to_pylist() if "box" in faces.column_names else [None] * faces.num_rows
    rows = []
    for pid in sorted(set(old) | set(ids.tolist()) | set(final)):
        r = dict(old.get(pid) or {"person_id": pid, "first_run": run_id, "last_run": run_id})
        r["name"] = names.get(pid)
        if pid in final:
            r.update(status=MERGED, merged_into=resolve(pid), n_faces=0, n_photos=0, last_run=run_id)
        elif pid in ids:
            at = int(np.searchsorted(ids, pid))
            i = rep[pid]
            if pid in touched or pid in created or pid in survivors:
                r["last_run"] = run_id
            r.update(status=ACTIVE, merged_into=None, n_faces=int(counts[at]), n_photos=int(n_photos[pid]),
                     rep_path=faces["path"][i].as_py(), rep_face_index=faces["face_index"][i].as_py(),
                     rep_box=box[i], centre=centres[at].tolist())
        elif r.get("status") == ACTIVE:
            r.update(status=GONE, n_faces=0, n_photos=0, last_run=run_id)
            ev.append({"event": "forgotten", "person_id": pid})
        rows.append(r)
    people = pa.Table.from_pylist(rows, schema=PEOPLE_SCHEMA) if rows else PEOPLE_SCHEMA.empty_table()
    history = pa.concat_tables([state.history, events(run_id, ev)])
    active = [r for r in rows if r["status"] == ACTIVE]
    summary = {"persons": sum(r["n_faces"] >= min_faces for r in active),
               "small_persons": sum(r["n_faces"] < min_faces for r in active),
               "singletons": int((ok & ~has).sum()), "gated": int((~ok).sum()),
               "gate_reasons": {str(k): int(v) for k, v in zip(*np.unique(reason[~ok].astype(str), return_counts=True))},
               "new_persons": len(created) + len(splits), "merged": len(merged),
               "forgotten": sum(e["event"] == "forgotten" for e in ev)}
    return PeopleState(face_tab, people, history), summary
