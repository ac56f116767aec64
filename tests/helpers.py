"""Test helpers: deadlines instead of sleeps, subprocesses of the real CLI."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# Fast timings so lease, retry and poll behaviour show within a test's deadline.
TEST_SETTINGS: dict[str, Any] = {
    "lease_seconds": 2.0,
    "recover_interval": 0.2,
    "poll_interval": 0.2,
    "retry_backoff_base": 0.0,
    "retry_backoff_max": 0.0,
    "shutdown_timeout": 5.0,
    "db_pool_timeout": 2.0,
    "worker_health_bind": "127.0.0.1:0",
    "api_health_bind": "127.0.0.1:0",
}


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def skip_unless_ci(reason: str) -> None:
    """Skip a test whose tools are missing on this machine; in CI (the CI environment
    variable, which .ci/run sets) fail instead, so a skipped test cannot pass unnoticed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this machine must have it)")
    pytest.skip(reason)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def taskq_env(database_url: str, **settings: Any) -> dict[str, str]:
    """Environment for a `taskq` subprocess: our database and fast test timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    env["DATABASE_URL"] = database_url
    env["PYTHONPATH"] = str(REPO)
    for key, value in {**TEST_SETTINGS, **settings}.items():
        env[f"TASKQ_{key.upper()}"] = str(value)
    return env


def spawn_taskq(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start `python -m taskq.cli ARGS` in its own process group."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.Popen(
        [sys.executable, "-m", "taskq.cli", *args],
        env=env,
        start_new_session=True,
        text=True,
        **kwargs,
    )


def stop_process(proc: subprocess.Popen[str], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL at the deadline; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
