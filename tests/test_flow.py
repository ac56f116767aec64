"""Flow control: limits are exact across racing worker processes, held tasks stay queued,
other queues and keys are not held up, and crashed workers free their room.

Every exactness claim is computed from the rows' own started_at/finished_at.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from taskq import flow, registry
from taskq import queue as q
from taskq import workflows as q_workflows
from taskq.models import TaskSpec
from taskq.settings import Settings

from tests.helpers import spawn_taskq, stop_process, taskq_env, wait_until
from tests.worker_helpers import running_worker

Conn = psycopg.Connection[dict[str, Any]]


def _sleep_tasks(
    n: int, queue: str, seconds: float, keys: Sequence[str | None] = (None,)
) -> list[TaskSpec]:
    return [
        TaskSpec(
            kind="sleep",
            queue=queue,
            payload={"seconds": seconds},
            concurrency_key=keys[i % len(keys)],
        )
        for i in range(n)
    ]


def _workers(
    database_url: str, count: int, queues: str, concurrency: int, **env: Any
) -> list[subprocess.Popen[str]]:
    environment = taskq_env(database_url, worker_concurrency=concurrency, **env)
    return [
        spawn_taskq(["worker", "--queues", queues, "--health-port", "0"], environment)
        for _ in range(count)
    ]


def _wait_for_workers(conn: Conn, n: int) -> None:
    """Until n workers listen on this database (their claim loops are about to start), so
    that the race starts with every racer at the line."""

    def listening() -> bool:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'taskq-listener'"
        ).fetchone()
        return row is not None and row["n"] >= n

    wait_until(listening, timeout=60, what=f"{n} workers listening")


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def _done(conn: Conn, queue: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM taskq_tasks WHERE queue = %s AND status = 'succeeded'",
        [queue],
    ).fetchone()
    assert row is not None
    return int(row["n"])


def _intervals(conn: Conn, queue: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT concurrency_key, started_at, finished_at, worker_id FROM taskq_tasks"
        " WHERE queue = %s AND status = 'succeeded' ORDER BY started_at",
        [queue],
    ).fetchall()


def max_overlap(rows: Sequence[dict[str, Any]]) -> int:
    """The most intervals [started_at, finished_at] open at one instant (a finish and a
    start at the same instant count as overlapping)."""
    events = sorted(
        [(r["started_at"], 0) for r in rows] + [(r["finished_at"], 1) for r in rows]
    )  # at equal times starts sort first: the conservative count
    best = now = 0
    for _, kind in events:
        now += 1 if kind == 0 else -1
        best = max(best, now)
    return best


def max_in_window(starts: Sequence[datetime], seconds: float) -> int:
    """The most starts inside any window [t, t + seconds)."""
    ordered = sorted(starts)
    span = timedelta(seconds=seconds)
    return max(
        (bisect.bisect_left(ordered, t + span) - i for i, t in enumerate(ordered)), default=0
    )


def test_max_running_is_exact_across_racing_workers(
    conn: Conn, database_url: str, stop_all: list[subprocess.Popen[str]]
) -> None:
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=3))
    stop_all.extend(_workers(database_url, 4, "lim", 8))
    _wait_for_workers(conn, 4)
    q.enqueue_many(conn, _sleep_tasks(90, "lim", 0.02))
    wait_until(lambda: _done(conn, "lim") == 90, timeout=90, what="90 limited tasks done")
    rows = _intervals(conn, "lim")
    assert max_overlap(rows) == 3  # never more, and the limit was actually reached
    assert len({r["worker_id"] for r in rows}) > 1  # several workers raced for the room


def test_max_running_per_key_is_exact_and_keys_run_side_by_side(
    conn: Conn, database_url: str, stop_all: list[subprocess.Popen[str]]
) -> None:
    flow.set_limits(conn, "tenants", flow.LimitsUpdate(max_running_per_key=2))
    keys = [f"tenant-{i}" for i in range(6)]
    stop_all.extend(_workers(database_url, 3, "tenants", 8))
    _wait_for_workers(conn, 3)
    q.enqueue_many(conn, _sleep_tasks(120, "tenants", 0.02, keys))
    wait_until(lambda: _done(conn, "tenants") == 120, timeout=90, what="keyed tasks done")
    rows = _intervals(conn, "tenants")
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_key[row["concurrency_key"]].append(row)
    assert sorted(by_key) == keys
    assert max(max_overlap(group) for group in by_key.values()) == 2
    assert max_overlap(rows) > 2  # different keys ran at once


def test_one_busy_key_does_not_hold_back_the_others(conn: Conn, settings: Settings) -> None:
    """A long backlog of one key at the head of the queue: the other keys still run."""
    flow.set_limits(conn, "tenants", flow.LimitsUpdate(max_running_per_key=1))
    q.enqueue_many(conn, _sleep_tasks(50, "tenants", 0.5, ["big"]))
    q.enqueue_many(conn, _sleep_tasks(3, "tenants", 0.0, ["small-1", "small-2", "small-3"]))
    with running_worker(settings, queues=["tenants"], concurrency=4):
        wait_until(lambda: _done(conn, "tenants") >= 3, timeout=30, what="small keys done")
        done = conn.execute(
            "SELECT concurrency_key FROM taskq_tasks WHERE queue = 'tenants'"
            " AND status = 'succeeded' AND concurrency_key <> 'big'"
        ).fetchall()
        assert len(done) == 3
        running = conn.execute(
            "SELECT count(*) AS n FROM taskq_tasks WHERE queue = 'tenants'"
            " AND status = 'running' AND concurrency_key = 'big'"
        ).fetchone()
        assert running is not None
        assert running["n"] <= 1


def _claim(conn: Conn, queue: str, limit: int) -> list[str]:
    """One limited claim, as a worker makes it: the claimed tasks' keys, in claim order."""
    got = flow.claim_limited(conn, queue=queue, limit=limit, worker_id="t", lease=30).claimed
    keys = {
        r["id"]: r["concurrency_key"]
        for r in conn.execute(
            "SELECT id, concurrency_key FROM taskq_tasks WHERE id = ANY(%s)",
            [[t.id for t in got]],
        ).fetchall()
    }
    return [keys[t.id] for t in got]


