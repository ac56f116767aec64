"""app/taskq/worker.py in-process: running, retries, scheduling, leases, fencing, wake-ups."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from taskq import queue as q
from taskq.errors import NonRetryableError
from taskq.handlers import TaskContext
from taskq.models import Task, TaskSpec
from taskq.settings import Settings
from taskq.worker import Worker, backoff_delay

from tests.helpers import wait_until
from tests.worker_helpers import fresh_registry, running_worker

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


def _finished(conn: Conn, task: Task, status: str = "succeeded") -> Callable[[], bool]:
    return lambda: q.get(conn, task.id).status == status


def test_runs_a_task_to_succeeded(settings: Settings, conn: Conn) -> None:
    with running_worker(settings) as worker:
        task = q.enqueue(conn, "echo", {"input": "hello"})
        wait_until(_finished(conn, task), what="echo to succeed")
    done = q.get(conn, task.id)
    assert done.result == {"input": "hello"}
    assert done.attempts == 1
    assert done.worker_id == worker.worker_id
    assert done.started_at
    assert done.finished_at
    assert done.finished_at >= done.started_at
    assert done.lease_expires_at is None


def test_retries_until_success_keeping_the_last_error(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()

    @registry.handler("flaky", takes_context=True)
    def flaky(payload: dict[str, Any], ctx: TaskContext) -> str:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return "third time lucky"

    with running_worker(settings, registry):
        task = q.enqueue(conn, "flaky")
        wait_until(_finished(conn, task), what="flaky to succeed")
    done = q.get(conn, task.id)
    assert (done.attempts, done.result) == (3, "third time lucky")
    assert done.last_error == "ConnectionError: attempt 2 failed"


def test_fails_after_max_attempts(settings: Settings, conn: Conn) -> None:
    with running_worker(settings):
        task = q.enqueue(conn, "fail", {"message": "always"}, max_attempts=3)
        wait_until(_finished(conn, task, "failed"), what="fail to exhaust attempts")
    done = q.get(conn, task.id)
    assert done.attempts == 3
    assert done.last_error == "RuntimeError: always"
    assert done.finished_at is not None


@pytest.mark.parametrize(
    ("kind", "payload", "error"),
    [
        ("fail", {"retryable": False, "message": "bad input"}, "NonRetryableError: bad input"),
        ("missing_kind", {}, "no handler for kind 'missing_kind'"),
        ("returns_set", {}, "result is not JSON"),
        ("returns_nul", {}, "result contains a NUL character"),
        ("raises_nul", {}, "NonRetryableError: a\\x00b"),
        ("raises_surrogate", {}, "NonRetryableError: a\\ud800b"),
    ],
)
def test_fails_at_once_without_retrying(
    settings: Settings, conn: Conn, kind: str, payload: dict[str, Any], error: str
) -> None:
    registry = fresh_registry()
    registry.register("returns_set", lambda payload: {1, 2})
    registry.register("returns_nul", lambda payload: "a\x00b")

    def raises(text: str) -> Any:
        def handler(payload: dict[str, Any]) -> None:
            raise NonRetryableError(text)

        return handler

    # Error texts PostgreSQL could not store are kept escaped, not refused.
    registry.register("raises_nul", raises("a\x00b"))
    registry.register("raises_surrogate", raises("a\ud800b"))
    with running_worker(settings, registry):
        task = q.enqueue(conn, kind, payload)
        wait_until(_finished(conn, task, "failed"), what=f"{kind} to fail")
    done = q.get(conn, task.id)
    assert done.attempts == 1
    assert (done.last_error or "").startswith(error)


def test_backoff_grows_exponentially_with_bounded_jitter(make_settings: Any) -> None:
    s = make_settings(retry_backoff_base=2.0, retry_backoff_max=60.0, retry_jitter=0.25)
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (10, 60.0)]:
        delays = [backoff_delay(attempt, s) for _ in range(200)]
        assert all(min(nominal * 0.75, 60.0) <= d <= min(nominal * 1.25, 60.0) for d in delays)
        assert len(set(delays)) > 1  # jitter spreads retries out


def test_retry_waits_for_its_backoff(make_settings: Any, conn: Conn) -> None:
    settings = make_settings(retry_backoff_base=1.0, retry_backoff_max=1.0, retry_jitter=0.0)
    with running_worker(settings):
        task = q.enqueue(conn, "fail", max_attempts=2)
        wait_until(
            lambda: q.get(conn, task.id).attempts == 1 and q.get(conn, task.id).status == "queued"
        )
        first = q.get(conn, task.id)
        wait_until(_finished(conn, task, "failed"), what="second attempt")
    second = q.get(conn, task.id)
    assert second.started_at is not None
    assert first.finished_at is None
    assert second.started_at >= first.run_at  # not before the backoff was over


def test_scheduled_task_runs_when_due(settings: Settings, conn: Conn) -> None:
    with running_worker(settings):
        task = q.enqueue(conn, "echo", delay=1.0)
        assert q.get(conn, task.id).status == "queued"
        wait_until(_finished(conn, task), timeout=10, what="the delayed task")
    done = q.get(conn, task.id)
    assert done.started_at is not None
    assert done.started_at >= done.run_at


def test_runs_in_priority_order_and_only_its_queues(make_settings: Any, conn: Conn) -> None:
    order: list[int] = []
    registry = fresh_registry()
    registry.register("note", lambda payload: order.append(payload["n"]))
    q.enqueue_many(conn, [TaskSpec(kind="note", payload={"n": n}, priority=n) for n in (1, 5, 3)])
    other = q.enqueue(conn, "note", {"n": 99}, queue="other", priority=100)
    with running_worker(make_settings(), registry, concurrency=1, queues=["default"]):
        wait_until(lambda: len(order) == 3, what="three tasks")
    assert order == [5, 3, 1]
    assert q.get(conn, other.id).status == "queued"


def _caught_up_and_idle(conn: Conn) -> bool:
    """The worker's claim connection has finished a claim that started after its listener
    was listening, and sits idle: the catch-up claim the listener asks for after LISTEN is
    done, and the claim loop waits for the next wake-up (seen in pg_stat_activity)."""
    row = conn.execute(
        "SELECT claim.state = 'idle'"
        "       AND position('WITH ready AS' IN claim.query) > 0"
        "       AND claim.query_start > listener.state_change AS idle"
        "  FROM pg_stat_activity claim, pg_stat_activity listener"
        " WHERE claim.datname = current_database() AND listener.datname = current_database()"
        "   AND claim.application_name = 'taskq-worker-claim'"
        "   AND listener.application_name = 'taskq-listener'"
        "   AND listener.query = 'LISTEN taskq' AND listener.state = 'idle'"
    ).fetchone()
    return bool(row and row["idle"])


def test_notification_wakes_the_worker_without_polling(make_settings: Any, conn: Conn) -> None:
    settings = make_settings(poll_interval=60.0)  # polling cannot explain a fast pickup
    with running_worker(settings) as worker:
        wait_until(worker.listener.connected.is_set, what="listener")
        # Idle first: a task enqueued now can only be picked up through its notification.
        wait_until(lambda: _caught_up_and_idle(conn), what="the catch-up claim to finish")
        task = q.enqueue(conn, "echo")
        wait_until(_finished(conn, task), timeout=5, what="a notified task")


def _kill_listener(conn: Conn) -> None:
    """Terminate the worker's LISTEN backend (exactly one in this test's database)."""
    killed = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
        " WHERE application_name = 'taskq-listener' AND datname = current_database()"
    ).fetchone()
    assert killed is not None
    assert killed["n"] == 1


def test_listener_reconnects_after_its_connection_is_killed(make_settings: Any, conn: Conn) -> None:
    settings = make_settings(poll_interval=60.0)
    with running_worker(settings) as worker:
        wait_until(worker.listener.connected.is_set, what="listener")
        _kill_listener(conn)
        wait_until(lambda: worker.listener.reconnects >= 2, what="the listener to reconnect")
        wait_until(worker.listener.connected.is_set, what="listener")
        task = q.enqueue(conn, "echo")
        wait_until(_finished(conn, task), timeout=5, what="a task after the reconnect")


def test_heartbeat_keeps_a_long_task_owned(make_settings: Any, conn: Conn) -> None:
    settings = make_settings(lease_seconds=1.0)
    calls: list[int] = []
    registry = fresh_registry()
    registry.register("long", lambda payload: calls.append(1) or time.sleep(2.5))
    # Two workers: if the lease lapsed, the second one would recover and rerun the task.
    with running_worker(settings, registry), running_worker(settings, registry):
        task = q.enqueue(conn, "long")
        wait_until(_finished(conn, task), timeout=10, what="the long task")
    assert calls == [1]
    assert q.get(conn, task.id).attempts == 1


def test_recovers_the_task_of_a_dead_worker(settings: Settings, conn: Conn) -> None:
    task = q.enqueue(conn, "echo", {"v": 1})
    # A worker claims it and dies without a word: its lease is all that is left.
    q.claim(conn, queues=["default"], limit=1, worker_id="dead-worker", lease=0.5)
    started = time.monotonic()
    with running_worker(settings) as worker:
        wait_until(_finished(conn, task), timeout=10, what="recovery")
    done = q.get(conn, task.id)
    assert done.attempts == 2
    assert done.worker_id == worker.worker_id
    assert "dead-worker" in (done.last_error or "")
    assert time.monotonic() - started < 0.5 + settings.recover_interval + 3
    assert worker.recovered == 1


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_result(
    settings: Settings, conn: Conn
) -> None:
    release = threading.Event()
    registry = fresh_registry()
    registry.register("blocked", lambda payload: release.wait(10) and "stale result")
    with running_worker(settings, registry) as stale:
        task = q.enqueue(conn, "blocked")
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        # Simulate the stale worker's lease lapsing: expire it, recover, let another claim.
        conn.execute(
            "UPDATE taskq_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (task.id,),
        )
        stale.stop()  # keep the stale worker from re-claiming the recovered task itself
        assert [r["id"] for r in q.recover_expired(conn)] == [task.id]
        (_fresh,) = q.claim(conn, queues=["default"], limit=1, worker_id="new-owner", lease=60)
        release.set()
        wait_until(lambda: stale.counts["lost"] == 1, what="the stale write to be refused")
    current = q.get(conn, task.id)
    assert (current.status, current.worker_id, current.attempts) == ("running", "new-owner", 2)
    assert current.result is None


def test_burst_mode_exits_when_nothing_is_runnable(settings: Settings, conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec()] * 300)
    later = q.enqueue(conn, "echo", delay=3600)
    worker = Worker(settings, registry=fresh_registry(), burst=True, health_port=0)
    assert worker.run() == 0
    counts = {r["status"]: r["n"] for r in q.counts(conn)}
    assert counts == {"succeeded": 300, "queued": 1}
    assert q.get(conn, later.id).status == "queued"


def test_stop_lets_in_flight_tasks_finish(settings: Settings, conn: Conn) -> None:
    with running_worker(settings) as worker:
        task = q.enqueue(conn, "sleep", {"seconds": 1.0})
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        worker.stop()
    assert q.get(conn, task.id).status == "succeeded"


def test_stop_releases_tasks_that_outlast_the_shutdown_timeout(
    make_settings: Any, conn: Conn
) -> None:
    settings = make_settings(shutdown_timeout=0.5)
    started = time.monotonic()
    with running_worker(settings) as worker:
        task = q.enqueue(conn, "sleep", {"seconds": 30})
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        worker.stop()
    assert time.monotonic() - started < 10
    back = q.get(conn, task.id)
    assert (back.status, back.attempts, back.lease_expires_at) == ("queued", 0, None)
    assert back.run_at <= datetime.now(UTC) + timedelta(seconds=1)


def _probe(worker: Worker, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.health.port}{path}") as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_health_endpoints(settings: Settings) -> None:
    with running_worker(settings) as worker:
        wait_until(worker.listener.connected.is_set, what="listener")
        assert _probe(worker, "/live") == (200, {"status": "live"})
        status, body = _probe(worker, "/ready")
        assert status == 200
        assert body["checks"] == {**ALL_READY}


def test_ready_is_503_while_the_listener_is_disconnected(
    settings: Settings, conn: Conn, server_url: str
) -> None:
    def allow_connections(allow: bool) -> None:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                f'ALTER DATABASE "{conn.info.dbname}" ALLOW_CONNECTIONS {str(allow).lower()}'
            )

    with running_worker(settings) as worker:
        wait_until(lambda: _probe(worker, "/ready")[0] == 200, what="the worker to be ready")
        # New connections to this database are refused while the listener is down, so
        # the window in which it reconnects stays open until the test closes it.
        allow_connections(False)
        try:
            _kill_listener(conn)
            _, body = wait_until(
                lambda: (r := _probe(worker, "/ready"))[0] == 503 and r,
                what="/ready to report the lost listener",
            )
            assert body["status"] == "not ready"
            assert body["checks"]["listener"] is False
            assert body["checks"]["accepting"] is True
            assert _probe(worker, "/live") == (200, {"status": "live"})
        finally:
            allow_connections(True)
        _, body = wait_until(
            lambda: (r := _probe(worker, "/ready"))[0] == 200 and r,
            what="/ready after the listener reconnected",
        )
        assert body["checks"] == {**ALL_READY}
        assert worker.listener.reconnects >= 2


def test_ready_is_503_while_the_worker_drains(settings: Settings, conn: Conn) -> None:
    release = threading.Event()
    registry = fresh_registry()
    registry.register("blocked", lambda payload: release.wait(10) and "done")
    with running_worker(settings, registry) as worker:
        wait_until(lambda: _probe(worker, "/ready")[0] == 200, what="the worker to be ready")
        task = q.enqueue(conn, "blocked")
        wait_until(lambda: q.get(conn, task.id).status == "running", what="claim")
        worker.stop()  # what SIGTERM and SIGINT do: stop claiming, drain in-flight tasks
        try:
            status, body = _probe(worker, "/ready")
            assert status == 503
            assert body["checks"] == {**ALL_READY, "accepting": False}
            assert _probe(worker, "/live")[0] == 200
        finally:
            release.set()
    assert q.get(conn, task.id).status == "succeeded"


class _Broken:
    """A maintenance service with a bug: it raises what no loop expects."""

    name = "broken"
    interval = 0.05
    first_delay = 0.0

    def __init__(self) -> None:
        self.armed = threading.Event()

    def run_once(self) -> None:
        if self.armed.is_set():
            raise RuntimeError("a bug")


def test_a_dead_background_thread_takes_ready_down_and_stops_the_worker(
    make_settings: Any,
) -> None:
    from taskq.worker import Worker

    worker = Worker(make_settings(), registry=fresh_registry(), health_port=0)
    broken = _Broken()
    worker.maintenance.services.append(broken)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: all(worker.ready_checks().values()), what="the worker to be ready")
        broken.armed.set()
        thread.join(20)
        assert not thread.is_alive(), "the worker kept running with a dead thread"
    finally:
        worker.stop()
        thread.join(20)
    assert result == [1]  # a supervisor restarts it
    assert worker.failed_thread == "maintenance"
    assert worker.ready_checks()["threads"] is False


def test_ready_reports_a_claim_loop_that_makes_no_progress(
    make_settings: Any, database_url: str
) -> None:
    """Readiness is progress, not a flag set at start: a claim that waits on the database
    (here behind an ACCESS EXCLUSIVE lock, with no server-side timeout) for longer than the
    client timeout is abandoned and retried, and the worker reports not ready meanwhile."""
    settings = make_settings(db_client_timeout=1.0, db_statement_timeout_ms=0)
    with running_worker(settings) as worker:
        wait_until(lambda: all(worker.ready_checks().values()), what="the worker to be ready")
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE taskq_tasks IN ACCESS EXCLUSIVE MODE")
            wait_until(
                lambda: worker.ready_checks()["claiming"] is False, timeout=10, what="not ready"
            )
            locker.rollback()
        wait_until(lambda: worker.ready_checks()["claiming"], timeout=10, what="ready again")


def test_a_listener_reconnect_does_not_make_a_worker_look_dead(
    make_settings: Any, conn: Conn
) -> None:
    """The liveness lock lives on the listener's session: when that connection is killed
    the lock is free until the listener reconnects. The other worker's dead-worker sweep
    needs two sweeps in a row to see it free, so the running task stays where it is."""
    registry = fresh_registry()
    release = threading.Event()
    registry.register("hold", lambda payload: release.wait(30))
    settings = make_settings(liveness_interval=1.0, lease_seconds=30)
    with (
        running_worker(settings, registry, concurrency=1) as holder,
        # Serves another queue, so it never claims the task; its sweeps cover every worker.
        running_worker(
            make_settings(liveness_interval=1.0), registry, concurrency=1, queues=["elsewhere"]
        ) as other,
    ):
        wait_until(lambda: holder.listener.registered and other.listener.registered)
        task = q.enqueue(conn, "hold")
        wait_until(lambda: q.get(conn, task.id).status == "running", what="the task to start")
        owner = q.get(conn, task.id).worker_id
        assert owner == holder.worker_id
        reconnects = holder.listener.reconnects
        _kill_listener_of(conn, holder)
        wait_until(lambda: holder.listener.reconnects > reconnects, what="a reconnect")
        swept = other.dead_sweep.recovered
        # Three more sweeps of the other worker pass over the reconnected holder.
        deadline = time.monotonic() + 3.0
        wait_until(lambda: time.monotonic() > deadline, timeout=10, what="three sweeps")
        assert other.dead_sweep.recovered == swept
        row = q.get(conn, task.id)
        assert (row.status, row.attempts, row.worker_id) == ("running", 1, owner)
        release.set()
        wait_until(_finished(conn, task), what="the task to finish")


def _kill_listener_of(conn: Conn, worker: Any) -> None:
    """Terminate one worker's listener backend (the session holding its liveness lock)."""
    row = conn.execute(
        "SELECT count(pg_terminate_backend(l.pid)) AS n FROM pg_locks l"
        " WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.objid = %s::oid",
        (q.liveness_key(worker.worker_id),),
    ).fetchone()
    assert row is not None
    assert row["n"] == 1
