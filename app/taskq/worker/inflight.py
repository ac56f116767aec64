"""The worker's book of tasks in flight: the one owner of slots, leases and their lock.

A task enters when claimed and leaves when its outcome is recorded (or it is released).
In between, its handler runs (it holds a slot) and then its outcome waits for the
completer (the slot is already free: the completer's round trip overlaps the next claim
instead of lengthening every cycle). Outcomes waiting to be written are capped, so a slow
database applies back-pressure to claiming.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Collection, Iterable

from taskq.queue import Claimed, Lease
from taskq.worker.control import Control


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """What the metrics read at scrape time."""

    slots: int
    in_flight: int
    free: int


class InFlight:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._tasks: dict[uuid.UUID, Claimed] = {}  # claimed and not yet recorded
        self._awaiting_record: set[uuid.UUID] = set()  # handler done, outcome not written
        self._controls: dict[uuid.UUID, Control] = {}  # claimed, handler not returned
        self._running = 0
        self._max_unrecorded = max(4 * concurrency, 256)

    def free_slots(self) -> int:
        with self._lock:
            return self._free()

    def _free(self) -> int:
        if len(self._awaiting_record) >= self._max_unrecorded:
            return 0  # the completer is behind: let it catch up first
        return self.concurrency - self._running

    def claimed(self, tasks: Iterable[Claimed]) -> None:
        with self._lock:
            for task in tasks:
                self._tasks[task.id] = task
                self._controls[task.id] = Control(task)
                self._running += 1

    def handler_returned(self, task_id: uuid.UUID) -> bool:
        """The handler is done and its outcome is on its way; True when none runs now."""
        with self._lock:
            self._awaiting_record.add(task_id)
            self._controls.pop(task_id, None)
            self._running -= 1
            return self._running == 0

    def recorded(self, ids: Iterable[uuid.UUID]) -> None:
        """Outcomes written (or given up on): the tasks leave the book."""
        with self._lock:
            for task_id in ids:
                self._tasks.pop(task_id, None)
                self._awaiting_record.discard(task_id)

    def control(self, task_id: uuid.UUID) -> Control | None:
        """The stop switch of a task whose handler has not returned (None otherwise)."""
        with self._lock:
            return self._controls.get(task_id)

    def controls(self) -> list[Control]:
        with self._lock:
            return list(self._controls.values())

    def cancel(self, task_id: uuid.UUID) -> bool:
        """Stop this worker's attempt of the task, if it runs here; True if it was stopped
        now (False: not here, or already stopped)."""
        control = self.control(task_id)
        return control is not None and control.stop("cancel")

    def busy(self) -> bool:
        with self._lock:
            return bool(self._tasks)

    def running_leases(self) -> list[Lease]:
        """Leases of tasks whose handler has not returned: the ones to renew or release.
        A task whose outcome is already on its way needs neither."""
        with self._lock:
            return [
                task.lease
                for task_id, task in self._tasks.items()
                if task_id not in self._awaiting_record
            ]

    def lost(self, leases: Iterable[Lease], owned: Collection[uuid.UUID]) -> list[Lease]:
        """Of `leases`, those the database no longer gave to this worker and whose handler
        still runs (one recorded meanwhile is not lost)."""
        with self._lock:
            return [
                lease
                for lease in leases
                if lease.id not in owned
                and lease.id in self._tasks
                and lease.id not in self._awaiting_record
            ]

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.concurrency, len(self._tasks), max(0, self._free()))
