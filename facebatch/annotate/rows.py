"""The annotate output schema: one row per face, per image without a face, per failed input.

Column names are fixed (other tools read them); see docs/ANNOTATIONS.md. Coordinates are
pixels of the original image after EXIF orientation.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import pyarrow as pa

from .. import schema as S

SCHEMA_VERSION = "annotate-2"  # 2: models, identity_model; status erased
f32 = pa.float32()
TS = pa.timestamp("ms", tz="UTC")

META_MODELS = b"facebatch.models"
META_CONFIG = b"facebatch.config"
META_VERSION = b"facebatch.version"
META_GIT = b"facebatch.git"
META_SCHEMA = b"facebatch.schema_version"

#: which models made the row (:mod:`.versions`): ``{"detector": "2979b33ffafd", ...}`` as compact JSON
#: with sorted keys; and the identity model's fingerprint (null when no identity model ran)
MODELS, IDENTITY_MODEL = "models", "identity_model"

#: the columns a listing gives per source object
SOURCE_FIELDS = [pa.field("etag", pa.string()), pa.field("size", pa.int64()), pa.field("mtime", pa.float64())]


#: the dtypes of declared outputs' columns (:mod:`facebatch.inference.outputs`) as Arrow types
ARROW_TYPES = {"points": pa.list_(f32), "float": f32, "bool": pa.bool_(), "vector": pa.list_(f32),
               "string": pa.string()}


def schema(columns: Sequence[tuple[str, str]]) -> pa.Schema:
    """The row schema for an analyzer whose declared outputs have these ``(column, dtype)``
    (``FaceAnalyzer.columns()``): the source and detection columns, then the outputs' columns."""
    fields = [
        pa.field(S.PATH, pa.string(), nullable=False), pa.field(S.SHA256, pa.string()),
        pa.field(S.WIDTH, pa.int32()), pa.field(S.HEIGHT, pa.int32()),
        pa.field(S.STATUS, pa.string(), nullable=False), pa.field(S.ERROR, pa.string()),
        *SOURCE_FIELDS,
        pa.field(S.N_FACES, pa.int32()), pa.field(S.FACE_INDEX, pa.int32()),
        pa.field(S.BOX, pa.list_(f32, 4)), pa.field(S.SCORE, f32), pa.field(S.LANDMARKS, pa.list_(f32, 10)),
        pa.field("face_size", f32), pa.field(S.CROP_BOX, pa.list_(f32, 4)),
    ]
    fields += [pa.field(name, ARROW_TYPES[dtype]) for name, dtype in columns]
    fields += [pa.field(S.CROP, pa.binary()),
               pa.field(MODELS, pa.string()), pa.field(IDENTITY_MODEL, pa.string()),
               pa.field("run_id", pa.string(), nullable=False), pa.field("annotated_at", TS)]
    return pa.schema(fields)


def to_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]],
             metadata: dict[bytes, str] | None = None) -> pa.Table:
    """Rows (dicts; a missing key is null) -> a table in :func:`schema` ``(columns)``."""
    sch = schema(columns)
    t = pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in sch}, schema=sch)
    if metadata:
        t = t.replace_schema_metadata(metadata)
    return t


def face_fields(face, scale: float, embedding: bool) -> dict[str, Any]:
    """One face's row fields from a ``FaceResult`` found in an image decoded at ``1/scale``:
    every coordinate (box, landmarks, crop box, points outputs) and the face size times
    ``scale``, so they are pixels of the original image."""
    d = face.to_dict(embedding=embedding)
    points = [S.BOX, S.LANDMARKS, S.CROP_BOX] + [c for o in face.declared for c, t in o.columns() if t == "points"]
    for c in points:
        if d.get(c) is not None:
            d[c] = [float(x) * scale for x in d[c]]
    d["face_size"] = float(d["face_size"]) * scale
    return d


def read_metadata(sch: pa.Schema) -> dict[str, Any]:
    """facebatch's file metadata of an annotate part, decoded."""
    out = {}
    for k, v in (sch.metadata or {}).items():
        if k.startswith(b"facebatch."):
            try:
                out[k.decode()[len("facebatch."):]] = json.loads(v)
            except json.JSONDecodeError:
                out[k.decode()[len("facebatch."):]] = v.decode()
    return out
