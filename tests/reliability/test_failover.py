"""Faults of a platform's database, not only of one server: a primary lost or frozen and a
standby promoted, a database switched to read-only, and PgBouncer in front of PostgreSQL.

Every scenario runs real processes (`taskq api`, `taskq worker`) under client load against
private servers started by the fixtures (`replicated_pg`, `private_pg`, `pgbouncer`).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from taskq import flow
from taskq import queue as q

from tests.helpers import wait_until
from tests.reliability.conftest import Metrics, PrivatePostgres, ReplicatedPostgres
from tests.reliability.harness import Processes, get_status, request
from tests.reliability.load import Load, Outcome, ReadyProbe
from tests.test_flow import max_overlap

pytestmark = pytest.mark.reliability
Conn = psycopg.Connection[dict[str, Any]]

# Fast client-side bounds so a frozen primary costs seconds, not the defaults' 15 s.
FAST = {
    "db_statement_timeout_ms": 2000,
    "db_client_timeout": 3,
    "db_connect_timeout": 2,
    "db_keepalives_idle": 2,
    "db_tcp_user_timeout_ms": 4000,
}


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


def _missing(url: str, ids: set[str]) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id::text FROM taskq_tasks WHERE id = ANY(%s::uuid[])", (list(ids),)
        ).fetchall()
    return ids - {row[0] for row in rows}


def _unfinished(url: str, ids: set[str]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM taskq_tasks WHERE id = ANY(%s::uuid[]) AND status <> 'succeeded'",
            (list(ids),),
        ).fetchone()
    return int(row[0]) if row else -1


def _failover(
    replicated_pg: Any, procs: Processes, metrics: Metrics, *, freeze: bool
) -> dict[str, Any]:
    pair: ReplicatedPostgres = replicated_pg(synchronous=True)
    env = procs.env(pair.url(), **FAST, shutdown_timeout=3)
    api, api_port = procs.api(env, workers=2)
    worker, worker_port = procs.worker(env, "--concurrency", "4", name="worker")
    targets = [("api", api_port), ("worker", worker_port)]

    with ReadyProbe(targets, interval=0.2) as ready, Load(api_port, clients=4) as load:
        wait_until(lambda: load.count(201) >= 60, timeout=30, what="writes to flow")
        fault_at = time.monotonic()
        if freeze:
            pair.freeze_primary()
        else:
            pair.kill_primary()
        # A failover manager needs a moment to decide; the clients see 503s meanwhile.
        wait_until(
            lambda: load.count(503, since=fault_at) >= 4 or time.monotonic() - fault_at > 4,
            timeout=20,
            what="clients to notice the fault",
        )
        pair.promote()
        promoted_at = time.monotonic()
        wait_until(
            lambda: load.count(201, since=promoted_at + 0.2) >= 50,
            timeout=30,
            what="writes on the promoted standby",
        )
        wait_until(lambda: ready.all_seen(200, since=promoted_at), timeout=30, what="ready again")
    outcomes = load.snapshot()
    _assert_clean(outcomes)
    assert not [o for o in outcomes if o.status is None], "a request got no response"
    accepted = {o.task_id for o in outcomes if o.status == 201 and o.task_id}
    new_primary = pair.standby.url()
    lost = _missing(new_primary, accepted)
    wait_until(
        lambda: _unfinished(new_primary, accepted) == 0,
        timeout=60,
        interval=0.25,
        what="every accepted task to succeed on the new primary",
    )
    # The worker claims on the new primary: it came back without a restart.
    assert worker.alive()
    assert api.alive()
    first_201 = min(
        o.sent + o.seconds for o in outcomes if o.status == 201 and o.sent > promoted_at
    )
    ready_after = {
        n: round((ready.seen(n, 200, since=promoted_at) or 0) - promoted_at, 2) for n, _ in targets
    }
    slowest = max(o.seconds for o in outcomes if o.sent >= fault_at - 1)

    # SIGTERM still stops the worker promptly.
    stop_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    stop_seconds = time.monotonic() - stop_at
    assert "Traceback" not in procs.logs()
    return {
        "accepted_201": len(accepted),
        "acknowledged_tasks_lost": len(lost),
        "responses_503": sum(1 for o in outcomes if o.status == 503),
        "responses_other": sum(1 for o in outcomes if o.status not in (201, 503)),
        "fault_to_promotion_seconds": round(promoted_at - fault_at, 2),
        "first_201_seconds_after_promotion": round(first_201 - promoted_at, 2),
        "ready_seconds_after_promotion": ready_after,
        "slowest_answer_seconds": round(slowest, 2),
        "worker_sigterm_exit_seconds": round(stop_seconds, 2),
        "lost": lost,
    }


def test_failover_primary_killed_synchronous_replication_loses_nothing(
    replicated_pg: Any, procs: Processes, metrics: Metrics
) -> None:
    result = _failover(replicated_pg, procs, metrics, freeze=False)
    assert result.pop("lost") == set(), "an acknowledged task was lost"
    assert result["first_201_seconds_after_promotion"] <= 10
    metrics.record("failover_primary_killed_sync", **result)


def test_failover_primary_frozen_workers_move_to_the_promoted_standby(
    replicated_pg: Any, procs: Processes, metrics: Metrics
) -> None:
    result = _failover(replicated_pg, procs, metrics, freeze=True)
    assert result.pop("lost") == set(), "an acknowledged task was lost"
    # Bounded by the client timeout (3 s) and the connect timeout (2 s) per frozen host.
    assert result["slowest_answer_seconds"] <= 12
    assert max(result["ready_seconds_after_promotion"].values()) <= 15
    assert result["worker_sigterm_exit_seconds"] <= 10
    metrics.record("failover_primary_frozen_sync", **result)


def test_read_only_database_answers_503_and_recovers(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    env = procs.env(private_pg.url(), db_statement_timeout_ms=2000)
    api, api_port = procs.api(env, workers=2)
    worker, worker_port = procs.worker(env, "--concurrency", "4", name="worker")
    targets = [("api", api_port), ("worker", worker_port)]
    with private_pg.admin() as admin, ReadyProbe(targets, interval=0.2) as ready:
        with Load(api_port, clients=4) as load:
            wait_until(lambda: load.count(201) >= 50, timeout=20, what="writes to flow")
            admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            admin.execute("SELECT pg_reload_conf()")
            ro_at = time.monotonic()
            wait_until(
                lambda: load.count(503, since=ro_at) >= 20 and ready.all_seen(503, since=ro_at),
                timeout=20,
                what="503s and not-ready while read-only",
            )
            admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
            admin.execute("SELECT pg_reload_conf()")
            rw_at = time.monotonic()
            wait_until(
                lambda: load.count(201, since=rw_at + 0.2) >= 50, timeout=20, what="writes again"
            )
            wait_until(lambda: ready.all_seen(200, since=rw_at), timeout=20, what="ready again")
        outcomes = load.snapshot()
    _assert_clean(outcomes)
    accepted = {o.task_id for o in outcomes if o.status == 201 and o.task_id}
    wait_until(
        lambda: _unfinished(private_pg.url(), accepted) == 0,
        timeout=60,
        interval=0.25,
        what="every accepted task to succeed",
    )
    assert api.alive(), "the API died"
    assert worker.alive(), "the worker died"
    assert "Traceback" not in procs.logs()
    first_201 = min(o.sent + o.seconds for o in outcomes if o.status == 201 and o.sent > rw_at)
    metrics.record(
        "read_only_database",
        accepted_201=len(accepted),
        responses_503=sum(1 for o in outcomes if o.status == 503),
        responses_500=sum(1 for o in outcomes if o.status == 500),
        not_ready_seconds_after_read_only={
            n: round((ready.seen(n, 503, since=ro_at) or 0) - ro_at, 2) for n, _ in targets
        },
        first_201_seconds_after_writable=round(first_201 - rw_at, 2),
        processes_restarted=0,
    )


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pgbouncer(
    mode: str, database_url: str, pgbouncer: Any, procs: Processes, metrics: Metrics
) -> None:
    bouncer = pgbouncer(mode)
    with psycopg.connect(database_url, autocommit=True) as admin:
        # The database's default, so that a leaked session `off` would show.
        admin.execute(f'ALTER DATABASE "{bouncer.dbname}" SET synchronous_commit = on')
        # Every claim is a limited one: the queue's turn and the claim in one pipelined
        # transaction through the pooler, outcomes riding on the claims.
        flow.set_limits(admin, "default", flow.LimitsUpdate(max_running=4))
    settings: dict[str, Any] = {"db_pooler": mode}
    if mode == "transaction":
        settings["listen_database_url"] = database_url
    env = procs.env(bouncer.url(), **settings, poll_interval=30)
    api, api_port = procs.api(env, workers=2)
    worker, worker_port = procs.worker(env, "--concurrency", "8", name="worker")
    with Load(api_port, clients=6) as load:
        wait_until(lambda: load.count(201) >= 300, timeout=60, what="300 accepted tasks")
    outcomes = load.snapshot()
    statuses = _statuses(outcomes)
    assert set(statuses) == {"201"}, statuses
    accepted = {o.task_id for o in outcomes if o.task_id}
    started = time.monotonic()
    wait_until(
        lambda: _unfinished(database_url, accepted) == 0,
        timeout=60,
        interval=0.1,
        what="every task to succeed",
    )
    drained = time.monotonic() - started
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT started_at, finished_at FROM taskq_tasks WHERE id = ANY(%s)", [list(accepted)]
        ).fetchall()
    assert max_overlap(rows) <= 4  # the limit held through the pooler
    # Reads work too (GET /tasks/{id} and the list).
    some = next(iter(accepted))
    assert request(api_port, "GET", f"/tasks/{some}").json()["status"] == "succeeded"
    assert request(api_port, "GET", "/tasks?limit=5").status == 200
    ready = request(worker_port, "GET", "/ready")
    assert ready.status == 200, ready.json()
    # A notified task is picked up quickly although polling is every 30 s: LISTEN works.
    created = request(api_port, "POST", "/tasks", {"kind": "echo"}).json()["id"]
    t0 = time.monotonic()
    wait_until(
        lambda: request(api_port, "GET", f"/tasks/{created}").json()["status"] == "succeeded",
        timeout=20,
        interval=0.02,
        what="a notified task (polling is every 30 s)",
    )
    pickup = time.monotonic() - t0
    # No session state leaked into the pool: other clients see the server's defaults.
    leaks: list[tuple[str, str | None, str | None, str]] = []
    for _ in range(8):
        with psycopg.connect(bouncer.url(), autocommit=True, prepare_threshold=None) as other:
            row = other.execute(
                "SELECT current_setting('synchronous_commit') AS sc,"
                " current_setting('taskq.notify', true) AS notify,"
                " current_setting('statement_timeout') AS st,"
                " current_setting('plan_cache_mode') AS plans"
            ).fetchone()
            assert row is not None
            if row[0] != "on" or row[1] not in (None, "") or row[2] != "0" or row[3] != "auto":
                leaks.append(row)
    assert not leaks, f"session settings leaked through the pool: {leaks}"
    assert api.alive()
    assert worker.alive()
    assert "Traceback" not in procs.logs()
    metrics.record(
        f"pgbouncer_{mode}",
        accepted_201=len(accepted),
        responses_other=len(outcomes) - len(accepted),
        drained_seconds=round(drained, 2),
        notified_pickup_seconds=round(pickup, 3),
        leaked_settings=len(leaks),
        worker_ready=ready.status,
    )


def test_a_deaf_listener_is_not_ready(
    database_url: str, pgbouncer: Any, procs: Processes, metrics: Metrics
) -> None:
    """LISTEN through a transaction pooler hears nothing: the listener's own probe does
    not come back, and the worker's /ready says so (it still works, by polling)."""
    bouncer = pgbouncer("transaction")
    env = procs.env(
        bouncer.url(), db_pooler="transaction", listen_database_url=bouncer.url(), poll_interval=0.5
    )
    worker, port = procs.worker(env, "--concurrency", "2", name="worker", wait_ready=False)
    started = time.monotonic()

    def deaf() -> bool:
        resp = request(port, "GET", "/ready", timeout=10)
        return resp.status == 503 and resp.json()["checks"]["listener"] is False

    wait_until(lambda: get_status(port, "/live") == 200, timeout=30, what="worker live")
    wait_until(deaf, timeout=30, interval=0.2, what="/ready to report a deaf listener")
    detected = time.monotonic() - started
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        task = q.enqueue(conn, "echo")
        wait_until(
            lambda: q.get(conn, task.id).status == "succeeded",
            timeout=15,
            what="a task found by polling",
        )
    wait_until(
        lambda: "did not hear its own probe" in worker.log(),
        timeout=20,
        what="the listener to give up on its deaf connection",
    )
    assert deaf()
    metrics.record("deaf_listener", not_ready_seconds_after_start=round(detected, 2))


