"""The completer: records outcomes in batches, one UPDATE for everything finished since
the last flush, on a connection of its own.

Batching is natural: while one flush is in flight the next batch accumulates, so an idle
worker records each task at once and a busy one records hundreds per round trip. Outcomes
refused for a lost lease are counted and logged, never written (fencing).

Outcomes of a limited queue this worker is alone on go to the claim loop instead
(`hand`), which records them in its next claim's transaction (taskq/flow.py
claim_limited); what it cannot record there comes back here (`put_outcomes`).
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
from collections.abc import Callable
from typing import Any

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
# Takes the outcomes of tasks of queues recorded elsewhere (the claim loop), or refuses
# them all (False) so they are recorded here.
Hand = Callable[[list[Done]], bool]
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
        hand: tuple[Callable[[], frozenset[str]], Hand] | None = None,
    ) -> None:
        self._worker_id = worker_id
        self._inflight = inflight
        self._on_recorded = on_recorded
        self._halt = halt
        self._limited = limited
        self._hand = hand
        self._outbox: stdqueue.SimpleQueue[Done | list[q.Finish] | object] = stdqueue.SimpleQueue()
        self._counts_lock = threading.Lock()  # counts are also kept for the claim loop's records
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

    def put_outcomes(self, outcomes: list[q.Finish]) -> None:
        """Outcomes handed elsewhere that must be recorded here after all (already
        counted in the metrics of tasks run)."""
        if outcomes:
            self._outbox.put(outcomes)

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
            if isinstance(item, list):
                leftovers.extend(item)
            elif item is not _STOP:
                leftovers.append(item[0])  # type: ignore[index]
        if leftovers:
            self.record(leftovers)

    def count(self, applied: list[dict[str, Any]], rejected: list[q.Finish]) -> None:
        """Count recorded outcomes (FINISH rows) and log those refused for a lost lease."""
        metrics.tasks_finished(applied, lost=len(rejected))
        with self._counts_lock:
            for row in applied:
                self.counts["snoozed" if row["snoozed"] else _COUNT_KEY[row["status"]]] += 1
            self.counts["lost"] += len(rejected)
        for lost in rejected:
            log.warning(
                "task %s attempt %d: lease lost, outcome discarded (task was recovered "
                "and belongs to another attempt)",
                lost.lease.id,
                lost.lease.attempt,
            )

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
            batch: list[Done] = []
            returned: list[q.Finish] = []  # handed elsewhere and given back
            stop = False
            item: Done | list[q.Finish] | object = first
            while True:
                if isinstance(item, list):
                    returned.extend(item)
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if len(batch) + len(returned) >= FLUSH_MAX:
                    break
                try:
                    item = self._outbox.get_nowait()
                except stdqueue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
            metrics.tasks_ran([(task.queue, task.kind, seconds) for _, task, seconds in batch])
            outcomes = returned + self._not_handed(batch)
            if outcomes:
                self.record(outcomes)
            if stop:
                return

    def _not_handed(self, batch: list[Done]) -> list[q.Finish]:
        """The batch's outcomes to record here: all but those the claim loop takes."""
        if self._hand is None or self.closing:
            return [outcome for outcome, _, _ in batch]
        alone, hand = self._hand
        queues = alone()
        elsewhere = [done for done in batch if done[1].queue in queues]
        if not elsewhere or not hand(elsewhere):
            return [outcome for outcome, _, _ in batch]
        return [outcome for outcome, task, _ in batch if task.queue not in queues]

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
        self.count(applied, rejected)
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
