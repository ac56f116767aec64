"""Runner threads: each takes a claimed task, runs one attempt, and hands the outcome on.

A runner frees the task's slot the moment the handler returns (the claim loop may take
more at once) and passes the outcome to the completer, which records it in a batch.

Two pools (TASKQ_WORKER_POOL): `thread` runs the handler on the runner thread itself, and
stopping it is cooperative (ctx.cancelled); `process` has a runner take an idle
long-lived child process (children.py) for each task, and stopping it is SIGTERM, then
SIGKILL. With more runners than children (TASKQ_WORKER_PREFETCH), claimed tasks wait for
a free child; their timeout starts when one takes them.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time

from taskq import logs, metrics
from taskq.handlers import Registry
from taskq.queue import Claimed, Finish
from taskq.settings import Settings
from taskq.worker.attempt import backoff_delay, run_attempt, stopped_outcome, timeout_of
from taskq.worker.children import Child
from taskq.worker.completer import Completer
from taskq.worker.control import Control
from taskq.worker.inflight import InFlight

log = logging.getLogger(__name__)


class Runners:
    def __init__(
        self,
        count: int,
        settings: Settings,
        registry: Registry,
        inflight: InFlight,
        completer: Completer,
        wake: threading.Event,
        stopping: threading.Event,
        pool: str = "thread",
        processes: int = 0,
    ) -> None:
        self.pool = pool
        self._settings = settings
        self._registry = registry
        self._inflight = inflight
        self._completer = completer
        self._wake = wake
        self._stopping = stopping
        self._todo: stdqueue.SimpleQueue[Claimed | None] = stdqueue.SimpleQueue()
        self.closing = False  # shutting down: tasks still waiting here are released
        self.children = [Child(settings, i) for i in range(processes)] if pool == "process" else []
        self._idle: stdqueue.SimpleQueue[Child] = stdqueue.SimpleQueue()  # ready children
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"runner-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for child in self.children:
            # Every child boots at once; each joins the idle ones when it is ready.
            child.start()
            threading.Thread(target=self._boot, args=(child,), daemon=True).start()
        for thread in self.threads:
            thread.start()

    def submit(self, task: Claimed) -> None:
        self._todo.put(task)

    def stop(self) -> None:
        for _ in self.threads:
            self._todo.put(None)

    def _boot(self, child: Child) -> None:
        try:
            child.ready()
        except RuntimeError as exc:  # tried again before its first task
            log.error("process pool: %s", exc)
        self._idle.put(child)

    def _loop(self, index: int) -> None:
        while (task := self._todo.get()) is not None:
            if self.closing:  # shutting down: the task is released, not started
                continue
            if not self.children:
                self._run_one(task, None)
                continue
            child = self._idle.get()
            try:
                self._run_one(task, child)
            finally:
                self._idle.put(child)

    def close_children(self) -> None:
        """Let every child go (the worker is done with them)."""
        for child in self.children:
            child.close()

    def _execute(self, task: Claimed, control: Control | None, child: Child | None) -> Finish:
        timeout = timeout_of(task, self._registry)
        if child is None:
            if control is not None and not control.start(timeout):
                return stopped_outcome(task, self._registry, self._settings, control)
            return run_attempt(task, self._registry, self._settings, self._stopping, control)
        try:
            child.ready()
        except RuntimeError as exc:
            return Finish(task.lease, "retry", error=str(exc), retry_delay=1.0)
        if control is not None and not control.start(timeout, child.terminate, child.kill):
            return stopped_outcome(task, self._registry, self._settings, control)
        outcome = child.run(task)
        if control is not None:
            control.finished()
        if control is not None and control.reason is not None:
            child.retire(self._settings.worker_kill_grace)  # the next task gets a fresh child
            return stopped_outcome(task, self._registry, self._settings, control)
        if isinstance(outcome, str):
            metrics.child_died()
            log.warning(
                "task %s (%s): the child process running it %s; starting a fresh one",
                task.id,
                task.kind,
                outcome,
            )
            child.close()
            return Finish(
                task.lease,
                "retry",
                error=f"the child process running the task {outcome}",
                retry_delay=backoff_delay(task.attempts, self._settings),
            )
        return outcome

    def _run_one(self, task: Claimed, child: Child | None) -> None:
        token = logs.bind_task(task.id, task.queue, task.kind, task.attempts)
        control = self._inflight.control(task.id)
        try:
            started = time.monotonic()
            outcome = self._execute(task, control, child)
            elapsed = time.monotonic() - started
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "task %s %s in %.1f ms",
                    task.id,
                    outcome.outcome,
                    elapsed * 1000,
                    extra={"outcome": outcome.outcome, "duration_ms": round(elapsed * 1000, 3)},
                )
        finally:
            if control is not None:
                control.finished()
            logs.unbind_task(token)
        idle = self._inflight.handler_returned(task.id)
        if idle or not self._wake.is_set():
            self._wake.set()  # a slot is free: the claim loop may take more
        self._completer.put((outcome, task, elapsed))
