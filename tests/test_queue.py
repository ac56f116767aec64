"""app/taskq/queue.py against a real PostgreSQL: enqueue, claim, leases, fencing, lifecycle."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from taskq import queue as q
from taskq.errors import InvalidTransition, TaskNotFound
from taskq.models import TaskSpec

from bench import pg

Conn = psycopg.Connection[dict[str, Any]]
W1, W2 = "worker-one", "worker-two"


def _claim(conn: Conn, limit: int = 10, worker: str = W1, **kw: Any) -> list[Any]:
    return q.claim(
        conn,
        queues=kw.pop("queues", ["default"]),
        limit=limit,
        worker_id=worker,
        lease=kw.pop("lease", 30.0),
    )


def _set(conn: Conn, task_id: uuid.UUID, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    conn.execute(
        f"UPDATE taskq_tasks SET {assignments} WHERE id = %(id)s",  # type: ignore[arg-type]
        {**columns, "id": task_id},
    )


# ------------------------------------------------------------------ enqueue


def test_enqueue_defaults(conn: Conn) -> None:
    task = q.enqueue(conn, "echo", {"input": "hello"})
    assert task.created
    assert (task.status, task.queue, task.kind, task.priority) == ("queued", "default", "echo", 0)
    assert task.payload == {"input": "hello"}
    assert task.attempts == 0
    assert task.max_attempts == 5
    assert task.id.version == 7
    assert task.lease_expires_at is None
    assert task.result is None


def test_enqueue_is_part_of_the_callers_transaction(database_url: str, conn: Conn) -> None:
    with psycopg.connect(database_url) as own:
        with own.transaction(force_rollback=True):
            own.execute("CREATE TABLE orders (id int)")
            rolled_back = q.enqueue(own, "echo", {"order": 1})
        with own.transaction():
            own.execute("CREATE TABLE orders (id int)")
            own.execute("INSERT INTO orders VALUES (2)")
            committed = q.enqueue(own, "echo", {"order": 2})
    with pytest.raises(TaskNotFound):
        q.get(conn, rolled_back.id)
    assert q.get(conn, committed.id).payload == {"order": 2}


def test_enqueue_notifies_once_per_queue_at_commit(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq")
        with psycopg.connect(database_url) as producer, producer.transaction():
            q.enqueue_many(producer, [TaskSpec(queue="a")] * 50 + [TaskSpec(queue="b")] * 50)
            q.enqueue(producer, "echo", queue="a")
            q.enqueue(producer, "echo", queue="later", delay=60)  # not runnable: no wake-up
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before commit
        payloads = sorted(n.payload for n in listener.notifies(timeout=1.0, stop_after=3))
    assert payloads == ["a", "b"]


def test_enqueue_many_returns_the_rows_it_wrote(conn: Conn) -> None:
    """Only id, run_at and created_at come back from the INSERT; every other field of the
    returned tasks is built from the spec and must equal what the row holds."""
    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    specs = [
        TaskSpec(),
        TaskSpec(
            queue="emails",
            kind="send",
            payload={"to": "x@example.com", "n": [1, 2.5, None, "\u00e9\n"]},
            priority=7,
            run_at=at,
            max_attempts=9,
            idempotency_key="k-1",
            timeout_seconds=2.5,
            concurrency_key="tenant-1",
        ),
        TaskSpec(delay=30, payload={}),
    ]
    tasks = q.enqueue_many(conn, specs, default_max_attempts=4)
    for task in tasks:
        assert task.to_json() == q.get(conn, task.id).to_json()
    assert tasks[0].max_attempts == 4
    assert tasks[1].max_attempts == 9
    assert tasks[1].run_at == at
    assert (tasks[2].run_at - tasks[2].created_at).total_seconds() == pytest.approx(30)


def test_enqueue_many_stores_any_json_a_spec_allows(conn: Conn) -> None:
    """Rows go to the INSERT as JSON text: integers beyond 64 bits and text outside the
    session's client encoding (LATIN1 has no euro sign) arrive exactly as given."""
    payloads = [
        {"big": 10**30, "small": -(2**70)},
        {"text": "\u20ac \U0001f600 \u00e9"},
        {"plain": [1, 2.5, True, None]},
    ]
    conn.execute("SET client_encoding TO 'LATIN1'")
    try:
        # One call each: a row orjson refuses sends its whole call to json.
        tasks = [
            q.enqueue_many(conn, [TaskSpec(payload=p)], default_max_attempts=3)[0] for p in payloads
        ]
    finally:
        conn.execute("RESET client_encoding")
    assert [q.get(conn, t.id).payload for t in tasks] == payloads