def test_a_per_key_claim_takes_the_head_of_the_queue_in_priority_order(conn: Conn) -> None:
    """Where the head of the queue has room, priority and age order the claim across keys
    (and key-less tasks), not the keys' names."""
    flow.set_limits(conn, "tenants", flow.LimitsUpdate(max_running_per_key=1))
    for key in ["a", "b", "c"]:
        q.enqueue(conn, "echo", {}, queue="tenants", concurrency_key=key)
    q.enqueue(conn, "echo", {}, queue="tenants", concurrency_key="z", priority=5)
    q.enqueue(conn, "echo", {}, queue="tenants", priority=3)
    assert _claim(conn, "tenants", 2) == ["z", None]
    assert _claim(conn, "tenants", 5) == ["a", "b", "c"]


def test_a_per_key_claim_continues_a_key_after_the_head(conn: Conn) -> None:
    """The head gives a key its best tasks up to its room; the walk after it adds the
    key's next ones only up to that room, and never a task twice."""
    flow.set_limits(conn, "tenants", flow.LimitsUpdate(max_running_per_key=2))
    q.enqueue_many(conn, [TaskSpec(kind="echo", queue="tenants", concurrency_key="a")] * 3)
    q.enqueue_many(conn, [TaskSpec(kind="echo", queue="tenants", concurrency_key="b")] * 3)
    # The head (4 tasks: a, a, a, b) gives a, a, b; the walk then b's second task.
    assert sorted(_claim(conn, "tenants", 4)) == ["a", "a", "b", "b"]
    assert _claim(conn, "tenants", 4) == []  # both keys at their limit


