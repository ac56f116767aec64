"""Control of running tasks against a real PostgreSQL and real processes: timeouts in both
pools, cancelling running tasks, the cancel/completion race, snooze and retry-later,
per-kind policy."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import db
from taskq import queue as q
from taskq.errors import InvalidTransition, RetryLater, Snooze
from taskq.handlers import Registry, TaskContext, default_registry
from taskq.models import Task, TaskSpec
from taskq.settings import Settings
from taskq.worker.inflight import InFlight
from taskq.worker.maintenance import LeaseHeartbeat

from tests.helpers import spawn_taskq, stop_process, taskq_env, wait_until
from tests.worker_helpers import fresh_registry, running_worker

Conn = psycopg.Connection[dict[str, Any]]


def _status(conn: Conn, task: Task, *statuses: str) -> Callable[[], Task | None]:
    def check() -> Task | None:
        row = q.get(conn, task.id)
        return row if row.status in statuses else None

    return check


def _records(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    return [
        (task_id, int(attempt), int(pid))
        for task_id, attempt, pid in (line.split() for line in path.read_text().splitlines())
    ]


# ------------------------------------------------------------------ thread pool


def test_thread_pool_timeout_is_a_retryable_failure(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()
    starts: list[float] = []

    @registry.handler("patient", takes_context=True)
    def patient(payload: dict[str, Any], ctx: TaskContext) -> None:
        starts.append(time.monotonic())
        ctx.sleep(60)  # the built-in sleep wakes when the timeout passes

    with running_worker(settings, registry) as worker:
        task = q.enqueue(conn, "patient", timeout_seconds=0.3, max_attempts=2)
        done = wait_until(_status(conn, task, "failed"), timeout=20, what="two timeouts")
        assert worker.watcher.overruns == 0  # it honoured the stop: nothing to report
    assert done.attempts == 2
    assert done.last_error == "timed out after 0.3 s"
    assert done.timeout_seconds == 0.3
    assert done.started_at is not None
    assert done.finished_at is not None
    # The second attempt was stopped near its deadline, far before the 60 s sleep.
    assert 0.3 <= (done.finished_at - done.started_at).total_seconds() < 5


def test_kind_timeout_can_be_non_retryable(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()

    @registry.handler("strict", takes_context=True, timeout=0.2, retry_on_timeout=False)
    def strict(payload: dict[str, Any], ctx: TaskContext) -> None:
        while True:
            ctx.check()
            time.sleep(0.01)

    with running_worker(settings, registry):
        task = q.enqueue(conn, "strict", max_attempts=5)
        done = wait_until(_status(conn, task, "failed"), timeout=20, what="a timeout")
    assert (done.attempts, done.last_error) == (1, "timed out after 0.2 s")


def test_thread_pool_handler_ignoring_its_timeout_is_reported(
    make_settings: Callable[..., Settings], conn: Conn
) -> None:
    registry = fresh_registry()
    release = threading.Event()
    registry.register("deaf", lambda payload: release.wait(30))
    settings = make_settings(worker_kill_grace=0.2)
    with running_worker(settings, registry, concurrency=1) as worker:
        task = q.enqueue(conn, "deaf", timeout_seconds=0.2, max_attempts=1)
        wait_until(lambda: worker.watcher.overruns == 1, what="the overrun to be reported")
        # It keeps its slot (and its lease) until it returns.
        assert q.get(conn, task.id).status == "running"
        assert worker.inflight.free_slots() == 0
        release.set()
        done = wait_until(_status(conn, task, "failed"), what="the late return")
    assert done.last_error == "timed out after 0.2 s"


def test_cancel_a_running_thread_pool_task(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()
    started = threading.Event()

    @registry.handler("long", takes_context=True)
    def long(payload: dict[str, Any], ctx: TaskContext) -> None:
        started.set()
        ctx.sleep(60)

    with running_worker(settings, registry) as worker:
        wait_until(worker.listener.connected.is_set, what="listener")
        task = q.enqueue(conn, "long", max_attempts=5)
        wait_until(started.is_set, what="the handler to start")
        requested = q.cancel(conn, task.id)
        assert requested.status == "running"
        assert requested.cancel_requested_at is not None
        done = wait_until(_status(conn, task, "cancelled"), what="the cancel to take")
    assert done.attempts == 1  # never retried
    assert done.last_error == "cancelled while running"
    assert done.finished_at is not None
    assert done.cancel_requested_at is not None
    # Learnt through the control notification: well within a second of the request
    # (the heartbeat fallback would take lease_seconds / 3).
    assert (done.finished_at - done.cancel_requested_at).total_seconds() < 1.0


def test_heartbeat_learns_of_a_cancel_the_notification_missed(
    settings: Settings, conn: Conn
) -> None:
    q.enqueue(conn, "echo")
    claimed = q.claim(conn, queues=["default"], limit=1, worker_id="w1", lease=30)
    inflight = InFlight(1)
    inflight.claimed(claimed)
    heard: list[uuid.UUID] = []
    pool = db.create_pool(settings, name="test", min_size=1, max_size=1)
    try:
        beat = LeaseHeartbeat(pool, inflight, "w1", 1.0, 30.0, heard.append)
        beat.run_once()
        assert heard == []
        q.cancel(conn, claimed[0].id)  # nobody listens: only the heartbeat can tell
        beat.run_once()
    finally:
        pool.close()
    assert heard == [claimed[0].id]


def test_cancel_running_then_outcome_ends_cancelled_and_a_finished_task_is_409(
    conn: Conn,
) -> None:
    a, b = q.enqueue(conn, "echo"), q.enqueue(conn, "echo")
    claimed = {t.id: t for t in q.claim(conn, queues=["default"], limit=2, worker_id="w", lease=30)}
    assert q.cancel(conn, a.id).status == "running"
    applied, _ = q.finish(
        conn,
        [q.Finish(claimed[t].lease, "succeeded", result_json="1") for t in (a.id, b.id)],
        worker_id="w",
    )
    assert {row["id"]: row["status"] for row in applied} == {a.id: "cancelled", b.id: "succeeded"}
    assert q.get(conn, a.id).result is None
    with pytest.raises(InvalidTransition, match="succeeded"):
        q.cancel(conn, b.id)
    with pytest.raises(InvalidTransition, match="cancelled"):
        q.cancel(conn, a.id)


def test_cancel_races_completion_and_exactly_one_wins(database_url: str, conn: Conn) -> None:
    """Two sessions race per task: a worker recording success, a client cancelling. Each
    task ends either succeeded with the cancel refused, or cancelled with the cancel
    accepted; never a succeeded task whose cancel was accepted."""
    n = 200
    q.enqueue_many(conn, [TaskSpec(kind="echo") for _ in range(n)])
    claimed = q.claim(conn, queues=["default"], limit=n, worker_id="w", lease=60)
    assert len(claimed) == n
    accepted: dict[uuid.UUID, bool] = {}
    go = threading.Barrier(2)

    def finisher() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            go.wait()
            for task in claimed:
                q.finish(c, [q.Finish(task.lease, "succeeded", result_json="1")], worker_id="w")

    def canceller() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            go.wait()
            for task in claimed:
                try:
                    accepted[task.id] = q.cancel(c, task.id).status == "running"
                except InvalidTransition:
                    accepted[task.id] = False

    threads = [threading.Thread(target=finisher), threading.Thread(target=canceller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = {t.id: q.get(conn, t.id) for t in claimed}
    for task_id, row in rows.items():
        if accepted[task_id]:
            assert row.status == "cancelled"
            assert row.result is None
            assert row.cancel_requested_at is not None
            # (finished_at is the FINISH transaction's start, which may precede the
            # cancel's: it waited on the cancel's row lock, then saw it committed.)
            assert row.finished_at is not None
        else:
            assert row.status == "succeeded"
            assert row.cancel_requested_at is None
    outcomes = {row.status for row in rows.values()}
    assert outcomes <= {"succeeded", "cancelled"}


# ------------------------------------------------------------------ snooze, retry later, policy


def test_snooze_does_not_use_up_attempts(settings: Settings, conn: Conn, api_get: Any) -> None:
    registry = fresh_registry()
    calls: list[int] = []

    @registry.handler("waiter", takes_context=True)
    def waiter(payload: dict[str, Any], ctx: TaskContext) -> str:
        calls.append(ctx.attempt)
        if len(calls) <= 3:
            raise Snooze(0.05)
        return "ready"

    with running_worker(settings, registry):
        task = q.enqueue(conn, "waiter", max_attempts=1)
        done = wait_until(_status(conn, task, "succeeded", "failed"), what="the task to end")
    assert calls == [1, 1, 1, 1]  # every snooze gave its attempt back
    assert (done.status, done.attempts, done.snoozes, done.result) == ("succeeded", 1, 3, "ready")
    assert api_get(task.id)["snoozes"] == 3


def test_snooze_moves_run_at(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()
    registry.register("later", _raise(Snooze(30)))
    with running_worker(settings, registry):
        task = q.enqueue(conn, "later")
        row = wait_until(lambda: (r := q.get(conn, task.id)).snoozes == 1 and r, what="the snooze")
    assert (row.status, row.attempts, row.finished_at) == ("queued", 0, None)
    assert 29 <= (row.run_at - row.updated_at).total_seconds() <= 31


def test_retry_later_uses_the_handlers_delay_and_counts_the_attempt(
    settings: Settings, conn: Conn
) -> None:
    registry = fresh_registry()
    registry.register("busy", _raise(RetryLater(40, "rate limited")))
    with running_worker(settings, registry):
        task = q.enqueue(conn, "busy", max_attempts=3)
        row = wait_until(
            lambda: (r := q.get(conn, task.id)).attempts == 1 and r.status == "queued" and r,
            what="the retry",
        )
    assert row.last_error == "RetryLater: rate limited"
    assert 39 <= (row.run_at - row.updated_at).total_seconds() <= 41


def _raise(exc: Exception) -> Callable[[dict[str, Any]], None]:
    def handler(payload: dict[str, Any]) -> None:
        raise exc

    return handler


def test_per_kind_max_attempts_and_backoff(settings: Settings, conn: Conn) -> None:
    registry = fresh_registry()
    registry.register("picky", _raise(RuntimeError("no")), max_attempts=2, backoff=(20, 20))
    spec = registry.prepare(TaskSpec(kind="picky"))
    assert spec.max_attempts == 2
    assert registry.prepare(TaskSpec(kind="picky", max_attempts=7)).max_attempts == 7
    with running_worker(settings, registry):
        task = q.enqueue(conn, spec)
        row = wait_until(
            lambda: (r := q.get(conn, task.id)).attempts == 1 and r.status == "queued" and r,
            what="the first failure",
        )
    # The kind's backoff (20 s, jitter 25 %), not the settings' (0 s in tests).
    assert 14 <= (row.run_at - row.updated_at).total_seconds() <= 26
    assert row.max_attempts == 2


def test_policy_is_checked_at_registration() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="max_attempts"):
        registry.register("a", print, max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        registry.register("a", print, backoff=(5, 1))
    with pytest.raises(ValueError, match="timeout"):
        registry.register("a", print, timeout=0)
    with pytest.raises(TypeError, match="pydantic"):
        registry.register("a", print, payload=dict)  # type: ignore[arg-type]


# ------------------------------------------------------------------ process pool


@pytest.fixture
def process_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("TASKQ_TEST_RECORD", str(tmp_path / "record"))
    default_registry.load_modules(["tests.handlers_for_tests"])
    return make_settings(
        worker_pool="process",
        worker_processes=2,
        worker_kill_grace=0.5,
        handler_modules=["tests.handlers_for_tests"],
    )


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def process_worker(process_settings: Settings) -> Iterator[Any]:
    with running_worker(process_settings, default_registry) as worker:
        wait_until(
            lambda: all(child.is_ready for child in worker.runners.children),
            timeout=60,
            what="the children to start",
        )
        yield worker


def test_process_pool_runs_typed_payloads_in_children(conn: Conn, process_worker: Any) -> None:
    task = q.enqueue(conn, "typed_order", {"order_id": 7})
    done = wait_until(_status(conn, task, "succeeded", "failed"), timeout=30, what="the task")
    assert done.result == {"type": "Order", "order_id": 7}
    pids = {child.pid for child in process_worker.runners.children}
    assert os.getpid() not in pids
    assert len(pids) == 2


def test_process_pool_kills_a_task_that_ignores_sigterm(
    conn: Conn, record: Path, process_worker: Any
) -> None:
    task = q.enqueue(conn, "stubborn", timeout_seconds=0.5, max_attempts=1)
    wait_until(lambda: _records(record), timeout=30, what="the handler to start")
    pid = _records(record)[0][2]
    done = wait_until(_status(conn, task, "failed"), timeout=30, what="the timeout")
    assert done.last_error == "timed out after 0.5 s"
    # SIGTERM was ignored, so SIGKILL after the grace ended it: the attempt lasted about
    # timeout + grace.
    assert done.started_at is not None
    assert done.finished_at is not None
    assert 1.0 <= (done.finished_at - done.started_at).total_seconds() < 10
    wait_until(lambda: not _alive(pid), what="the child to be gone")
    # The slot comes back with a fresh child: the pool still runs tasks.
    after = q.enqueue(conn, "typed_order", {"order_id": 1})
    wait_until(_status(conn, after, "succeeded"), timeout=30, what="a task after the kill")


def test_process_pool_child_killed_from_outside_fails_that_attempt(
    conn: Conn, record: Path, process_worker: Any
) -> None:
    task = q.enqueue(conn, "nap", {"seconds": 1}, max_attempts=2)
    wait_until(lambda: _records(record), timeout=30, what="the handler to start")
    pid = _records(record)[0][2]
    os.kill(pid, signal.SIGKILL)
    done = wait_until(_status(conn, task, "succeeded", "failed"), timeout=30, what="the retry")
    assert done.status == "succeeded"  # the second attempt, in a fresh child
    assert done.attempts == 2
    assert done.last_error == "the child process running the task killed by SIGKILL"
    runs = _records(record)
    assert [r[1] for r in runs] == [1, 2]
    assert runs[1][2] != pid


def test_cancel_a_running_process_pool_task(conn: Conn, record: Path, process_worker: Any) -> None:
    wait_until(process_worker.listener.connected.is_set, what="listener")
    task = q.enqueue(conn, "nap", {"seconds": 60})
    wait_until(lambda: _records(record), timeout=30, what="the handler to start")
    pid = _records(record)[0][2]
    assert q.cancel(conn, task.id).status == "running"
    done = wait_until(_status(conn, task, "cancelled"), timeout=10, what="the cancel")
    assert done.attempts == 1
    assert done.cancel_requested_at is not None
    assert done.finished_at is not None
    assert (done.finished_at - done.cancel_requested_at).total_seconds() < 1.0 + 0.5
    wait_until(lambda: not _alive(pid), what="the child to be stopped")


def test_process_pool_prefetch_claims_beyond_its_children(
    make_settings: Callable[..., Settings], conn: Conn
) -> None:
    default_registry.load_modules(["tests.handlers_for_tests"])
    settings = make_settings(
        worker_pool="process",
        worker_processes=1,
        worker_prefetch=3,
        handler_modules=["tests.handlers_for_tests"],
    )
    tasks = q.enqueue_many(
        conn, [TaskSpec(kind="typed_order", payload={"order_id": i}) for i in range(6)]
    )
    with running_worker(settings, default_registry) as worker:
        assert (worker.concurrency, len(worker.runners.children)) == (4, 1)
        wait_until(
            lambda: all(q.get(conn, t.id).status == "succeeded" for t in tasks),
            timeout=60,
            what="every task",
        )


def test_the_taskq_worker_command_runs_a_process_pool(
    database_url: str, conn: Conn, record: Path
) -> None:
    """The real CLI (`python -m taskq.cli worker`), whose main module must not run again
    in the children."""
    tasks = q.enqueue_many(conn, [TaskSpec(kind="record", payload={"n": i}) for i in range(4)])
    env = taskq_env(
        database_url,
        handler_modules="tests.handlers_for_tests",
        worker_pool="process",
        worker_processes=2,
    )
    env["TASKQ_TEST_RECORD"] = str(record)
    proc = spawn_taskq(["worker", "--burst", "--health-port", "0"], env)
    try:
        assert proc.wait(timeout=90) == 0
    finally:
        stop_process(proc)
    assert all(q.get(conn, t.id).status == "succeeded" for t in tasks)
    pids = {pid for _, _, pid in _records(record)}
    assert proc.pid not in pids
    assert 1 <= len(pids) <= 2


def test_cancels_racing_a_real_worker_never_both_take_effect(
    settings: Settings, conn: Conn, database_url: str
) -> None:
    """A real worker runs short tasks while a client cancels each as soon as it exists:
    whatever moment each cancel lands in, the answer and the final row agree."""
    registry = fresh_registry()
    registry.register("brief", lambda payload: time.sleep(payload["ms"] / 1000))
    n = 120
    # Every fifth task is scheduled for later, so some cancels surely find a queued task.
    specs = [
        TaskSpec(kind="brief", payload={"ms": 2 + i % 15}, delay=60 if i % 5 == 0 else None)
        for i in range(n)
    ]
    answers: dict[uuid.UUID, str] = {}
    with running_worker(settings, registry, concurrency=8):
        tasks = q.enqueue_many(conn, specs)
        with psycopg.connect(database_url, autocommit=True) as c:
            for i, task in enumerate(tasks):
                if i % 3 == 0:
                    # Let some run or finish first, so every moment is hit.
                    time.sleep(0.004)
                try:
                    answers[task.id] = q.cancel(c, task.id).status  # cancelled or running
                except InvalidTransition:
                    answers[task.id] = "finished"
        wait_until(lambda: all(q.get(conn, t.id).finished for t in tasks), timeout=60, what="all")
    rows = {t.id: q.get(conn, t.id) for t in tasks}
    for task_id, answer in answers.items():
        row = rows[task_id]
        if answer == "cancelled":  # queued when the cancel landed: never ran
            assert (row.status, row.attempts) == ("cancelled", 0)
        elif answer == "running":  # 202: the cancel won over the completion
            assert row.status == "cancelled"
            assert row.attempts == 1
            assert row.result is None
        else:  # 409: the completion had committed first
            assert row.status == "succeeded"
            assert row.cancel_requested_at is None
    assert "cancelled" in answers.values()
    assert {"running", "finished"} & set(answers.values())


def test_the_library_enqueue_applies_the_kinds_policy(conn: Conn) -> None:
    import taskq
    from taskq.errors import InvalidInput

    default_registry.load_modules(["tests.handlers_for_tests"])
    with pytest.raises(InvalidInput) as info:
        taskq.enqueue(conn, "typed_order", {"order_id": "seven"})
    assert info.value.field == "payload.order_id"
    with pytest.raises(InvalidInput) as info:
        taskq.enqueue_many(conn, [TaskSpec(kind="echo"), TaskSpec(kind="typed_order")])
    assert info.value.field == "tasks[1].payload.order_id"
    task = taskq.enqueue(conn, "typed_order", {"order_id": 7}, timeout_seconds=3)
    assert (task.max_attempts, task.timeout_seconds) == (2, 3)
    assert q.get(conn, task.id).timeout_seconds == 3