def test_enqueue_many_keeps_input_order_and_is_one_statement(conn: Conn) -> None:
    # A statement-level trigger records every INSERT statement on the table with the
    # number of rows it inserted: one entry per statement, however many rows it holds.
    conn.execute("CREATE TABLE insert_statements (seq serial PRIMARY KEY, n_rows int)")
    conn.execute(
        """
        CREATE FUNCTION count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO insert_statements (n_rows) SELECT count(*) FROM inserted_rows;
            RETURN NULL;
        END $$
        """
    )
    conn.execute(
        "CREATE TRIGGER count_insert_statement AFTER INSERT ON taskq_tasks"
        " REFERENCING NEW TABLE AS inserted_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION count_insert_statement()"
    )
    specs = [TaskSpec(payload={"n": i}, priority=i % 3) for i in range(2500)]
    tasks = q.enqueue_many(conn, specs, chunk_size=1000)
    assert [t.payload["n"] for t in tasks] == list(range(2500))
    assert all(t.created for t in tasks)
    assert conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()["n"] == 2500  # type: ignore[index]
    statements = conn.execute("SELECT n_rows FROM insert_statements ORDER BY seq").fetchall()
    assert [row["n_rows"] for row in statements] == [1000, 1000, 500]  # one per chunk

    conn.execute("TRUNCATE insert_statements")
    q.enqueue_many(conn, [TaskSpec(payload={"n": i}) for i in range(300)])  # default chunk
    statements = conn.execute("SELECT n_rows FROM insert_statements").fetchall()
    assert [row["n_rows"] for row in statements] == [300]


def test_scheduling_options(conn: Conn) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    scheduled = q.enqueue(conn, "echo", run_at=at)
    delayed = q.enqueue(conn, "echo", delay=120)
    assert abs((scheduled.run_at - at).total_seconds()) < 0.001
    assert 115 < (delayed.run_at - delayed.created_at).total_seconds() < 125
    assert _claim(conn) == []


# ------------------------------------------------------------------ idempotency


def test_idempotency_key_returns_the_existing_task(conn: Conn) -> None:
    first = q.enqueue(conn, "echo", {"v": 1}, idempotency_key="order-7")
    again = q.enqueue(conn, "echo", {"v": 2}, idempotency_key="order-7")
    assert again.id == first.id
    assert not again.created
    assert again.payload == {"v": 1}


def test_idempotency_under_concurrent_submits(database_url: str, conn: Conn) -> None:
    results: list[uuid.UUID] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            barrier.wait()
            results.append(q.enqueue(own, "echo", idempotency_key="same").id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len(set(results)) == 1
    assert conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()["n"] == 1  # type: ignore[index]


def test_bulk_enqueue_with_repeated_and_existing_keys(conn: Conn) -> None:
    existing = q.enqueue(conn, "echo", idempotency_key="k1")
    tasks = q.enqueue_many(
        conn,
        [
            TaskSpec(idempotency_key="k1"),
            TaskSpec(idempotency_key="k2"),
            TaskSpec(idempotency_key="k2"),
            TaskSpec(),
        ],
    )
    assert tasks[0].id == existing.id
    assert not tasks[0].created
    assert tasks[1].created
    assert tasks[2].id == tasks[1].id
    assert not tasks[2].created
    assert tasks[3].created
    assert conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()["n"] == 3  # type: ignore[index]


# ------------------------------------------------------------------ claim


def test_claim_order_priority_then_run_at_then_id(conn: Conn) -> None:
    now = datetime.now(UTC)
    low = q.enqueue(conn, "echo", priority=-5)
    late = q.enqueue(conn, "echo", priority=10, run_at=now - timedelta(seconds=1))
    early = q.enqueue(conn, "echo", priority=10, run_at=now - timedelta(seconds=5))
    # Equal priority and run_at: the id (time-ordered, monotonic within a batch) decides.
    same_a, same_b = q.enqueue_many(conn, [TaskSpec(run_at=now - timedelta(seconds=3))] * 2)
    order = [t.id for t in _claim(conn, limit=10)]
    assert order == [early.id, late.id, same_a.id, same_b.id, low.id]


def test_claim_respects_limit_queues_and_run_at(conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec(queue="emails")] * 5 + [TaskSpec(queue="reports")] * 5)
    q.enqueue(conn, "echo", queue="emails", delay=3600)
    claimed = _claim(conn, limit=3, queues=["emails"])
    assert len(claimed) == 3
    assert {t.queue for t in claimed} == {"emails"}
    assert all(t.attempts == 1 for t in claimed)
    stored = [q.get(conn, t.id) for t in claimed]
    assert {(t.status, t.worker_id) for t in stored} == {("running", W1)}
    assert all(t.lease_expires_at is not None for t in stored)
    both = _claim(conn, limit=100, queues=["emails", "reports"], worker=W2)
    assert len(both) == 7  # the delayed task is not runnable yet
    assert _claim(conn, limit=0) == []


