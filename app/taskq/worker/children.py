"""The process pool: long-lived child processes that run attempts, one task at a time each.

Each runner thread owns one Child, started once (not per task) with the `spawn` method so
it inherits no threads, locks or database connections of the worker. The child imports
the handler modules, then loops: receive a task over its pipe, run one attempt exactly as
the thread pool does, send the outcome back. The database stays with the parent.

Stopping: the parent sends SIGTERM (the child raises TaskCancelled inside the handler, so
its `finally` blocks run), and the control watcher sends SIGKILL if the child is still
alive after the grace. A stopped or dead child is replaced by a fresh one; a child that
dies on its own (a segfault, the OOM killer) fails the attempt it was running with an
error that says so, and the worker carries on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from typing import Any

from taskq import logs
from taskq.errors import TaskCancelled
from taskq.handlers import default_registry
from taskq.queue import Claimed, Finish
from taskq.settings import Settings

log = logging.getLogger(__name__)

_READY = "ready"
_SPAWN = multiprocessing.get_context("spawn")


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class Child:
    """One child process and the pipe to it. Used by one runner thread only; `terminate`
    and `kill` may be called from others (they only send signals)."""

    def __init__(self, settings: Settings, index: int) -> None:
        self._settings = settings
        self._index = index
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ready = False
        self.started = 0  # children started in this slot, replacements included

    @property
    def is_ready(self) -> bool:
        """A child is up and has imported the handler modules."""
        return self._ready and self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    def start(self) -> None:
        parent, child = _SPAWN.Pipe()
        proc = _SPAWN.Process(
            target=child_main,
            args=(child, self._settings),
            name=f"taskq-child-{self._index}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn, self._ready = proc, parent, False
        self.started += 1

    def _await_ready(self) -> bool:
        """Wait for the child's hello; False if it died first (a broken handler module)."""
        assert self._conn is not None
        while not self._ready:
            try:
                self._ready = self._conn.recv() == _READY
            except (EOFError, OSError):
                return False
        return True

    def ready(self) -> None:
        """Make sure a live, initialised child is there (starting one if needed)."""
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self.start()
        if not self._await_ready():
            code = self._proc.exitcode
            self.close()
            raise RuntimeError(f"the child process could not start ({describe_exit(code)})")

    def run(self, task: Claimed) -> Finish | str:
        """Run one attempt in the child: its outcome, or why the child died (a string)."""
        assert self._conn is not None
        job = (
            task.id, task.queue, task.kind, task.payload, task.attempts, task.max_attempts,
            task.timeout_seconds,
        )  # fmt: skip
        try:
            self._conn.send(job)
            # The pipe and the process sentinel: a child that dies wakes us as surely as
            # one that answers.
            multiprocessing.connection.wait([self._conn, self._proc.sentinel])
            if self._conn.poll():
                outcome, result_json, error, delay = self._conn.recv()
                return Finish(task.lease, outcome, result_json, error, delay)
        except (EOFError, OSError):
            pass
        self._proc.join(5.0)
        return describe_exit(self._proc.exitcode)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def retire(self, grace: float) -> None:
        """End this child (it ran a stopped attempt): SIGTERM, SIGKILL after the grace."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self.terminate()
            self._proc.join(grace)
        if self._proc.is_alive():
            self.kill()
            self._proc.join(5.0)
        self.close()

    def close(self) -> None:
        """Let the child go: closing the pipe ends its loop; a child that does not exit
        at once is terminated."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
            proc.close()


# ---------------------------------------------------------------- in the child


class _Terminated:
    """SIGTERM in the child: stop the running handler (raise inside it), then exit."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.busy:
            raise TaskCancelled("the attempt was stopped (SIGTERM)")
        raise SystemExit(0)


def child_main(conn: multiprocessing.connection.Connection, settings: Settings) -> None:
    """The child's loop. Signals meant for the worker (Ctrl-C, a SIGTERM to its process
    group) go to the parent only: it decides what stops, and lets running tasks finish
    on a graceful shutdown. A child whose parent is gone exits at its next receive."""
    from taskq.worker.attempt import run_attempt

    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated = _Terminated()
    signal.signal(signal.SIGTERM, terminated)
    logs.configure(settings)
    default_registry.load_modules(settings.handler_modules)
    stopping = threading.Event()
    conn.send(_READY)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        task_id, queue, kind, payload, attempts, max_attempts, timeout = job
        task = Claimed(task_id, queue, kind, payload, attempts, max_attempts, 0.0, timeout)
        token = logs.bind_task(task.id, task.queue, task.kind, task.attempts)
        terminated.busy = True
        try:
            outcome = run_attempt(task, default_registry, settings, stopping)
        except TaskCancelled:  # the signal came after the handler returned
            outcome = Finish(task.lease, "failed", error="stopped")
        finally:
            terminated.busy = False
            logs.unbind_task(token)
        conn.send((outcome.outcome, outcome.result_json, outcome.error, outcome.retry_delay))
        if terminated.requested:
            return
