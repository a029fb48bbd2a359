"""Shards: fixed runs of the sorted inputs, one part each, and the done-markers that make
``--resume`` safe. Pure but for the marker files; no Ray.

- :func:`plan_shards` cuts the sorted inputs; :func:`part_name` names a shard's part.
- :func:`shard_inputs_hash`: a marker records a hash of its shard's input fingerprints
  (:func:`facebatch.batch.listing.input_fingerprint`), so a shard whose inputs changed is redone
  instead of skipped (adding one file shifts every later shard).
- :func:`plan_resume`: which shards to skip, redo (inputs changed) or retry (rows with a status a
  retry could change, e.g. ``read_error``).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import schema as S
from ..storage import filesystem, join

#: row statuses a rerun could change without the input changing: ``--resume`` redoes their shards
RETRY_ON_RESUME = (S.READ_ERROR, S.DETECT_ERROR)
#: bump when the marker's meaning changes; markers without it are treated as changed
MARKER_VERSION = 2
#: the folder of the done-markers, beside the parts
DONE_DIR = "_done"
#: every part's name matches this
PART_GLOB = "part-*.parquet"


def part_name(shard_id: int, ext: str = ".parquet") -> str:
    """``part-NNNNN.parquet``: a rerun of a shard writes the same name."""
    return f"part-{shard_id:05d}{ext}"


def shard_of(name: str) -> int:
    """The shard id in a part's or marker's name (``.../part-00012.parquet.tmp-ab12`` -> 12)."""
    return int(name.rsplit("part-", 1)[1].split(".")[0])


def plan_shards(items: Sequence, shard_size: int) -> list[list]:
    """Cut the (already sorted) ``items`` into consecutive runs of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    return [list(items[i:i + shard_size]) for i in range(0, len(items), shard_size)]


def shard_inputs_hash(fingerprints: Iterable[str]) -> str:
    """sha256 of the sorted fingerprints of one shard's inputs."""
    h = hashlib.sha256()
    for f in sorted(fingerprints):
        h.update(f.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


# ---- done-markers ----------------------------------------------------------------------------------

def write_marker(output: str, shard_id: int, stats: dict, options: dict) -> None:
    """``OUTPUT/_done/part-NNNNN.json``: the shard's stats, written after its part."""
    fs, root = filesystem(output, options)
    fs.makedirs(join(root, DONE_DIR), exist_ok=True)
    with fs.open(join(root, DONE_DIR, part_name(shard_id, ".json")), "w") as f:
        json.dump(stats, f)


def read_markers(output: str, options: dict) -> dict[int, dict]:
    """``{shard id: stats}`` of every done-marker in ``output``."""
    fs, root = filesystem(output, options)
    done = {}
    for p in fs.glob(join(root, DONE_DIR, "part-*.json")):
        with fs.open(p, "r") as f:
            st = json.load(f)
        done[int(st["shard_id"])] = st
    return done


# ---- the resume plan -------------------------------------------------------------------------------

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

    def counts(self) -> dict:
        return {"skipped": len(self.skip), "changed": len(self.changed), "retried": len(self.retry),
                "stale_removed": len(self.stale)}


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
