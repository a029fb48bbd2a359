"""How a batch job fails: :class:`JobFailed` on the driver, and the worker failures behind it.

A worker that cannot write its part raises :func:`write_failed` (a plain ``RuntimeError`` with
a key in its text: Ray hands the driver the text, not the type); the driver finds it again with
:func:`write_failure`. :func:`is_lost_worker` tells a lost actor or node from a bug, and
:func:`rerun_can_fix` both from a storage outage that outlasted the retries.

The exit statuses every batch command (preprocess, annotate) returns, for schedulers:

======  ==========================================================================================
0       clean run
1       anything else (a bug, an unexpected error: see the message, ``-v`` for the traceback)
2       bad usage: options, inputs, credentials; nothing was done
3       too many permanent failures (above ``--max-failure-rate``)
75      try again later (``EX_TEMPFAIL``): rows failed on a transient storage error, the run stopped
        on a storage outage or a lost node, or another run holds the output's lock. The same
        command finishes the work.
130     interrupted (Ctrl-C)
======  ==========================================================================================
"""
from __future__ import annotations

WRITE_FAILED = "FACEBATCH_WRITE_FAILED "
#: in the text of :class:`facebatch.batch.retry.RetriesExhausted` (and so in a row's ``error`` and a
#: worker's write failure): a transient storage error outlasted ``--retry-seconds``
EXHAUSTED = "still failing after"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TOO_MANY_FAILED = 3
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL
EXIT_INTERRUPTED = 130

_LOST = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
         "ObjectLostError", "OwnerDiedError")
_LOST_TEXT = ("ActorDiedError", "RayActorError", "WorkerCrashedError", "ObjectLostError")


class JobFailed(RuntimeError):
    """The job stopped part-way; the message says what failed, what was kept and how to finish.

    ``retryable``: a rerun can get past it (a storage outage, lost workers or nodes): the command
    exits :data:`EXIT_TEMPFAIL` (75); otherwise :data:`EXIT_ERROR` (1)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = bool(retryable)

    @property
    def exit_status(self) -> int:
        return EXIT_TEMPFAIL if self.retryable else EXIT_ERROR


def write_failed(shard_id: int, where: str, exc: BaseException) -> RuntimeError:
    """The error a worker raises when a shard's output could not be written."""
    return RuntimeError(f"{WRITE_FAILED}shard {shard_id} to {where}: {type(exc).__name__}: {exc}"[:800])


def write_failure(exc: BaseException) -> str | None:
    """``could not write ...`` when ``exc`` came from :func:`write_failed` in a worker, else ``None``."""
    text = str(exc)
    if WRITE_FAILED in text:  # the last one: Ray's abbreviated traceback also quotes the raising source line
        line = text[text.rindex(WRITE_FAILED) + len(WRITE_FAILED):].splitlines()[0]
        return "could not write " + line[:400]
    return None


def is_lost_worker(exc: BaseException) -> bool:
    """True when Ray lost an actor, a worker process or a node (a rerun of the shards can succeed)."""
    names = {c.__name__ for e in (exc, exc.__cause__) if e is not None for c in type(e).__mro__}
    text = str(exc)
    return bool(names & set(_LOST)) or any(t in text for t in _LOST_TEXT)


def short_error(exc: BaseException) -> str:
    """One line for a failed run: the node-death cause when Ray gives one, else the error's last line."""
    text = [t for t in str(exc).strip().splitlines() if t.strip()]
    died = [t.strip() for t in text if "node" in t.lower() and ("died" in t.lower() or "dead" in t.lower())]
    return f"{type(exc).__name__}: {(died or text or [''])[-1]}"[:300]


def rerun_can_fix(exc: BaseException) -> bool:
    """True when running the job again can get past ``exc``: Ray lost a worker or node, a storage
    error outlasted the retries (:data:`EXHAUSTED` in the text, also from a worker's
    :func:`write_failed`), or the error itself is a transient storage error."""
    from ..storage import is_transient
    return is_lost_worker(exc) or any(EXHAUSTED in str(e) for e in (exc, exc.__cause__) if e is not None) \
        or is_transient(exc)
