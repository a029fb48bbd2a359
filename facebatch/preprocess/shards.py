"""Shard machinery shared by batch jobs (preprocess now, annotate next). Pure: no Ray.

A job lists its inputs, sorts them, cuts them into fixed runs (shards) and writes one part
plus one done-marker per shard. What makes ``--resume`` safe:

- :func:`input_fingerprint` / :func:`shard_inputs_hash`: a marker records a hash of its shard's
  inputs (path, size, mtime or ETag, labels), so a shard whose inputs changed is redone
  instead of being skipped (adding one file shifts every later shard).
- :func:`plan_resume`: which shards to skip, redo (inputs changed) or retry (rows with a
  status a retry could change, e.g. ``read_error``).
- :func:`check_output_paths`: the final check compares the *set* of paths in the output with
  the listing: no duplicates, none missing, none extra. Counts alone are not enough.
- :func:`is_transient` / :func:`call_with_retries`: transient storage errors (connection
  refused or reset, timeouts, HTTP 5xx, SlowDown) are retried with backoff.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .. import schema as S
from ..storage import _chain, is_transient  # noqa: F401  (re-exported: the retry rules live with storage)

#: row statuses a rerun could change without the input changing: ``--resume`` redoes their shards
RETRY_ON_RESUME = (S.READ_ERROR, S.DETECT_ERROR)
#: bump when the marker's meaning changes; markers without it are treated as changed
MARKER_VERSION = 2


# ---- planning and input hashes --------------------------------------------------------------------

def plan_shards(items: Sequence, shard_size: int) -> list[list]:
    """Cut the (already sorted) ``items`` into consecutive runs of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    return [list(items[i:i + shard_size]) for i in range(0, len(items), shard_size)]


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


