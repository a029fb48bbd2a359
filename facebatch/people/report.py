"""What the annotate report shows about people: counts and the biggest persons with their faces.

    from facebatch.people.report import people_section
    sec = people_section("DST")   # {"counts": {...}, "people": [{person_id, name, n_faces, faces: [...]}]}

Each face is ``path``, ``face_index``, ``run_id``, ``box`` and ``similarity``: the report cuts its
strip from the annotate ``crop`` column or the photo. Pure reading, no writes.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .live import KEYS, read_column_for
from .state import ACTIVE, load_state


def people_section(dst: str, options: dict | None = None, top: int = 20, per_person: int = 8) -> dict:
    """Counts (persons, singletons, gated by reason, named) and the ``top`` biggest persons,
    each with its ``per_person`` faces most similar to its centre, best first."""
    from ..storage import storage_options
    options = storage_options() if options is None else options
    state = load_state(dst, options)
    people, faces = state.people, state.faces
    min_faces = int(state.meta.get("min_faces", 2))
    active = people.filter(pc.equal(people["status"], ACTIVE))
    gated = faces.filter(pc.invert(faces["quality_ok"]))
    reasons = gated.group_by("gate").aggregate([("path", "count")]).to_pylist() if gated.num_rows else []
    counts = {"persons": int(pc.sum(pc.greater_equal(active["n_faces"], min_faces)).as_py() or 0),
              "named": int(pc.sum(pc.is_valid(active["name"])).as_py() or 0),
              "singletons": int(pc.sum(pc.and_(faces["quality_ok"], pc.is_null(faces["person_id"]))).as_py() or 0),
              "gated": gated.num_rows, "gated_by_reason": {r["gate"]: r["path_count"] for r in reasons},
              "faces": faces.num_rows, "run_id": state.meta.get("run_id")}
    biggest = active.take(pc.sort_indices(active, sort_keys=[("n_faces", "descending"), ("person_id", "ascending")]))
    chosen, strips = biggest.slice(0, top).to_pylist(), []
    for p in chosen:
        f = faces.filter(pc.equal(faces["person_id"], p["person_id"]))
        strips.append(f.take(pc.sort_indices(f, sort_keys=[("similarity", "descending")])).slice(0, per_person)
                      .select([*KEYS, "similarity"]))
    strip = pa.concat_tables(strips) if strips else None
    boxes = read_column_for(dst, strip.select(KEYS), "box", options).to_pylist() if strip is not None else []
    out, at = [], 0
    for p, s in zip(chosen, strips):
        fs = s.to_pylist()
        for f, b in zip(fs, boxes[at:at + len(fs)]):
            f["box"] = b
        at += len(fs)
        out.append({k: p[k] for k in ("person_id", "name", "n_faces", "n_photos", "first_run", "last_run")}
                   | {"faces": fs})
    return {"counts": counts, "people": out}
