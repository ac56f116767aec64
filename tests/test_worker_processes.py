"""Worker processes (the real `taskq worker`): signals, crashes, several processes at once."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import queue as q
from taskq.models import TaskSpec

from tests.helpers import free_port, spawn_taskq, stop_process, taskq_env, wait_until

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[dict[str, Any]]

# What a healthy worker's /ready reports.
ALL_READY = {
    "database": True,
    "listener": True,
    "claiming": True,
    "recording": True,
    "maintenance": True,
    "threads": True,
    "accepting": True,
}


def _env(database_url: str, record: Path, **settings: Any) -> dict[str, str]:
    env = taskq_env(database_url, handler_modules="tests.handlers_for_tests", **settings)
    env["TASKQ_TEST_RECORD"] = str(record)
    return env


def _records(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        task_id, attempt, pid = line.split()
        out.append((task_id, int(attempt), int(pid)))
    return out


def _status_counts(conn: Conn) -> dict[str, int]:
    return {row["status"]: row["n"] for row in q.counts(conn)}


def _worker(env: dict[str, str], *args: str, health_port: int = 0) -> subprocess.Popen[str]:
    return spawn_taskq(
        ["worker", "--health-port", str(health_port), *args],
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _ready(port: int) -> tuple[int, dict[str, bool]] | None:
    """The worker's /ready: (status, checks), or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return resp.status, json.load(resp)["checks"]
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)["checks"]
    except OSError:
        return None


def test_several_processes_run_each_task_exactly_once(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    record = tmp_path / "runs.log"
    env = _env(database_url, record)
    tasks = q.enqueue_many(conn, [TaskSpec(kind="record")] * 3000)
    workers = [_worker(env, "--concurrency", "8") for _ in range(3)]
    try:
        wait_until(
            lambda: _status_counts(conn) == {"succeeded": 3000},
            timeout=90,
            interval=0.2,
            what="3000 tasks to succeed",
        )
    finally:
        codes = [stop_process(w) for w in workers]
    assert codes == [0, 0, 0]
    runs = collections.Counter(task_id for task_id, _, _ in _records(record))
    assert len(runs) == 3000
    assert set(runs.values()) == {1}
    assert runs.keys() == {str(t.id) for t in tasks}
    assert len({pid for _, _, pid in _records(record)}) == 3  # the work was shared
    attempts = conn.execute("SELECT DISTINCT attempts FROM taskq_tasks").fetchall()
    assert attempts == [{"attempts": 1}]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_in_flight_tasks_and_exits_zero(
    database_url: str, conn: Conn, tmp_path: Path, signum: signal.Signals
) -> None:
    env = _env(database_url, tmp_path / "runs.log", shutdown_timeout=10)
    worker = _worker(env, "--concurrency", "4")
    try:
        tasks = q.enqueue_many(conn, [TaskSpec(kind="sleep", payload={"seconds": 1.5})] * 2)
        wait_until(lambda: _status_counts(conn).get("running") == 2, what="both to run")
        worker.send_signal(signum)
        assert worker.wait(timeout=15) == 0
    finally:
        stop_process(worker)
    assert {q.get(conn, t.id).status for t in tasks} == {"succeeded"}


def test_sigterm_puts_back_what_outlasts_the_shutdown_timeout(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    env = _env(database_url, tmp_path / "runs.log", shutdown_timeout=1)
    worker = _worker(env)
    try:
        task = q.enqueue(conn, "sleep", {"seconds": 60})
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
        assert time.monotonic() - started < 1 + 4  # shutdown timeout plus a little
    finally:
        stop_process(worker)
    back = q.get(conn, task.id)
    assert (back.status, back.attempts) == ("queued", 0)


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
    ids=["SIGTERM-then-SIGINT", "SIGINT-then-SIGTERM"],
)
def test_a_second_signal_exits_at_once(
    database_url: str, conn: Conn, tmp_path: Path, first: signal.Signals, second: signal.Signals
) -> None:
    env = _env(database_url, tmp_path / "runs.log", shutdown_timeout=60)
    port = free_port()
    worker = _worker(env, health_port=port)
    try:
        task = q.enqueue(conn, "sleep", {"seconds": 60})
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        ready = {**ALL_READY}
        wait_until(lambda: _ready(port) == (200, ready), what="the worker to be ready")
        worker.send_signal(first)
        # The first signal has been handled once the worker stops accepting work: it
        # drains, and /ready says so.
        wait_until(
            lambda: _ready(port) == (503, {**ready, "accepting": False}),
            what="the worker to start draining",
        )
        assert worker.poll() is None  # draining: the 60 s task holds it
        worker.send_signal(second)
        assert worker.wait(timeout=5) != 0
    finally:
        stop_process(worker)
    # Not released: the lease is what brings this task back.
    assert q.get(conn, task.id).status == "running"


def test_sigkill_mid_batch_loses_nothing(database_url: str, conn: Conn, tmp_path: Path) -> None:
    record = tmp_path / "runs.log"
    env = _env(database_url, record, lease_seconds=2)
    tasks = q.enqueue_many(conn, [TaskSpec(kind="slow_record", payload={"seconds": 0.5})] * 12)
    victim = _worker(env, "--concurrency", "4")
    try:
        wait_until(lambda: len(_records(record)) >= 6, timeout=20, what="work in progress")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=5)
        in_flight = {
            row["id"] for row in conn.execute("SELECT id FROM taskq_tasks WHERE status = 'running'")
        }
        assert in_flight, "the kill should have caught tasks in flight"
        killed_at = time.monotonic()
        survivor = _worker(env, "--concurrency", "4")
        try:
            wait_until(
                lambda: _status_counts(conn) == {"succeeded": 12},
                timeout=30,
                interval=0.1,
                what="every task to succeed",
            )
            recovery = time.monotonic() - killed_at
        finally:
            assert stop_process(survivor) == 0
    finally:
        stop_process(victim)
    runs = collections.Counter(task_id for task_id, _, _ in _records(record))
    assert runs.keys() == {str(t.id) for t in tasks}
    twice = {task_id for task_id, n in runs.items() if n > 1}
    assert twice <= {str(i) for i in in_flight}  # only tasks in flight at the kill re-ran
    assert max(runs.values()) == 2
    assert recovery < 2 + 10  # the lease plus sweep and run time, well inside the deadline
