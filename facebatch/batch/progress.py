"""Progress for long jobs: a bar in a terminal, a plain line every few seconds in logs
(:class:`Progress`); wall and CPU seconds per step of a worker (:class:`StepClock`).

In ``log`` mode a heartbeat thread prints a line every ``every`` seconds even when nothing
finished, saying what the job waits for, so a stalled run (an S3 outage being retried, a
cluster waiting for resources) is never silent.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter


class Progress:
    """Counts processed inputs; ``mode`` is ``auto``, ``bar``, ``log`` or ``none``.

    ``initial`` inputs were done before (a resumed run): they count towards ``done`` but not
    towards the rate, which is over the inputs this run processed.
    """

    def __init__(self, total: int, mode: str = "auto", every: float = 10.0, initial: int = 0,
                 stream=None, unit: str = "img", heartbeat: bool = True) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode, self.total, self.every, self.unit = mode, total, every, unit
        self.done = self.initial = initial
        self.retries = 0
        self.counts: Counter = Counter()
        self.t0 = self.last = time.monotonic()
        self.waiting_for = "start-up"
        self.bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream, dynamic_ncols=True)
        if mode == "log" and heartbeat:
            self._thread = threading.Thread(target=self._beat, name="facebatch-heartbeat", daemon=True)
            self._thread.start()

    def update(self, n: int, counts: dict | None = None, retries: int = 0) -> None:
        with self._lock:
            self.done += n
            self.retries += retries
            self.counts.update(counts or {})
            if self.bar is not None:
                self.bar.update(n)
                post = {k: v for k, v in sorted(self.counts.items())}
                if self.retries:
                    post["retries"] = self.retries
                self.bar.set_postfix(post, refresh=False)
            elif self.mode == "log" and (time.monotonic() - self.last >= self.every or self.done >= self.total):
                self._line()

    def rate(self) -> float:
        """Inputs per second processed by this run (inputs skipped on resume left out)."""
        el = time.monotonic() - self.t0
        return (self.done - self.initial) / el if el > 0 else 0.0

    def _line(self, waiting: bool = False) -> None:
        self.last = time.monotonic()
        el = self.last - self.t0
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        extra = f" retries={self.retries}" if self.retries else ""
        resumed = f" (+{self.initial} done before)" if self.initial else ""
        wait = f" | waiting for {self.waiting_for}" if waiting else ""
        print(f"[facebatch] {self.done}/{self.total} {self.unit} ({100.0 * self.done / max(1, self.total):.0f}%)"
              f"{resumed} {self.rate():.1f} {self.unit}/s elapsed {el:.0f}s {counts}{extra}{wait}",
              file=self.stream, flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every / 4)):
            with self._lock:
                if time.monotonic() - self.last >= self.every and self.done < self.total:
                    self._line(waiting=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
            self._thread = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepClock:
    """Wall and CPU seconds of a worker's steps, accumulated by name (``lap`` ends a step)."""

    def __init__(self) -> None:
        self.wall: Counter = Counter()
        self.cpu: Counter = Counter()
        self._w, self._c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] += w - self._w
        self.cpu[name] += c - self._c
        self._w, self._c = w, c

    @staticmethod
    def rounded(d: Counter) -> dict:
        return {k: round(v, 4) for k, v in d.items()}
