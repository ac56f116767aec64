"""Group commit for single submissions: concurrent POST /tasks of one process share one
multi-row INSERT and one commit.

Every durable commit waits for a WAL flush; one request per commit makes that flush the
price of every submission. Here requests hand their validated TaskSpec to the process's
ingest thread and wait on a future. The thread takes everything queued since its last
write (up to `max_group`), inserts it with the batch endpoint's statement
(queue.enqueue_many) as one statement, and only after its commit resolves each future
with its own task. Nothing waits for a group to fill: a lone request is written at once,
and the group is whatever arrived while the previous write was in flight.

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
awaits `asyncio.wrap_future(ingest.submit(spec))`, a threaded WSGI request blocks on
`.result()`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskq import queue
from taskq.db import pooled
from taskq.errors import DatabaseUnavailable, SchemaOutdated
from taskq.models import Task, TaskSpec

log = logging.getLogger(__name__)

# Failures that concern the whole group (no row is at fault): every request gets them.
_GROUP_FAILURES = (DatabaseUnavailable, SchemaOutdated)

Announce = Callable[[Any, list[Task]], None]


class Ingest:
    def __init__(
        self,
        pool: Any,
        *,
        default_max_attempts: int,
        announce: Announce,
        max_group: int = 1000,  # within one statement of enqueue_many (5000)
        writers: int = 1,
    ) -> None:
        self._pool = pool
        self._default_max_attempts = default_max_attempts
        self._announce = announce
        self._max_group = max_group
        self._pending: collections.deque[tuple[TaskSpec, concurrent.futures.Future[Task]]] = (
            collections.deque()
        )
        self._wake = threading.Condition(threading.Lock())
        self._writers = writers
        self._threads: list[threading.Thread] = []
        # How many groups were written and how many requests they held (tests, profiles).
        self.groups = 0
        self.written = 0

    @property
    def pending(self) -> int:
        """Submissions waiting for the next group."""
        return len(self._pending)

    def submit(self, spec: TaskSpec) -> concurrent.futures.Future[Task]:
        """Queue `spec` for the next group; the future holds its Task once committed,
        or the domain error (TaskqError) its row met."""
        future: concurrent.futures.Future[Task] = concurrent.futures.Future()
        with self._wake:
            self._pending.append((spec, future))
            if not self._threads:  # started on first use: after gunicorn's fork
                for n in range(self._writers):
                    thread = threading.Thread(target=self._run, name=f"ingest-{n}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
            self._wake.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                count = min(len(self._pending), self._max_group)
                group = [self._pending.popleft() for _ in range(count)]
            try:
                self._write(group)
            except BaseException as exc:  # never leave a request waiting
                log.exception("ingest thread failed on a group of %d", len(group))
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)

    def _write(self, group: Sequence[tuple[TaskSpec, concurrent.futures.Future[Task]]]) -> None:
        specs = [spec for spec, _ in group]
        outcomes: list[Task | BaseException]
        try:
            with pooled(self._pool) as conn:
                try:
                    # One statement (a group is at most api_batch_max rows, within one
                    # chunk of enqueue_many) on an autocommit connection: its own
                    # transaction, committed when it returns; no BEGIN and COMMIT round
                    # trips. A repeated idempotency key's task is read after it.
                    outcomes = list(
                        queue.enqueue_many(
                            conn, specs, default_max_attempts=self._default_max_attempts
                        )
                    )
                except _GROUP_FAILURES:
                    raise
                except Exception as exc:
                    # One request: its own error. More: find the row at fault.
                    outcomes = [exc] if len(group) == 1 else self._one_by_one(conn, specs)
                tasks = [t for t in outcomes if isinstance(t, Task)]
                if tasks:
                    self._announce(conn, tasks)
        except Exception as exc:  # the connection, the commit or its replication failed
            for _, future in group:
                future.set_exception(exc)
            return
        self.groups += 1
        self.written += len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

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