def test_api_probes_answer_while_every_request_waits_on_a_frozen_database(
    private_pg: PrivatePostgres, procs: Processes, metrics: Metrics
) -> None:
    from tests.helpers import free_port

    node: Any = private_pg  # a conftest.Node: it can be frozen
    health = free_port()
    env = procs.env(
        private_pg.url(),
        api_health_bind=f"127.0.0.1:{health}",
        db_client_timeout=20,
        db_statement_timeout_ms=0,
    )
    api, port = procs.api(env, workers=2)
    wait_until(lambda: get_status(health, "/ready") == 200, timeout=20, what="health port ready")

    node.signal_all(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        with Load(port, clients=4, pace=0.5) as load:
            # Requests that need the database wait on it: a page of tasks does not come.
            wait_until(
                lambda: get_status(port, "/tasks?limit=1", timeout=1.5) is None,
                timeout=20,
                what="requests to wait on the frozen database",
            )
            # The API port's event loop waits on nothing: its /live still answers.
            t0 = time.monotonic()
            api_live = request(port, "GET", "/live", timeout=5)
            api_live_seconds = time.monotonic() - t0
            t0 = time.monotonic()
            live = request(health, "GET", "/live", timeout=5)
            live_seconds = time.monotonic() - t0
            t0 = time.monotonic()
            ready = request(health, "GET", "/ready", timeout=10)
            ready_seconds = time.monotonic() - t0
            node.signal_all(signal.SIGCONT)
            thawed_at = time.monotonic()
            wait_until(
                lambda: load.count(201, since=thawed_at) >= 5, timeout=30, what="writes again"
            )
    finally:
        node.signal_all(signal.SIGCONT)
    assert api_live.status == 200, api_live
    assert api_live_seconds < 1.0
    assert live.status == 200, live
    assert ready.status == 503, ready
    assert live_seconds < 1.0
    assert ready_seconds < 4.0
    assert api.alive()
    metrics.record(
        "api_probes_with_frozen_database",
        api_port_live_status=api_live.status,
        api_port_live_seconds=round(api_live_seconds, 3),
        health_live_status=live.status,
        health_live_seconds=round(live_seconds, 3),
        health_ready_status=ready.status,
        health_ready_seconds=round(ready_seconds, 2),
        frozen_seconds=round(thawed_at - frozen_at, 2),
        statuses=_statuses(load.snapshot()),
    )


def test_api_workers_exit_when_the_gunicorn_master_is_killed(
    database_url: str, procs: Processes, metrics: Metrics
) -> None:
    from tests.reliability.conftest import _children
    from tests.reliability.harness import port_is_closed

    api, port = procs.api(procs.env(database_url), workers=2)
    # Ready means one worker answers; gunicorn may still be forking the other.
    wait_until(lambda: len(_children(api.pid)) >= 2, timeout=15, what="both API workers")
    children = _children(api.pid)
    api.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    api.wait(timeout=5)

    def gone(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"

    wait_until(
        lambda: all(gone(pid) for pid in children) and port_is_closed(port),
        timeout=10,
        interval=0.05,
        what="the orphaned workers to exit and free the port",
    )
    seconds = time.monotonic() - killed_at
    assert seconds <= 5.0  # the port is free for a restart at once (it used to take 16 s)
    metrics.record(
        "gunicorn_master_killed",
        workers=len(children),
        workers_gone_and_port_free_seconds=round(seconds, 2),
    )


def test_the_only_synchronous_standby_dies(
    replicated_pg: Any, procs: Processes, metrics: Metrics
) -> None:
    """Commits wait for a synchronous standby that is gone, past any statement timeout: the
    client timeout answers 503 (the task may be committed: clients retry with an
    Idempotency-Key), and the API's probes answer meanwhile. Once the standby is back,
    writes flow again. Two synchronous standbys with `ANY 1` avoid the stall."""
    from tests.helpers import free_port

    pair: ReplicatedPostgres = replicated_pg(synchronous=True)
    health = free_port()
    env = procs.env(pair.url(), **FAST, api_health_bind=f"127.0.0.1:{health}")
    api, port = procs.api(env, workers=2)
    created = request(port, "POST", "/tasks", {"kind": "echo"})
    assert created.status == 201, created

    pair.standby.signal_all(signal.SIGKILL)
    t0 = time.monotonic()
    stalled = request(port, "POST", "/tasks", {"kind": "echo"}, timeout=30)
    stalled_seconds = time.monotonic() - t0
    live = request(health, "GET", "/live", timeout=3)
    assert stalled.status == 503, stalled
    assert stalled.is_json_error
    assert stalled.headers.get("retry-after")
    assert stalled_seconds < 8  # the client timeout (3 s), not forever
    assert live.status == 200

    # The replication wait cancelled (pg_cancel_backend, as a failover manager may do):
    # PostgreSQL only warns and commits locally; the API answers 503 all the same.
    patient, patient_port = procs.api(
        procs.env(pair.url(), **{**FAST, "db_client_timeout": 60}), workers=1, name="patient"
    )
    answers: list[Any] = []
    poster = threading.Thread(
        target=lambda: answers.append(
            request(patient_port, "POST", "/tasks", {"kind": "echo"}, timeout=60)
        )
    )
    with psycopg.connect(pair.primary.url(), autocommit=True) as admin:
        # Only this request's commit: the first API's stalled one still waits too.
        since = admin.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        poster.start()

        def cancel_the_wait() -> bool:
            row = admin.execute(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity"
                " WHERE wait_event = 'SyncRep' AND datname = 'taskq'"
                " AND application_name = 'taskq-api' AND xact_start >= %s",
                (since,),
            ).fetchone()
            return bool(row and row[0])

        wait_until(cancel_the_wait, timeout=20, what="a commit waiting for the standby")
    poster.join(20)
    assert answers, "no answer after the cancelled replication wait"
    cancelled = answers[0]
    assert cancelled.status == 503, cancelled
    assert cancelled.headers.get("retry-after")
    patient.stop()

    (pair.standby.data / "postmaster.pid").unlink(missing_ok=True)
    pair.standby.start("hot_standby=on", "synchronous_commit=on")
    back_at = time.monotonic()
    wait_until(
        lambda: request(port, "POST", "/tasks", {"kind": "echo"}, timeout=30).status == 201,
        timeout=30,
        what="writes once the standby is back",
    )
    assert api.alive()
    metrics.record(
        "sync_standby_lost",
        stalled_enqueue_status=stalled.status,
        stalled_enqueue_seconds=round(stalled_seconds, 2),
        cancelled_replication_wait_status=cancelled.status,
        health_live_status=live.status,
        first_201_seconds_after_standby_back=round(time.monotonic() - back_at, 2),
    )
