"""Stage 1 of the annotate job: read each shard's objects (Ray tasks, fractional CPU).

Kept apart from :mod:`.pipeline` because Ray imports a task function's module in every worker that
runs it: this module imports no torch (``pipeline`` does, through the detector config), which saves
each read worker seconds of start-up on a small machine.
"""
from __future__ import annotations

import pickle
import time

from .. import schema as S
from ..batch.listing import etag_of, mtime_of
from ..batch.retry import RetryPolicy, call_with_retries, failure_text, retry_note
from ..storage import filesystem


def _read(path: str, options: dict) -> tuple[bytes, dict]:
    """The object's bytes and its info as of the read: on S3 the HEAD that s3fs makes when it opens
    the object (its ranged GETs carry ``If-Match`` on that ETag, so a change between HEAD and GET
    fails the read); elsewhere a stat *after* the read, so a change during the read shows too."""
    fs, p = filesystem(path, options)
    fs.invalidate_cache(p)  # s3fs answers the HEAD from a cached listing of the folder when it has one
    with fs.open(p, "rb") as f:
        data = f.read()
        info = getattr(f, "details", None)
    if not isinstance(info, dict) or not info:
        try:
            info = fs.info(p)
        except Exception:  # removed right after the read: compare nothing more
            info = {}
    return data, info


def changed_since_listing(src: dict, n_read: int, info: dict) -> str | None:
    """Why the object read differs from the listed one, or ``None``: size, then the ETag when both
    the listing and the read have one, else the mtime when both have one."""
    if src.get("size") is not None and n_read != src["size"]:
        return f"object changed since it was listed ({n_read} bytes read, {src['size']} listed)"
    etag = etag_of(info)
    if src.get("etag") and etag:
        if etag != src["etag"]:
            return f"object changed since it was listed (ETag {etag} read, {src['etag']} listed)"
        return None
    mtime = mtime_of(info)
    if src.get("mtime") is not None and mtime is not None and mtime != src["mtime"]:
        return f"object changed since it was listed (mtime {mtime:.6f} read, {src['mtime']:.6f} listed)"
    return None


def read_object(src: dict, options: dict, policy: RetryPolicy) -> tuple[dict, bytes | None]:
    """``(base columns, bytes or None)`` for one listed object; never raises. An object that is
    gone or changed since the listing (size, ETag or mtime differ) gets ``read_error``; the next run
    sees it as changed or deleted and picks it up again."""
    base = {S.PATH: src["path"], "etag": src["etag"], "size": src["size"], "mtime": src["mtime"]}
    try:
        data, info = call_with_retries(lambda: _read(src["path"], options), policy, f"read {src['path']}",
                                       on_retry=retry_note)
    except Exception as exc:
        base.update({S.STATUS: S.READ_ERROR, S.ERROR: failure_text(exc)[:500]})
        return base, None
    why = changed_since_listing(src, len(data), info)
    if why:
        base.update({S.STATUS: S.READ_ERROR, S.ERROR: why})
        return base, None
    return base, data


def read_shard(row: dict, options: dict, retry_s: float) -> dict:
    """One shard's objects read (the Ray task): ``payload`` is the pickled ``[(base, bytes or None)]``."""
    begin = time.time()
    t0, c0 = time.perf_counter(), time.process_time()
    objs = pickle.loads(row["objects"])
    policy = RetryPolicy(budget_s=retry_s)
    out = [read_object(o, options, policy) for o in objs]
    payload = pickle.dumps(out, protocol=5)
    return {"shard_id": row["shard_id"], "payload": payload, "read_s": time.perf_counter() - t0,
            "read_cpu_s": time.process_time() - c0, "read_begin": begin, "read_end": time.time()}
