"""The live faces of an annotate output, as the people stage needs them.

:func:`read_live_faces` is :func:`facebatch.annotations.read_latest` (latest successful run per
path, deleted paths dropped, embeddings of a superseded identity model nulled) restricted to faces
(``status == ok``, ``face_index >= 0``), with the columns the stage uses. ``embedding`` exists only
in runs made with ``--embeddings``: faces of other runs get a null embedding (gated
``no_embedding``). :func:`read_column_for` reads one heavy column (``crop``, ``embedding``) for a
few faces only, from the run folders that hold them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..annotations import read_latest, run_folders
from ..storage import filesystem, join, storage_options

PART_GLOB = "part-*.parquet"
KEYS = ["path", "face_index", "run_id"]
COLUMNS = ["status", "box", "score", "face_size", "keypoints68"]


def _parts(dst: str, options: dict) -> list[tuple[str, list[str]]]:
    """``(run_id, part files)`` of every successful run."""
    fs, _ = filesystem(dst, options)
    return [(rid, sorted(fs.glob(join(folder, PART_GLOB)))) for rid, folder, ok in run_folders(dst, options) if ok]


def _columns_of(fs, part: str) -> set[str]:
    with fs.open(part, "rb") as f:
        return set(pq.read_schema(f).names)


def read_live_faces(dst: str, options: dict | None = None) -> pa.Table:
    """Live faces: ``path, face_index, run_id, identity_model`` + :data:`COLUMNS` + ``embedding``,
    sorted by path and face index. A column that some runs lack (``embedding`` without
    ``--embeddings``) is null in their rows; ``read_latest`` also nulls the embeddings of an
    identity model that is not the current one, so two models' embeddings are never compared."""
    options = storage_options() if options is None else options
    t = read_latest(dst, columns=[*COLUMNS, "embedding"], options=options)
    if "face_index" not in t.column_names:  # nothing annotated yet
        return t
    t = t.filter(pc.and_(pc.equal(t["status"], "ok"), pc.greater_equal(t["face_index"], 0)))
    for name, typ in (("embedding", pa.list_(pa.float32())), ("identity_model", pa.string())):
        if name not in t.column_names:
            t = t.append_column(name, pa.nulls(t.num_rows, typ))
    return t


def current_model(t: pa.Table) -> str | None:
    """The identity model fingerprint of the faces that have an embedding (None if unrecorded)."""
    if "identity_model" not in t.column_names or t.num_rows == 0:
        return None
    m = pc.drop_null(t["identity_model"].filter(pc.is_valid(t["embedding"])))
    if not len(m):
        return None
    counts = pc.value_counts(m)  # the most common one (pc.mode has no string kernel)
    return counts[int(pc.index(counts.field("counts"), pc.max(counts.field("counts"))).as_py())]["values"].as_py()


def model_metadata(dst: str, options: dict | None = None) -> dict:
    """The ``facebatch.models`` metadata (JSON) of the latest successful run's first part: which
    models made the faces (the identity model's ``dat_sha256`` and ``verification_threshold``
    are looked up in it); ``{}`` when there is none."""
    import json
    options = storage_options() if options is None else options
    fs, _ = filesystem(dst, options)
    for _, ps in reversed(_parts(dst, options)):
        for p in ps:
            with fs.open(p, "rb") as f:
                raw = (pq.read_schema(f).metadata or {}).get(b"facebatch.models")
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return {}
    return {}


def read_column_for(dst: str, keys: pa.Table, column: str, options: dict | None = None) -> pa.ChunkedArray:
    """``column`` of the faces ``keys`` (path, face_index, run_id), in their order; null where the
    run has no such column or the face is not found. Reads only the runs named in ``keys``."""
    options = storage_options() if options is None else options
    fs, _ = filesystem(dst, options)
    want = set(pc.unique(keys["run_id"]).to_pylist()) if keys.num_rows else set()
    found = []
    for rid, ps in _parts(dst, options):
        if rid not in want:
            continue
        mine = keys.filter(pc.equal(keys["run_id"], rid)).select(["path", "face_index"])
        for p in ps:
            if column not in _columns_of(fs, p):
                continue
            with fs.open(p, "rb") as f:
                part = pq.read_table(f, columns=["path", "face_index", column])
            part = part.append_column("_row", pa.array(np.arange(part.num_rows), pa.int64()))
            hit = part.select(["path", "face_index", "_row"]).join(mine, keys=["path", "face_index"],
                                                                    join_type="inner")
            if hit.num_rows:
                idx = hit["_row"].combine_chunks()
                found.append(pa.table({"path": part["path"].take(idx), "face_index": part["face_index"].take(idx),
                                       "run_id": pa.array([rid] * len(idx), pa.string()),
                                       column: part[column].take(idx)}))
    typ = found[0].schema.field(column).type if found else pa.list_(pa.float32())
    if not found:
        return pa.chunked_array([pa.nulls(keys.num_rows, typ)])
    got = pa.concat_tables(found).append_column("_got", pa.array(np.arange(sum(t.num_rows for t in found)), pa.int64()))
    k = keys.select(KEYS).append_column("_want", pa.array(np.arange(keys.num_rows), pa.int64()))
    j = k.join(got.select([*KEYS, "_got"]), keys=KEYS, join_type="left outer")
    order = pc.sort_indices(j["_want"])
    src = j["_got"].take(order)
    return pa.chunked_array([got[column].combine_chunks().take(src.combine_chunks())])


def matrix(col, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 (n, width), bool valid)`` of a list column; rows that are null or of another
    length are zeros and not valid. ``width=None``: the longest row's length."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) == 0:
        return np.zeros((0, width or 0), np.float32), np.zeros(0, bool)
    col = col.cast(pa.list_(pa.float32()))
    has = np.asarray(col.is_valid())
    lens = np.asarray(pc.fill_null(pc.list_value_length(col), 0))
    d = width or (int(lens[has].max()) if has.any() else 0)
    has &= lens == d
    out = np.zeros((len(col), d), np.float32)
    if has.any() and d:
        vals = pc.list_flatten(col.filter(pa.array(has))).to_numpy(zero_copy_only=False)
        out[has] = vals.reshape(-1, d)
    return out, has


def embeddings(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(float32 (n, d) unit rows, bool has_embedding)`` of the ``embedding`` column (zeros where none)."""
    out, has = matrix(t["embedding"])
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=out, where=norm > 0), has & (norm[:, 0] > 0)


def points(t: pa.Table, column: str, width: int) -> np.ndarray | None:
    """``float64 (n, width)`` of a list column (NaN rows where null or short), or None if absent."""
    if column not in t.column_names:
        return None
    out, has = matrix(t[column], width)
    out = out.astype(np.float64)
    out[~has] = np.nan
    return out
