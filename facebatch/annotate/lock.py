"""One run at a time per output: ``DST/_state/lock.json`` with the run id and a time-to-live.

The holder renews the lock every ``ttl_s / 3`` seconds from a thread. Another run may take the
lock over only when it has expired, or when it was taken on this host by a process that no longer
exists (a run killed with ``kill -9`` and restarted at once). Otherwise it fails with
:class:`LockHeld`, naming the holder's run id and when its lock expires (exit status 75: try
again later).

How the lock is made exclusive:

- **Object stores** (S3, MinIO, ...): the lock object is created with a conditional write
  (``PutObject`` with ``If-None-Match: *``): of two runs that start together, the store lets exactly
  one create it and answers the other ``412 PreconditionFailed``. Renewals, takeovers of an expired
  lock and the release are conditional on the lock's ETag (``If-Match``), so a run that lost its
  lock never overwrites or deletes the new holder's. Whether the store honours the conditions is
  probed once per process and bucket (a conditional write over an existing probe object must be
  refused). Where the store refuses them (``501 NotImplemented``, ``400``) or ignores them, the
  lock falls back to write-then-read-back, with a warning that names the store: best effort, two
  runs starting within the same second could both proceed.
- **Local folders**: the lock file is created with an exclusive create (written in full under a
  temporary name, then hard-linked into place: ``O_EXCL`` semantics, never a half-written lock);
  takeovers, renewals and the release happen under an ``flock`` on ``lock.json.guard`` beside it and
  replace the file atomically.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

from ..batch.errors import EXIT_TEMPFAIL, JobFailed
from ..batch.write import is_local
from ..storage import filesystem, is_transient, join

LOCK_FILE = "lock.json"
GUARD_FILE = "lock.json.guard"
DEFAULT_TTL_S = 900.0
#: how long acquiring, renewing and releasing retry transient storage errors
STORAGE_RETRY_S = 60.0

#: lock modes (the ``lock`` field of the lock file, and :attr:`RunLock.mode`)
EXCLUSIVE, BEST_EFFORT, LOCAL = "conditional-write", "best-effort", "local-exclusive"

# (endpoint, bucket) -> None when the store honours If-None-Match and If-Match, else why not
_PROBED: dict[tuple[str, str], str | None] = {}
_PROBED_LOCK = threading.Lock()


class LockHeld(RuntimeError):
    """Another run holds the output's lock (exit status 75: try again later). ``holder`` is its lock
    file's content."""

    exit_status = EXIT_TEMPFAIL

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class _Precondition(Exception):
    """The store refused a conditional write: the object exists (If-None-Match) or changed (If-Match)."""