def test_keys_behind_a_deep_head_take_turns(conn: Conn) -> None:
    """When the head of the queue is one key's backlog, each claim walks on from the key
    where the previous walk stopped."""
    flow.set_limits(conn, "tenants", flow.LimitsUpdate(max_running_per_key=1))
    q.enqueue_many(conn, [TaskSpec(kind="echo", queue="tenants", concurrency_key="big")] * 20)
    q.enqueue_many(
        conn, [TaskSpec(kind="echo", queue="tenants", concurrency_key=f"k{i}") for i in range(5)]
    )
    assert _claim(conn, "tenants", 2) == ["big", "k0"]
    assert _claim(conn, "tenants", 2) == ["k1", "k2"]
    assert _claim(conn, "tenants", 3) == ["k3", "k4"]


def test_rate_limit_windows_never_exceed_the_count(
    conn: Conn, database_url: str, stop_all: list[subprocess.Popen[str]]
) -> None:
    flow.set_limits(
        conn, "rated", flow.LimitsUpdate(rate_limit=flow.RateLimit(count=5, per_seconds=1.0))
    )
    stop_all.extend(_workers(database_url, 3, "rated", 8))
    _wait_for_workers(conn, 3)
    q.enqueue_many(conn, _sleep_tasks(20, "rated", 0.0))
    wait_until(lambda: _done(conn, "rated") == 20, timeout=60, what="rated tasks done")
    starts = [r["started_at"] for r in _intervals(conn, "rated")]
    assert max_in_window(starts, 1.0) == 5
    assert max(starts) - min(starts) >= timedelta(seconds=3)  # 20 starts need 4 windows


def test_unlimited_queue_is_not_held_by_a_full_limited_one(conn: Conn, settings: Settings) -> None:
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    q.enqueue_many(conn, _sleep_tasks(3, "lim", 30.0))
    q.enqueue_many(conn, _sleep_tasks(20, "free", 0.0))
    with running_worker(settings, queues=["lim", "free"], concurrency=4) as worker:
        wait_until(lambda: _done(conn, "free") == 20, timeout=30, what="free queue drained")
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM taskq_tasks WHERE queue = 'lim' AND status = 'running'"
            ).fetchone(),
            timeout=30,
            what="the limited queue's one task running",
        )
        assert worker.limited == frozenset({"lim"})
        counts = {
            r["status"]: r["n"]
            for r in conn.execute(
                "SELECT status, count(*) AS n FROM taskq_tasks WHERE queue = 'lim' GROUP BY 1"
            ).fetchall()
        }
        assert counts == {"running": 1, "queued": 2}  # held tasks stay queued
        [limits] = flow.limits(conn, queue="lim")
        assert (limits.running, limits.held) == (1, 2)


def test_a_finished_task_wakes_the_waiting_workers_at_once(conn: Conn, make_settings: Any) -> None:
    """No polling: with a 30 s poll interval, the next task starts right after the
    previous one finishes (the completer notifies the limited queue)."""
    settings = make_settings(poll_interval=30.0)
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    q.enqueue_many(conn, _sleep_tasks(4, "lim", 0.2))
    with (
        running_worker(settings, queues=["lim"], concurrency=4),
        running_worker(settings, queues=["lim"], concurrency=4),
    ):
        wait_until(lambda: _done(conn, "lim") == 4, timeout=15, what="four tasks in a row")
    rows = _intervals(conn, "lim")
    assert max_overlap(rows) == 1
    gaps = [
        (b["started_at"] - a["finished_at"]).total_seconds() for a, b in itertools.pairwise(rows)
    ]
    assert max(gaps) < 5.0  # far below the poll interval


