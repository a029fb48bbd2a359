"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Object stores (S3 and the like) make an object appear whole when its upload completes, so the
file is written in place there; on a local filesystem it is written under a temporary name
beside the target, flushed to disk and renamed over it. :func:`is_local` is the one test of
which case applies.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Callable


def is_local(fs: Any) -> bool:
    """True for fsspec's local filesystem (where a rename is atomic); False for object stores."""
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool({"file", "local"} & set(protocol))


def write_atomic(fs: Any, path: str, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a file opened for binary writing that replaces ``path`` only once complete."""
    if not is_local(fs):
        with fs.open(path, "wb") as f:
            write(f)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # unique: a retried write never meets a torn one
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_table_atomic(fs: Any, path: str, table) -> None:
    """A pyarrow table as one Parquet file at ``path``, atomically (:func:`write_atomic`)."""
    import pyarrow.parquet as pq
    write_atomic(fs, path, lambda f: pq.write_table(table, f))
