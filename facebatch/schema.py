"""The schema of the preprocess Parquet table (detected, cropped faces with their labels), which
training and evaluation read; and the column names and row statuses shared by every facebatch table.

The annotate output has a schema of its own, in :mod:`facebatch.annotate.rows`; it takes the
column names and statuses it shares with this table from here. Writers and readers of either
import names from here rather than spelling them.

Preprocess rows: one per input image (or per face with ``--all-faces``). Every row has a ``status``;
rows that failed keep their path and error so nothing is lost. Coordinates are floats in
pixels of the original image (after EXIF orientation) unless the column says ``crop``
(pixels of the square crop) or ``norm`` ([0, 1] in the crop).
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1"

# Row statuses. Only OK rows carry a crop.
OK = "ok"
NO_FACE = "no_face"
DECODE_ERROR = "decode_error"
EMPTY_FILE = "empty_file"
TOO_LARGE = "too_large"
READ_ERROR = "read_error"
DETECT_ERROR = "detect_error"
# Annotate rows only: the photo's faces were erased (``facebatch forget``); never annotated again.
ERASED = "erased"
STATUSES = (OK, NO_FACE, DECODE_ERROR, EMPTY_FILE, TOO_LARGE, READ_ERROR, DETECT_ERROR, ERASED)
FAILED_STATUSES = tuple(s for s in STATUSES if s not in (OK, NO_FACE, ERASED))

# Column names.
PATH, SHA256, WIDTH, HEIGHT = "path", "sha256", "width", "height"
STATUS, ERROR = "status", "error"
N_FACES, FACE_INDEX, BOX, SCORE, LANDMARKS = "n_faces", "face_index", "box", "score", "landmarks"
CROP_BOX, CROP, CROP_SIZE = "crop_box", "crop", "crop_size"
KP_SCHEME, KEYPOINTS, KEYPOINTS_CROP, KEYPOINTS_NORM = "keypoint_scheme", "keypoints", "keypoints_crop", "keypoints_norm"
ATTRIBUTES, IDENTITY, PERSON, SPLIT = "attributes", "identity", "person", "split"

f32 = pa.float32()
SCHEMA = pa.schema([
    pa.field(PATH, pa.string(), nullable=False),  # local path, s3:// URI, or <csv>#row=N
    pa.field(SHA256, pa.string()),  # of the input bytes
    pa.field(WIDTH, pa.int32()),
    pa.field(HEIGHT, pa.int32()),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(ERROR, pa.string()),
    pa.field(N_FACES, pa.int32()),  # faces found in the image
    pa.field(FACE_INDEX, pa.int32()),  # which of them this row is (0 = the chosen/largest), -1 if none
    pa.field(BOX, pa.list_(f32, 4)),  # x1, y1, x2, y2
    pa.field(SCORE, f32),
    pa.field(LANDMARKS, pa.list_(f32, 10)),  # 5 x (x, y): eye, eye, nose, mouth, mouth (image left first)
    pa.field(CROP_BOX, pa.list_(f32, 4)),  # square crop in original pixels (may extend past the edges)
    pa.field(CROP_SIZE, pa.int32()),
    pa.field(CROP, pa.binary()),  # JPEG bytes of the RGB crop, or null (--no-crops, or no face)
    pa.field(KP_SCHEME, pa.string()),  # ibug68 / kaggle15 / null
    pa.field(KEYPOINTS, pa.list_(f32)),  # flattened (x, y) pairs, NaN = missing
    pa.field(KEYPOINTS_CROP, pa.list_(f32)),
    pa.field(KEYPOINTS_NORM, pa.list_(f32)),
    pa.field(ATTRIBUTES, pa.string()),  # JSON object of lower-case name -> 0/1, or null
    pa.field(IDENTITY, pa.string()),
    pa.field(PERSON, pa.string()),  # who is in the image, for by-person splits
    pa.field(SPLIT, pa.string()),  # train / val / test
])
COLUMNS = tuple(SCHEMA.names)

# File-level metadata keys (values are JSON strings).
META_SCHEMA_VERSION = b"facebatch.schema_version"
META_DETECTOR = b"facebatch.detector"
META_CONFIG = b"facebatch.config"
META_VERSION = b"facebatch.version"
META_GIT = b"facebatch.git"


def empty_row() -> dict[str, Any]:
    """A row with every column present and null."""
    return {name: None for name in COLUMNS}


def to_table(rows: list[dict[str, Any]], metadata: dict[bytes, str] | None = None) -> pa.Table:
    """Build a table in :data:`SCHEMA` from row dicts (missing keys become null)."""
    cols = {name: [r.get(name) for r in rows] for name in COLUMNS}
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return table


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """Decode facebatch's file-level metadata from a Parquet schema."""
    md = schema.metadata or {}
    out = {}
    for key in (META_SCHEMA_VERSION, META_DETECTOR, META_CONFIG, META_VERSION, META_GIT):
        if key in md:
            raw = md[key].decode()
            try:
                out[key.decode().split(".", 1)[1]] = json.loads(raw)
            except json.JSONDecodeError:
                out[key.decode().split(".", 1)[1]] = raw
    return out
