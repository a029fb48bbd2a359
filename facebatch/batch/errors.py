"""How a batch job fails: :class:`JobFailed` on the driver, and the worker failures behind it.

A worker that cannot write its part raises :func:`write_failed` (a plain ``RuntimeError`` with
a key in its text: Ray hands the driver the text, not the type); the driver finds it again with
:func:`write_failure`. :func:`is_lost_worker` tells a lost actor or node from a bug.
"""
from __future__ import annotations

WRITE_FAILED = "FACEBATCH_WRITE_FAILED "

_LOST = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
         "ObjectLostError", "OwnerDiedError")
_LOST_TEXT = ("ActorDiedError", "RayActorError", "WorkerCrashedError", "ObjectLostError")


class JobFailed(RuntimeError):
    """The job stopped part-way for a reason a rerun can get past (storage outage, lost workers);
    the message says what failed, what was kept and how to finish."""


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
