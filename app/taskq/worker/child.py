"""A process-pool child: `python -m taskq.worker.child FD` (started by children.py).

Kept apart from the rest of the worker so a child imports only what running handlers
needs: the settings, the handler modules and one attempt's code, not the worker's
threads, database pools or health server.
"""

from __future__ import annotations

import multiprocessing.connection
import signal
import sys
import threading

from taskq import logs
from taskq.errors import TaskCancelled
from taskq.handlers import default_registry
from taskq.queue import Claimed, Finish

READY = "ready"


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


def child_main(fd: int) -> None:
    """The child's loop. A child whose parent is gone exits at its next receive."""
    from taskq.worker.attempt import run_attempt

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated = _Terminated()
    signal.signal(signal.SIGTERM, terminated)
    conn = multiprocessing.connection.Connection(fd)
    try:
        settings, path = conn.recv()
    except (EOFError, OSError):
        return
    sys.path[:] = path  # import handler modules exactly as the parent does
    logs.configure(settings)
    default_registry.load_modules(settings.handler_modules)
    stopping = threading.Event()
    conn.send(READY)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        task_id, queue, kind, payload, attempts, max_attempts, timeout, parents = job
        task = Claimed(
            task_id, queue, kind, payload, attempts, max_attempts, 0.0, timeout, None, parents
        )
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


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
