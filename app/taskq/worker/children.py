"""The process pool: long-lived child processes that run attempts, one task at a time each.

Runner threads take an idle Child for each task. A child is started once (not per task)
as a fresh interpreter
(`python -m taskq.worker.child FD`, child.py), so it inherits no threads, locks or database
connections of the worker, and nothing of the program that started the worker is run
again (multiprocessing's spawn would re-import its main module). Parent and child talk
over a socket pair with multiprocessing's Connection framing (pickles). The child receives
the settings and the parent's import path, imports the handler modules, then loops:
receive a task, run one attempt exactly as the thread pool does, send the outcome back.
The database stays with the parent.

Stopping: the parent sends SIGTERM (the child raises TaskCancelled inside the handler, so
its `finally` blocks run), and the control watcher sends SIGKILL if the child is still
alive after the grace. A stopped or dead child is replaced by a fresh one; a child that
dies on its own (a segfault, the OOM killer) fails the attempt it was running with an
error that says so, and the worker carries on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import signal
import socket
import subprocess
import sys

from taskq.queue import Claimed, Finish
from taskq.settings import Settings
from taskq.worker.child import READY

log = logging.getLogger(__name__)


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
    """One child process and the socket to it. Used by one runner thread at a time;
    `terminate` and `kill` may be called from others (they only send signals)."""

    def __init__(self, settings: Settings, index: int) -> None:
        self._settings = settings
        self._index = index
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ready = False
        self.started = 0  # children started in this slot, replacements included

    @property
    def is_ready(self) -> bool:
        """A child is up and has imported the handler modules."""
        return self._ready and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskq.worker.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # A group of its own: signals for the worker's group (Ctrl-C, a group
                # SIGTERM) reach the parent only, which decides what stops.
                process_group=0,
            )
        finally:
            theirs.close()
        conn = multiprocessing.connection.Connection(ours.detach())
        conn.send((self._settings, list(sys.path)))
        self._proc, self._conn, self._ready = proc, conn, False
        self.started += 1

    def _await_ready(self) -> bool:
        """Wait for the child's hello; False if it died first (a broken handler module)."""
        assert self._conn is not None
        while not self._ready:
            try:
                self._ready = self._conn.recv() == READY
            except (EOFError, OSError):
                return False
        return True

    def ready(self) -> None:
        """Make sure a live, initialised child is there (starting one if needed)."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self.start()
        if not self._await_ready():
            assert self._proc is not None
            code = self._proc.wait(5.0)
            self.close()
            raise RuntimeError(f"the child process could not start ({describe_exit(code)})")

    def run(self, task: Claimed) -> Finish | str:
        """Run one attempt in the child: its outcome, or why the child died (a string)."""
        conn, proc = self._conn, self._proc  # close() may clear them from another thread
        assert conn is not None
        assert proc is not None
        job = (
            task.id, task.queue, task.kind, task.payload, task.attempts, task.max_attempts,
            task.timeout_seconds,
            task.parent_results,
        )  # fmt: skip
        try:
            conn.send(job)
            # A child that dies closes its end: the receive ends with EOFError.
            outcome, result_json, error, delay = conn.recv()
            return Finish(task.lease, outcome, result_json, error, delay)
        except (EOFError, OSError):
            pass
        try:
            code: int | None = proc.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed the socket but lives on: end it
            proc.kill()
            code = proc.wait()
        return describe_exit(code)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        proc = self._proc
        if proc is not None:
            # Popen checks that it has not reaped the child yet: a recycled pid is safe.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def retire(self, grace: float) -> None:
        """End this child (it ran a stopped attempt): SIGTERM, SIGKILL after the grace."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(grace)
        if self._proc.poll() is None:
            self.kill()
            self._proc.wait()
        self.close()

    def close(self) -> None:
        """Let the child go: closing the pipe ends its loop; a child that does not exit
        at once is terminated."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
