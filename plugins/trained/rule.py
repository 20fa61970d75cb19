"""The paper's stopping rule (appendix G): stop when the mean loss of the last ``window`` batches is no lower
than that of the ``window`` before."""

from __future__ import annotations

import math
from collections import deque


def plateau_reached(losses, window: int = 200) -> bool:
    """The paper's stopping rule on a loss history: at least ``2 window`` losses and the mean of the last
    ``window`` is no lower than the mean of the ``window`` before."""
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    losses = list(losses)
    if len(losses) < 2 * window:
        return False
    last = math.fsum(losses[-window:])
    prev = math.fsum(losses[-2 * window:-window])
    return last >= prev


class PlateauRule:
    """Streaming form of :func:`plateau_reached`: ``push(loss)`` returns True once the rule holds."""

    def __init__(self, window: int = 200, history=()):
        if int(window) < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.window = int(window)
        self.losses: deque = deque((float(v) for v in history), maxlen=2 * self.window)

    def push(self, loss: float, check: bool = True) -> bool:
        """Add one batch loss; with ``check`` return whether the rule now holds (else False)."""
        self.losses.append(float(loss))
        return check and plateau_reached(self.losses, self.window)

    def clear(self) -> None:
        self.losses.clear()

    def last_mean(self) -> float | None:
        n = min(len(self.losses), self.window)
        if n == 0:
            return None
        return math.fsum(list(self.losses)[-n:]) / n
