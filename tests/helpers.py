"""Helpers shared by test modules (importable as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import time


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is neither a zombie nor dead (``/proc/<pid>/stat``, readable by all)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def survivors(pids, seconds: float = 5.0) -> list[int]:
    """The processes of ``pids`` still alive after waiting up to ``seconds`` for all of them to end."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)
