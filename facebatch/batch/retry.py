"""Retries: transient storage errors (connection refused or reset, timeouts, HTTP 5xx, SlowDown;
:func:`facebatch.storage.is_transient`) retried with backoff, and a batch call that falls back to
one item at a time so that one bad item cannot sink the others."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..storage import is_transient
from .errors import EXHAUSTED


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


def retry_note(what: str, exc: BaseException, attempt: int, delay: float) -> None:
    """The line a worker prints before a retry (Ray forwards it to the driver's output)."""
    print(f"[facebatch] retrying {what} in {delay:.1f} s (attempt {attempt + 1}) after "
          f"{type(exc).__name__}: {str(exc)[:160]}", flush=True)


class RetryCounter:
    """An ``on_retry`` for :func:`call_with_retries` that prints :func:`retry_note` and counts."""

    def __init__(self) -> None:
        self.retries = 0

    def __call__(self, what: str, exc: BaseException, attempt: int, delay: float) -> None:
        self.retries += 1
        retry_note(what, exc, attempt, delay)


def call_with_retries(fn: Callable[[], Any], policy: RetryPolicy, what: str,
                      on_retry: Callable[[str, BaseException, int, float], None] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> Any:
    """``fn()``, retried after transient errors (:func:`is_transient`) with ``policy``'s backoff.

    Non-transient errors are raised at once, unchanged. When the budget runs out,
    :class:`RetriesExhausted` is raised from the last error, saying how long it was tried.
    ``on_retry(what, error, attempt, delay)`` is called before each wait
    (:func:`retry_note` prints a line; :class:`RetryCounter` also counts).
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
                # the marker comes first: rows and worker errors keep only the start of the text
                raise RetriesExhausted(f"{EXHAUSTED} {attempt} attempts over {time.monotonic() - t0:.0f} s: {what}: "
                                       f"{type(exc).__name__}: {exc}"[:600]) from exc
            if on_retry is not None:
                on_retry(what, exc, attempt, d)
            sleep(d)


def failure_text(exc: BaseException) -> str:
    """``Type: message`` for a row's ``error``; after :class:`RetriesExhausted`, the type is the last
    transient error's."""
    shown = exc.__cause__ if isinstance(exc, RetriesExhausted) and exc.__cause__ else exc
    return f"{type(shown).__name__}: {exc}"


def failed_transiently(error: str | None) -> bool:
    """True for a row's ``error`` that :func:`failure_text` made after :class:`RetriesExhausted`: a
    transient storage error outlasted ``--retry-seconds``, and a rerun can succeed."""
    return bool(error) and EXHAUSTED in error


def retryable_inputs(rows: Iterable[dict]) -> int:
    """Inputs among ``rows`` (first row of each: ``face_index`` <= 0) whose read failed transiently
    (status ``read_error``, :func:`failed_transiently`): they make the run exit 75."""
    from .. import schema as S
    return sum(1 for r in rows if (r.get(S.FACE_INDEX) or 0) <= 0 and r.get(S.STATUS) == S.READ_ERROR
               and failed_transiently(r.get(S.ERROR)))


def one_by_one(fn: Callable[[list], list], items: Sequence, on_error: Callable[[int, Exception], Any]) -> list:
    """``fn(items)``; if that raises, ``fn([item])[0]`` for each item alone, and for an item that still
    raises ``on_error(index, error)`` (which records the failure) in its place."""
    try:
        return fn(list(items))
    except Exception:
        out = []
        for i, item in enumerate(items):
            try:
                out.append(fn([item])[0])
            except Exception as exc:
                out.append(on_error(i, exc))
        return out
