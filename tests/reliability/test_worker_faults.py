"""Worker faults against real `taskq worker` processes: SIGKILL, SIGSTOP past the lease,
four processes on 20k tasks, a killed listener connection, SIGTERM with work in flight."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import queue as q
from taskq.models import TaskSpec

from tests.helpers import wait_until
from tests.reliability.conftest import Metrics
from tests.reliability.harness import Processes, get_status, records

pytestmark = pytest.mark.reliability
Conn = psycopg.Connection[dict[str, Any]]


def _status_counts(conn: Conn) -> dict[str, int]:
    return {row["status"]: row["n"] for row in q.counts(conn)}


def _row(conn: Conn, task_id: Any) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM taskq_tasks WHERE id = %s", (task_id,)).fetchone()
    assert row is not None
    return row


def test_sigkill_mid_batch_reruns_only_in_flight_tasks(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    lease = 3.0
    env = procs.env(database_url, lease_seconds=lease, recover_interval=0.2)
    record_file = Path(env["TASKQ_TEST_RECORD"])
    tasks = q.enqueue_many(conn, [TaskSpec(kind="slow_record", payload={"seconds": 0.6})] * 24)
    victim, _ = procs.worker(env, "--concurrency", "4", name="victim")
    wait_until(lambda: len(records(record_file)) >= 8, timeout=30, what="a batch in progress")

    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(timeout=5)
    in_flight = {
        str(row["id"])
        for row in conn.execute("SELECT id FROM taskq_tasks WHERE status = 'running'")
    }
    assert in_flight, "the kill should catch tasks in flight"
    done_before = _status_counts(conn).get("succeeded", 0)

    procs.worker(env, "--concurrency", "4", name="survivor")
    survivor_ready = time.monotonic() - killed_at
    reclaimed = wait_until(
        lambda: (
            (
                conn.execute(
                    "SELECT count(*) AS n FROM taskq_tasks"
                    " WHERE id = ANY(%s::uuid[]) AND attempts >= 2",
                    (list(in_flight),),
                ).fetchone()["n"]
                == len(in_flight)
            )
            and time.monotonic() - killed_at
        ),
        timeout=lease + 10,
        interval=0.05,
        what="the killed worker's tasks to be claimed again",
    )
    wait_until(
        lambda: _status_counts(conn) == {"succeeded": 24},
        timeout=30,
        interval=0.1,
        what="every task to succeed",
    )
    all_done = time.monotonic() - killed_at

    runs = collections.Counter(task_id for task_id, _, _ in records(record_file))
    assert runs.keys() == {str(t.id) for t in tasks}, "a task never ran"
    twice = {task_id for task_id, n in runs.items() if n > 1}
    assert twice <= in_flight, "a task that was not in flight ran twice"
    assert max(runs.values()) <= 2
    # The killed worker's session ended, so the survivor's dead-worker sweep requeues its
    # tasks as soon as the survivor runs (else the lease, renewed every lease/3, expires
    # at most `lease` after the kill); a sweep interval plus a free slot later each runs
    # again. The survivor's own start-up counts: on a loaded machine it takes seconds.
    assert reclaimed <= max(lease, survivor_ready) + 4.5  # three rounds of 0.6 s tasks, load
    metrics.record(
        "sigkill_mid_batch",
        tasks=24,
        concurrency=4,
        lease_seconds=lease,
        finished_before_kill=done_before,
        in_flight_at_kill=len(in_flight),
        tasks_lost=24 - _status_counts(conn).get("succeeded", 0),
        duplicates=len(twice),
        duplicates_outside_in_flight=len(twice - in_flight),
        recovery_seconds=round(reclaimed, 2),
        survivor_ready_seconds=round(survivor_ready, 2),
        all_done_seconds=round(all_done, 2),
    )


def test_sigkill_recovers_in_seconds_with_the_default_lease_but_a_paused_worker_keeps_its_tasks(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    """Each worker holds a liveness lock on its listener's session: when that session ends
    (SIGKILL), any worker's dead-worker sweep recovers its tasks at once; a worker that is
    only paused (SIGSTOP) keeps its session, its lock and its tasks (leases, 30 s here)."""
    env = procs.env(database_url, lease_seconds=30)  # the default lease
    victim, _ = procs.worker(env, "--concurrency", "4", name="victim")
    tasks = q.enqueue_many(conn, [TaskSpec(kind="slow_record", payload={"seconds": 8})] * 4)
    ids = [str(t.id) for t in tasks]

    def running_attempts() -> list[int]:
        rows = conn.execute(
            "SELECT attempts FROM taskq_tasks WHERE id = ANY(%s::uuid[]) AND status = 'running'",
            (ids,),
        ).fetchall()
        return sorted(row["attempts"] for row in rows)

    wait_until(lambda: running_attempts() == [1] * 4, timeout=20, what="the victim to run all 4")
    procs.worker(env, "--concurrency", "4", name="survivor")

    victim.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    # Several dead-worker sweeps of the survivor (every 0.5 s) pass while it is paused.
    wait_until(lambda: time.monotonic() - paused_at > 3, timeout=10, what="3 s of pause")
    assert running_attempts() == [1] * 4, "a paused worker's tasks were taken"
    victim.signal(signal.SIGCONT)

    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(timeout=5)
    recovered = wait_until(
        lambda: running_attempts() == [2] * 4 and time.monotonic() - killed_at,
        timeout=30,
        interval=0.05,
        what="the killed worker's tasks to run again",
    )
    assert recovered <= 2.0, f"recovered after {recovered:.2f}s"
    last_error = conn.execute(
        "SELECT last_error FROM taskq_tasks WHERE id = %s", (ids[0],)
    ).fetchone()["last_error"]
    assert "is gone" in last_error
    metrics.record(
        "sigkill_default_lease",
        lease_seconds=30,
        in_flight_at_kill=4,
        paused_seconds_without_takeover=3,
        rerun_seconds_after_kill=round(recovered, 2),
    )


@pytest.mark.parametrize("resume", ["after_new_owner_finished", "while_new_owner_runs"])
def test_stale_worker_cannot_overwrite_the_new_owner(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics, resume: str
) -> None:
    lease = 1.5
    env = procs.env(database_url, lease_seconds=lease, recover_interval=0.2)
    record_file = Path(env["TASKQ_TEST_RECORD"])
    task = q.enqueue(conn, "owner_sleep", {"seconds": 2.0})
    stale, _ = procs.worker(env, "--concurrency", "1", name="stale")
    wait_until(lambda: records(record_file), what="the first owner to start the task")
    stale.signal(signal.SIGSTOP)
    paused_at = time.monotonic()

    new_owner, _ = procs.worker(env, "--concurrency", "1", name="new-owner")
    wait_until(
        lambda: _row(conn, task.id)["attempts"] == 2,
        timeout=lease + 10,
        what="the new owner to take the task over",
    )
    taken_over = time.monotonic() - paused_at
    if resume == "after_new_owner_finished":
        wait_until(lambda: _row(conn, task.id)["status"] == "succeeded", what="new owner result")
    before = _row(conn, task.id)
    stale.signal(signal.SIGCONT)
    wait_until(
        lambda: "outcome discarded" in stale.log(),
        timeout=10,
        what="the stale worker's write to be refused",
    )
    wait_until(lambda: _row(conn, task.id)["status"] == "succeeded", what="the task to finish")
    after = _row(conn, task.id)

    assert after["result"] == {"pid": new_owner.pid, "attempt": 2}
    assert after["attempts"] == 2
    assert after["worker_id"] != _first_owner_id(stale.log())
    if resume == "after_new_owner_finished":
        assert after == before, "the stale worker changed the finished task"
    assert stale.stop() == 0
    assert "'lost': 1" in stale.log()
    assert sorted(attempt for _, attempt, _ in records(record_file)) == [1, 2]
    metrics.record(
        f"stale_worker_{resume}",
        lease_seconds=lease,
        takeover_seconds=round(taken_over, 2),
        stale_writes_applied=0,
        stale_writes_refused=1,
        result_written_by="new owner",
    )


def _first_owner_id(log: str) -> str:
    for line in log.splitlines():
        if " serving queues " in line:
            return line.split("worker ", 1)[1].split(" ", 1)[0]
    raise AssertionError("worker id not found in the log")


def test_four_workers_drain_20k_tasks_exactly_once(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    total = 20_000
    env = procs.env(database_url, lease_seconds=30)
    record_file = Path(env["TASKQ_TEST_RECORD"])
    # All four are up, listening and idle before the first task exists: each is woken by
    # the enqueue's notification, so each takes part however fast the others drain.
    started = time.monotonic()
    workers = [
        procs.worker(env, "--concurrency", "8", name=f"drain-{i}", wait_ready=False)
        for i in range(4)
    ]
    for proc, health in workers:
        wait_until(
            lambda p=proc, h=health: get_status(h, "/ready") == 200 or not p.alive(),  # type: ignore[misc]
            timeout=30,
            interval=0.05,
            what=f"{proc.name} to be ready",
        )
        assert proc.alive(), f"{proc.name} exited:\n{proc.log()}"
    start_seconds = time.monotonic() - started

    started = time.monotonic()
    with conn.transaction():
        tasks = q.enqueue_many(conn, [TaskSpec(kind="record")] * total)
    enqueue_seconds = time.monotonic() - started

    started = time.monotonic()
    wait_until(
        lambda: _status_counts(conn) == {"succeeded": total},
        timeout=90,
        interval=0.05,
        what="every task to succeed",
    )
    drain_seconds = time.monotonic() - started
    codes = [proc.stop() for proc, _ in workers]
    assert codes == [0, 0, 0, 0], procs.logs()[-3000:]

    lines = records(record_file)
    runs = collections.Counter(task_id for task_id, _, _ in lines)
    assert len(lines) == total, f"{len(lines) - total} extra handler invocations"
    assert runs.keys() == {str(t.id) for t in tasks}
    assert set(runs.values()) == {1}
    per_worker = collections.Counter(pid for _, _, pid in lines)
    assert per_worker.keys() == {proc.pid for proc, _ in workers}, "a worker took no task"
    assert conn.execute("SELECT DISTINCT attempts FROM taskq_tasks").fetchall() == [{"attempts": 1}]
    metrics.record(
        "four_workers_20k",
        tasks=total,
        workers=4,
        concurrency_each=8,
        handler_invocations=len(lines),
        duplicates=len(lines) - len(runs),
        tasks_lost=total - len(runs),
        per_worker=sorted(per_worker.values()),
        workers_ready_seconds=round(start_seconds, 2),
        enqueue_seconds=round(enqueue_seconds, 2),
        drain_seconds=round(drain_seconds, 2),
        tasks_per_second=round(total / drain_seconds),
    )


def _listener_pids(conn: Conn) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'taskq-listener'"
    ).fetchall()
    return {row["pid"] for row in rows}


def test_listener_killed_reconnects_and_picks_up_promptly(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    # Polling every 30 s: a pickup within a second can only come from LISTEN/NOTIFY.
    env = procs.env(database_url, poll_interval=30)
    worker, health = procs.worker(env, "--concurrency", "2")
    warmup = q.enqueue(conn, "echo", {"n": 0})
    wait_until(lambda: q.get(conn, warmup.id).status == "succeeded", timeout=5, what="warm-up")
    old = wait_until(lambda: _listener_pids(conn), what="the listener connection")

    conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(old),))
    killed_at = time.monotonic()
    # Enqueued while the listener is down: its notification is lost; the catch-up wake
    # after the reconnect must find it.
    missed = q.enqueue(conn, "echo", {"n": 1})
    new = wait_until(
        lambda: (pids := _listener_pids(conn)) and not pids & old and pids,
        timeout=10,
        interval=0.02,
        what="the listener to reconnect",
    )
    reconnect = time.monotonic() - killed_at
    wait_until(lambda: q.get(conn, missed.id).status == "succeeded", timeout=5, what="catch-up")
    missed_pickup = time.monotonic() - killed_at
    wait_until(lambda: get_status(health, "/ready") == 200, timeout=10, what="worker ready")

    latencies = []
    for n in range(5):
        sent = time.monotonic()
        task = q.enqueue(conn, "echo", {"n": n + 2})
        wait_until(
            lambda t=task: q.get(conn, t.id).status == "succeeded",  # type: ignore[misc]
            timeout=3,
            interval=0.005,
            what="a task enqueued after the reconnect",
        )
        latencies.append(time.monotonic() - sent)
    assert max(latencies) < 1.0
    assert worker.alive()
    assert len(new) == 1
    metrics.record(
        "listener_killed",
        poll_interval_seconds=30,
        reconnect_seconds=round(reconnect, 3),
        missed_notification_pickup_seconds=round(missed_pickup, 3),
        pickup_after_reconnect_ms_max=round(max(latencies) * 1000, 1),
        worker_restarted=False,
    )


def test_sigterm_finishes_in_flight_and_requeues_the_rest(
    database_url: str, conn: Conn, procs: Processes, metrics: Metrics
) -> None:
    grace = 3.0
    env = procs.env(database_url, shutdown_timeout=grace)
    worker, _ = procs.worker(env, "--concurrency", "6")
    short = q.enqueue_many(
        conn, [TaskSpec(kind="owner_sleep", payload={"seconds": 1.0}, priority=10)] * 3
    )
    long = q.enqueue_many(
        conn, [TaskSpec(kind="owner_sleep", payload={"seconds": 60}, priority=10)] * 3
    )
    wait_until(lambda: _status_counts(conn).get("running") == 6, what="six tasks in flight")
    waiting = q.enqueue_many(conn, [TaskSpec(kind="echo")] * 10)  # no free slot: stay queued

    worker.signal(signal.SIGTERM)
    sent = time.monotonic()
    code = worker.wait(timeout=grace + 10)
    exit_seconds = time.monotonic() - sent

    assert code == 0
    assert exit_seconds <= grace + 2
    assert {q.get(conn, t.id).status for t in short} == {"succeeded"}
    for task in long:
        back = q.get(conn, task.id)
        assert (back.status, back.attempts, back.lease_expires_at) == ("queued", 0, None)
    assert {(q.get(conn, t.id).status, q.get(conn, t.id).attempts) for t in waiting} == {
        ("queued", 0)
    }
    assert "released 3 unfinished task(s)" in worker.log()
    metrics.record(
        "sigterm_drain",
        shutdown_timeout_seconds=grace,
        exit_code=code,
        exit_seconds=round(exit_seconds, 2),
        in_flight_finished=len(short),
        released_to_queued=len(long),
        never_claimed_left_queued=len(waiting),
        tasks_lost=0,
    )
