"""The worker: claim, run, record — with leases, batching and a graceful drain.

Threads and what each owns:
- main: the claim loop. Claims at most as many tasks as there are free slots, in one
  statement, then sleeps until a notification, a freed slot, or the poll interval.
- runners (`concurrency` daemon threads): run handlers, serialize the outcome.
- completer: records outcomes in batches (one UPDATE for everything finished since the
  last flush), then frees the slots. Batching is natural: while one flush is in flight
  the next batch accumulates, so an idle worker records each task at once.
- maintenance: renews the leases of in-flight tasks and sweeps expired leases of any
  worker back to queued.
- listener: LISTEN on a dedicated connection (app/taskq/listener.py).

A crash at any point leaves each task either recorded or running under a lease that will
expire and be recovered: at-least-once, never lost.
"""

from __future__ import annotations

import json
import logging
import os
import queue as stdqueue
import random
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from types import FrameType

from taskq import db, logs, metrics
from taskq import queue as q
from taskq.errors import DatabaseUnavailable, InvalidInput, NonRetryableError, UnknownKind
from taskq.handlers import Registry, TaskContext, default_registry
from taskq.health import HealthServer, health_app
from taskq.listener import Listener
from taskq.settings import Settings, parse_bind

log = logging.getLogger(__name__)

_FLUSH_MAX = 1000
_STOP = object()
# Handler results as stored: compact, and NaN/Infinity refused (jsonb cannot hold them).
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_Done = tuple[q.Finish, q.Claimed, float]  # an outcome, its task, the handler's seconds


