"""One run at a time per output: ``DST/_state/lock.json`` with the run id and a time-to-live.

The holder refreshes the lock every ``ttl_s / 3`` seconds from a thread. Another run may take
the lock over only when it has expired, or when it was taken on this host by a process that no
longer exists (a run killed with ``kill -9`` and restarted at once). Otherwise it fails with
:class:`LockHeld`, naming the other run.

Locally the lock is created with an exclusive create; on S3 it is written and read back
(best effort: two runs starting in the same second could both believe they won; a cron
schedule with ``concurrencyPolicy: Forbid`` makes that unlikely).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from ..batch.write import is_local
from ..storage import filesystem, join

LOCK_FILE = "lock.json"
DEFAULT_TTL_S = 900.0


class LockHeld(RuntimeError):
    """Another run holds the output's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, dst: str, options: dict, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.fs, root = filesystem(dst, options)
        self.dir = join(root, "_state")
        self.path = join(self.dir, LOCK_FILE)
        self.run_id, self.ttl_s = run_id, float(ttl_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.host, self.pid = socket.gethostname(), os.getpid()

    def _body(self) -> dict:
        now = time.time()
        return {"run_id": self.run_id, "host": self.host, "pid": self.pid, "heartbeat": now,
                "expires": now + self.ttl_s, "ttl_s": self.ttl_s}

    def read(self) -> dict | None:
        try:
            with self.fs.open(self.path, "r") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, ValueError):
            return {"run_id": "?", "expires": 0}  # a torn lock file: treat as expired

    def _stale(self, held: dict) -> str | None:
        if float(held.get("expires", 0)) < time.time():
            return "expired"
        if held.get("host") == self.host and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
            return f"its process {held['pid']} on this host is gone"
        return None

    def acquire(self) -> "RunLock":
        self.fs.makedirs(self.dir, exist_ok=True)
        held = self.read()
        if held is not None:
            why = self._stale(held)
            if why is None:
                left = float(held.get("expires", 0)) - time.time()
                raise LockHeld(
                    f"another annotate run ({held.get('run_id')}, host {held.get('host')}, pid {held.get('pid')}) "
                    f"is writing this output; its lock {self.path} expires in {left:.0f} s unless renewed. "
                    "Wait for it to finish, or delete the lock file if you are sure it is dead.")
            print(f"[facebatch] taking over the lock of run {held.get('run_id')} ({why})", flush=True)
            self.fs.rm(self.path)
        body = json.dumps(self._body())
        if is_local(self.fs):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self.read() or {}
                raise LockHeld(f"another annotate run ({other.get('run_id')}) took the lock {self.path} just now") from None
            with os.fdopen(fd, "w") as f:
                f.write(body)
        else:
            with self.fs.open(self.path, "w") as f:
                f.write(body)
            time.sleep(0.2)
            back = self.read() or {}
            if back.get("run_id") != self.run_id:
                raise LockHeld(f"another annotate run ({back.get('run_id')}) took the lock {self.path} just now")
        self._thread = threading.Thread(target=self._beat, name="facebatch-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                held = self.read() or {}
                if held.get("run_id") != self.run_id:
                    return
                with self.fs.open(self.path, "w") as f:
                    f.write(json.dumps(self._body()))
            except Exception as exc:  # keep running; the TTL is the safety net
                print(f"[facebatch] could not renew the lock: {type(exc).__name__}: {exc}", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self.read()
            if held is not None and held.get("run_id") == self.run_id:
                self.fs.rm(self.path)
        except Exception:
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
