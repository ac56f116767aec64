"""Real processes for the reliability suite: `taskq api` (gunicorn), `taskq worker`, HTTP.

Every process logs to a file (so tests can read and grep the logs and no pipe can fill
up), runs in its own session (so the whole gunicorn tree can be signalled at once), and
is registered with a `Processes` collector that stops it in the fixture's teardown, also
when the test failed or left it SIGSTOPped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import free_port, spawn_taskq, taskq_env, wait_until

HANDLER_MODULES = "tests.handlers_for_tests,tests.reliability.handlers"


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_json_error(self) -> bool:
        """The project's one error shape: {"error": {"status": N, "code": ..., "message": ...}}."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return False
        try:
            error = self.json()["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return (
            isinstance(error, dict)
            and error.get("status") == self.status
            and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)
        )


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    content_type: str | None = "application/json",
) -> Response:
    """One HTTP request on a fresh connection; raises OSError/HTTPException on no response."""
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = dict(headers or {})
    if body is not None and content_type is not None:
        all_headers.setdefault("Content-Type", content_type)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def get_status(port: int, path: str, timeout: float = 5.0) -> int | None:
    """The status of GET path, or None when nothing answered."""
    try:
        return request(port, "GET", path, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None


class Proc:
    """A `taskq` subprocess with its combined output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = spawn_taskq(args, env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """The exit code; a process still running after `timeout` fails the test with
        its threads' stacks (a worker writes them on SIGUSR1) and the end of its log."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {timeout:.0f}s later:\n{self.stacks()}"
            ) from None

    def stacks(self, lines: int = 150) -> str:
        """The end of the log once the process has written its threads' stacks (or two
        seconds have passed)."""
        size = self.log_path.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGUSR1)
        deadline, seen = time.monotonic() + 2.0, size
        while time.monotonic() < deadline:  # written thread by thread: until it stops growing
            time.sleep(0.1)
            grown = self.log_path.stat().st_size
            if seen > size and grown == seen:
                break
            seen = grown
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGCONT (in case a test paused it), SIGTERM, then SIGKILL of the whole group."""
        if self.alive():
            self.signal_group(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait()
        self.signal_group(signal.SIGKILL)  # stray gunicorn workers of a killed master
        self._log.close()
        return self.popen.returncode


class Processes:
    """Starts `taskq api` / `taskq worker` processes and stops every one of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def env(self, database_url: str, **settings: Any) -> dict[str, str]:
        env = taskq_env(database_url, handler_modules=HANDLER_MODULES, **settings)
        env["TASKQ_TEST_RECORD"] = str(self.log_dir / "runs.log")
        return env

    def api(
        self, env: dict[str, str], *, workers: int = 2, wait_live: bool = True, name: str = "api"
    ) -> tuple[Proc, int]:
        port = free_port()
        proc = self._spawn(
            name, ["api", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)], env
        )
        if wait_live:
            wait_until(
                lambda: get_status(port, "/live") == 200 or not proc.alive(),
                timeout=30,
                interval=0.05,
                what=f"{name} to answer /live",
            )
            assert proc.alive(), f"{name} exited:\n{proc.log()}"
        return proc, port

    def worker(
        self, env: dict[str, str], *args: str, name: str | None = None, wait_ready: bool = True
    ) -> tuple[Proc, int]:
        port = free_port()
        name = name or f"worker-{len(self.procs)}"
        proc = self._spawn(name, ["worker", "--health-port", str(port), *args], env)
        if wait_ready:
            wait_until(
                lambda: get_status(port, "/ready") == 200 or not proc.alive(),
                timeout=30,
                interval=0.05,
                what=f"{name} to be ready",
            )
            assert proc.alive(), f"{name} exited:\n{proc.log()}"
        return proc, port

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, env, self.log_dir)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()}" for p in self.procs)


@contextlib.contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


def records(path: Path) -> list[tuple[str, int, int]]:
    """Lines written by the `record` handlers: (task id, attempt, pid)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        task_id, attempt, pid = line.split()
        out.append((task_id, int(attempt), int(pid)))
    return out


def port_is_closed(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


class Clock:
    """Monotonic seconds since creation, rounded for reports."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.start, 3)
