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
from collections.abc import Sequence
from typing import Protocol

from taskq import db, metrics
from taskq import queue as q
from taskq.errors import DatabaseUnavailable
from taskq.worker.inflight import InFlight

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str
    interval: float  # seconds between runs
    first_delay: float  # seconds before the first run

    def run_once(self) -> None: ...


class Maintenance:
    """Runs each service when due; a database failure in one is logged, never fatal."""

    def __init__(self, services: Sequence[Service], halt: threading.Event) -> None:
        self.services = list(services)
        self._halt = halt
        self.thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def _loop(self) -> None:
        now = time.monotonic()
        due = [now + s.first_delay for s in self.services]
        while not self._halt.wait(max(0.0, min(due, default=now + 1.0) - time.monotonic())):
            for i, service in enumerate(self.services):
                now = time.monotonic()
                if now < due[i]:
                    continue
                try:
                    service.run_once()
                except DatabaseUnavailable as exc:
                    log.warning("%s failed: %s", service.name, exc.message)
                # Read after the run: a service may adapt its interval (the scheduler
                # sleeps until its next slot is due).
                due[i] = now + service.interval


class LeaseHeartbeat:
    """Renews the leases of this worker's running tasks, and reports any it lost."""

    name = "lease heartbeat"

    def __init__(
        self, pool: db.Pool, inflight: InFlight, worker_id: str, interval: float, lease: float
    ) -> None:
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
            rows = q.recover_expired(conn)
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
