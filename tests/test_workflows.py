"""app/taskq/workflows.py against a real PostgreSQL: dependencies, cascades, batches."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import ValidationError
from taskq import queue as q
from taskq import workflows as wf
from taskq.errors import InvalidInput
from taskq.models import MAX_PARENTS, OnComplete, TaskSpec
from taskq.validation import problems

from tests.helpers import wait_until

Conn = psycopg.Connection[dict[str, Any]]
W = "worker-one"


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec.model_validate({"kind": "echo", **kw})


def run_all(
    conn: Conn,
    outcome: q.Outcome = "succeeded",
    *,
    queues: list[str] | None = None,
    result: Any = None,
    limit: int = 100,
) -> list[q.Claimed]:
    """Claim every runnable task and record `outcome` for each (as a worker would)."""
    claimed = q.claim(conn, queues=queues or ["default"], limit=limit, worker_id=W, lease=30)
    outcomes = [
        q.Finish(
            t.lease,
            outcome,
            result_json=json.dumps(result if result is not None else {"from": t.payload.get("n")}),
            error=None if outcome == "succeeded" else "boom",
        )
        for t in claimed
    ]
    wf.finish(conn, outcomes, worker_id=W)
    return claimed


def status(conn: Conn, task_id: uuid.UUID) -> str:
    return str(q.get(conn, task_id).status)


def test_a_chain_runs_in_order(conn: Conn) -> None:
    a, b, c = wf.enqueue_many(
        conn,
        [
            spec(ref="a", payload={"n": 1}),
            spec(ref="b", depends_on=["a"], payload={"n": 2}),
            spec(depends_on=["b"], payload={"n": 3}),
        ],
    )
    assert (a.status, b.status, c.status) == ("queued", "blocked", "blocked")
    assert (b.blocked_by, c.depends_on) == (1, [b.id])
    assert [t.id for t in run_all(conn)] == [a.id]
    assert status(conn, b.id) == "queued"
    assert status(conn, c.id) == "blocked"
    ran = run_all(conn)
    assert [t.id for t in ran] == [b.id]
    assert ran[0].depends_on == [a.id]
    assert [t.id for t in run_all(conn)] == [c.id]
    assert status(conn, c.id) == "succeeded"


def test_fan_in_waits_for_every_parent_and_gets_their_results(conn: Conn) -> None:
    parents = wf.enqueue_many(conn, [spec(ref=f"p{i}", payload={"n": i}) for i in range(3)])
    child = wf.enqueue(conn, spec(depends_on=[str(p.id) for p in parents]))
    assert (child.status, child.blocked_by) == ("blocked", 3)
    first = q.claim(conn, queues=["default"], limit=2, worker_id=W, lease=30)
    wf.finish(conn, [q.Finish(t.lease, "succeeded", result_json="1") for t in first], worker_id=W)
    assert q.get(conn, child.id).blocked_by == 1
    run_all(conn)
    claimed = q.claim(conn, queues=["default"], limit=10, worker_id=W, lease=30)
    assert [t.id for t in claimed] == [child.id]
    [with_results] = wf.attach_parent_results(conn, claimed)
    assert with_results.parent_results is not None
    assert with_results.parent_results["p2"] == {"from": 2}
    assert with_results.parent_results[str(parents[2].id)] == {"from": 2}


def test_a_parent_that_succeeded_already_does_not_block(conn: Conn) -> None:
    parent = wf.enqueue(conn, spec())
    run_all(conn)
    child = wf.enqueue(conn, spec(depends_on=[str(parent.id)]))
    assert (child.status, child.blocked_by) == ("queued", 0)


def test_failure_cancels_dependents_transitively_and_retry_reopens_them(conn: Conn) -> None:
    a, b, c, d = wf.enqueue_many(
        conn,
        [
            spec(ref="a", max_attempts=1),
            spec(ref="b", depends_on=["a"]),
            spec(ref="c", depends_on=["b"]),
            spec(queue="other"),
        ],
    )
    run_all(conn, "failed")
    assert status(conn, a.id) == "failed"
    for task in (b, c):
        row = q.get(conn, task.id)
        assert (row.status, row.cancelled_by) == ("cancelled", a.id)
        assert row.finished_at is not None
    assert q.get(conn, b.id).last_error == f"cancelled: dependency {a.id} failed"
    assert q.get(conn, c.id).last_error == f"cancelled: dependency {b.id} was cancelled"
    assert status(conn, d.id) == "queued"  # unrelated
    wf.retry(conn, a.id)
    assert [(status(conn, t.id), q.get(conn, t.id).blocked_by) for t in (a, b, c)] == [
        ("queued", 0),
        ("blocked", 1),
        ("blocked", 1),
    ]
    run_all(conn)
    run_all(conn)
    run_all(conn)
    assert [status(conn, t.id) for t in (a, b, c)] == ["succeeded"] * 3


def test_a_retry_that_fails_again_does_not_cancel_dependents_before_the_end(conn: Conn) -> None:
    parent, child = wf.enqueue_many(conn, [spec(ref="p", max_attempts=2), spec(depends_on=["p"])])
    run_all(conn, "retry")  # one attempt left: back to queued
    assert (status(conn, parent.id), status(conn, child.id)) == ("queued", "blocked")


def test_cancelling_a_blocked_or_queued_parent_cancels_its_dependents(conn: Conn) -> None:
    parent, child = wf.enqueue_many(conn, [spec(ref="p"), spec(depends_on=["p"])])
    wf.cancel(conn, parent.id)
    row = q.get(conn, child.id)
    assert (row.status, row.last_error) == (
        "cancelled",
        f"cancelled: dependency {parent.id} was cancelled",
    )
    middle = wf.enqueue_many(
        conn, [spec(ref="x", delay=3600), spec(ref="y", depends_on=["x"]), spec(depends_on=["y"])]
    )
    assert wf.cancel(conn, middle[1].id).status == "cancelled"
    assert status(conn, middle[2].id) == "cancelled"
    assert status(conn, middle[0].id) == "queued"


def test_a_parent_already_failed_at_submit_cancels_the_child_at_once(conn: Conn) -> None:
    parent = wf.enqueue(conn, spec(max_attempts=1))
    run_all(conn, "failed")
    child = wf.enqueue(conn, spec(depends_on=[str(parent.id)]))
    assert (child.status, child.cancelled_by) == ("cancelled", parent.id)
    assert child.last_error == f"cancelled: dependency {parent.id} failed"
    wf.retry(conn, parent.id)
    assert status(conn, child.id) == "blocked"


@pytest.mark.parametrize(
    ("specs", "field", "words"),
    [
        ([{"depends_on": ["nope"]}], "tasks[0].depends_on[0]", "neither a task id"),
        ([{"ref": "a", "depends_on": ["a"]}], "tasks[0].depends_on[0]", "itself"),
        ([{"depends_on": ["b"]}, {"ref": "b"}], "tasks[0].depends_on[0]", "later task"),
        ([{"ref": "a"}, {"ref": "a"}], "tasks[1].ref", "already the ref"),
        ([{"depends_on": [str(uuid.uuid4())]}], "tasks[0].depends_on[0]", "no task"),
        (
            [{"ref": "a"}, {"depends_on": ["a", str(uuid.uuid4())]}],
            "tasks[1].depends_on[1]",
            "no task",
        ),
    ],
)
def test_bad_graphs_are_refused_naming_the_task_and_field(
    conn: Conn, specs: list[dict[str, Any]], field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        wf.enqueue_many(conn, [spec(**s) for s in specs])
    assert err.value.field == field
    assert words in str(err.value)
    assert conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()["n"] == 0


def test_too_many_parents_are_refused(conn: Conn) -> None:
    parents = wf.enqueue_many(conn, [spec() for _ in range(MAX_PARENTS + 1)])
    ids = [str(p.id) for p in parents]
    with pytest.raises(ValidationError) as err:
        spec(depends_on=ids)
    assert problems(err.value)[0].field == "depends_on"
    assert f"at most {MAX_PARENTS} items" in problems(err.value)[0].message
    assert wf.enqueue(conn, spec(depends_on=ids[:MAX_PARENTS])).blocked_by == MAX_PARENTS


def test_a_batch_enqueues_its_callback_once_with_counts(conn: Conn) -> None:
    members = wf.enqueue_many(
        conn,
        [spec(ref="a", max_attempts=1), spec(depends_on=["a"]), spec()],
        on_complete=OnComplete(kind="echo", payload={"note": "done"}, queue="callbacks"),
    )
    batch_id = members[0].batch_id
    assert batch_id is not None
    assert all(m.batch_id == batch_id for m in members)
    progress = wf.get_batch(conn, batch_id)
    assert progress["counts"]["queued"] == 2
    assert progress["counts"]["blocked"] == 1
    assert progress["on_complete"]["task_id"] is None
    claimed = q.claim(conn, queues=["default"], limit=10, worker_id=W, lease=30)
    by_id = {t.id: t for t in claimed}
    wf.finish(conn, [q.Finish(by_id[members[0].id].lease, "failed", error="x")], worker_id=W)
    assert wf.get_batch(conn, batch_id)["completed_at"] is None
    wf.finish(conn, [q.Finish(by_id[members[2].id].lease, "succeeded")], worker_id=W)
    progress = wf.get_batch(conn, batch_id)
    assert progress["completed_at"] is not None
    assert progress["counts"] == {
        "blocked": 0,
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    callback = q.get(conn, uuid.UUID(progress["on_complete"]["task_id"]))
    assert (callback.queue, callback.kind) == ("callbacks", "echo")
    assert callback.payload == {
        "note": "done",
        "batch_id": str(batch_id),
        "counts": {"succeeded": 1, "failed": 1, "cancelled": 1},
    }
    wf.complete_batches(conn, [batch_id])
    n = conn.execute("SELECT count(*) AS n FROM taskq_tasks WHERE queue = 'callbacks'").fetchone()
    assert n["n"] == 1


def test_describe_shows_parents_and_dependents(conn: Conn) -> None:
    a, b = wf.enqueue_many(conn, [spec(ref="a"), spec(ref="b", depends_on=["a"])])
    top = wf.describe(conn, a.id)
    assert top["dependents"] == [{"id": str(b.id), "kind": "echo", "status": "blocked", "ref": "b"}]
    assert top["parents"] == []
    below = wf.describe(conn, b.id)
    assert below["depends_on"] == [str(a.id)]
    assert below["parents"][0]["status"] == "queued"


def test_idempotent_resubmit_of_a_graph_returns_the_same_tasks(conn: Conn) -> None:
    graph = [spec(ref="a", idempotency_key="g-a"), spec(depends_on=["a"], idempotency_key="g-b")]
    first = wf.enqueue_many(conn, graph)
    again = wf.enqueue_many(conn, graph)
    assert [t.id for t in again] == [t.id for t in first]
    assert not any(t.created for t in again)


def test_prune_removes_edges_with_their_tasks(conn: Conn) -> None:
    a, _ = wf.enqueue_many(conn, [spec(ref="a"), spec(depends_on=["a"])])
    run_all(conn)
    run_all(conn)
    assert q.prune(conn, older_than_seconds=0) == 2
    assert conn.execute("SELECT count(*) AS n FROM taskq_task_deps").fetchone()["n"] == 0
    del a


def test_a_released_child_waits_for_a_paused_queue_and_honours_limits(conn: Conn) -> None:
    from taskq import flow, registry

    parent, child, limited = wf.enqueue_many(
        conn,
        [
            spec(ref="p"),
            spec(queue="paused", depends_on=["p"]),
            spec(queue="lim", depends_on=["p"]),
        ],
    )
    registry.pause(conn, "paused")
    flow.set_limits(conn, "lim", flow.LimitsUpdate(max_running=1))
    run_all(conn)
    assert status(conn, child.id) == "queued"
    assert q.claim(conn, queues=["paused"], limit=10, worker_id=W, lease=30) == []
    got = flow.claim_limited(conn, queue="lim", limit=10, worker_id=W, lease=30).claimed
    assert [(t.id, t.depends_on) for t in got] == [(limited.id, [parent.id])]


def test_a_parent_failed_by_lease_recovery_cancels_its_dependents(conn: Conn) -> None:
    parent, child = wf.enqueue_many(conn, [spec(ref="p", max_attempts=1), spec(depends_on=["p"])])
    q.claim(conn, queues=["default"], limit=1, worker_id=W, lease=30)
    conn.execute(
        "UPDATE taskq_tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (parent.id,),
    )
    assert [r["status"] for r in wf.recover_expired(conn)] == ["failed"]
    assert (status(conn, child.id), q.get(conn, child.id).cancelled_by) == ("cancelled", parent.id)


def test_outcomes_of_independent_tasks_and_parents_recorded_together(conn: Conn) -> None:
    """One flush mixing both: the independent task goes through the one statement, the
    parent through the transaction, and both are reported applied."""
    plain, parent, child = wf.enqueue_many(conn, [spec(), spec(ref="p"), spec(depends_on=["p"])])
    claimed = q.claim(conn, queues=["default"], limit=10, worker_id=W, lease=30)
    applied, rejected = wf.finish(
        conn, [q.Finish(t.lease, "succeeded") for t in claimed], worker_id=W
    )
    assert rejected == []
    assert {r["id"] for r in applied} == {plain.id, parent.id}
    assert status(conn, child.id) == "queued"
    stale = q.Finish(q.Lease(plain.id, 99), "succeeded")  # a lost lease stays rejected
    assert wf.finish(conn, [stale], worker_id=W) == ([], [stale])


def test_submitting_a_batch_again_makes_no_second_callback(conn: Conn) -> None:
    specs = [spec(idempotency_key="b-1"), spec(idempotency_key="b-2")]
    first = wf.enqueue_many(conn, specs, on_complete=OnComplete(kind="echo", queue="cb"))
    again = wf.enqueue_many(conn, specs, on_complete=OnComplete(kind="echo", queue="cb"))
    assert [t.batch_id for t in again] == [t.batch_id for t in first]
    assert conn.execute("SELECT count(*) AS n FROM taskq_batches").fetchone()["n"] == 1
    run_all(conn)
    run_all(conn)  # nothing left: the callback is in its own queue
    n = conn.execute("SELECT count(*) AS n FROM taskq_tasks WHERE queue = 'cb'").fetchone()
    assert n["n"] == 1


def test_a_child_submitted_while_its_parent_finishes_is_released(
    database_url: str, conn: Conn
) -> None:
    """The race of a submit and an outcome: the submit holds the running parent's row lock
    (uncommitted) while the worker's FINISH waits for it. Once the submit commits, the
    outcome sees that the parent has a dependent (the newest row version) and records it
    with the release, whose own snapshot sees the child."""
    parent = wf.enqueue(conn, spec())
    [claimed] = q.claim(conn, queues=["default"], limit=1, worker_id=W, lease=30)
    submitter = psycopg.connect(database_url, row_factory=dict_row)  # a transaction
    worker_conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
    done: list[Any] = []
    try:
        submitter.execute("SELECT 1")  # a transaction is open: the submit is a savepoint in it
        child = wf.enqueue(submitter, spec(depends_on=[str(parent.id)]))
        assert child.status == "blocked"
        outcome = [q.Finish(claimed.lease, "succeeded")]
        finisher = threading.Thread(
            target=lambda: done.append(wf.finish(worker_conn, outcome, worker_id=W))
        )
        finisher.start()

        def waiting() -> bool:
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            return row is not None and row["n"] > 0

        wait_until(waiting, what="the outcome to wait for the submit's row lock")
        submitter.commit()
        finisher.join(10)
    finally:
        submitter.close()
        worker_conn.close()
    assert done
    assert [r["id"] for r in done[0][0]] == [parent.id]
    assert status(conn, parent.id) == "succeeded"
    assert (status(conn, child.id), q.get(conn, child.id).blocked_by) == ("queued", 0)