def test_claim_skips_locked_rows_and_never_double_claims(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        q.enqueue_many(setup, [TaskSpec()] * 2000)
    seen: list[list[uuid.UUID]] = [[], [], [], []]

    def drain(slot: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            while batch := _claim(own, limit=25, worker=f"w{slot}"):
                seen[slot].extend(t.id for t in batch)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = [tid for ids in seen for tid in ids]
    assert len(everything) == 2000 == len(set(everything))


def test_claim_takes_only_queued_tasks(conn: Conn) -> None:
    cancelled = q.enqueue(conn, "echo")
    q.cancel(conn, cancelled.id)
    assert _claim(conn) == []


def test_claim_uses_the_ready_index(conn: Conn) -> None:
    """In the plan a worker runs (the generic one) and in a custom one alike."""
    # A table dominated by finished rows, as in steady state.
    q.enqueue_many(conn, [TaskSpec()] * 20_000)
    conn.execute("UPDATE taskq_tasks SET status = 'succeeded', finished_at = now()")
    q.enqueue_many(conn, [TaskSpec()] * 100)
    conn.execute("ANALYZE taskq_tasks")
    params = {"queues": ["default"], "limit": 10, "worker_id": "w", "lease": 30}
    with conn.cursor() as cur:
        cur.execute("EXPLAIN (FORMAT TEXT) " + q.sql.CLAIM, params)
        custom = "\n".join(str(next(iter(row.values()))) for row in cur.fetchall())
    generic = "\n".join(pg.explain_generic(conn, q.sql.CLAIM, params))
    for plan in (custom, generic):
        assert "taskq_tasks_ready_idx" in plan, plan
        assert "Seq Scan on taskq_tasks" not in plan, plan
    assert "Index Scan using taskq_tasks_pkey" in generic, generic


def test_claim_runs_its_generic_plan_and_leaves_a_callers_settings_alone(conn: Conn) -> None:
    """Once psycopg prepares CLAIM, it runs without planning (the generic plan), in its
    own implicit transaction; inside a caller's transaction it changes no setting."""
    q.enqueue_many(conn, [TaskSpec()] * 40)
    for _ in range(10):
        assert len(_claim(conn, limit=1)) == 1
    row = conn.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
        " WHERE statement LIKE '%%UPDATE taskq_tasks t%%SET status = ''running''%%'"
    ).fetchone()
    assert row is not None
    assert row["generic_plans"] >= 3, row
    assert row["custom_plans"] == 0, row

    def mode() -> str:
        got = conn.execute("SELECT current_setting('plan_cache_mode') AS m").fetchone()
        assert got is not None
        return str(got["m"])

    assert mode() == "auto"
    with conn.transaction():
        assert len(_claim(conn, limit=1)) == 1
        assert mode() == "auto"


# ------------------------------------------------------------------ leases and fencing


def test_heartbeat_extends_only_owned_leases(conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec()] * 2)
    mine, theirs = _claim(conn, limit=1), _claim(conn, limit=1, worker=W2)
    mine_before, theirs_before = q.get(conn, mine[0].id), q.get(conn, theirs[0].id)
    owned = q.heartbeat(
        conn, [q.Lease(t.id, t.attempts) for t in mine + theirs], worker_id=W1, lease=300
    )
    assert owned == {mine[0].id: False}
    assert q.get(conn, mine[0].id).lease_expires_at > mine_before.lease_expires_at  # type: ignore[operator]
    assert q.get(conn, theirs[0].id).lease_expires_at == theirs_before.lease_expires_at


