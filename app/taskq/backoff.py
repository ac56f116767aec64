"""Exponential backoff: one helper for every retry loop in taskq.

Task retries (`exponential`, per attempt number) and the loops that wait out a failing
database (`Backoff`: claim, recording, listener, migrations) grow the same way:
first, first*2, first*4, ... up to a cap, optionally spread by jitter so that many
processes failing together do not retry in lockstep.
"""

from __future__ import annotations

import random


def exponential(attempt: int, base: float, cap: float, jitter: float = 0.0) -> float:
    """The delay before retry number `attempt` (1-based): base * 2^(attempt-1), capped,
    then moved by up to +/- `jitter` of itself (never below 0 or above the cap)."""
    delay = min(base * 2.0 ** max(attempt - 1, 0), cap)
    spread = delay * jitter
    return max(0.0, min(delay + random.uniform(-spread, spread), cap))


class Backoff:
    """Delays for one failing operation: `next()` after each failure, `reset()` after a
    success. `failures` counts failures since the last success (log the first only)."""

    def __init__(self, first: float, cap: float, jitter: float = 0.0) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return exponential(self.failures, self.first, self.cap, self.jitter)

    def reset(self) -> None:
        self.failures = 0
