"""Group commit for single submissions: concurrent POST /tasks of one process share one
multi-row INSERT and one commit.

Every durable commit waits for a WAL flush; one request per commit makes that flush the
price of every submission. Here requests hand their validated TaskSpec to the process's
ingest thread and wait on a future. The thread takes everything queued since its last
write (up to `max_group`), inserts it with the batch endpoint's statement
(queue.enqueue_many) as one statement, and only after its commit resolves each future
with its own task. Nothing waits for a group to fill: a lone request is written at once,
and the group is whatever arrived while the previous write was in flight. Two threads
write, each on its own connection, so a group's INSERT runs while the other's commit
waits for its WAL flush (bench/PROFILE-NOTES.md 0d.6).

The guarantees each request keeps:
- its 201 comes after the commit of its row (a future resolves only after the commit);
- idempotency keys: enqueue_many returns the existing task for a key already stored
  (200) and gives two requests of one group with the same key the same task, created
  for the first only;
- one bad row never fails the others: when the group's INSERT fails for another reason
  than the database being away, the group is written again one row at a time, each in
  its own savepoint, and each request gets its own outcome;
- the database away, read-only or hung: every request of the group gets the same
  DatabaseUnavailable (503 + Retry-After), as it would have alone.

The blocking psycopg calls run on this thread, never on the event loop: an ASGI request
awaits `ingest.submit_async(spec)` (its group is settled in one callback on the loop), a
threaded WSGI request blocks on `ingest.submit(spec).result()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue as queue_
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskq import metrics, queue
from taskq.db import pooled
from taskq.errors import DatabaseUnavailable, SchemaOutdated
from taskq.models import Task, TaskSpec

# Failures that concern the whole group (no row is at fault): every request gets them.
_GROUP_FAILURES = (DatabaseUnavailable, SchemaOutdated)

Announce = Callable[[Any, list[Task]], None]


Waiter = concurrent.futures.Future[Task] | asyncio.Future[Task]


class Ingest:
    def __init__(
        self,
        pool: Any,
        *,
        default_max_attempts: int,
        announce: Announce,
        max_group: int = 1000,  # within one statement of enqueue_many (5000)
        writers: int = 2,
    ) -> None:
        self._pool = pool
        self._default_max_attempts = default_max_attempts
        self._announce = announce
        self._max_group = max_group
        # A SimpleQueue: a put is one C call, where a Condition's notify is Python code
        # with lock round trips on every submission.
        self._pending: queue_.SimpleQueue[tuple[TaskSpec, Waiter]] = queue_.SimpleQueue()
        self._writers = writers
        self._start = threading.Lock()
        self._threads: list[threading.Thread] = []
        # How many groups were written and how many requests they held (tests, profiles).
        self.groups = 0
        self.written = 0

    @property
    def pending(self) -> int:
        """Submissions waiting for the next group."""
        return self._pending.qsize()

    def submit(self, spec: TaskSpec) -> concurrent.futures.Future[Task]:
        """Queue `spec` for the next group; the future holds its Task once committed,
        or the domain error (TaskqError) its row met."""
        future: concurrent.futures.Future[Task] = concurrent.futures.Future()
        self._queue(spec, future)
        return future

    def submit_async(self, spec: TaskSpec) -> asyncio.Future[Task]:
        """`submit` for a coroutine: a future of the running loop, settled with the rest
        of its group in one callback (one wake-up of the loop per group, not per task)."""
        future: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._queue(spec, future)
        return future

    def _queue(self, spec: TaskSpec, waiter: Waiter) -> None:
        self._pending.put((spec, waiter))
        if not self._threads:  # started on first use: after gunicorn's fork
            with self._start:
                while len(self._threads) < self._writers:
                    thread = threading.Thread(target=self._run, name="ingest", daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def _run(self) -> None:
        while True:
            group = [self._pending.get()]  # waits, without the GIL, for the next one
            while len(group) < self._max_group:
                try:
                    group.append(self._pending.get_nowait())
                except queue_.Empty:
                    break
            try:
                outcomes = self._write([spec for spec, _ in group])
            except BaseException as exc:  # never leave a request waiting; its handler logs
                outcomes = [exc] * len(group)
            else:
                self.groups += 1
                self.written += len(group)
                metrics.submit_group(len(group))
            _settle([waiter for _, waiter in group], outcomes)

    def _write(self, specs: Sequence[TaskSpec]) -> list[Task | BaseException]:
        """Each spec's Task, or the error its row met; raises what fails them all (the
        connection, the database away, the commit's replication)."""
        outcomes: list[Task | BaseException]
        with pooled(self._pool) as conn:
            try:
                # One statement (a group is at most `max_group` rows, within one chunk of
                # enqueue_many) on an autocommit connection: its own transaction,
                # committed when it returns; no BEGIN and COMMIT round trips. A repeated
                # idempotency key's task is read after it.
                outcomes = list(
                    queue.enqueue_many(conn, specs, default_max_attempts=self._default_max_attempts)
                )
            except _GROUP_FAILURES:
                raise
            except Exception as exc:
                # One request: its own error. More: find the row at fault.
                outcomes = [exc] if len(specs) == 1 else self._one_by_one(conn, specs)
            tasks = [t for t in outcomes if isinstance(t, Task)]
            if tasks:
                self._announce(conn, tasks)
        return outcomes

    def _one_by_one(self, conn: Any, specs: Sequence[TaskSpec]) -> list[Task | BaseException]:
        """Each row in its own savepoint, all in one transaction: the rows that fail get
        their own error, the others are committed together."""
        outcomes: list[Task | BaseException] = []
        with conn.transaction():
            for spec in specs:
                try:
                    with conn.transaction():
                        outcomes.append(
                            queue.enqueue(
                                conn, spec, default_max_attempts=self._default_max_attempts
                            )
                        )
                except _GROUP_FAILURES:
                    raise
                except Exception as exc:
                    outcomes.append(exc)
        return outcomes


def _settle(waiters: Sequence[Waiter], outcomes: Sequence[Task | BaseException]) -> None:
    """Resolve each waiter with its outcome: thread futures at once, a loop's futures in
    one callback on that loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Task], Any]]] = {}
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
        elif isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_on_loop, pairs)


def _settle_on_loop(pairs: list[tuple[asyncio.Future[Task], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