def test_finish_records_outcomes_in_one_batch(conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec(max_attempts=1)] * 3 + [TaskSpec(max_attempts=3)])
    ok, failed, exhausted, retried = (q.Lease(t.id, t.attempts) for t in _claim(conn))
    applied, rejected = q.finish(
        conn,
        [
            q.Finish(ok, "succeeded", result_json='{"answer": 42}'),
            q.Finish(failed, "failed", error="ValueError: bad"),
            q.Finish(exhausted, "retry", error="RuntimeError: again"),
            q.Finish(retried, "retry", error="RuntimeError: once", retry_delay=60),
        ],
        worker_id=W1,
    )
    assert rejected == []
    assert len(applied) == 4
    assert q.get(conn, ok.id).result == {"answer": 42}
    assert q.get(conn, ok.id).finished_at is not None
    assert (q.get(conn, failed.id).status, q.get(conn, failed.id).last_error) == (
        "failed",
        "ValueError: bad",
    )
    assert q.get(conn, exhausted.id).status == "failed"  # retry with no attempts left
    again = q.get(conn, retried.id)
    assert again.status == "queued"
    assert again.last_error == "RuntimeError: once"
    assert 55 < (again.run_at - datetime.now(UTC)).total_seconds() <= 60
    assert again.finished_at is None
    assert again.lease_expires_at is None


