"""Progress for a stderr that is not a terminal (a log file, CI, a pipe): plain lines, now and then.

A tqdm bar redraws one line with carriage returns, which a log shows as one unreadable line or not
at all; :class:`LineProgress` has the three methods the sweep calls on a bar (``set_description_str``,
``update``, ``close``) and instead prints a whole line at the first row, then at most every
``interval_s`` seconds, and at the end::

    progress: 12/48 rows (25%), at n_s=4096 r=0.25 p=0.045 seed=0 relu, 31 s elapsed, ETA 1.5 min

``interval_s`` defaults to 30 s, or ``DECODERBENCH_PROGRESS_S`` from the environment.
"""

from __future__ import annotations

import os
import sys
import time


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class LineProgress:
    def __init__(self, total: int, reused: int = 0, interval_s: float | None = None, file=None, clock=time.monotonic):
        if interval_s is None:
            try:
                interval_s = float(os.environ.get("DECODERBENCH_PROGRESS_S", "30"))
            except ValueError:
                interval_s = 30.0
        self.total, self.reused, self.interval = int(total), int(reused), max(0.0, float(interval_s))
        self.n = 0
        self.desc = ""
        self.file = file if file is not None else sys.stderr
        self.clock = clock
        self.t0 = clock()
        self.last = None

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.last is None or now - self.last >= self.interval or self.n >= self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last = now
        elapsed = now - self.t0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = elapsed / self.n * (self.total - self.n) if self.n else None
        parts = [f"progress: {self.n}/{self.total} rows ({pct:.0f}%)"]
        if self.reused:
            parts[0] += f" + {self.reused} reused"
        if self.desc and self.n < self.total:
            parts.append(f"at {self.desc}")
        parts.append(f"{_duration(elapsed)} elapsed")
        parts.append("done" if self.n >= self.total else (f"ETA {_duration(eta)}" if eta is not None else "ETA ?"))
        print(", ".join(parts), file=self.file, flush=True)

    def close(self) -> None:
        if self.last is None or (self.n < self.total and self.n):
            self._line(self.clock())