def shard_inputs_hash(fingerprints: Iterable[str]) -> str:
    """sha256 of the sorted fingerprints of one shard's inputs."""
    h = hashlib.sha256()
    for f in sorted(fingerprints):
        h.update(f.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass
class ResumePlan:
    """What ``--resume`` does with each shard (ids index the current plan)."""

    skip: list[int]
    todo: list[int]  # never done, or to redo
    changed: list[int]  # had a marker, but its inputs hash differs (or an old marker)
    retry: dict[int, dict]  # had a marker with retryable failed rows: {shard: {status: n}}
    stale: list[int]  # markers beyond the current plan (the input shrank)

    def describe(self) -> str:
        parts = [f"{len(self.skip)} finished shards unchanged (skipped)"]
        if self.changed:
            parts.append(f"{len(self.changed)} redone because their inputs changed "
                         f"(first: shard {self.changed[0]})")
        if self.retry:
            n = Counter()
            for c in self.retry.values():
                n.update(c)
            parts.append(f"{len(self.retry)} redone to retry " + ", ".join(f"{v} {k}" for k, v in sorted(n.items())))
        new = len(self.todo) - len(self.changed) - len(self.retry)
        if new:
            parts.append(f"{new} not yet done")
        if self.stale:
            parts.append(f"{len(self.stale)} stale parts beyond the inputs removed")
        return "--resume: " + "; ".join(parts)


def plan_resume(hashes: Sequence[str], markers: dict[int, dict],
                retry_statuses: Sequence[str] = RETRY_ON_RESUME) -> ResumePlan:
    """Decide per shard: skip only when a marker exists *and* its inputs hash equals the current one
    *and* none of its inputs has a status in ``retry_statuses``."""
    skip, todo, changed, retry = [], [], [], {}
    for i, h in enumerate(hashes):
        m = markers.get(i)
        if m is None:
            todo.append(i)
        elif m.get("inputs_sha256") != h or m.get("marker_version") != MARKER_VERSION:
            todo.append(i)
            changed.append(i)
        else:
            bad = {k: v for k, v in (m.get("input_status_counts") or {}).items() if k in retry_statuses and v}
            if bad:
                todo.append(i)
                retry[i] = bad
            else:
                skip.append(i)
    stale = sorted(i for i in markers if i >= len(hashes))
    return ResumePlan(skip=skip, todo=todo, changed=changed, retry=retry, stale=stale)


# ---- the final check ------------------------------------------------------------------------------

class OutputCheckError(RuntimeError):
    """The written output does not hold exactly one result per listed input."""


def check_output_paths(expected: Iterable[str], found: Iterable[tuple[str, int]], all_faces: bool) -> dict:
    """Compare the output's rows with the listing as sets.

    Args:
        expected: the listed inputs' paths.
        found: ``(path, face_index)`` for every row in the output files.
        all_faces: several rows per input are allowed (distinct ``face_index``).

    Returns:
        ``{"inputs": n, "rows": n}`` when every input has its row(s), no row is repeated and no
        row belongs to an input that was not listed.

    Raises:
        OutputCheckError: naming the first few missing, duplicated and unexpected paths.
    """
    exp = list(expected)
    exp_set = set(exp)
    rows = list(found)
    keys = Counter((p, fi if all_faces else 0) for p, fi in rows)
    dup = sorted({p for (p, _), n in keys.items() if n > 1})
    per_path = Counter(p for p, _ in rows)
    if not all_faces:
        dup = sorted(set(dup) | {p for p, n in per_path.items() if n > 1})
    seen = set(per_path)
    missing = sorted(exp_set - seen)
    extra = sorted(seen - exp_set)
    dup_listing = len(exp) - len(exp_set)
    if missing or extra or dup or dup_listing:
        def few(xs):
            return ", ".join(xs[:3]) + (" ..." if len(xs) > 3 else "")
        msg = [f"output check failed: {len(exp_set)} inputs listed, {len(rows)} rows in the output"]
        if missing:
            msg.append(f"{len(missing)} inputs without a row ({few(missing)})")
        if dup:
            msg.append(f"{len(dup)} inputs with repeated rows ({few(dup)})")
        if extra:
            msg.append(f"{len(extra)} rows for inputs not in the listing ({few(extra)})")
        if dup_listing:
            msg.append(f"{dup_listing} paths listed twice")
        raise OutputCheckError("; ".join(msg))
    return {"inputs": len(exp_set), "rows": len(rows)}


# ---- retries --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base_s * 2**k`` capped at ``cap_s``, for at most ``budget_s``
    seconds of waiting in all (``budget_s=0``: no retries)."""

    budget_s: float = 120.0
    base_s: float = 0.5
    cap_s: float = 20.0

    def delays(self) -> Iterable[float]:
        waited, k = 0.0, 0
        while self.budget_s - waited >= 0.05:
            d = min(min(self.cap_s, self.base_s * 2 ** k) * random.uniform(0.8, 1.0), self.budget_s - waited)
            yield d
            waited += d
            k += 1


class RetriesExhausted(Exception):
    """A transient error outlasted the retry budget; ``__cause__`` is the last error."""


def call_with_retries(fn: Callable[[], Any], policy: RetryPolicy, what: str,
                      on_retry: Callable[[str, BaseException, int, float], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> Any:
    """``fn()``, retried after transient errors (:func:`is_transient`) with ``policy``'s backoff.

    Non-transient errors are raised at once, unchanged. When the budget runs out,
    :class:`RetriesExhausted` is raised from the last error, saying how long it was tried.
    ``on_retry(what, error, attempt, delay)`` is called before each wait.
    """
    t0 = time.monotonic()
    attempt = 0
    delays = iter(policy.delays())
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            d = next(delays, None)
            if d is None:
                raise RetriesExhausted(f"{what}: {type(exc).__name__}: {exc} (still failing after {attempt} "
                                       f"attempts over {time.monotonic() - t0:.0f} s)"[:600]) from exc
            if on_retry is not None:
                on_retry(what, exc, attempt, d)
            sleep(d)
