"""The API's open connections per worker process, shared by all of them, so that
keep-alive connections end up spread evenly over the processes.

gunicorn's workers share one listening socket and whichever process wakes first accepts.
A client that opens a few keep-alive connections at once (a load balancer, the pools of
a few application servers, a load test) can land most of them on one process: that one
runs at a full core while its siblings idle, and every request waits longer than it
needs to. Each worker counts its connections in a table the master shares with all of
them (anonymous shared memory, one slot per worker, given out by the master before the
fork and cleared when the worker exits). A worker that holds more than one connection
above its least loaded sibling answers the next request of a connection with
`Connection: close` (after its response, as HTTP allows), and the client reconnects;
the new connection goes to whichever process accepts it, and a process still above its
share hands the next one back the same way. The counts settle within a connection of
each other and nothing is closed from then on.

Only the owner of a slot writes its count (from its event loop), the master writes the
slot's owner; a sibling reading a count mid-update merely decides one request later.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterable

# Per slot: the owner's pid (0: free) and its open connections.
_FIELDS = 2
# At most one hand-over per process in this many seconds: the client's new connection
# must have landed (and been counted) before the counts are read again, or a burst of
# requests would hand over every connection the counts show as too many at once.
HAND_OVER_SPACING = 0.01


class ConnectionTable:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, max(1, slots) * _FIELDS * 8)  # shared with forked children
        self._cells = memoryview(self._memory).cast("q")
        self._mine = -1  # this process's slot (in a worker)
        self.open = 0  # this process's connections
        self._handed_at = float("-inf")

    # ------------------------------------------------------------------ master
    def free_slot(self, taken: Iterable[int]) -> int:
        """A slot none of the live workers holds (their slots are `taken`); -1 when all
        are held (more workers than planned for: that one does not take part)."""
        used = set(taken)
        return next((slot for slot in range(self.slots) if slot not in used), -1)

    def release(self, slot: int) -> None:
        """The worker holding `slot` exited: its connections are gone with it."""
        if 0 <= slot < self.slots:
            self._cells[slot * _FIELDS] = 0
            self._cells[slot * _FIELDS + 1] = 0

    # ------------------------------------------------------------------ worker
    def take(self, slot: int, pid: int) -> None:
        """This process owns `slot` from now on (called in the worker after the fork)."""
        self._mine = slot
        self.open = 0
        self._cells[slot * _FIELDS + 1] = 0
        self._cells[slot * _FIELDS] = pid

    def opened(self) -> None:
        self.open += 1
        if self._mine >= 0:
            self._cells[self._mine * _FIELDS + 1] = self.open

    def closed(self) -> None:
        self.open -= 1
        if self._mine >= 0:
            self._cells[self._mine * _FIELDS + 1] = self.open

    def hand_over(self) -> bool:
        """Whether the connection asking now should close after its response for a
        sibling to take; if so it is counted out at once."""
        if not self.crowded():
            return False
        now = time.monotonic()
        if now - self._handed_at < HAND_OVER_SPACING:
            return False
        self._handed_at = now
        self.closed()
        return True

    def crowded(self) -> bool:
        """True when this process holds more than one connection above its least loaded
        sibling: the connection asking now should be handed over."""
        if self._mine < 0 or self.open < 2:
            return False
        cells = self._cells.tolist()  # pid, count, pid, count, ... in one call
        mine = self._mine * _FIELDS
        fewest = min(
            (cells[i + 1] for i in range(0, len(cells), _FIELDS) if cells[i] and i != mine),
            default=-1,
        )
        return fewest >= 0 and self.open > fewest + 1
