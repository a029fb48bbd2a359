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


def retryable_fields(results: Iterable[dict]) -> dict:
    """The summary's ``retryable`` (bool) and ``retryable_inputs`` (count): inputs whose read failed on
    a transient storage error that outlasted the retries (each shard's ``retryable`` stat,
    :func:`facebatch.batch.retry.retryable_inputs`). A rerun can succeed for them."""
    n = sum(int(st.get("retryable") or 0) for st in results)
    return {"retryable": n > 0, "retryable_inputs": n}


def exit_status(summary: dict, max_failure_rate: float) -> int:
    """The status a finished run exits with: 75 when inputs failed transiently (whatever
    ``max_failure_rate`` says: a rerun can fix them), 3 when more than ``max_failure_rate`` of the
    inputs failed, else 0 (:mod:`facebatch.batch.errors`)."""
    from .errors import EXIT_OK, EXIT_TEMPFAIL, EXIT_TOO_MANY_FAILED
    if summary.get("retryable_inputs"):
        return EXIT_TEMPFAIL
    if summary.get("failure_rate", 0.0) > max_failure_rate:
        return EXIT_TOO_MANY_FAILED
    return EXIT_OK


def retry_hint(summary: dict, rerun: str) -> str:
    """The line a run that exits 75 prints: how many inputs and how to rerun them (``rerun``)."""
    n = summary.get("retryable_inputs", 0)
    return (f"{n} input{'s' if n != 1 else ''} could not be read: a storage error outlasted --retry-seconds "
            f"(status read_error); {rerun} to retry {'them' if n != 1 else 'it'} (exit status 75)")