def test_fencing_rejects_a_stale_workers_write(conn: Conn) -> None:
    task = q.enqueue(conn, "echo")
    (first,) = _claim(conn, lease=30)
    stale = q.Lease(first.id, first.attempts)
    # The first worker stalls; its lease runs out and the task is recovered and re-claimed.
    _set(conn, task.id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [r["id"] for r in q.recover_expired(conn)] == [task.id]
    (second,) = _claim(conn, worker=W2)
    assert second.attempts == 2
    applied, rejected = q.finish(
        conn, [q.Finish(stale, "succeeded", result_json='"stale"')], worker_id=W1
    )
    assert applied == []
    assert rejected[0].lease == stale
    # Even the same worker id cannot finish an attempt it no longer holds.
    _, rejected = q.finish(conn, [q.Finish(q.Lease(task.id, 1), "succeeded")], worker_id=W2)
    assert len(rejected) == 1
    current = q.Lease(second.id, second.attempts)
    applied, _ = q.finish(
        conn, [q.Finish(current, "succeeded", result_json='"fresh"')], worker_id=W2
    )
    assert len(applied) == 1
    assert q.get(conn, task.id).result == "fresh"


def test_recover_expired_requeues_or_fails(conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec(max_attempts=2), TaskSpec(max_attempts=1)])
    retryable, last = _claim(conn, lease=30)
    live = q.enqueue(conn, "echo")
    _claim(conn, lease=300)
    for t in (retryable, last):
        _set(conn, t.id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    recovered = {r["id"]: r["status"] for r in q.recover_expired(conn)}
    assert recovered == {retryable.id: "queued", last.id: "failed"}
    assert "lease expired" in (q.get(conn, retryable.id).last_error or "")
    assert q.get(conn, live.id).status == "running"  # a live lease is left alone


def test_release_puts_tasks_back_without_counting_the_attempt(conn: Conn) -> None:
    q.enqueue(conn, "echo")
    (task,) = _claim(conn)
    released = q.release(conn, [q.Lease(task.id, task.attempts)], worker_id=W1)
    again = q.get(conn, task.id)
    assert released == [task.id]
    assert again.status == "queued"
    assert again.attempts == 0
    assert again.lease_expires_at is None


# ------------------------------------------------------------------ lifecycle


def test_cancel_queued_at_once_and_running_on_request(conn: Conn) -> None:
    queued, running = q.enqueue(conn, "echo"), q.enqueue(conn, "echo", priority=5)
    _claim(conn, limit=1)
    assert q.cancel(conn, queued.id).status == "cancelled"
    requested = q.cancel(conn, running.id)
    assert requested.status == "running"
    assert requested.cancel_requested_at is not None
    assert requested.finished_at is None
    # Asking again changes nothing: the first request's time stays.
    assert q.cancel(conn, running.id).cancel_requested_at == requested.cancel_requested_at
    with pytest.raises(InvalidTransition, match="cancelled"):
        q.cancel(conn, queued.id)
    with pytest.raises(TaskNotFound):
        q.cancel(conn, uuid.uuid4())


def test_retry_a_failed_task(conn: Conn) -> None:
    task = q.enqueue(conn, "fail", max_attempts=1)
    (_claimed,) = _claim(conn)
    q.finish(conn, [q.Finish(q.Lease(task.id, 1), "failed", error="boom")], worker_id=W1)
    again = q.retry(conn, task.id)
    assert (again.status, again.attempts, again.last_error) == ("queued", 0, "boom")
    with pytest.raises(InvalidTransition):
        q.retry(conn, task.id)


def test_list_pages_newest_first_with_filters(conn: Conn) -> None:
    made = q.enqueue_many(
        conn, [TaskSpec(payload={"n": i}, queue="a" if i % 2 else "b") for i in range(7)]
    )
    page, cursor = q.list_tasks(conn, limit=3)
    assert [t.id for t in page] == [t.id for t in reversed(made)][:3]
    seen = [t.id for t in page]
    while cursor:
        page, cursor = q.list_tasks(conn, limit=3, cursor=cursor)
        seen += [t.id for t in page]
    assert seen == [t.id for t in reversed(made)]
    only_a, _ = q.list_tasks(conn, queue="a", status="queued")
    assert {t.payload["n"] for t in only_a} == {1, 3, 5}


def test_prune_deletes_only_old_finished_tasks(conn: Conn) -> None:
    q.enqueue_many(conn, [TaskSpec()] * 12)
    conn.execute(
        "UPDATE taskq_tasks SET status = 'succeeded', finished_at = now() - interval '10 days'"
        " WHERE id IN (SELECT id FROM taskq_tasks ORDER BY id LIMIT 7)"
    )
    recent = q.enqueue(conn, "echo")
    _set(conn, recent.id, status="cancelled", finished_at=datetime.now(UTC))
    assert q.prune(conn, older_than_seconds=7 * 86_400, batch=3) == 7
    statuses = [r["status"] for r in conn.execute("SELECT status FROM taskq_tasks")]
    assert sorted(statuses) == ["cancelled"] + ["queued"] * 5


def test_database_rejects_inconsistent_rows(conn: Conn) -> None:
    # The schema's own checks back the code up: a running task must have a lease.
    task = q.enqueue(conn, "echo")
    with pytest.raises(psycopg.errors.CheckViolation):
        _set(conn, task.id, status="running")


def test_rows_come_back_as_dicts_whatever_the_callers_row_factory(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as tuples:
        assert tuples.row_factory is not dict_row
        task = q.enqueue(tuples, "echo", {"x": 1})
        assert q.get(tuples, task.id).payload == {"x": 1}


def test_uuid_v7_ids_sort_by_creation(conn: Conn) -> None:
    first = q.enqueue(conn, "echo")
    time.sleep(0.002)  # ids carry millisecond timestamps; step over one millisecond
    second = q.enqueue(conn, "echo")
    assert first.id < second.id


def test_a_column_added_by_a_later_migration_does_not_break_reads(conn: Conn) -> None:
    """During a rolling upgrade the schema runs ahead of the pods not yet replaced: what
    they read with SELECT * may carry columns they do not know."""
    conn.execute("ALTER TABLE taskq_tasks ADD COLUMN added_later integer DEFAULT 7")
    task = q.enqueue(conn, TaskSpec(kind="echo"))
    assert q.get(conn, task.id).id == task.id
    assert task.id in {t.id for t in q.list_tasks(conn, limit=10)[0]}
