"""Runner threads: each takes a claimed task, runs one attempt, and hands the outcome on.

A runner frees the task's slot the moment the handler returns (the claim loop may take
more at once) and passes the outcome to the completer, which records it in a batch.
"""

from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time

from taskq import logs
from taskq.handlers import Registry
from taskq.queue import Claimed
from taskq.settings import Settings
from taskq.worker.attempt import run_attempt
from taskq.worker.completer import Completer
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
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._inflight = inflight
        self._completer = completer
        self._wake = wake
        self._stopping = stopping
        self._todo: stdqueue.SimpleQueue[Claimed | None] = stdqueue.SimpleQueue()
        self.closing = False  # shutting down: tasks still waiting here are released
        self.threads = [
            threading.Thread(target=self._loop, name=f"runner-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, task: Claimed) -> None:
        self._todo.put(task)

    def stop(self) -> None:
        for _ in self.threads:
            self._todo.put(None)

    def _loop(self) -> None:
        while (task := self._todo.get()) is not None:
            if not self.closing:  # shutting down: the task is released, not started
                self._run_one(task)

    def _run_one(self, task: Claimed) -> None:
        token = logs.bind_task(task.id, task.queue, task.kind, task.attempts)
        try:
            started = time.monotonic()
            outcome = run_attempt(task, self._registry, self._settings, self._stopping)
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
            logs.unbind_task(token)
        idle = self._inflight.handler_returned(task.id)
        if idle or not self._wake.is_set():
            self._wake.set()  # a slot is free: the claim loop may take more
        self._completer.put((outcome, task, elapsed))
