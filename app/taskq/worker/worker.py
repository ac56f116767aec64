"""The worker: its lifecycle, signals and claim loop; the rest is in the modules beside it.

Threads and what each owns:
- main: the claim loop. Claims at most as many tasks as there are free slots, in one
  statement, then sleeps until a notification, a freed slot, or the poll interval.
- runners (runner.py, `concurrency` threads): run handlers, on the thread itself or, in
  the process pool, in a child process each (children.py).
- completer (completer.py): records outcomes in batches.
- maintenance (maintenance.py): lease heartbeat, expired-lease and dead-worker sweeps.
- control (control.py): timeouts and the escalation of stops, on a thread of its own.
- listener (listener.py): LISTEN on a dedicated connection (wake-ups and cancel
  requests), which also holds the worker's liveness lock.
- health (taskq/health.py): /live, /ready, /metrics.
In-flight book-keeping (slots, leases) is owned by inflight.py.

Readiness means progress: /ready fails while the claim loop, the completer or the
maintenance thread has been waiting on the database for longer than the client timeout,
while the listener does not hear its own probe, and for good once a background thread
died (the worker then stops claiming, drains and exits 1, for its supervisor to restart).

A crash at any point leaves each task either recorded or running under a lease that will
expire and be recovered: at-least-once, never lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType

from taskq import db, flow, metrics, settings_file, workflows
from taskq import queue as q
from taskq.backoff import Backoff
from taskq.errors import DatabaseUnavailable, InvalidInput, TaskqError
from taskq.handlers import Registry, default_registry
from taskq.health import HealthServer, health_app
from taskq.registry import PRESENCE_FRESH
from taskq.settings import Settings, parse_bind
from taskq.worker.completer import Completer, Done
from taskq.worker.control import ControlWatcher
from taskq.worker.inflight import InFlight, Snapshot
from taskq.worker.listener import Listener
from taskq.worker.maintenance import (
    DeadWorkerSweep,
    LeaseHeartbeat,
    LeaseSweep,
    Maintenance,
    Progress,
)
from taskq.worker.runner import Runners
from taskq.worker.scheduler import Presence, Scheduler, SettingsFileWatch

log = logging.getLogger(__name__)

# How often the claim loop re-reads which of its queues have flow-control limits. A queue
# that has just been limited is skipped by the plain claim meanwhile (never over-claimed).
FLOW_REFRESH_SECONDS = 1.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        registry: Registry = default_registry,
        health_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.queues = list(queues or settings.worker_queues)
        self.pool = settings.worker_pool
        self.processes = 0
        if self.pool == "process":
            self.processes = settings.worker_processes or os.cpu_count() or 2
            self.concurrency = concurrency or self.processes + settings.worker_prefetch
        else:
            self.concurrency = concurrency or settings.worker_concurrency
        self.burst = burst
        self.worker_id = settings.worker_id
        self.stopping = threading.Event()  # no more claims
        self._halt = threading.Event()  # background threads end
        self._wake = threading.Event()
        self.claimed = 0
        self.inflight = InFlight(self.concurrency)
        # The settings file is read now, so a bad one stops the worker before it starts.
        self.settings_file = None
        if settings.config_file is not None:
            self.settings_file = settings_file.load(settings.config_file)
            self.settings_file.check_kinds(set(registry.kinds()))
        self.limited: frozenset[str] = frozenset()  # this worker's queues that have limits
        self.rated: frozenset[str] = frozenset()  # those of them with a rate limit
        # Those of them no other live worker serves, and of those the ones whose last
        # claim filled max_running or the rate window: their next claim has room only once
        # outcomes are recorded, so the outcomes are recorded in that claim's transaction
        # (flow.claim_limited) instead of by the completer before it: handed over in
        # `_handed`. Elsewhere the completer's FINISH runs beside the claims, as usual.
        self.alone: frozenset[str] = frozenset()
        self._gated: frozenset[str] = frozenset()
        self._lean: frozenset[str] = frozenset()  # limited by max_running only
        self._handed: dict[str, list[q.Finish]] = {}
        self._handed_lock = threading.Lock()
        self._handing = True  # cleared at shutdown: the completer records everything
        self.recorded_with_claims = 0  # outcomes recorded that way (tests, profiles)
        self._limited_read_at = float("-inf")
        # Room in a limited queue appears only when a task of it is recorded (here or by
        # another worker, which notifies), when its limits change (notified) or when its
        # rate window moves on (timed). `_news` counts recordings and notifications; a
        # limited queue whose claim came up short is not claimed again until it moves,
        # so freed local slots do not turn into empty claims.
        self._news = 0
        self._news_count = itertools.count(1)  # next() is atomic: nudges come from threads
        self._short: dict[str, int] = {}
        self._limited_first = False
        self._limited_start = 0
        durable = settings.worker_synchronous_commit
        # The claim loop and the completer each own a connection; maintenance, probes and
        # shutdown share a small pool.
        self._claim_db = db.Dedicated(settings, name="worker-claim", synchronous_commit=durable)
        self._pool = db.create_pool(
            settings, name="worker", min_size=1, max_size=3, synchronous_commit=durable
        )
        self.completer = Completer(
            settings,
            self.worker_id,
            self.inflight,
            self._nudge,
            self._halt,
            limited=lambda: self.limited,
            hand=(lambda: self._gated, self._hand),
        )
        self.runners = Runners(
            self.concurrency,
            settings,
            registry,
            self.inflight,
            self.completer,
            self._wake,
            self.stopping,
            pool=self.pool,
            processes=self.processes,
        )
        self.sweep = LeaseSweep(self._pool, settings.recover_interval)
        self.dead_sweep = DeadWorkerSweep(self._pool, settings.liveness_interval, self.worker_id)
        self.scheduler = Scheduler(self._pool, settings)
        self.presence = Presence(self._pool, self.worker_id, self.queues)
        watch: list[SettingsFileWatch] = []
        if settings.config_file is not None:
            watch.append(
                SettingsFileWatch(self._pool, settings.config_file, lambda: set(registry.kinds()))
            )
        self.maintenance = Maintenance(
            [
                *watch,
                LeaseHeartbeat(
                    self._pool,
                    self.inflight,
                    self.worker_id,
                    settings.heartbeat_interval,
                    settings.lease_seconds,
                    self._cancel_requested,
                ),
                self.sweep,
                self.dead_sweep,
                self.scheduler,
                self.presence,
            ],
            self._halt,
        )
        self.watcher = ControlWatcher(self.inflight.controls, settings.worker_kill_grace)
        self.control = Maintenance([self.watcher], self._halt)
        self.listener = Listener(
            settings,
            self.queues,
            self._nudge,
            self._halt,
            send_probe=self._send_probe,
            worker_id=self.worker_id,
            on_cancel=self._cancel_requested,
            own=lambda pid: pid == self.completer.backend_pid,
        )
        self.claim_progress = Progress()
        self.failed_thread: str | None = None
        host, port = parse_bind(settings.worker_health_bind)
        self.health = HealthServer(
            health_app(self.ready_checks), host, port if health_port is None else health_port
        )
        metrics.watch_worker(self)
        metrics.track_pool(self._pool, "worker")

    @property
    def counts(self) -> dict[str, int]:
        """Tasks claimed, and outcomes recorded by kind, since start."""
        return {"claimed": self.claimed, **self.completer.counts}

    @property
    def recovered(self) -> int:
        """Tasks this worker's sweeps recovered from expired leases or dead workers."""
        return self.sweep.recovered + self.dead_sweep.recovered

    def _cancel_requested(self, task_id: uuid.UUID) -> None:
        if self.inflight.cancel(task_id):
            log.info("task %s: cancel requested; stopping its attempt", task_id)

    def snapshot(self) -> Snapshot:
        """Slots, tasks in flight and free slots, for the metrics."""
        return self.inflight.snapshot()

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> int:
        """Run until stopped (signal or `stop()`), or until idle in burst mode. Returns 0."""
        try:
            self.health.start()  # first: a taken port fails before anything claims to run
        except OSError:
            self._close()
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            # SIGUSR1 writes every thread's stack to stderr: what a worker that seems
            # stuck is doing, without stopping it.
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        log.info(
            "worker %s serving queues %s with concurrency %d (%s pool)%s",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.pool,
            " (burst)" if self.burst else "",
        )
        self._apply_settings_file()
        self._start("listener", self.listener.run)
        self._start("completer", self.completer.run)
        self._start("maintenance", self.maintenance.run)
        self._start("control", self.control.run)
        self.runners.start()
        try:
            self._claim_loop()
        finally:
            self._drain()
        return 0 if self.failed_thread is None else 1

    def _start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A background thread that, should it die, stops the worker instead of leaving a
        process that looks alive and does nothing."""

        def guarded() -> None:
            try:
                target()
            except BaseException:
                if self._halt.is_set():
                    return
                log.critical("the %s thread died; stopping the worker", name, exc_info=True)
                self.failed_thread = name
                self.stop()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _nudge(self) -> None:
        """Something changed in the database (an outcome recorded, a notification)."""
        self._news = next(self._news_count)
        self._wake.set()

    def _hand(self, done: list[Done]) -> bool:
        """Take outcomes of queues this worker is alone on, for the next claim of their
        queue (False once shutting down: the completer records them itself)."""
        with self._handed_lock:
            if not self._handing:
                return False
            for outcome, task, _ in done:
                self._handed.setdefault(task.queue, []).append(outcome)
        self._nudge()
        return True

    def _give_back(self, keep: frozenset[str] = frozenset()) -> None:
        """Outcomes handed over for queues other than `keep` go back to the completer."""
        with self._handed_lock:
            back = [o for name, got in self._handed.items() if name not in keep for o in got]
            self._handed = {name: got for name, got in self._handed.items() if name in keep}
        self.completer.put_outcomes(back)

    def stop(self) -> None:
        """Stop claiming; `run` then drains in-flight tasks and returns."""
        self.stopping.set()
        self._wake.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping.is_set():
            log.warning("second signal: exiting now; unfinished tasks recover by lease")
            os._exit(1)
        log.info(
            "%s: finishing in-flight tasks (up to %.0fs)",
            signal.Signals(signum).name,
            self.settings.shutdown_timeout,
        )
        self.stop()

    def _drain(self) -> None:
        with self._handed_lock:
            self._handing = False
        self._give_back()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self.inflight.busy() and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
        # Runners no longer start what is still waiting locally; it is released below.
        self.runners.closing = True
        self.completer.stop(timeout=max(1.0, deadline - time.monotonic()))
        unfinished = self.inflight.running_leases()
        if unfinished:
            try:
                with db.pooled(self._pool) as conn:
                    released = q.release(conn, unfinished, worker_id=self.worker_id)
                log.info("released %d unfinished task(s) back to the queue", len(released))
            except DatabaseUnavailable:
                log.warning(
                    "could not release %d task(s); they recover when leases expire", len(unfinished)
                )
        with contextlib.suppress(TaskqError):
            # The dead-worker sweep forgets it otherwise, once its liveness lock is gone.
            self.presence.gone()
        self._halt.set()
        self.runners.stop()
        self.runners.close_children()
        self.health.stop()
        self._close()
        log.info("worker %s stopped: %s", self.worker_id, self.counts)

    def _close(self) -> None:
        self._claim_db.close()
        self.completer.close()
        self._pool.close(timeout=1.0)

    def _apply_settings_file(self) -> None:
        """Apply TASKQ_CONFIG_FILE before claiming, retrying while the database is away."""
        if self.settings_file is None:
            return
        retry = Backoff(0.2, 5.0)
        while not self.stopping.is_set():
            try:
                with db.pooled(self._pool) as conn:
                    applied = settings_file.apply(conn, self.settings_file)
            except DatabaseUnavailable as exc:
                if retry.failures == 0:
                    log.warning("cannot apply the settings file: %s; retrying", exc.message)
                self.stopping.wait(retry.next())
                continue
            log.info(
                "settings file %s applied: %d schedule(s) created, %d updated, %d deleted",
                self.settings_file.path,
                len(applied.schedules_created),
                len(applied.schedules_updated),
                len(applied.schedules_deleted),
            )
            return

    def ready_checks(self) -> dict[str, bool]:
        bound = self.settings.client_timeout
        return {
            "database": db.ping(self._pool),
            "listener": self.listener.healthy(),
            "claiming": self.claim_progress.stalled() < bound,
            "recording": self.completer.progress.stalled() < bound,
            "maintenance": self.maintenance.progress.stalled() < bound,
            "threads": self.failed_thread is None,
            "accepting": not self.stopping.is_set(),
        }

    def _send_probe(self, payload: str) -> None:
        """The listener's probe, sent the way the API's notifications travel."""
        with db.pooled(self._pool) as conn:
            q.notify(conn, [payload], durable=False)

    # ----------------------------------------------------------------- claiming
    def _claim_loop(self) -> None:
        retry = Backoff(0.2, 5.0)
        while not self.stopping.is_set():
            self._wake.clear()
            # Read before claiming: a limited queue's claim counts this worker's tasks
            # until their outcomes are recorded, so "nothing claimed" only means "nothing
            # left" if nothing was in flight when the claim ran.
            idle = not self.inflight.busy()
            free = self.inflight.free_slots()
            claimed: list[q.Claimed] = []
            wait = self.settings.poll_interval
            if free > 0 or self._handed:  # handed outcomes are recorded by a claim
                self.claim_progress.waiting()
                try:
                    claimed, wait = self._claim(free)
                    retry.reset()
                    self.claim_progress.done()
                except DatabaseUnavailable as exc:
                    if retry.failures == 0:
                        # A wrong setting (role, database, host, password) says so at once.
                        log.warning(
                            "cannot claim: %s (%s); retrying", exc.message, db.cause_line(exc)
                        )
                    self.stopping.wait(retry.next())
                    continue
                self.inflight.claimed(claimed)
                self.claimed += len(claimed)
                metrics.tasks_claimed(claimed)
                for task in claimed:
                    self.runners.submit(task)
                if len(claimed) == free and free > 0:
                    continue  # the queue may hold more; claim again once slots free up
            if self.burst and idle and not claimed and wait >= self.settings.poll_interval:
                log.info("burst: no runnable task left")
                return
            if not self._wake.wait(wait):
                self._short.clear()  # the poll: try every queue again

    def _claim(self, free: int) -> tuple[list[q.Claimed], float]:
        """Claim up to `free` tasks: the queues without limits in one statement, and each
        limited queue in its own turn (taskq/flow.py), the two taking turns at going first
        so that neither kind starves the other. Also how long to wait if this comes up
        short: the poll interval, or less when a rate window opens sooner. Each step uses
        the connection on its own (behind a transaction pooler: its own transaction), so a
        limited queue's turn ends with its claim."""
        now = time.monotonic()
        if now - self._limited_read_at >= FLOW_REFRESH_SECONDS:
            with self._claim_db.use() as conn:
                limited = flow.limited_queues(
                    conn, self.queues, worker_id=self.worker_id, fresh=PRESENCE_FRESH
                )
            self.limited = frozenset(limited)
            self.rated = frozenset(name for name, lim in limited.items() if lim.rated)
            self.alone = frozenset(name for name, lim in limited.items() if lim.alone)
            self._lean = frozenset(n for n, lim in limited.items() if lim.max_running_only)
            self._gated &= self.alone
            self._limited_read_at = now
            self._give_back(keep=self.alone)  # a queue no longer limited, or shared now
        self._limited_first = not self._limited_first
        claimed: list[q.Claimed] = []
        wait = self.settings.poll_interval
        try:
            if self.limited and self._limited_first:
                wait = self._claim_limited(free, claimed)
            if len(self.limited) < len(self.queues) and len(claimed) < free:
                with self._claim_db.use() as conn:
                    claimed.extend(
                        q.claim(
                            conn,
                            queues=self.queues,
                            limit=free - len(claimed),
                            worker_id=self.worker_id,
                            lease=self.settings.lease_seconds,
                        )
                    )
            if self.limited and not self._limited_first:
                wait = self._claim_limited(free, claimed)
        except DatabaseUnavailable:
            if not claimed:
                raise
            # What the earlier steps claimed is committed: run it; the loop retries.
        if any(task.depends_on for task in claimed):
            # Children read their parents' results: one statement for the whole claim.
            # If the database went away just now, they run without (the context says so).
            with contextlib.suppress(DatabaseUnavailable), self._claim_db.use() as conn:
                claimed = workflows.attach_parent_results(conn, claimed)
        return claimed, wait

    def _recorded_here(self, result: flow.LimitedClaim) -> None:
        """Outcomes a limited claim recorded: out of the book and counted; what it left
        (a lost lease, a task whose end has consequences) goes to the completer."""
        self.inflight.recorded(row["id"] for row in result.applied)
        self.completer.count(result.applied, [])
        self.completer.put_outcomes(result.left)
        self.recorded_with_claims += len(result.applied)
        self._wake.set()  # back-pressure may have lifted; burst mode may be done

    def _claim_limited(self, free: int, claimed: list[q.Claimed]) -> float:
        """Claim from each limited queue in turn into `claimed`, up to `free` in all; a
        queue that came up short is skipped until something changed (`_news`)."""
        wait = self.settings.poll_interval
        # Start one queue further on each time, so that a busy limited queue does not
        # take every free slot from the ones listed after it.
        self._limited_start = (self._limited_start + 1) % len(self.queues)
        order = self.queues[self._limited_start :] + self.queues[: self._limited_start]
        for name in order:
            room = free - len(claimed)
            if name not in self.limited:
                continue
            with self._handed_lock:
                finish = self._handed.pop(name, [])
            if not finish and (room <= 0 or self._short.get(name) == self._news):
                continue
            news = self._news
            try:
                with self._claim_db.use() as conn:
                    result = flow.claim_limited(
                        conn,
                        queue=name,
                        limit=room,
                        worker_id=self.worker_id,
                        lease=self.settings.lease_seconds,
                        finish=finish,
                        fresh=PRESENCE_FRESH,
                        lean=name in self._lean,
                    )
            except (DatabaseUnavailable, InvalidInput):
                if not finish:
                    raise
                # The completer records them (and finds the one the database refuses);
                # its recording is news, so this queue is claimed again after it.
                self.completer.put_outcomes(finish)
                continue
            if finish:
                self._recorded_here(result)
                if not result.alone:  # company arrived: record on their own from now on
                    self.alone -= {name}
            got, full = result.claimed, result.full
            claimed.extend(got)
            if not got and name in self._lean:
                self._limited_read_at = float("-inf")  # its limits may have changed
            if full and name in self.alone:
                self._gated |= {name}
            elif name in self._gated:
                self._gated -= {name}
            if len(got) < room or full:
                self._short[name] = news
                if name in self.rated:  # else only a recording or a notification opens it
                    with self._claim_db.use() as conn:
                        opens = flow.rate_wait(conn, name)
                    if opens is not None:
                        wait = min(wait, max(opens, 0.001))
            else:
                self._short.pop(name, None)
        return wait
