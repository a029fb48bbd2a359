"""What identifies the version of a listed input, and its fingerprint.

Listers give one ``info`` dict per object (fsspec's ``info``/``find``: ``size`` and ``mtime``
locally; ``ETag`` and ``LastModified`` on S3). A change of size, ETag or (without an ETag)
mtime is a changed input.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Any


def etag_of(info: dict) -> str | None:
    """The object's ETag without its quotes, or ``None`` (local files have none)."""
    v = info.get("ETag") or info.get("etag")
    return str(v).strip('"') if v else None


def mtime_of(info: dict) -> float | None:
    """The modification time in epoch seconds, or ``None``."""
    v = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if v is None:
        return None
    if isinstance(v, _dt.datetime):
        return v.timestamp()
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def version_of(info: dict) -> Any:
    """The ETag (S3) or mtime (local) as the lister gave it, for :func:`input_fingerprint`."""
    return info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")


def input_fingerprint(path: str, size: Any = None, version: Any = None, labels: Any = None) -> str:
    """One input as a string that changes when the input or its labels change.

    Args:
        path: the input's path or URI.
        size: byte size (``None`` when unknown).
        version: local mtime in ns, an S3 ETag, or a hash of inline bytes.
        labels: anything JSON-serialisable that decides the row besides the bytes (labels, split).
    """
    lab = json.dumps(labels, sort_keys=True, default=str) if labels is not None else ""
    return f"{path}\x1f{size}\x1f{version}\x1f{lab}"
