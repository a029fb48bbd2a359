"""What the driver gathers as shards finish, and the figures of a job's summary."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .. import schema as S


def steady_rate(finished: list[tuple[float, int]]) -> float | None:
    """Images/s between the first and the last finished shard: throughput once Ray and the actors are up.

    Start-up (Ray, actor construction, the first shard) is a fixed cost that hides how a run scales
    with workers; this rate leaves it out. ``None`` with fewer than 3 shards.
    """
    if len(finished) < 3 or finished[-1][0] <= finished[0][0]:
        return None
    return round(sum(n for _, n in finished[1:]) / (finished[-1][0] - finished[0][0]), 2)


@dataclass
class ShardTally:
    """The stats of every finished shard by id (``results``; resumed shards' markers too) and, for
    the shards this run finished, ``(time.perf_counter(), inputs)`` in the order they came back."""

    results: dict[int, dict] = field(default_factory=dict)
    finished: list[tuple[float, int]] = field(default_factory=list)

    def add(self, stats: dict) -> None:
        self.results[stats["shard_id"]] = stats
        self.finished.append((time.perf_counter(), stats["n_inputs"]))

    @property
    def inputs(self) -> int:
        return sum(r["n_inputs"] for r in self.results.values())

    def steady_rate(self) -> float | None:
        return steady_rate(self.finished)


def count(results: Iterable[dict], key: str) -> Counter:
    """The sum of every shard's ``key`` counts (``{status: n}``)."""
    out: Counter = Counter()
    for st in results:
        out.update(st.get(key) or {})
    return out


def failed(status_counts: dict) -> int:
    """Inputs whose status is a failure (:data:`facebatch.schema.FAILED_STATUSES`)."""
    return sum(v for k, v in status_counts.items() if k in S.FAILED_STATUSES)
