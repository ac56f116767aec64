"""Stopping running attempts: a per-attempt switch, and the watcher that flips it.

Every claimed task gets a Control. The runner starts it with the attempt's timeout and,
in the process pool, a way to terminate the child running it. It is stopped once, for one
reason: `timeout` (the watcher saw the deadline pass) or `cancel` (a control notification
or the heartbeat said the cancel was requested). Stopping sets the event a thread-pool
handler sees as `ctx.cancelled` and terminates a process-pool child; a stopped attempt
that is still running after the grace is escalated: the child is killed, or a thread
that ignores the event is reported (it keeps its slot until it returns).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from taskq import metrics
from taskq.queue import Claimed

log = logging.getLogger(__name__)

Reason = Literal["timeout", "cancel"]

# One lock for every Control: each holds it for a few assignments, and one is made per
# claimed task, so a lock (and an Event) each would cost every task for the rare stop.
_LOCK = threading.Lock()


class Control:
    """One attempt's stop switch. Thread-safe: the watcher, the listener, the heartbeat
    and the runner all touch it."""

    __slots__ = (
        "_event", "_kill", "_terminate", "deadline", "escalated", "reason", "stopped_at",
        "task", "timeout",
    )  # fmt: skip

    def __init__(self, task: Claimed) -> None:
        self.task = task
        self.timeout: float | None = None
        self.deadline: float | None = None  # monotonic; set when the attempt starts
        self.reason: Reason | None = None
        self.stopped_at: float | None = None
        self.escalated = False
        self._event: threading.Event | None = None  # made for handlers that ask for it
        self._terminate: Callable[[], None] | None = None
        self._kill: Callable[[], None] | None = None

    @property
    def cancelled(self) -> threading.Event:
        """The handler's ctx.cancelled: set once the attempt is stopped."""
        with _LOCK:
            if self._event is None:
                self._event = threading.Event()
                if self.reason is not None:
                    self._event.set()
            return self._event

    def start(
        self,
        timeout: float | None,
        terminate: Callable[[], None] | None = None,
        kill: Callable[[], None] | None = None,
    ) -> bool:
        """The attempt begins now; False when it was stopped before it could start."""
        with _LOCK:
            self.timeout = timeout
            self.deadline = None if timeout is None else time.monotonic() + timeout
            self._terminate, self._kill = terminate, kill
            return self.reason is None

    def finished(self) -> None:
        """The attempt is over: nothing may be terminated any more."""
        with _LOCK:
            self._terminate = self._kill = None

    def stop(self, reason: Reason) -> bool:
        """Stop the attempt for `reason`; False if it was already stopped."""
        with _LOCK:
            if self.reason is not None:
                return False
            self.reason = reason
            self.stopped_at = time.monotonic()
            terminate, event = self._terminate, self._event
        if event is not None:
            event.set()
        if terminate is not None:
            terminate()
        return True

    def escalate(self) -> Callable[[], None] | None:
        """Mark the stop as escalated; the kill to run, if the attempt has one."""
        with _LOCK:
            self.escalated = True
            return self._kill


class ControlWatcher:
    """Stops attempts past their deadline and escalates stops that did not take within
    the grace. A service of its own thread (not beside the heartbeat), so a database that
    hangs the heartbeat never delays a timeout."""

    name = "attempt control"

    def __init__(self, controls: Callable[[], list[Control]], grace: float) -> None:
        self._controls = controls
        self._grace = grace
        self.interval = 0.05
        self.first_delay = 0.05
        self.overruns = 0

    def run_once(self) -> None:
        now = time.monotonic()
        for control in self._controls():
            try:
                self._check(control, now)
            except Exception:  # one attempt's trouble must not stop the watcher
                log.exception("task %s: checking its timeout failed", control.task.id)

    def _check(self, control: Control, now: float) -> None:
        if control.reason is None:
            if control.deadline is not None and now >= control.deadline:
                task = control.task
                log.warning(
                    "task %s (%s) attempt %d: timed out after %g s; stopping it",
                    task.id,
                    task.kind,
                    task.attempts,
                    control.timeout,
                )
                control.stop("timeout")
            return
        stopped_at = control.stopped_at
        if control.escalated or stopped_at is None or now - stopped_at < self._grace:
            return
        kill = control.escalate()
        task = control.task
        if kill is not None:
            log.warning(
                "task %s (%s): child still running %g s after SIGTERM (%s); SIGKILL",
                task.id,
                task.kind,
                self._grace,
                control.reason,
            )
            kill()
        else:
            self.overruns += 1
            metrics.task_overran(task.queue, task.kind)
            log.warning(
                "task %s (%s) attempt %d: handler ignores its %s and still runs %g s "
                "later; it keeps its slot until it returns",
                task.id,
                task.kind,
                task.attempts,
                control.reason,
                self._grace,
            )