def backoff_delay(attempt: int, settings: Settings) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, +/- jitter."""
    delay: float = min(
        settings.retry_backoff_base * 2.0 ** max(attempt - 1, 0), settings.retry_backoff_max
    )
    spread = delay * settings.retry_jitter
    return max(0.0, min(delay + random.uniform(-spread, spread), settings.retry_backoff_max))


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
        self.concurrency = concurrency or settings.worker_concurrency
        self.burst = burst
        self.registry = registry
        self.worker_id = settings.worker_id
        self.stopping = threading.Event()  # no more claims
        self._halt = threading.Event()  # background threads end
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[uuid.UUID, q.Claimed] = {}  # claimed and not yet recorded
        self._outcome_pending: set[uuid.UUID] = set()  # handler done, record not yet written
        # A slot frees when its handler returns, not when the outcome is written: the
        # completer's round trip then overlaps the next claim instead of lengthening every
        # cycle. Unwritten outcomes are capped so a slow database applies back-pressure.
        self._running = 0
        self._closing = False  # set once the drain deadline has passed
        self._max_unrecorded = max(4 * self.concurrency, 256)
        self._todo: stdqueue.SimpleQueue[q.Claimed | None] = stdqueue.SimpleQueue()
        # Outcomes for the completer: (outcome, task, handler seconds), or _STOP.
        self._outbox: stdqueue.SimpleQueue[_Done | object] = stdqueue.SimpleQueue()
        self.counts = {"claimed": 0, "succeeded": 0, "retried": 0, "failed": 0, "lost": 0}
        self.recovered = 0
        # The claim loop and the completer each own a connection; lease maintenance,
        # probes and shutdown share a small pool.
        durable = settings.worker_synchronous_commit
        self._claim_db = db.Dedicated(settings, name="worker-claim", synchronous_commit=durable)
        self._finish_db = db.Dedicated(settings, name="worker-finish", synchronous_commit=durable)
        self._pool = db.create_pool(
            settings, name="worker", min_size=1, max_size=3, synchronous_commit=durable
        )
        self.listener = Listener(settings, self.queues, self._wake.set, self._halt)
        host, port = parse_bind(settings.worker_health_bind)
        self.health = HealthServer(
            health_app(self.ready_checks), host, port if health_port is None else health_port
        )
        metrics.watch_worker(self)  # slots, in-flight tasks and pool usage, read at scrape

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> int:
        """Run until stopped (signal or `stop()`), or until idle in burst mode. Returns 0."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "worker %s serving queues %s with concurrency %d%s",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            " (burst)" if self.burst else "",
        )
        self.health.start()
        threads = [
            threading.Thread(target=self.listener.run, name="listener", daemon=True),
            threading.Thread(target=self._complete_loop, name="completer", daemon=True),
            threading.Thread(target=self._maintain_loop, name="maintenance", daemon=True),
        ]
        threads += [
            threading.Thread(target=self._run_loop, name=f"runner-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            self._claim_loop()
        finally:
            self._drain(threads[1])
        return 0

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

    def _drain(self, completer: threading.Thread) -> None:
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self._busy() and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
        self._outbox.put(_STOP)
        completer.join(timeout=max(1.0, deadline - time.monotonic()))
        # Runners no longer start what is still waiting locally; it is released below.
        self._closing = True
        self._record_leftovers()
        with self._lock:
            unfinished = [
                task.lease
                for tid, task in self._inflight.items()
                if tid not in self._outcome_pending
            ]
        if unfinished:
            try:
                with db.pooled(self._pool) as conn:
                    released = q.release(conn, unfinished, worker_id=self.worker_id)
                log.info("released %d unfinished task(s) back to the queue", len(released))
            except DatabaseUnavailable:
                log.warning(
                    "could not release %d task(s); they recover when leases expire", len(unfinished)
                )
        self._halt.set()
        for _ in range(self.concurrency):
            self._todo.put(None)
        self.health.stop()
        self._claim_db.close()
        self._finish_db.close()
        self._pool.close(timeout=1.0)
        log.info("worker %s stopped: %s", self.worker_id, self.counts)

    def _record_leftovers(self) -> None:
        """Record outcomes that reached the outbox after the completer stopped: without
        this they would be neither recorded nor released, and wait out their lease."""
        batch: list[q.Finish] = []
        while True:
            try:
                item = self._outbox.get_nowait()
            except stdqueue.Empty:
                break
            if item is not _STOP:
                batch.append(item[0])  # type: ignore[index]
        if batch:
            self._record(batch)

    def _free_slots(self) -> int:
        with self._lock:
            if len(self._outcome_pending) >= self._max_unrecorded:
                return 0  # the completer is behind: let it catch up first
            return self.concurrency - self._running

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._inflight)

    def ready_checks(self) -> dict[str, bool]:
        return {
            "database": db.ping(self._pool),
            "listener": self.listener.connected.is_set(),
            "accepting": not self.stopping.is_set(),
        }

    # ----------------------------------------------------------------- claiming
    def _claim_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self._wake.clear()
            free = self._free_slots()
            claimed: list[q.Claimed] = []
            if free > 0:
                try:
                    with self._claim_db.use() as conn:
                        claimed = q.claim(
                            conn,
                            queues=self.queues,
                            limit=free,
                            worker_id=self.worker_id,
                            lease=self.settings.lease_seconds,
                        )
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    if failures == 1:
                        log.warning("cannot claim: %s; retrying", exc.message)
                    self.stopping.wait(min(0.1 * 2**failures, 5.0))
                    continue
                with self._lock:
                    for task in claimed:
                        self._inflight[task.id] = task
                    self._running += len(claimed)
                self.counts["claimed"] += len(claimed)
                for task in claimed:
                    self._todo.put(task)
                if len(claimed) == free:
                    continue  # the queue may hold more; claim again once slots free up
            if self.burst and not claimed and not self._busy():
                log.info("burst: no runnable task left")
                return
            self._wake.wait(self.settings.poll_interval)

    # ----------------------------------------------------------------- running
    def _run_loop(self) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        while (task := self._todo.get()) is not None:
            if self._closing:
                continue  # shutting down: the task is released, not started
            token = logs.bind_task(task.id, task.queue, task.kind, task.attempts)
            try:
                started = time.monotonic()
                outcome = self._attempt(task)
                elapsed = time.monotonic() - started
                if debug:
                    log.debug(
                        "task %s %s in %.1f ms",
                        task.id,
                        outcome.outcome,
                        elapsed * 1000,
                        extra={"outcome": outcome.outcome, "duration_ms": round(elapsed * 1000, 3)},
                    )
            finally:
                logs.unbind_task(token)
            with self._lock:
                self._outcome_pending.add(task.id)
                self._running -= 1
                idle = self._running == 0
            if idle or not self._wake.is_set():
                self._wake.set()  # a slot is free: the claim loop may take more
            self._outbox.put((outcome, task, elapsed))

    def _attempt(self, task: q.Claimed) -> q.Finish:
        lease = q.Lease(task.id, task.attempts)
        try:
            handler = self.registry.get(task.kind)
        except UnknownKind:
            return q.Finish(lease, "failed", error=f"no handler for kind {task.kind!r}")
        try:
            if handler.takes_context:
                ctx = TaskContext(
                    task.id, task.kind, task.queue, task.attempts, task.max_attempts, self.stopping
                )
                result = handler.fn(task.payload, ctx)
            else:
                result = handler.fn(task.payload)
        except NonRetryableError as exc:
            return q.Finish(lease, "failed", error=_describe(exc))
        except Exception as exc:  # any handler error is a retryable failure by contract
            log.warning(
                "task %s (%s) attempt %d/%d raised %s",
                task.id,
                task.kind,
                task.attempts,
                task.max_attempts,
                type(exc).__name__,
            )
            # Frames only: the exception's text may quote the payload (it is kept in the
            # task's last_error, which only API clients read).
            log.debug(
                "task %s traceback (message withheld):\n%s%s",
                task.id,
                "".join(traceback.format_tb(exc.__traceback__)),
                type(exc).__name__,
            )
            return q.Finish(
                lease,
                "retry",
                error=_describe(exc),
                retry_delay=backoff_delay(task.attempts, self.settings),
            )
        try:
            encoded = _RESULT_ENCODER.encode(result)
        except (TypeError, ValueError) as exc:  # a handler bug: retrying cannot help
            return q.Finish(lease, "failed", error=f"result is not JSON: {exc}")
        if "\\u0000" in encoded:
            return q.Finish(lease, "failed", error="result contains a NUL character")
        return q.Finish(lease, "succeeded", result_json=encoded)

    # ----------------------------------------------------------------- recording
    def _complete_loop(self) -> None:
        while True:
            first = self._outbox.get()
            if first is _STOP:
                return
            batch: list[_Done] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < _FLUSH_MAX:
                try:
                    item = self._outbox.get_nowait()
                except stdqueue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            metrics.tasks_ran([(task.queue, task.kind, seconds) for _, task, seconds in batch])
            self._record([outcome for outcome, _, _ in batch])
            if stop:
                return

    def _record(self, batch: list[q.Finish]) -> None:
        delay = 0.05
        while True:
            try:
                with self._finish_db.use() as conn:
                    applied, rejected = q.finish(conn, batch, worker_id=self.worker_id)
                break
            except InvalidInput:
                if len(batch) == 1:  # the database refused this result: fail the task
                    batch = [
                        q.Finish(batch[0].lease, "failed", error="result rejected by PostgreSQL")
                    ]
                    continue
                for one in batch:  # find the culprit; everything else records normally
                    self._record([one])
                return
            except DatabaseUnavailable:
                if self._halt.is_set() or self._closing:
                    return  # give up: leases expire and the tasks run again elsewhere
                self._halt.wait(delay)
                delay = min(delay * 2, 2.0)
        for row in applied:
            key = {"queued": "retried", "succeeded": "succeeded", "failed": "failed"}[row["status"]]
            self.counts[key] += 1
        for lost in rejected:
            self.counts["lost"] += 1
            log.warning(
                "task %s attempt %d: lease lost, outcome discarded (task was recovered "
                "and belongs to another attempt)",
                lost.lease.id,
                lost.lease.attempt,
            )
        with self._lock:
            for item in batch:
                self._inflight.pop(item.lease.id, None)
                self._outcome_pending.discard(item.lease.id)
        self._wake.set()  # back-pressure may have lifted; burst mode may be done

    # ----------------------------------------------------------------- leases
    def _maintain_loop(self) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_interval
        next_sweep = time.monotonic() + random.uniform(0, self.settings.recover_interval)
        while not self._halt.wait(max(0.0, min(next_beat, next_sweep) - time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self.settings.heartbeat_interval
                    self._heartbeat()
                if now >= next_sweep:
                    next_sweep = now + self.settings.recover_interval
                    self._sweep()
            except DatabaseUnavailable as exc:
                log.warning("lease maintenance failed: %s", exc.message)

    def _heartbeat(self) -> None:
        # Tasks whose outcome is already on its way to the database need no renewal.
        with self._lock:
            leases = [
                task.lease
                for tid, task in self._inflight.items()
                if tid not in self._outcome_pending
            ]
        if not leases:
            return
        with db.pooled(self._pool) as conn:
            owned = q.heartbeat(
                conn, leases, worker_id=self.worker_id, lease=self.settings.lease_seconds
            )
        with self._lock:  # recorded meanwhile is not lost
            lost = [
                lease
                for lease in leases
                if lease.id not in owned
                and lease.id in self._inflight
                and lease.id not in self._outcome_pending
            ]
        for lease in lost:
            log.warning("task %s attempt %d: lease lost while running", lease.id, lease.attempt)

    def _sweep(self) -> None:
        with db.pooled(self._pool) as conn:
            recovered = q.recover_expired(conn)
        for row in recovered:
            self.recovered += 1
            log.warning(
                "task %s: lease of worker %s expired on attempt %d; now %s",
                row["id"],
                row["worker_id"],
                row["attempts"],
                row["status"],
            )


def _describe(exc: BaseException) -> str:
    """The error kept in last_error: type and message, in text PostgreSQL can store (a NUL
    or a lone surrogate would make it refuse the whole batch of outcomes)."""
    text = f"{type(exc).__name__}: {exc}"[:4000]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