class _Unsupported(Exception):
    """The store does not implement a request's condition (501 NotImplemented, 400 on the header).
    Raised without its cause, so that retries do not take a 501 for a transient 5xx."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _utc(t: float) -> str:
    return _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _s3_code(exc: BaseException) -> tuple[str, int | None]:
    """``(error code, HTTP status)`` of a botocore error anywhere in ``exc``'s chain (s3fs wraps them)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            return (str((resp.get("Error") or {}).get("Code", "")),
                    (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
        e = e.__cause__ or e.__context__
    return "", None


def _is_precondition(exc: BaseException) -> bool:
    code, status = _s3_code(exc)
    # 409 ConditionalRequestConflict: AWS's answer to two conditional writes of one key at once
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _is_unsupported(exc: BaseException) -> bool:
    code, status = _s3_code(exc)
    return code in ("NotImplemented", "InvalidArgument", "InvalidRequest", "NotSupported") or status in (400, 501)


class RunLock:
    """The output's lock for one run: ``with RunLock(dst, options, run_id, ttl_s): ...``.

    :attr:`mode` says how it is held (:data:`EXCLUSIVE`, :data:`BEST_EFFORT` or :data:`LOCAL`);
    :attr:`lost` becomes True if another run took the lock over (this run's lock had expired).
    """

    def __init__(self, dst: str, options: dict, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.fs, root = filesystem(dst, options)
        self.options = options or {}
        self.dir = join(root, "_state")
        self.path = join(self.dir, LOCK_FILE)
        self.uri = join(str(dst), "_state", LOCK_FILE)
        self.run_id, self.ttl_s = run_id, float(ttl_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.local = is_local(self.fs)
        self.mode = LOCAL if self.local else EXCLUSIVE
        self.lost = False
        self._etag: str | None = None

    # ---- the lock file's content
    def _body(self) -> dict:
        now = time.time()
        return {"run_id": self.run_id, "host": self.host, "pid": self.pid, "heartbeat": now,
                "expires": now + self.ttl_s, "expires_utc": _utc(now + self.ttl_s), "ttl_s": self.ttl_s,
                "lock": self.mode}

    def _mine(self, held: dict | None) -> bool:
        return bool(held) and held.get("run_id") == self.run_id

    def read(self) -> dict | None:
        """The lock file's content, or ``None`` when there is no lock."""
        return self._read()[0]

    def _read(self) -> tuple[dict | None, str | None]:
        """``(content or None, ETag on object stores)``; a torn or unreadable file reads as expired."""
        if self.local or self.mode == BEST_EFFORT:
            try:
                with self.fs.open(self.path, "r") as f:
                    text = f.read()
            except FileNotFoundError:
                return None, None
            return self._parse(text), None
        try:
            text, etag = self._s3(self._get)
        except FileNotFoundError:
            return None, None
        return self._parse(text), etag

    @staticmethod
    def _parse(text: str) -> dict:
        try:
            d = json.loads(text)
            return d if isinstance(d, dict) else {"run_id": "?", "expires": 0}
        except (json.JSONDecodeError, ValueError):
            return {"run_id": "?", "expires": 0}

    def _stale(self, held: dict) -> str | None:
        if float(held.get("expires", 0) or 0) < time.time():
            return "expired"
        if held.get("host") == self.host and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
            return f"its process {held['pid']} on this host is gone"
        return None

    def _held(self, held: dict) -> LockHeld:
        exp = float(held.get("expires", 0) or 0)
        return LockHeld(
            f"another run holds this output's lock: run {held.get('run_id')} (host {held.get('host')}, pid "
            f"{held.get('pid')}), lock expires {_utc(exp)} (in {max(0.0, exp - time.time()):.0f} s) unless renewed; "
            f"lock {self.uri}. Try again once it has finished; delete the lock only if you are sure that run is dead.",
            holder=held)

    # ---- acquire
    def acquire(self) -> "RunLock":
        try:
            if self.local:
                self._acquire_local()
            else:
                self._acquire_store()
        except (LockHeld, JobFailed):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise JobFailed(f"could not take the output's lock {self.uri}: storage unavailable "
                                f"({type(exc).__name__}: {str(exc)[:200]}); rerun the same command") from exc
            raise
        self._thread = threading.Thread(target=self._beat, name="facebatch-lock", daemon=True)
        self._thread.start()
        return self

    def _take_over_note(self, held: dict, why: str) -> None:
        print(f"[facebatch] taking over the lock of run {held.get('run_id')} ({why})", file=sys.stderr, flush=True)

    # object stores
    def _acquire_store(self) -> None:
        reason = self._probe()
        if reason is not None:
            self.mode = BEST_EFFORT
            print(f"[facebatch] WARNING: the object store {self._store()} {reason}; the output lock {self.uri} falls "
                  "back to write-then-read-back (best effort: two runs starting within the same second could both "
                  "proceed). Schedule runs so that they cannot overlap (concurrencyPolicy: Forbid), or use a store "
                  "with conditional writes (AWS S3, MinIO).", file=sys.stderr, flush=True)
            self._acquire_best_effort()
            return
        body = lambda: json.dumps(self._body()).encode()  # noqa: E731
        for _ in range(8):
            try:
                self._etag = self._s3(self._put, body(), IfNoneMatch="*")
                return
            except _Precondition:
                pass
            held, etag = self._read()
            if held is None:
                continue  # released in between: try to create it again
            if self._mine(held):  # our own create, whose answer was lost and retried
                self._etag = etag
                return
            why = self._stale(held)
            if why is None:
                raise self._held(held)
            try:
                self._etag = self._s3(self._put, body(), IfMatch=etag)
                self._take_over_note(held, why)
                return
            except _Precondition:
                continue  # someone else took it over (or renewed it) first: look again
        held = self.read() or {"run_id": "?"}
        raise self._held(held)

    def _acquire_best_effort(self) -> None:
        held = self.read()
        if held is not None and not self._mine(held):
            why = self._stale(held)
            if why is None:
                raise self._held(held)
            self._take_over_note(held, why)
        with self.fs.open(self.path, "w") as f:
            f.write(json.dumps(self._body()))
        time.sleep(0.2)
        back = self.read() or {}
        if not self._mine(back):
            raise self._held(back)

    # local folders
    @contextmanager
    def _guard(self):
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the exclusive create still holds
            yield
            return
        fd = os.open(join(self.dir, GUARD_FILE), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _write_tmp(self) -> str:
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            f.write(json.dumps(self._body()))
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _acquire_local(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with self._guard():
            tmp = self._write_tmp()
            try:
                try:
                    os.link(tmp, self.path)  # exclusive create of the complete file
                    return
                except FileExistsError:
                    pass
                held = self.read()
                if held is not None:
                    why = self._stale(held)
                    if why is None:
                        raise self._held(held)
                    self._take_over_note(held, why)
                os.replace(tmp, self.path)  # under the guard: nobody else is deciding now
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

    # ---- renew
    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # keep running; the TTL is the safety net
                print(f"[facebatch] could not renew the lock {self.uri}: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)

    def renew(self) -> bool:
        """Extend the lock by ``ttl_s``; False (and :attr:`lost`) when another run holds it now."""
        if self.local:
            with self._guard():
                held = self.read()
                if not self._mine(held):
                    return self._lost(held)
                os.replace(self._write_tmp(), self.path)
            return True
        if self.mode == BEST_EFFORT:
            held = self.read()
            if not self._mine(held):
                return self._lost(held)
            with self.fs.open(self.path, "w") as f:
                f.write(json.dumps(self._body()))
            return True
        for _ in range(2):
            try:
                self._etag = self._s3(self._put, json.dumps(self._body()).encode(), IfMatch=self._etag)
                return True
            except _Precondition:
                held, etag = self._read()
                if not self._mine(held):
                    return self._lost(held)
                self._etag = etag  # our own renewal landed but its answer was lost: go on from it
        return True

    def _lost(self, held: dict | None) -> bool:
        self.lost = True
        other = (held or {}).get("run_id")
        print(f"[facebatch] WARNING: this run ({self.run_id}) no longer holds the lock {self.uri}: "
              + (f"run {other} took it over" if other else "it was removed")
              + "; this run's lock had expired (renewals failed for longer than --lock-ttl)", file=sys.stderr, flush=True)
        return False

    # ---- release
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            if self.local:
                with self._guard():
                    if self._mine(self.read()):
                        os.remove(self.path)
                return
            held, etag = self._read()
            if not self._mine(held):
                return
            if self.mode == EXCLUSIVE and etag:
                try:
                    self._s3(self._delete, IfMatch=etag)
                    return
                except _Precondition:
                    return  # changed since we read it: not ours any more
                except _Unsupported:  # a store without conditional deletes: we read it as ours just now
                    pass
            self.fs.rm(self.path)
        except Exception as exc:  # the TTL frees it in any case
            print(f"[facebatch] could not release the lock {self.uri}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- the object store through its own client (s3fs's botocore client)
    def _bucket_key(self, path: str | None = None) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path or self.path)
        return bucket, key

    def _store(self) -> str:
        endpoint = ((self.options.get("client_kwargs") or {}).get("endpoint_url")
                    or (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url") or "AWS S3")
        return f"{endpoint} (bucket {self._bucket_key()[0]})"

    def _s3(self, op, *args, **kwargs):
        """``op(...)`` with transient storage errors retried for :data:`STORAGE_RETRY_S`."""
        from ..batch.retry import RetryPolicy, call_with_retries, retry_note

        def attempt():
            try:
                return True, op(*args, **kwargs)
            except (_Precondition, _Unsupported) as exc:  # answers, not outages: never retried
                return False, exc
        ok, out = call_with_retries(attempt, RetryPolicy(budget_s=STORAGE_RETRY_S), f"lock {self.uri}",
                                    on_retry=retry_note)
        if not ok:
            raise out
        return out

    def _call(self, method: str, **kwargs) -> dict:
        conditional = "IfMatch" in kwargs or "IfNoneMatch" in kwargs
        try:
            return self.fs.call_s3(method, **kwargs)
        except Exception as exc:
            if _is_precondition(exc):
                raise _Precondition(str(exc)) from None
            if conditional and _is_unsupported(exc):
                code, status = _s3_code(exc)
                raise _Unsupported(f"{code or type(exc).__name__} {status or ''}".strip()) from None
            raise

    def _put(self, body: bytes, path: str | None = None, **cond) -> str:
        bucket, key = self._bucket_key(path)
        out = self._call("put_object", Bucket=bucket, Key=key, Body=body, ContentType="application/json", **cond)
        self.fs.invalidate_cache(path or self.path)
        return out.get("ETag")

    def _delete(self, path: str | None = None, **cond) -> None:
        bucket, key = self._bucket_key(path)
        self._call("delete_object", Bucket=bucket, Key=key, **cond)
        self.fs.invalidate_cache(path or self.path)

    def _get(self) -> tuple[str, str]:
        """The lock's text and ETag from one GET (so they belong together)."""
        from fsspec.asyn import sync
        bucket, key = self._bucket_key()

        async def get() -> tuple[str, str]:
            try:
                r = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                raise
            except Exception as exc:
                code, status = _s3_code(exc)
                if code in ("NoSuchKey", "404") or status == 404:
                    raise FileNotFoundError(self.uri) from exc
                raise
            body = r["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return data.decode(), r.get("ETag")
        return sync(self.fs.loop, get)

    def _probe(self) -> str | None:
        """None when the store honours If-None-Match and If-Match on PutObject, else what it did."""
        key = (self._store(), self._bucket_key()[0])
        with _PROBED_LOCK:
            if key in _PROBED:
                return _PROBED[key]
        probe = join(self.dir, f".lock-probe-{uuid.uuid4().hex[:12]}")
        reason = None
        try:
            self._s3(self._put, b"probe", path=probe)
            for cond, what in (({"IfNoneMatch": "*"}, "If-None-Match: *"),
                               ({"IfMatch": '"00000000000000000000000000000000"'}, "If-Match")):
                try:
                    self._s3(self._put, b"probe", path=probe, **cond)
                    reason = f"ignores conditional writes (a PutObject with {what} over an existing object succeeded)"
                except _Precondition:
                    continue
                except _Unsupported as exc:
                    reason = f"refuses conditional writes (PutObject with {what}: {exc})"
                break
        finally:
            try:
                self._delete(path=probe)
            except Exception:
                pass
        with _PROBED_LOCK:
            _PROBED[key] = reason
        return reason
