"""Workflows with real worker processes: graphs run in order, children start within
moments of their last parent's success, a batch's callback is enqueued once however many
workers race, and a worker killed between a parent's success and its child's release
loses nothing."""

from __future__ import annotations

import collections
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import queue as q
from taskq import workflows as wf
from taskq.models import OnComplete, TaskSpec

from tests.helpers import spawn_taskq, stop_process, taskq_env, wait_until

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[dict[str, Any]]


def _env(database_url: str, record: Path, **settings: Any) -> dict[str, str]:
    env = taskq_env(database_url, handler_modules="tests.handlers_for_tests", **settings)
    env["TASKQ_TEST_RECORD"] = str(record)
    return env


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return spawn_taskq(
        ["worker", "--health-port", "0", *args],
        env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _runs(path: Path) -> collections.Counter[str]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in path.read_text().splitlines())


def _rows(conn: Conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, status, started_at, finished_at, result FROM taskq_tasks WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()
    return {row["id"]: row for row in rows}


def _listening(conn: Conn, n: int) -> bool:
    """`n` workers' listeners are connected (so a notification reaches each)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE %s",
        ("%listen%",),
    ).fetchone()
    return row is not None and row["n"] >= n


def _spec(kind: str = "record", **kw: Any) -> TaskSpec:
    return TaskSpec.model_validate({"kind": kind, **kw})


def test_fan_out_fan_in_runs_in_order_and_children_start_at_once(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    """root -> 40 children (queue fan) -> one sink. The workers of the children's queue
    poll only every 30 s, so they start children only because the release notified them."""
    record = tmp_path / "runs.log"
    slow_poll = _env(database_url, record, poll_interval=30)
    graph = [_spec(ref="root", queue="roots", payload={"n": 0})]
    graph += [
        _spec(ref=f"c{i}", queue="fan", depends_on=["root"], payload={"n": i}) for i in range(40)
    ]
    graph.append(_spec("sum_parents", queue="fan", depends_on=[f"c{i}" for i in range(40)]))
    fan = [_worker(slow_poll, "--queues", "fan", "--concurrency", "8") for _ in range(2)]
    roots = None
    try:
        wait_until(lambda: _listening(conn, 2), timeout=20, what="the fan workers to listen")
        tasks = wf.enqueue_many(conn, graph)
        assert [t.status for t in tasks] == ["queued"] + ["blocked"] * 41
        roots = _worker(_env(database_url, record), "--queues", "roots")
        sink = tasks[-1].id
        wait_until(
            lambda: _rows(conn, [sink])[sink]["status"] == "succeeded",
            timeout=30,
            what="the sink to succeed",
        )
    finally:
        for proc in [*fan, *([roots] if roots else [])]:
            assert stop_process(proc) == 0
    rows = _rows(conn, [t.id for t in tasks])
    root, children, last = rows[tasks[0].id], [rows[t.id] for t in tasks[1:-1]], rows[sink]
    assert all(r["status"] == "succeeded" for r in rows.values())
    assert all(c["started_at"] >= root["finished_at"] for c in children)
    assert last["started_at"] >= max(c["finished_at"] for c in children)
    # Released children start within moments (spec: a few ms; asserted with margin).
    first_child = min(c["started_at"] for c in children)
    assert (first_child - root["finished_at"]).total_seconds() < 1.0
    assert (last["started_at"] - max(c["finished_at"] for c in children)).total_seconds() < 1.0
    # The sink read every parent's result by id, and by ref.
    assert last["result"]["n"] == sum(range(40))
    assert last["result"]["refs"] == sorted(f"c{i}" for i in range(40))
    assert set(_runs(record).values()) == {1}


def test_a_batch_callback_is_enqueued_once_under_racing_workers(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    record = tmp_path / "runs.log"
    env = _env(database_url, record)
    workers = [_worker(env, "--queues", "default,done", "--concurrency", "4") for _ in range(3)]
    try:
        wait_until(lambda: _listening(conn, 3), timeout=20, what="the workers to listen")
        members = wf.enqueue_many(
            conn,
            [_spec(payload={"i": i}) for i in range(300)],
            on_complete=OnComplete(kind="record", queue="done", payload={"what": "report"}),
        )
        batch_id = members[0].batch_id
        assert batch_id is not None
        wait_until(
            lambda: (wf.get_batch(conn, batch_id)["on_complete"] or {}).get("task_id"),
            timeout=60,
            what="the batch to complete",
        )
        progress = wf.get_batch(conn, batch_id)
        callback = uuid.UUID(progress["on_complete"]["task_id"])
        wait_until(
            lambda: q.get(conn, callback).status == "succeeded",
            timeout=20,
            what="the callback to run",
        )
    finally:
        for proc in workers:
            assert stop_process(proc) == 0
    callbacks = conn.execute(
        "SELECT id, created_at, payload FROM taskq_tasks WHERE queue = 'done'"
    ).fetchall()
    assert len(callbacks) == 1
    assert callbacks[0]["payload"] == {
        "what": "report",
        "batch_id": str(batch_id),
        "counts": {"succeeded": 300, "failed": 0, "cancelled": 0},
    }
    last = conn.execute(
        "SELECT count(DISTINCT worker_id) AS w FROM taskq_tasks WHERE batch_id = %s",
        (batch_id,),
    ).fetchone()
    assert last is not None
    assert last["w"] >= 2  # the workers really raced over the members
    # The counts were read when the callback was inserted: every member was final then.
    # (Timestamps cannot show it: now() is each transaction's start, and a transaction
    # that started earlier may be the one that commits last.)
    assert progress["counts"]["succeeded"] == 300


def test_a_worker_killed_between_a_parents_success_and_the_release_loses_nothing(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    """The test holds the child's row lock, so the worker's completer records the parent's
    success and then waits inside the same transaction to release the child. SIGKILL
    then: the transaction never commits (the parent is not succeeded without its child
    being released), the parent is recovered and runs again, and the child runs."""
    record = tmp_path / "runs.log"
    env = _env(database_url, record, lease_seconds=2)
    parent, child = wf.enqueue_many(conn, [_spec(ref="p"), _spec(depends_on=["p"])])
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT 1 FROM taskq_tasks WHERE id = %s FOR UPDATE", (child.id,))
        victim = _worker(env)
        try:

            def waiting_release() -> bool:
                row = conn.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    ("%blocked_by - n.n%",),
                ).fetchone()
                return row is not None and row["n"] > 0

            wait_until(waiting_release, timeout=20, what="the release to wait for the lock")
            # Inside the transaction: the parent's success is written but not committed.
            assert q.get(conn, parent.id).status == "running"
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=5)
        finally:
            stop_process(victim)
        holder.rollback()
    assert q.get(conn, child.id).status == "blocked"
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()["n"]
            == 0
        ),
        what="the killed session's transaction to end",
    )
    assert q.get(conn, parent.id).status == "running"  # rolled back: never succeeded alone
    survivor = _worker(env)
    try:
        wait_until(
            lambda: q.get(conn, child.id).status == "succeeded",
            timeout=30,
            what="the child to run after the parent's recovery",
        )
    finally:
        assert stop_process(survivor) == 0
    runs = _runs(record)
    assert runs[str(parent.id)] == 2  # at-least-once: the killed attempt, then the recovery
    assert runs[str(child.id)] == 1


def test_the_process_pool_hands_parents_results_to_the_child(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    record = tmp_path / "runs.log"
    env = _env(database_url, record, worker_pool="process", worker_processes=2)
    a, b, total = wf.enqueue_many(
        conn,
        [
            _spec(ref="a", payload={"n": 2}),
            _spec(ref="b", payload={"n": 3}),
            _spec("sum_parents", depends_on=["a", "b"], payload={"n": 10}),
        ],
    )
    worker = _worker(env)
    try:
        wait_until(
            lambda: q.get(conn, total.id).status == "succeeded",
            timeout=30,
            what="the child to run in a child process",
        )
    finally:
        assert stop_process(worker) == 0
    assert q.get(conn, total.id).result == {"n": 15, "refs": ["a", "b"]}
    assert {str(a.id), str(b.id)} <= set(_runs(record))
