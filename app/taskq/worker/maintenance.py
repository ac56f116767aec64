"""Maintenance services: small periodic jobs that share one thread, each on its own interval.

A service is a class with a `name`, an `interval` and `run_once()`; `Maintenance` runs
every service when it is due. Adding a periodic job to the worker (a scheduler, a
watcher, a resolver) is one more such class handed to `Maintenance`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from taskq import db, metrics, workflows
from taskq import queue as q
from taskq.errors import DatabaseUnavailable, SchemaOutdated
from taskq.worker.inflight import InFlight

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str
    interval: float  # seconds between runs
    first_delay: float  # seconds before the first run

    def run_once(self) -> None: ...


class Progress:
    """Whether a loop that talks to the database is getting anywhere: `waiting()` when it
    has work the database must take, `done()` when the database took it. `stalled()` is
    how long it has been waiting (0 when it is not): a readiness check compares it with a
    bound, so a loop stuck on a silent server or failing for long reports not ready."""

    def __init__(self) -> None:
        self._since: float | None = None

    def waiting(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def done(self) -> None:
        self._since = None

    def stalled(self) -> float:
        since = self._since
        return 0.0 if since is None else time.monotonic() - since


class Maintenance:
    """Runs each service when due; a database failure in one is logged, never fatal."""

    def __init__(self, services: Sequence[Service], halt: threading.Event) -> None:
        self.services = list(services)
        self._halt = halt
        self.progress = Progress()

    def run(self) -> None:
        """The maintenance thread's body (started by the worker)."""
        now = time.monotonic()
        due = [now + s.first_delay for s in self.services]
        failing: set[int] = set()  # services whose last run failed
        while not self._halt.wait(max(0.0, min(due, default=now + 1.0) - time.monotonic())):
            for i, service in enumerate(self.services):
                now = time.monotonic()
                if now < due[i]:
                    continue
                try:
                    service.run_once()
                    failing.discard(i)
                except DatabaseUnavailable as exc:
                    failing.add(i)
                    log.warning("%s failed: %s", service.name, exc.message)
                # Read after the run: a service may adapt its interval (the scheduler
                # sleeps until its next slot is due).
                due[i] = now + service.interval
                if failing:
                    self.progress.waiting()
                else:
                    self.progress.done()


class LeaseHeartbeat:
    """Renews the leases of this worker's running tasks, and reports any it lost. Learns
    of cancel requests too: the fallback for a missed control notification."""

    name = "lease heartbeat"

    def __init__(
        self,
        pool: db.Pool,
        inflight: InFlight,
        worker_id: str,
        interval: float,
        lease: float,
        on_cancel: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self._on_cancel = on_cancel
        self._pool = pool
        self._inflight = inflight
        self._worker_id = worker_id
        self._lease = lease
        self.interval = self.first_delay = interval

    def run_once(self) -> None:
        leases = self._inflight.running_leases()
        if not leases:
            return
        with db.pooled(self._pool) as conn:
            owned = q.heartbeat(conn, leases, worker_id=self._worker_id, lease=self._lease)
        if self._on_cancel is not None:
            for task_id, cancel in owned.items():
                if cancel:
                    self._on_cancel(task_id)
        for lease in self._inflight.lost(leases, owned):
            log.warning("task %s attempt %d: lease lost while running", lease.id, lease.attempt)


class LeaseSweep:
    """Puts tasks whose lease expired (any worker's) back to queued, or fails them when
    their attempts are used up. Every worker sweeps; the first sweep is spread at random
    over one interval so that workers started together do not sweep together."""

    name = "expired-lease sweep"

    def __init__(self, pool: db.Pool, interval: float) -> None:
        self._pool = pool
        self.interval = interval
        self.first_delay = random.uniform(0, interval)
        self.recovered = 0

    def run_once(self) -> None:
        with db.pooled(self._pool) as conn:
            rows = workflows.recover_expired(conn)
        metrics.tasks_recovered(rows)
        for row in rows:
            self.recovered += 1
            log.warning(
                "task %s: lease of worker %s expired on attempt %d; now %s",
                row["id"],
                row["worker_id"],
                row["attempts"],
                row["status"],
            )


class DeadWorkerSweep:
    """Recovers at once the tasks of workers whose database session is gone (SIGKILL, a
    lost host): each worker holds a liveness lock on its listener's session
    (taskq/worker/listener.py), and PostgreSQL releases it when the session ends. A worker
    that only stalls keeps its lock; leases and fencing cover it.

    A worker counts as dead once two sweeps in a row found its lock free: a listener that
    reconnects drops its lock for a moment, and must not lose its tasks for it."""

    name = "dead-worker sweep"

    def __init__(self, pool: db.Pool, interval: float, worker_id: str) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self.interval = interval
        self.first_delay = random.uniform(0, interval)
        self.recovered = 0
        self._suspects: set[str] = set()
        self._unavailable = False

    def run_once(self) -> None:
        if self._unavailable:
            return
        try:
            with db.pooled(self._pool) as conn:
                free = q.lock_free_workers(conn, sweeper=self._worker_id)
                dead, self._suspects = free & self._suspects, free
                rows = (
                    workflows.recover_dead_workers(conn, dead, sweeper=self._worker_id)
                    if dead
                    else []
                )
        except SchemaOutdated:
            # The database predates migration 0011: leases alone recover tasks.
            self._unavailable = True
            log.warning("taskq_workers is missing (run `taskq migrate`): dead-worker sweep off")
            return
        metrics.tasks_recovered(rows)
        for row in rows:
            self.recovered += 1
            log.warning(
                "task %s: worker %s is gone; attempt %d recovered, now %s",
                row["id"],
                row["worker_id"],
                row["attempts"],
                row["status"],
            )
