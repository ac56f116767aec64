"""LISTEN on a dedicated connection and turn notifications into wake-ups.

Notifications are a latency optimisation, never the source of truth: they are lost while
the connection is down (and through transaction-pooling proxies), so the worker also
polls. After every (re)connect the listener wakes the worker once to catch up on anything
sent while it was away.

The listener checks that it really hears: every PROBE_INTERVAL it has a notification sent
through the worker's ordinary connections (the path the API's notifications take) and
expects it back within PROBE_TIMEOUT. A listener that does not hear its own probe (a
frozen server, LISTEN through a transaction pooler, a half-dead socket) reconnects and
reports not ready meanwhile.

Its session also carries the worker's liveness lock (taskq/queue.py `register_worker`),
so it connects to TASKQ_LISTEN_DATABASE_URL when set: a direct connection, never through
a transaction pooler.

The same connection listens on the control channel, whose payloads are ids of running
tasks whose cancel was requested; a missed one is caught by the lease heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection

import psycopg

from taskq import db, sql
from taskq import queue as q
from taskq.backoff import Backoff
from taskq.errors import DatabaseUnavailable, SchemaOutdated
from taskq.settings import Settings

log = logging.getLogger(__name__)

# How often the listener checks that it hears, and how long a probe may take to come back.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 3.0


class Deaf(Exception):
    """The listener's own probe did not come back."""


class Listener:
    def __init__(
        self,
        settings: Settings,
        queues: Collection[str],
        wake: Callable[[], None],
        halt: threading.Event,
        *,
        send_probe: Callable[[str], None] | None = None,
        worker_id: str = "",
        on_cancel: Callable[[uuid.UUID], None] | None = None,
        own: Callable[[int], bool] = lambda pid: False,
    ) -> None:
        self._on_cancel = on_cancel
        self._settings = settings
        self._queues = frozenset(queues)
        self._wake = wake
        # Notifications this worker sent itself (its completer's, about limited queues)
        # carry nothing it does not know already.
        self._own = own
        self._halt = halt
        self._send_probe = send_probe
        self._worker_id = worker_id
        self.connected = threading.Event()  # listening, and its first probe came back
        self.reconnects = 0
        self.deaf = 0  # reconnects because a probe did not come back
        self.registered = False  # holds the liveness lock (dead-worker sweep)
        self._liveness = bool(worker_id)
        self._conn: psycopg.Connection[object] | None = None
        self._retry = Backoff(0.1, 5.0)
        self._probe_seq = 0
        # Listening is pointless through a transaction pooler (notifications never arrive);
        # without a direct URL the worker polls only.
        self.enabled = settings.db_pooler != "transaction" or bool(settings.listen_database_url)

    def run(self) -> None:
        if not self.enabled:
            log.warning(
                "TASKQ_DB_POOLER=transaction without TASKQ_LISTEN_DATABASE_URL: not listening;"
                " new tasks are found by polling every %.1fs",
                self._settings.poll_interval,
            )
            return
        while not self._halt.is_set():
            try:
                self._serve()
            except (DatabaseUnavailable, psycopg.Error, Deaf) as exc:
                if isinstance(exc, Deaf):
                    self.deaf += 1
                    log.warning("listener did not hear its own probe; reconnecting")
                elif self.connected.is_set() or self.reconnects == 0:
                    log.warning("listener connection lost (%s); reconnecting", type(exc).__name__)
                self.connected.clear()
                self._halt.wait(self._retry.next())
            finally:
                self._close()

    def healthy(self) -> bool:
        """Listening and hearing (or deliberately not listening: polling only)."""
        return not self.enabled or self.connected.is_set()

    def _serve(self) -> None:
        conn = db.connect(
            self._settings, name="listener", url=self._settings.listen_database_url, session=True
        )
        self._conn = conn
        with db.WATCHDOG.watch(conn, self._settings.client_timeout), db.translate_errors():
            self._register(conn)
            if self._on_cancel is not None:
                conn.execute(sql.LISTEN_CONTROL)
            conn.execute(sql.LISTEN)
        self.reconnects += 1
        self._retry.reset()
        self._wake()  # catch up on anything sent while we were not listening
        probe: str | None = None
        probe_sent = 0.0
        next_probe = time.monotonic()  # the first probe at once: LISTEN must be heard
        while not self._halt.is_set():
            now = time.monotonic()
            if probe is None and now >= next_probe:
                probe, probe_sent = self._probe()
                # A probe that could not be sent is tried again soon.
                next_probe = now + (PROBE_INTERVAL if probe or self.connected.is_set() else 0.5)
            for note in conn.notifies(timeout=0.2 if probe else 0.5):
                if note.channel == sql.CONTROL_CHANNEL:
                    self._control(note.payload)
                elif note.payload in self._queues and not self._own(note.pid):
                    self._wake()
                elif probe is not None and note.payload == probe:
                    probe = None
                    self.connected.set()
            if probe is not None and time.monotonic() - probe_sent > PROBE_TIMEOUT:
                raise Deaf

    def _register(self, conn: psycopg.Connection[object]) -> None:
        if not self._liveness:
            return
        try:
            self.registered = q.register_worker(conn, self._worker_id)
        except SchemaOutdated:
            self._liveness = False  # the database predates migration 0011
            log.warning("taskq_workers is missing (run `taskq migrate`): no liveness lock")

    def _probe(self) -> tuple[str | None, float]:
        """Send a probe; (None, now) when it could not be sent (the pool's problem, not
        the listener's: /ready reports the database then)."""
        if self._send_probe is None:
            self.connected.set()
            return None, time.monotonic()
        self._probe_seq += 1
        payload = f"{sql.PROBE_PREFIX}{self._worker_id} {self._probe_seq}"
        try:
            self._send_probe(payload)
        except DatabaseUnavailable:
            return None, time.monotonic()
        # Timed from the commit: a pool or pooler slow to hand out a connection is not
        # the listener's fault.
        return payload, time.monotonic()

    def _control(self, payload: str) -> None:
        try:
            task_id = uuid.UUID(payload)
        except ValueError:
            return  # not ours: anyone may NOTIFY on a channel
        if self._on_cancel is not None:
            self._on_cancel(task_id)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.registered = False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # closing a broken one may fail too
                conn.close()