def test_limits_changed_while_workers_run(conn: Conn, settings: Settings) -> None:
    """A queue limited after the worker started is claimed within its limit; removing the
    limit lets the rest run side by side."""
    with running_worker(settings, queues=["lim"], concurrency=6):
        flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=2))
        q.enqueue_many(conn, _sleep_tasks(12, "lim", 0.05))
        wait_until(lambda: _done(conn, "lim") == 12, timeout=30, what="limited tasks done")
        flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=None))
        q.enqueue_many(conn, _sleep_tasks(6, "lim2", 0.0))
        [limits] = flow.limits(conn, queue="lim")
        assert not limits.limited
    assert max_overlap(_intervals(conn, "lim")) <= 2


def test_a_crashed_worker_frees_its_room(
    conn: Conn, database_url: str, stop_all: list[subprocess.Popen[str]]
) -> None:
    """SIGKILL a worker holding the only slot: the recovery sweeps (dead worker, expired
    lease) free it, another worker runs the held tasks. The long task has one attempt,
    so it fails on recovery instead of taking the slot again."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    q.enqueue(conn, "sleep", {"seconds": 60.0}, queue="lim", max_attempts=1)
    env = {"lease_seconds": 2.0, "recover_interval": 0.5}
    [victim] = _workers(database_url, 1, "lim", 2, **env)
    stop_all.append(victim)
    wait_until(
        lambda: conn.execute("SELECT 1 FROM taskq_tasks WHERE status = 'running'").fetchone(),
        timeout=30,
        what="the long task running",
    )
    q.enqueue_many(conn, _sleep_tasks(3, "lim", 0.0))
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    stop_all.extend(_workers(database_url, 1, "lim", 2, **env))
    wait_until(lambda: _done(conn, "lim") == 3, timeout=60, what="held tasks run after the crash")
    long_task = conn.execute(
        "SELECT status, attempts FROM taskq_tasks"
        " WHERE queue = 'lim' AND payload->>'seconds' = '60.0'"
    ).fetchone()
    assert long_task is not None
    assert (long_task["status"], long_task["attempts"]) == ("failed", 1)
    assert max_overlap(_intervals(conn, "lim")) <= 1


def test_a_worker_alone_records_outcomes_in_its_claims(conn: Conn, settings: Settings) -> None:
    """Alone on a limited queue, a worker records the queue's outcomes in the transaction
    of its next claim: the limit still holds (from the rows' own times), every outcome
    is recorded as it was returned (results, retries, failures), and counted once."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=3))
    echoes = q.enqueue_many(
        conn, [TaskSpec(kind="echo", queue="lim", payload={"n": n}) for n in range(30)]
    )
    q.enqueue_many(conn, _sleep_tasks(30, "lim", 0.01))
    fails = q.enqueue_many(
        conn, [TaskSpec(kind="fail", queue="lim", payload={}, max_attempts=2)] * 3
    )
    with running_worker(settings, queues=["lim"], concurrency=8) as worker:
        wait_until(
            lambda: _done(conn, "lim") == 60 and _status(conn, fails) == {"failed"},
            timeout=60,
            what="every limited task finished",
        )
        assert worker.alone == frozenset({"lim"})
        assert worker.recorded_with_claims >= 40  # most outcomes rode on a claim
        wait_until(lambda: worker.counts["succeeded"] == 60, timeout=10, what="counts")
        assert worker.counts["retried"] == 3
        assert worker.counts["failed"] == 3
    assert max_overlap(_intervals(conn, "lim")) == 3
    for task in echoes:
        assert q.get(conn, task.id).result == task.payload
    assert {q.get(conn, t.id).attempts for t in fails} == {2}


def test_outcomes_with_consequences_are_recorded_with_them(conn: Conn, settings: Settings) -> None:
    """A parent's outcome in a limited queue a worker is alone on releases its child
    (the claim leaves it to the completer, which records it with its consequences)."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=2))
    parent, child = q_workflows.enqueue_many(
        conn,
        [
            TaskSpec(kind="echo", queue="lim", payload={"n": 5}, ref="p"),
            TaskSpec(kind="echo", queue="lim", payload={"n": 1}, depends_on=["p"]),
        ],
    )
    q.enqueue_many(conn, _sleep_tasks(6, "lim", 0.01))
    with running_worker(settings, queues=["lim"], concurrency=4) as worker:
        wait_until(lambda: _done(conn, "lim") == 8, timeout=30, what="parent, child and sleeps")
        assert worker.alone == frozenset({"lim"})
    parent_row, child_row = (q.get(conn, parent.id), q.get(conn, child.id))
    assert child_row.status == "succeeded"
    assert parent_row.finished_at is not None
    assert child_row.started_at is not None
    assert child_row.started_at > parent_row.finished_at  # released by the parent's end
    assert max_overlap(_intervals(conn, "lim")) <= 2


def test_a_second_worker_ends_recording_with_claims(conn: Conn, make_settings: Any) -> None:
    """The room a worker's outcomes free goes back to that worker only while no other
    worker serves the queue; with a second one, both record outcomes on their own."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=2))
    assert flow.limited_queues(conn, ["lim"], worker_id="a", fresh=15)["lim"].alone
    registry.worker_seen(conn, "b", ["lim", "other"])
    assert not flow.limited_queues(conn, ["lim"], worker_id="a", fresh=15)["lim"].alone
    assert flow.limited_queues(conn, ["lim"], worker_id="b", fresh=15)["lim"].alone
    registry.worker_gone(conn, "b")
    with running_worker(make_settings(worker_id="first"), queues=["lim"], concurrency=4) as first:
        wait_until(lambda: first.alone == {"lim"}, timeout=10, what="the first worker alone")
        second_settings = make_settings(worker_id="second")
        with running_worker(second_settings, queues=["lim"], concurrency=4) as second:
            wait_until(
                lambda: not first.alone and not second.alone,
                timeout=10,
                what="both workers to see each other",
            )
            before = first.recorded_with_claims + second.recorded_with_claims
            q.enqueue_many(conn, _sleep_tasks(40, "lim", 0.01))
            wait_until(lambda: _done(conn, "lim") == 40, timeout=60, what="40 tasks shared")
            assert first.recorded_with_claims + second.recorded_with_claims == before
    # Which worker wins each turn is up to timing (the recording worker is woken first),
    # so the rows only show the limit held.
    assert max_overlap(_intervals(conn, "lim")) == 2


def test_a_claim_that_records_outcomes_says_whether_its_worker_is_still_alone(
    conn: Conn,
) -> None:
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    q.enqueue_many(conn, _sleep_tasks(3, "lim", 0.0))
    registry.worker_seen(conn, "a", ["lim"])
    [first] = flow.claim_limited(conn, queue="lim", limit=5, worker_id="a", lease=30).claimed
    done = q.Finish(first.lease, "succeeded")
    alone = flow.claim_limited(conn, queue="lim", limit=5, worker_id="a", lease=30, finish=[done])
    assert (len(alone.applied), len(alone.claimed), alone.alone) == (1, 1, True)
    registry.worker_seen(conn, "b", ["lim"])
    shared = flow.claim_limited(
        conn,
        queue="lim",
        limit=5,
        worker_id="a",
        lease=30,
        finish=[q.Finish(alone.claimed[0].lease, "succeeded")],
    )
    assert (len(shared.applied), len(shared.claimed), shared.alone) == (1, 1, False)
    assert q.get(conn, first.id).status == "succeeded"


def test_stopping_records_the_outcomes_a_claim_would_have(conn: Conn, settings: Settings) -> None:
    """A worker stopped while outcomes wait for its next claim records them all before
    it exits: nothing it ran is left running or run again."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=4))
    q.enqueue_many(conn, _sleep_tasks(400, "lim", 0.002))
    with running_worker(settings, queues=["lim"], concurrency=4) as worker:
        wait_until(lambda: _done(conn, "lim") >= 40, timeout=30, what="tasks flowing")
    counts = {
        r["status"]: r["n"]
        for r in conn.execute(
            "SELECT status, count(*) AS n FROM taskq_tasks WHERE queue = 'lim' GROUP BY 1"
        ).fetchall()
    }
    assert "running" not in counts
    assert counts["succeeded"] == worker.counts["succeeded"] == worker.claimed
    assert counts.get("queued", 0) == 400 - counts["succeeded"]


def test_a_per_key_limit_added_while_a_worker_claims_holds_at_once(
    conn: Conn, settings: Settings
) -> None:
    """A queue limited by max_running only is claimed by a leaner statement; a per-key
    limit added while tasks flow holds for every task started after the change."""
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=4))
    q.enqueue_many(conn, _sleep_tasks(24, "lim", 0.05, keys=["k"]))
    with running_worker(settings, queues=["lim"], concurrency=4):
        wait_until(lambda: _done(conn, "lim") >= 4, timeout=30, what="four tasks done")
        flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running_per_key=1))
        changed = conn.execute("SELECT now() AS t").fetchone()
        assert changed is not None
        wait_until(lambda: _done(conn, "lim") == 24, timeout=60, what="all tasks done")
    rows = _intervals(conn, "lim")
    assert max_overlap([r for r in rows if r["finished_at"] < changed["t"]]) == 4
    after = [r for r in rows if r["started_at"] > changed["t"]]
    assert after
    for row in after:
        beside = [
            o
            for o in rows
            if o is not row and o["started_at"] <= row["started_at"] <= o["finished_at"]
        ]
        assert beside == []


def _status(conn: Conn, tasks: Sequence[Any]) -> set[str]:
    return {q.get(conn, t.id).status for t in tasks}


def test_concurrency_key_is_stored_and_returned(conn: Conn) -> None:
    task = q.enqueue(conn, "echo", {}, queue="lim", concurrency_key="tenant:42")
    assert task.concurrency_key == "tenant:42"
    assert q.get(conn, task.id).to_json()["concurrency_key"] == "tenant:42"
    [many] = q.enqueue_many(conn, [TaskSpec(kind="echo", concurrency_key="c-1")])
    assert q.get(conn, many.id).concurrency_key == "c-1"
    assert json.loads(json.dumps(q.get(conn, many.id).to_json()))["concurrency_key"] == "c-1"


def test_a_limited_queue_is_not_starved_by_a_busy_unlimited_one(
    conn: Conn, settings: Settings
) -> None:
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    q.enqueue_many(conn, _sleep_tasks(200, "free", 0.05))
    q.enqueue_many(conn, _sleep_tasks(2, "lim", 0.0))
    with running_worker(settings, queues=["free", "lim"], concurrency=2):
        wait_until(lambda: _done(conn, "lim") == 2, timeout=30, what="limited tasks done")
        assert _done(conn, "free") < 150  # long before the busy queue drained


@pytest.mark.parametrize("per_key", [False, True])
def test_the_limited_claim_reads_indexes_only(conn: Conn, per_key: bool) -> None:
    """With a backlog and a history, the limited claim counts on the running index, walks
    keys on the keyed ready index, and never scans the table."""
    from taskq import sql

    limits = (
        flow.LimitsUpdate(max_running_per_key=1) if per_key else flow.LimitsUpdate(max_running=5)
    )
    flow.set_limits(conn, "lim", limits)
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, status, attempts, started_at, finished_at)"
        " SELECT 'lim', 'echo', 'succeeded', 1, now(), now() FROM generate_series(1, 20000)"
    )
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, concurrency_key) SELECT 'lim', 'echo',"
        " 'key-' || (i % 500) FROM generate_series(1, 20000) AS i"
    )
    conn.execute("VACUUM ANALYZE taskq_tasks")
    params = {"queue": "lim", "limit": 64, "worker_id": "plan", "lease": 30}
    with conn.transaction():
        conn.execute(sql.QUEUE_TURN, params)
        plan = "\n".join(
            str(row["QUERY PLAN"])
            for row in conn.execute("EXPLAIN " + sql.CLAIM_LIMITED, params).fetchall()
        )
    assert "Seq Scan on taskq_tasks" not in plan, plan
    assert "taskq_tasks_running_lease_idx" in plan, plan
    if per_key:
        assert "taskq_tasks_ready_key_idx" in plan, plan
    else:
        assert "taskq_tasks_ready_idx" in plan, plan


def test_one_index_serves_flow_counts_and_the_lease_sweep(conn: Conn) -> None:
    """Running tasks have one index (a claim writes one entry, not two), and the lease
    sweep reads it rather than the table, with a backlog and a history."""
    from taskq import sql

    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, status, attempts, started_at, finished_at)"
        " SELECT 'q', 'echo', 'succeeded', 1, now(), now() FROM generate_series(1, 20000)"
    )
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind) SELECT 'q', 'echo' FROM generate_series(1, 20000)"
    )
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, status, attempts, worker_id, started_at,"
        " lease_expires_at) SELECT 'q', 'echo', 'running', 1, 'w', now(),"
        " now() + i * interval '1 minute' FROM generate_series(-5, 100) AS i WHERE i <> 0"
    )
    conn.execute("VACUUM ANALYZE taskq_tasks")
    running = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'taskq_tasks'"
        " AND indexdef LIKE '%%status = ''running''%%'"
    ).fetchall()
    assert [r["indexname"] for r in running] == ["taskq_tasks_running_lease_idx"]
    plan = "\n".join(
        str(row["QUERY PLAN"])
        for row in conn.execute("EXPLAIN " + sql.RECOVER_EXPIRED, {"limit": 100}).fetchall()
    )
    assert "Seq Scan on taskq_tasks" not in plan, plan
    assert "taskq_tasks_running_lease_idx" in plan, plan
    assert len(q.recover_expired(conn, limit=100)) == 5  # the expired ones, by the index


def test_the_settings_file_sets_and_removes_limits(conn: Conn, tmp_path: Any) -> None:
    from taskq import settings_file

    path = tmp_path / "taskq.yaml"
    path.write_text(
        "queues:\n"
        "  emails:\n"
        "    max_running: 4\n"
        "    max_running_per_key: 1\n"
        "    rate_limit: {count: 100, per_seconds: 60}\n"
    )
    settings_file.apply(conn, settings_file.load(path))
    [limits] = flow.limits(conn, queue="emails")
    assert (limits.max_running, limits.max_running_per_key) == (4, 1)
    assert limits.rate_limit == flow.RateLimit(count=100, per_seconds=60.0)
    path.write_text("queues:\n  emails:\n    max_running: null\n")
    settings_file.apply(conn, settings_file.load(path))
    [limits] = flow.limits(conn, queue="emails")
    assert (limits.max_running, limits.max_running_per_key) == (None, 1)  # left out: kept
    path.write_text("queues:\n  emails:\n    max_running: 0\n")
    with pytest.raises(settings_file.SettingsFileError, match="max_running"):
        settings_file.load(path)


def test_a_settings_file_schedule_carries_a_concurrency_key(conn: Conn, tmp_path: Any) -> None:
    from taskq import schedules, settings_file

    path = tmp_path / "taskq.yaml"
    path.write_text(
        "schedules:\n"
        "  - name: sync-acme\n"
        "    every: 60\n"
        "    kind: echo\n"
        "    queue: tenants\n"
        "    concurrency_key: acme\n"
        "    timeout_seconds: 20\n"
    )
    settings_file.apply(conn, settings_file.load(path))
    spec = schedules.get(conn, "sync-acme").spec
    assert (spec.concurrency_key, spec.timeout_seconds) == ("acme", 20)
    path.write_text(path.read_text().replace("key: acme", "key: acme corp"))
    with pytest.raises(settings_file.SettingsFileError, match=r"schedules\[0\]\.concurrency_key"):
        settings_file.load(path)
