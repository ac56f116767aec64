"""The completer: records outcomes in batches, one UPDATE for everything finished since
the last flush, on a connection of its own.

Batching is natural: while one flush is in flight the next batch accumulates, so an idle
worker records each task at once and a busy one records hundreds per round trip. Outcomes
refused for a lost lease are counted and logged, never written (fencing).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
from collections.abc import Callable

from taskq import db, metrics, workflows
from taskq import queue as q
from taskq.backoff import Backoff
from taskq.errors import DatabaseUnavailable, InvalidInput
from taskq.settings import Settings
from taskq.worker.inflight import InFlight
from taskq.worker.maintenance import Progress

log = logging.getLogger(__name__)

FLUSH_MAX = 1000
_STOP = object()
Done = tuple[q.Finish, q.Claimed, float]  # an outcome, its task, the handler's seconds
_COUNT_KEY = {
    "queued": "retried",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


class Completer:
    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        inflight: InFlight,
        on_recorded: Callable[[], None],
        halt: threading.Event,
        *,
        limited: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self._worker_id = worker_id
        self._inflight = inflight
        self._on_recorded = on_recorded
        self._halt = halt
        self._limited = limited
        self._outbox: stdqueue.SimpleQueue[Done | object] = stdqueue.SimpleQueue()
        self._db = db.Dedicated(
            settings, name="worker-finish", synchronous_commit=settings.worker_synchronous_commit
        )
        self.backend_pid = 0  # of its connection: the listener ignores its notifications
        self.closing = False  # past the drain deadline: give up on a database that is away
        self.counts = {
            "succeeded": 0,
            "retried": 0,
            "failed": 0,
            "snoozed": 0,
            "cancelled": 0,
            "lost": 0,
        }
        self.progress = Progress()  # outcomes waiting for the database
        self._done = threading.Event()

    def put(self, done: Done) -> None:
        self._outbox.put(done)

    def stop(self, timeout: float) -> None:
        """Flush what is queued, stop the thread, then record what arrived after it."""
        self._outbox.put(_STOP)
        self._done.wait(timeout=timeout)
        self.closing = True
        leftovers: list[q.Finish] = []
        while True:
            try:
                item = self._outbox.get_nowait()
            except stdqueue.Empty:
                break
            if item is not _STOP:
                leftovers.append(item[0])  # type: ignore[index]
        if leftovers:
            self.record(leftovers)

    def close(self) -> None:
        self._db.close()

    def run(self) -> None:
        """The completer thread's body (started by the worker)."""
        try:
            self._loop()
        finally:
            self._done.set()

    def _loop(self) -> None:
        while True:
            first = self._outbox.get()
            if first is _STOP:
                return
            batch: list[Done] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < FLUSH_MAX:
                try:
                    item = self._outbox.get_nowait()
                except stdqueue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            metrics.tasks_ran([(task.queue, task.kind, seconds) for _, task, seconds in batch])
            self.record([outcome for outcome, _, _ in batch])
            if stop:
                return

    def record(self, batch: list[q.Finish]) -> None:
        """Write outcomes, retrying while the database is away (until halted)."""
        retry = Backoff(0.05, 2.0)
        self.progress.waiting()
        while True:
            try:
                with self._db.use() as conn:
                    applied, rejected = workflows.finish(conn, batch, worker_id=self._worker_id)
                self.progress.done()
                break
            except InvalidInput:
                if len(batch) == 1:  # the database refused this result: fail the task
                    batch = [
                        q.Finish(batch[0].lease, "failed", error="result rejected by PostgreSQL")
                    ]
                    continue
                for one in batch:  # find the culprit; everything else records normally
                    self.record([one])
                return
            except DatabaseUnavailable:
                if self._halt.is_set() or self.closing:
                    self.progress.done()
                    return  # give up: leases expire and the tasks run again elsewhere
                self._halt.wait(retry.next())
        self._inflight.recorded(item.lease.id for item in batch)
        self._on_recorded()  # back-pressure may have lifted; burst mode may be done
        metrics.tasks_finished(applied, lost=len(rejected))
        for row in applied:
            self.counts["snoozed" if row["snoozed"] else _COUNT_KEY[row["status"]]] += 1
        for lost in rejected:
            self.counts["lost"] += 1
            log.warning(
                "task %s attempt %d: lease lost, outcome discarded (task was recovered "
                "and belongs to another attempt)",
                lost.lease.id,
                lost.lease.attempt,
            )
        # A finished task of a limited queue frees room: wake the queue's other workers
        # (this one was just woken). Best effort: they also poll.
        freed = {row["queue"] for row in applied} & self._limited()
        if freed:
            try:
                with self._db.use() as conn:
                    self.backend_pid = conn.info.backend_pid
                    q.notify(conn, freed, durable=False)
            except DatabaseUnavailable:
                pass
