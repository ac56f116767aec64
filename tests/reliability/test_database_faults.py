"""Database faults under real processes: a restart under write load, a database that is
down when everything starts, lock waits and a slow transaction, and exhausted connections.

Scenarios that stop PostgreSQL use `private_pg`, never the shared server.
"""

from __future__ import annotations

import collections
import os
import pwd
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from taskq import flow
from taskq import queue as q
from taskq.models import TaskSpec

from tests.helpers import wait_until
from tests.reliability import conftest
from tests.reliability.conftest import Metrics, PrivatePostgres
from tests.reliability.harness import Processes, get_status, request
from tests.reliability.load import Load, Outcome, ReadyProbe
from tests.test_flow import max_overlap

pytestmark = pytest.mark.reliability
Conn = psycopg.Connection[dict[str, Any]]


def _connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def _statuses(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(collections.Counter(str(o.status or o.error) for o in outcomes))


def _assert_clean(outcomes: list[Outcome]) -> None:
    """Every request got 201 or a 503 in the JSON error shape with Retry-After."""
    bad = [o for o in outcomes if o.status not in (201, 503)]
    assert not bad, f"unexpected outcomes: {_statuses(bad)}; first: {bad[0]}"
    for o in outcomes:
        if o.status == 503:
            assert o.json_error, o
            assert o.retry_after, o


def _wait_all_finished(url: str, ids: set[str], timeout: float) -> dict[str, str]:
    with _connect(url) as conn:

        def statuses() -> dict[str, str]:
            rows = conn.execute(
                "SELECT id::text, status FROM taskq_tasks WHERE id = ANY(%s::uuid[])", (list(ids),)
            ).fetchall()
            return {row["id"]: row["status"] for row in rows}

        wait_until(
            lambda: (s := statuses()) and len(s) == len(ids) and set(s.values()) == {"succeeded"},
            timeout=timeout,
            interval=0.2,
            what="every accepted task to succeed",
        )
        return statuses()


def test_postgres_restart_under_write_load(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    env = procs.env(private_pg.url())
    api, api_port = procs.api(env, workers=2)
    workers = [procs.worker(env, "--concurrency", "4", name=f"worker-{i}") for i in range(2)]
    targets = [("api", api_port)] + [(w.name, port) for w, port in workers]

    with ReadyProbe(targets) as ready, Load(api_port, clients=8) as load:
        wait_until(lambda: load.count(201) >= 50, timeout=20, what="writes to flow")

        stop_began = time.monotonic()
        private_pg.stop("fast")
        down_at = time.monotonic()
        try:
            wait_until(
                lambda: ready.all_seen(503, since=down_at) and load.count(503, since=down_at) >= 8,
                timeout=20,
                what="every process to report not ready and clients to get 503s",
            )
        except BaseException:
            print(
                "readiness timeline:", ready.timeline[-30:], "clients:", _statuses(load.snapshot())
            )
            print(procs.logs()[-5000:])
            raise
        private_pg.start()
        up_at = time.monotonic()
        outage = up_at - stop_began

        wait_until(lambda: ready.all_seen(200, since=up_at), timeout=20, what="ready again")
        wait_until(
            lambda: load.count(201, since=up_at + 0.5) >= 50, timeout=20, what="writes again"
        )
    outcomes = load.snapshot()

    _assert_clean(outcomes)
    assert not [o for o in outcomes if o.status is None], "a request got no response"
    accepted = {o.task_id for o in outcomes if o.status == 201 and o.task_id}
    assert len(accepted) == sum(1 for o in outcomes if o.status == 201)
    _wait_all_finished(private_pg.url(), accepted, timeout=60)
    assert all(w.alive() for w, _ in workers), "a worker died"
    assert api.alive(), "the API died"
    assert "Traceback" not in procs.logs()

    ready_after = {
        name: round((ready.seen(name, 200, since=up_at) or 0) - up_at, 2) for name, _ in targets
    }
    first_201 = min(o.sent + o.seconds for o in outcomes if o.status == 201 and o.sent >= up_at)
    during = [o for o in outcomes if stop_began <= o.sent + o.seconds and o.sent <= up_at]
    assert max(ready_after.values()) <= 8
    metrics.record(
        "postgres_restart_under_load",
        clients=8,
        api_processes=2,
        worker_processes=2,
        requests=len(outcomes),
        accepted_201=len(accepted),
        responses_503=sum(1 for o in outcomes if o.status == 503),
        responses_5xx_other=sum(1 for o in outcomes if o.status and o.status >= 500)
        - sum(1 for o in outcomes if o.status == 503),
        no_response=sum(1 for o in outcomes if o.status is None),
        statuses_during_outage=_statuses(during),
        outage_seconds=round(outage, 2),
        ready_again_seconds_after_db_start=ready_after,
        first_201_seconds_after_db_start=round(first_201 - up_at, 2),
        accepted_tasks_lost=0,
        accepted_tasks_unfinished=0,
        processes_restarted=0,
    )


def test_a_restart_loses_no_outcome_a_claim_was_to_record(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    """A worker alone on a queue held by max_running records outcomes in its claims
    (taskq/flow.py claim_limited). PostgreSQL restarting while they wait: every task
    still ends succeeded, once, and the limit held throughout (from the rows' own times)."""
    with _connect(private_pg.url()) as conn:
        flow.set_limits(conn, "default", flow.LimitsUpdate(max_running=4))
        q.enqueue_many(conn, [TaskSpec(kind="sleep", payload={"seconds": 0.005})] * 400)
    # Leases outlast the outage: a task run twice would be an outcome lost, not a lease
    # that expired while the database was away.
    env = procs.env(private_pg.url(), lease_seconds=30)
    worker, port = procs.worker(env, "--concurrency", "4")
    with _connect(private_pg.url()) as conn:
        wait_until(lambda: _succeeded(conn) >= 50, timeout=30, what="tasks to flow")
    stopped = time.monotonic()
    private_pg.stop("fast")
    wait_until(lambda: get_status(port, "/ready") == 503, timeout=20, what="not ready")
    private_pg.start()
    started = time.monotonic()
    with _connect(private_pg.url()) as conn:
        wait_until(lambda: _succeeded(conn) == 400, timeout=60, what="all 400 tasks succeeded")
    done = time.monotonic()
    with _connect(private_pg.url()) as conn:
        rows = conn.execute("SELECT started_at, finished_at, attempts FROM taskq_tasks").fetchall()
    assert worker.alive(), "the worker died"
    assert "Traceback" not in procs.logs()
    assert max_overlap(rows) <= 4
    assert {r["attempts"] for r in rows} == {1}  # no outcome lost, no task run twice
    metrics.record(
        "restart_while_outcomes_ride_on_claims",
        tasks=400,
        succeeded=400,
        run_twice=0,
        max_running=4,
        max_overlap=max_overlap(rows),
        outage_seconds=round(started - stopped, 2),
        all_done_seconds_after_db_start=round(done - started, 2),
    )


def _succeeded(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM taskq_tasks WHERE status = 'succeeded'"
    ).fetchone()
    return int(row["n"]) if row else 0


def test_database_down_at_start(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    private_pg.stop("fast")
    env = procs.env(private_pg.url())
    api, api_port = procs.api(env, workers=1)
    worker, worker_port = procs.worker(env, "--concurrency", "2", wait_ready=False)
    wait_until(lambda: get_status(worker_port, "/live") == 200, timeout=30, what="worker live")

    for port in (api_port, worker_port):
        resp = request(port, "GET", "/ready", timeout=10)
        assert resp.status == 503, resp
        assert resp.json()["checks"]["database"] is False
    refused = request(api_port, "POST", "/tasks", {"kind": "echo"}, timeout=10)
    assert (refused.status, refused.is_json_error) == (503, True), refused
    assert refused.headers.get("retry-after")

    private_pg.start()
    up_at = time.monotonic()
    wait_until(lambda: get_status(api_port, "/ready") == 200, timeout=15, what="API ready")
    api_ready = time.monotonic() - up_at
    wait_until(lambda: get_status(worker_port, "/ready") == 200, timeout=15, what="worker ready")
    worker_ready = time.monotonic() - up_at
    created = request(api_port, "POST", "/tasks", {"kind": "echo", "payload": {"x": 1}})
    assert created.status == 201, created
    task_id = created.json()["id"]
    wait_until(
        lambda: request(api_port, "GET", f"/tasks/{task_id}").json()["status"] == "succeeded",
        timeout=15,
        what="the first task to run",
    )
    first_done = time.monotonic() - up_at
    assert api.alive()
    assert worker.alive()
    assert api_ready <= 5
    assert worker_ready <= 8
    metrics.record(
        "database_down_at_start",
        started_without_database=True,
        ready_while_down=503,
        submit_while_down=refused.status,
        api_ready_seconds_after_db_start=round(api_ready, 2),
        worker_ready_seconds_after_db_start=round(worker_ready, 2),
        first_task_done_seconds_after_db_start=round(first_done, 2),
        processes_restarted=0,
    )


def test_lock_waits_time_out_with_503_and_recover(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    timeout_ms = 1000
    env = procs.env(database_url, db_statement_timeout_ms=timeout_ms)
    api, port = procs.api(env, workers=4)
    procs.worker(env, "--concurrency", "2")
    existing = request(port, "POST", "/tasks", {"kind": "echo", "run_at": "2999-01-01T00:00:00Z"})
    assert existing.status == 201
    task_id = existing.json()["id"]

    # A slow transaction (a migration, say) holds ACCESS EXCLUSIVE on the table.
    holder = _connect(database_url)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE taskq_tasks IN ACCESS EXCLUSIVE MODE")
    results: list[tuple[str, Any]] = []
    try:

        def client(i: int) -> None:
            started = time.monotonic()
            if i % 2:
                resp = request(port, "POST", "/tasks", {"kind": "echo"}, timeout=30)
            else:
                resp = request(port, "GET", f"/tasks/{task_id}", timeout=30)
            results.append((str(i), (resp, time.monotonic() - started)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 8
        assert not any(t.is_alive() for t in threads)
    finally:
        holder.execute("ROLLBACK")
        released = time.monotonic()
    answers = [r for _, (r, _) in results]
    slowest = max(seconds for _, (_, seconds) in results)
    assert {r.status for r in answers} == {503}, [r.status for r in answers]
    assert all(r.is_json_error and r.headers.get("retry-after") for r in answers)
    # Four API processes, eight requests of one statement timeout each, plus the queue.
    assert slowest < 2 * (timeout_ms / 1000) + 3

    created = request(port, "POST", "/tasks", {"kind": "echo"}, timeout=10)
    recovered = time.monotonic() - released
    assert created.status == 201
    assert recovered < 1.5
    new_id = created.json()["id"]
    wait_until(
        lambda: request(port, "GET", f"/tasks/{new_id}").json()["status"] == "succeeded",
        timeout=15,
        what="the worker to run tasks again",
    )
    worker_recovered = time.monotonic() - released

    # A held row lock: cancelling that row waits, reading it does not.
    row_holder = _connect(database_url)
    row_holder.execute("BEGIN")
    row_holder.execute("SELECT 1 FROM taskq_tasks WHERE id = %s FOR UPDATE", (task_id,))
    try:
        started = time.monotonic()
        blocked = request(port, "POST", f"/tasks/{task_id}/cancel", timeout=30)
        cancel_seconds = time.monotonic() - started
        read = request(port, "GET", f"/tasks/{task_id}", timeout=5)
    finally:
        row_holder.execute("ROLLBACK")
        row_holder.close()
        holder.close()
    assert (blocked.status, blocked.is_json_error) == (503, True), blocked
    assert cancel_seconds < timeout_ms / 1000 + 2
    assert read.status == 200
    cancelled = request(port, "POST", f"/tasks/{task_id}/cancel", timeout=5)
    assert cancelled.status == 200
    assert cancelled.json()["status"] == "cancelled"
    assert api.alive()
    metrics.record(
        "lock_waits",
        statement_timeout_ms=timeout_ms,
        table_lock_requests=len(answers),
        table_lock_503=sum(1 for r in answers if r.status == 503),
        table_lock_slowest_answer_seconds=round(slowest, 2),
        first_201_seconds_after_release=round(recovered, 3),
        worker_task_done_seconds_after_release=round(worker_recovered, 2),
        row_lock_cancel_status=blocked.status,
        row_lock_cancel_seconds=round(cancel_seconds, 2),
        row_lock_read_status=read.status,
    )


def test_slow_transaction_with_pg_sleep(
    database_url: str, procs: Processes, metrics: Metrics
) -> None:
    """A transaction that sleeps while holding the table lock: requests answer 503 until it
    commits, then 201 again, with no restart and no request left hanging."""
    timeout_ms = 800
    env = procs.env(database_url, db_statement_timeout_ms=timeout_ms)
    api, port = procs.api(env, workers=2)
    sleep_seconds = 3.0

    def slow_migration() -> None:
        with _connect(database_url) as holder, holder.transaction():
            holder.execute("LOCK TABLE taskq_tasks IN ACCESS EXCLUSIVE MODE")
            locked.set()
            holder.execute("SELECT pg_sleep(%s)", (sleep_seconds,))

    locked = threading.Event()
    migration = threading.Thread(target=slow_migration)
    migration.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        with Load(port, clients=4, pace=0.05) as load:
            wait_until(
                lambda: not migration.is_alive() and load.count(201, since=time.monotonic() - 1),
                timeout=sleep_seconds + 10,
                what="the slow transaction to end and writes to succeed again",
            )
    finally:
        migration.join(timeout=30)
    ended = began + sleep_seconds
    outcomes = load.snapshot()
    _assert_clean(outcomes)
    during = [o for o in outcomes if o.sent + o.seconds < ended - 0.2]
    assert during
    assert {o.status for o in during} == {503}
    assert max(o.seconds for o in outcomes) < 2 * timeout_ms / 1000 + 3
    first_201 = min(o.sent + o.seconds for o in outcomes if o.status == 201)
    assert api.alive()
    metrics.record(
        "slow_transaction_pg_sleep",
        statement_timeout_ms=timeout_ms,
        lock_held_seconds=sleep_seconds,
        requests=len(outcomes),
        responses_503=sum(1 for o in outcomes if o.status == 503),
        responses_201=sum(1 for o in outcomes if o.status == 201),
        other=sum(1 for o in outcomes if o.status not in (201, 503)),
        slowest_answer_seconds=round(max(o.seconds for o in outcomes), 2),
        first_201_seconds_after_commit=round(max(0.0, first_201 - ended), 2),
    )


def test_connections_exhausted_then_freed(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    """max_connections reached (another client hogs every slot): the API answers 503 within
    its pool timeout instead of hanging, and recovers as soon as slots free up."""
    private_pg.stop("fast")
    private_pg.start("max_connections=12", "superuser_reserved_connections=0")
    env = procs.env(private_pg.url(), db_pool_timeout=1.0)
    api, port = procs.api(env, workers=2)
    assert request(port, "POST", "/tasks", {"kind": "echo"}).status == 201

    admin = private_pg.admin()
    hogs: list[psycopg.Connection[Any]] = [admin]  # the admin session holds a slot too
    try:
        taskq_backends = "FROM pg_stat_activity WHERE application_name LIKE 'taskq-%%'"

        def hold_every_slot() -> bool:
            # Terminating only signals a backend, and a pool may replace a connection it
            # sees die: terminate, take what is free, and repeat until the test holds all.
            admin.execute(f"SELECT pg_terminate_backend(pid) {taskq_backends}")
            while len(hogs) < 12:
                try:
                    hogs.append(psycopg.connect(private_pg.url("postgres"), autocommit=True))
                except psycopg.OperationalError:
                    break
            return len(hogs) == 12

        wait_until(hold_every_slot, timeout=15, interval=0.1, what="every slot to be taken")
        started = time.monotonic()
        answers = [request(port, "POST", "/tasks", {"kind": "echo"}, timeout=15) for _ in range(4)]
        per_request = (time.monotonic() - started) / len(answers)
        ready = get_status(port, "/ready", timeout=10)
    finally:
        for hog in hogs:
            hog.close()
    freed = time.monotonic()
    assert {r.status for r in answers} == {503}, [r.status for r in answers]
    assert all(r.is_json_error for r in answers)
    assert per_request < 1.0 + 2.5
    assert ready == 503
    wait_until(
        lambda: request(port, "POST", "/tasks", {"kind": "echo"}, timeout=10).status == 201,
        timeout=10,
        interval=0.05,
        what="the pool to reconnect",
    )
    recovered = time.monotonic() - freed
    assert recovered < 3
    assert api.alive()
    metrics.record(
        "connections_exhausted",
        max_connections=12,
        hogged_slots=len(hogs),
        requests_503=len(answers),
        seconds_per_503=round(per_request, 2),
        ready_while_exhausted=ready,
        first_201_seconds_after_slots_freed=round(recovered, 2),
    )


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("1", pytest.fail.Exception)]
)
def test_without_an_account_for_postgres_ci_fails_instead_of_skipping(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    """As root with neither a postgres nor a nobody account, the scenarios above cannot
    run: a developer's machine skips them; CI (the CI variable set) must not pass that way."""

    def no_such_account(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(pwd, "getpwnam", no_such_account)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no unprivileged account"):
        conftest._unprivileged_user()
