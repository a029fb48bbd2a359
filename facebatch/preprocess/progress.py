"""Progress for long jobs: a bar in a terminal, a plain line every few seconds in logs."""
from __future__ import annotations

import sys
import time
from collections import Counter


class Progress:
    """Counts processed inputs; ``mode`` is ``auto``, ``bar``, ``log`` or ``none``."""

    def __init__(self, total: int, mode: str = "auto", every: float = 10.0, initial: int = 0,
                 stream=None, unit: str = "img") -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode, self.total, self.every, self.unit = mode, total, every, unit
        self.done = initial
        self.counts: Counter = Counter()
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int, counts: dict | None = None) -> None:
        self.done += n
        self.counts.update(counts or {})
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)
        elif self.mode == "log" and (time.monotonic() - self.last >= self.every or self.done >= self.total):
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        el = self.last - self.t0
        rate = self.done / el if el > 0 else 0.0
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        print(f"[facebatch] {self.done}/{self.total} {self.unit} ({100.0 * self.done / max(1, self.total):.0f}%) "
              f"{rate:.1f} {self.unit}/s elapsed {el:.0f}s {counts}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
