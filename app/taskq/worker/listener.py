"""LISTEN on a dedicated connection and turn notifications into wake-ups.

Notifications are a latency optimisation, never the source of truth: they are lost while
the connection is down (and through transaction-pooling proxies), so the worker also
polls. After every (re)connect the listener wakes the worker once to catch up on anything
sent while it was away.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection

import psycopg

from taskq import db, sql
from taskq.backoff import Backoff
from taskq.errors import DatabaseUnavailable
from taskq.settings import Settings

log = logging.getLogger(__name__)

# Without traffic, probe the connection this often so a silently dead socket is noticed.
IDLE_PROBE_SECONDS = 10.0


class Listener:
    def __init__(
        self,
        settings: Settings,
        queues: Collection[str],
        wake: Callable[[], None],
        halt: threading.Event,
    ) -> None:
        self._settings = settings
        self._queues = frozenset(queues)
        self._wake = wake
        self._halt = halt
        self.connected = threading.Event()
        self.reconnects = 0
        self._conn: psycopg.Connection[object] | None = None
        self._retry = Backoff(0.1, 5.0)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._serve()
            except (DatabaseUnavailable, psycopg.Error) as exc:
                if self.connected.is_set() or self.reconnects == 0:
                    log.warning("listener connection lost (%s); reconnecting", type(exc).__name__)
                self.connected.clear()
                self._halt.wait(self._retry.next())
            finally:
                self._close()

    def _serve(self) -> None:
        conn = db.connect(self._settings, name="listener")
        self._conn = conn
        conn.execute(sql.LISTEN)
        self.reconnects += 1
        self.connected.set()
        self._retry.reset()
        self._wake()  # catch up on anything sent while we were not listening
        idle_since = time.monotonic()
        while not self._halt.is_set():
            for note in conn.notifies(timeout=0.5):
                idle_since = time.monotonic()
                if note.payload in self._queues:
                    self._wake()
            if time.monotonic() - idle_since > IDLE_PROBE_SECONDS:
                conn.execute("SELECT 1")
                idle_since = time.monotonic()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a broken one may fail too
                conn.close()
