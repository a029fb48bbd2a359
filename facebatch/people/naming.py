"""Naming a person, and enrolling their best faces into an ``enroll`` gallery.

    name_person("DST", 12, "Alice")                          # recorded in people.parquet + history
    name_person("DST", 12, "Alice", gallery="people.npz")   # + Alice's best faces enrolled

The name is kept by every later night (merges keep it; two differently named persons are never
merged) and by re-clustering (ids carry over by overlap). With ``gallery``, the person's best
faces - clusterable, most similar to the person's centre, at most ``max_faces`` - are added to
the gallery (created when missing) as :class:`~facebatch.attributes.gallery.Gallery` does for
``facebatch enroll``: the centroid of those embeddings, under the identity model's name and
weights hash, so ``facebatch annotate --gallery`` and ``facebatch enroll --match`` with the same
identity model recognise the person in new photos.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..storage import storage_options
from .live import KEYS, embeddings, read_column_for
from .stage import new_run_id
from .state import ACTIVE, MERGED, events, load_state, save_state


def _person_row(people: pa.Table, person_id: int) -> dict:
    rows = people.filter(pc.equal(people["person_id"], person_id)).to_pylist()
    if not rows:
        raise ValueError(f"no person {person_id} in this annotate output (see _people/people.parquet)")
    return rows[0]


def name_person(dst: str, person_id: int, name: str, gallery: str | None = None, options: dict | None = None,
                max_faces: int = 10, identity: str = "identity") -> dict:
    """Name a person (and enroll their best faces into ``gallery``); returns what was done.

    A merged id is followed to the person it was merged into; a person with fewer faces than
    the stage's ``min_faces``, a gone person, or a name already given to another person is refused.
    """
    name = (name or "").strip()
    if not name:
        raise ValueError("the name must not be empty")
    options = storage_options() if options is None else options
    state = load_state(dst, options)
    if state.people.num_rows == 0:
        raise FileNotFoundError(f"no people state in {dst!r}: run `facebatch people --annotations {dst}` first")
    row = _person_row(state.people, int(person_id))
    while row["status"] == MERGED:
        row = _person_row(state.people, int(row["merged_into"]))
    pid = int(row["person_id"])
    if row["status"] != ACTIVE:
        raise ValueError(f"person {person_id} is gone (all its photos were deleted); it cannot be named")
    min_faces = int(state.meta.get("min_faces", 2))
    if row["n_faces"] < min_faces:
        raise ValueError(f"person {pid} has {row['n_faces']} face(s), fewer than --min-faces {min_faces}: "
                         "too few to name")
    taken = state.people.filter(pc.and_(pc.equal(state.people["name"], name),
                                        pc.equal(state.people["status"], ACTIVE)))["person_id"].to_pylist()
    if any(t != pid for t in taken):
        raise ValueError(f"the name {name!r} is already person {taken[0]}'s; choose another name")
    names = pc.if_else(pc.equal(state.people["person_id"], pid), pa.scalar(name), state.people["name"])
    state.people = state.people.set_column(state.people.schema.get_field_index("name"), "name", names)
    run_id = new_run_id()
    state.history = pa.concat_tables([state.history, events(run_id, [
        {"event": "named", "person_id": pid, "name": name, "n_faces": row["n_faces"]}])])
    save_state(dst, state, run_id, options)
    out = {"person_id": pid, "name": name, "n_faces": row["n_faces"], "previous_name": row["name"]}
    if gallery:
        out.update(enroll(dst, state, pid, name, gallery, options, max_faces, identity))
    return out


def best_faces(state, person_id: int, max_faces: int) -> pa.Table:
    """The person's clusterable faces most similar to its centre (path, face_index, run_id)."""
    f = state.faces.filter(pc.and_(pc.equal(state.faces["person_id"], person_id), state.faces["quality_ok"]))
    f = f.take(pc.sort_indices(f, sort_keys=[("similarity", "descending"), ("path", "ascending")]))
    return f.slice(0, max_faces).select(KEYS)


def enroll(dst: str, state, person_id: int, name: str, gallery: str, options: dict, max_faces: int = 10,
           identity: str = "identity") -> dict:
    """Add the person's best faces to ``gallery`` (an ``enroll`` .npz, created when missing)."""
    from ..attributes.gallery import Gallery
    from ..attributes.models import state_dict_sha256
    from ..identity import load_dlib_resnet
    from ..identity.meta import identity_meta
    keys = best_faces(state, person_id, max_faces)
    emb, has = embeddings(pa.table({"embedding": read_column_for(dst, keys, "embedding", options)}))
    if not has.any():
        raise ValueError(f"person {person_id}'s faces have no embeddings in {dst!r}")
    meta = identity_meta(identity)
    model_hash = state_dict_sha256(load_dlib_resnet(meta.get("dat")))
    path = Path(gallery)
    if path.exists():
        g = Gallery.load(path, expected_model_hash=model_hash)
        if name in g.names:
            raise ValueError(f"{gallery} already has {name!r}; remove it or choose another gallery")
    else:
        g = Gallery(emb.shape[1], {"model_name": meta["name"], "model_hash": model_hash,
                                   "source": f"facebatch people {dst}"})
    g.add(emb[has], [name] * int(has.sum()))
    saved = g.save(path)
    return {"gallery": str(saved), "enrolled_faces": int(has.sum()), "gallery_people": len(g)}


def forget_all(dst: str, options: dict | None = None) -> bool:
    """Delete ``DST/_people/`` (every person, name and embedding); True if it existed."""
    from .state import people_root
    fs, root = people_root(dst, storage_options() if options is None else options)
    if not fs.exists(root):
        return False
    fs.rm(root, recursive=True)
    return True
