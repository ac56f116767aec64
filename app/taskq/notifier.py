"""Wake workers after the API's inserts commit, outside the inserting transaction.

A transaction that issued NOTIFY takes one database-wide lock at commit and holds it
until the commit is durable, so inserts that notify commit one after another. The API's
sessions therefore turn the enqueue trigger's notification off (`taskq.notify = off`, see
db/migrations/0004) and announce new tasks through this per-process notifier instead:

- After a quiet spell (nothing sent for `interval`), the announcement goes out at once,
  on the request's own connection, in a transaction of its own that waits for no WAL
  flush (notifications are never durable anyway): an idle worker hears about the task
  before the client has its response.
- Within `interval` of the last one, the queues are collected and a background thread
  sends them together, on its own connection, when the interval is up: a burst of
  requests costs a notification every `interval`, not one per request.

Notifications stay a latency optimisation: one lost here (database down, process exiting)
is caught by the workers' polling. A failure to notify never fails the request, whose
task is committed already.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import Any

from psycopg.pq import TransactionStatus

from taskq import db
from taskq import queue as q
from taskq.errors import DatabaseUnavailable
from taskq.settings import Settings


class Notifier:
    def __init__(self, settings: Settings, *, interval: float | None = None) -> None:
        self._interval = settings.api_notify_interval if interval is None else interval
        self._pending: set[str] = set()
        self._last = float("-inf")  # when the last announcement went out (monotonic)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = db.Dedicated(settings, name="api-notify", synchronous_commit=False)
        self.sent = 0  # announcements sent (at once or collected)
        self.failed = 0  # announcements lost to an unreachable database

    def announce(self, queues: Collection[str], conn: Any = None) -> None:
        """Workers of these queues should look for new tasks. Call after the commit;
        `conn` (the connection that committed) is used when the announcement goes out
        at once, so no other connection is needed on the request's path."""
        if not queues:
            return
        now = time.monotonic()
        with self._lock:
            at_once = (
                conn is not None
                and conn.info.transaction_status == TransactionStatus.IDLE
                and not self._pending
                and now - self._last >= self._interval
            )
            if at_once:
                self._last = now
            else:
                self._pending.update(queues)
                if self._thread is None:  # started on first use: after gunicorn's fork
                    self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
                    self._thread.start()
        if at_once:
            try:
                q.notify(conn, queues, durable=False)
                self.sent += 1
            except DatabaseUnavailable:
                self.failed += 1  # the workers' polling picks these tasks up
        elif not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                pause = self._last + self._interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # everything announced meanwhile goes out together
            self._wake.clear()
            with self._lock:
                queues, self._pending = self._pending, set()
                self._last = time.monotonic()
            if not queues:
                continue
            try:
                with self._conn.use() as conn:  # closed and reopened after a failure
                    q.notify(conn, queues, durable=False)
                self.sent += 1
            except DatabaseUnavailable:
                self.failed += 1
