"""Workflows: tasks that wait for other tasks, and batches with a callback.

A task submitted with `depends_on` is `blocked` until every parent has succeeded, then
`queued`. A parent that ends failed (for good) or cancelled cancels its blocked
dependents, transitively, each naming the parent it waited for; retrying that parent
re-opens them. A parent that already succeeded when the child is submitted does not count;
one that already failed or was cancelled cancels the child at once (as pg-boss and River
do), and retrying it re-opens the child like any other.

Inside one batch a task may carry a `ref` and name the refs of earlier tasks of the batch:
a whole graph is one call and one transaction. Only earlier refs can be named, so a graph
has no cycle by construction. A batch may name an `on_complete` task, enqueued exactly once
when every member is final, with the batch id and the counts by status in its payload.

Where consequences happen: the worker records the outcomes of independent tasks with one
statement, as before (FINISH with `plain`); a parent's or a batch member's outcome is
recorded again, in a transaction that also releases or cancels its children and completes
its batch (`finish`). The same holds for every other path that ends a task (cancel, lease
recovery, dead workers), so an outcome and its consequences commit together or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from taskq import queue, sql
from taskq.errors import InvalidInput, InvalidTransition, TaskNotFound
from taskq.models import MAX_PARENTS, OnComplete, Task, TaskSpec, _iso, new_task_id
from taskq.queue import AnyConnection, Claimed, Finish, fetch

FINAL = ("succeeded", "failed", "cancelled")
DEPENDENTS_SHOWN = 1000  # children listed by GET /tasks/{id} (and `taskq status`)


def uses_workflows(spec: TaskSpec) -> bool:
    """Whether the spec needs the workflow path (parents or a ref), not a plain insert."""
    return bool(spec.depends_on) or spec.ref is not None


# ------------------------------------------------------------------ submit


def enqueue(conn: AnyConnection, spec: TaskSpec, *, default_max_attempts: int = 5) -> Task:
    """queue.enqueue, with depends_on and ref honoured."""
    if not uses_workflows(spec):
        return queue.enqueue(conn, spec, default_max_attempts=default_max_attempts)
    return enqueue_many(conn, [spec], default_max_attempts=default_max_attempts, single=True)[0]


def enqueue_many(
    conn: AnyConnection,
    specs: Sequence[TaskSpec],
    *,
    default_max_attempts: int = 5,
    on_complete: OnComplete | None = None,
    single: bool = False,
) -> list[Task]:
    """queue.enqueue_many, with depends_on, refs and an optional on_complete task (then
    the tasks form a batch: every task's batch_id). One transaction for the whole graph.
    `single`: errors name fields without the `tasks[i].` prefix (a single submit)."""
    if on_complete is None and not any(uses_workflows(s) for s in specs):
        return queue.enqueue_many(conn, specs, default_max_attempts=default_max_attempts)
    with conn.transaction():
        return _enqueue_graph(conn, specs, default_max_attempts, on_complete, single)


def _field(index: int, name: str, single: bool) -> str:
    return name if single else f"tasks[{index}].{name}"


@dataclasses.dataclass(slots=True)
class _Node:
    spec: TaskSpec
    parents: list[uuid.UUID]  # ids named directly, without duplicates
    local: list[int]  # indexes of earlier tasks of this submit named by ref
    id: uuid.UUID | None = None
    existing: Task | None = None  # the task already holding this idempotency key


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _resolve_refs(specs: Sequence[TaskSpec], single: bool) -> list[_Node]:
    """Parents of each spec as ids or indexes of earlier specs; 422 naming the field."""
    refs: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.ref is not None:
            if spec.ref in refs:
                raise InvalidInput(
                    f"ref {spec.ref!r} is already the ref of tasks[{refs[spec.ref]}]",
                    field=_field(index, "ref", single),
                )
            refs[spec.ref] = index
    nodes = []
    for index, spec in enumerate(specs):
        parents: list[uuid.UUID] = []
        local: list[int] = []
        for k, item in enumerate(spec.depends_on or ()):
            field = _field(index, f"depends_on[{k}]", single)
            target = refs.get(item)
            if target is None:
                parent = _as_uuid(item)
                if parent is None:
                    raise InvalidInput(
                        f"{item!r} is neither a task id nor the ref of a task of this batch",
                        field=field,
                    )
                if parent not in parents:
                    parents.append(parent)
            elif target == index:
                raise InvalidInput("a task cannot depend on itself", field=field)
            elif target > index:
                raise InvalidInput(
                    f"{item!r} is the ref of a later task (tasks[{target}]): a task may only "
                    "depend on earlier ones, so a graph has no cycle",
                    field=field,
                )
            elif target not in local:
                local.append(target)
        if len(parents) + len(local) > MAX_PARENTS:
            raise InvalidInput(
                f"at most {MAX_PARENTS} parents per task", field=_field(index, "depends_on", single)
            )
        nodes.append(_Node(spec, parents, local))
    return nodes


def _enqueue_graph(
    conn: AnyConnection,
    specs: Sequence[TaskSpec],
    default_max_attempts: int,
    on_complete: OnComplete | None,
    single: bool,
) -> list[Task]:
    nodes = _resolve_refs(specs, single)
    # Idempotent repeats: a spec whose key exists stands for the existing task (and its
    # children wait for that one).
    keys = [s.idempotency_key for s in specs if s.idempotency_key is not None]
    if keys:
        found = {
            row["idempotency_key"]: Task.from_row(row)
            for row in fetch(conn, sql.SELECT_BY_KEYS, {"keys": keys})
        }
        for node in nodes:
            node.existing = found.get(node.spec.idempotency_key)
    # Sorted: ids minted within one millisecond would otherwise tie-break claims randomly.
    fresh = iter(sorted(new_task_id() for _ in nodes))
    for node in nodes:
        node.id = node.existing.id if node.existing is not None else next(fresh)
    # Parents outside this submit (named by id, or existing tasks named by ref): locked,
    # marked, and their status as of now decides.
    outside = sorted(
        {p for node in nodes for p in node.parents}
        | {e.id for node in nodes for i in node.local if (e := nodes[i].existing) is not None}
    )
    status: dict[uuid.UUID, str] = {}
    if outside:
        status = {
            row["id"]: row["status"] for row in fetch(conn, sql.LOCK_PARENTS, {"ids": outside})
        }
    for index, node in enumerate(nodes):
        for k, item in enumerate(node.spec.depends_on or ()):
            parent = _as_uuid(item)
            if node.existing is None and parent in node.parents and parent not in status:
                field = _field(index, f"depends_on[{k}]", single)
                raise InvalidInput(f"no task {item}", field=field)
    # A batch only when something is new: submitting the same batch again (idempotency
    # keys) returns its tasks, in their batch, without a second callback.
    new = sum(1 for n in nodes if n.existing is None)
    batch_id = new_task_id() if on_complete is not None and new else None
    if batch_id is not None and on_complete is not None:
        fetch(
            conn,
            sql.INSERT_BATCH,
            {
                "id": batch_id,
                "kind": on_complete.kind,
                "payload": Jsonb(on_complete.payload),
                "queue": on_complete.queue,
                "total": new,
            },
        )
    # Each new task's state, in submit order (parents come first).
    rows: defaultdict[str, list[Any]] = defaultdict(list)
    edges: tuple[list[uuid.UUID], list[uuid.UUID]] = ([], [])
    has_children = {nodes[i].id for node in nodes for i in node.local}
    new_state: dict[uuid.UUID, tuple[str, uuid.UUID | None]] = {}  # status, cancelled_by
    for node in nodes:
        if node.existing is not None:
            continue
        assert node.id is not None
        parent_ids = [*node.parents, *(nodes[i].id for i in node.local)]
        blocked, error, root = 0, None, None
        for parent in parent_ids:
            assert parent is not None
            state, by = new_state.get(parent, (status.get(parent, "succeeded"), None))
            if state == "succeeded":
                continue
            blocked += 1
            if state in ("failed", "cancelled") and error is None:
                verb = "failed" if state == "failed" else "was cancelled"
                error, root = f"cancelled: dependency {parent} {verb}", by or parent
        state = "cancelled" if error else ("blocked" if blocked else "queued")
        new_state[node.id] = (state, root)
        spec = node.spec
        for key, value in (
            ("ids", node.id),
            ("queues", spec.queue),
            ("kinds", spec.kind),
            ("payloads", Jsonb(spec.payload)),
            ("priorities", spec.priority),
            ("run_ats", spec.run_at),
            ("delays", float(spec.delay or 0)),
            ("max_attempts", spec.max_attempts or default_max_attempts),
            ("keys", spec.idempotency_key),
            ("timeouts", spec.timeout_seconds),
            ("concurrency_keys", spec.concurrency_key),
            ("statuses", state),
            ("blocked_by", blocked if state == "blocked" else 0),
            ("has_dependents", node.id in has_children),
            ("depends_on", "{" + ",".join(map(str, parent_ids)) + "}" if parent_ids else None),
            ("refs", spec.ref),
            ("errors", error),
            ("cancelled_by", root),
        ):
            rows[key].append(value)
        for parent in parent_ids:
            assert parent is not None
            edges[0].append(parent)
            edges[1].append(node.id)
    inserted: dict[uuid.UUID, Task] = {}
    if rows["ids"]:
        params: dict[str, Any] = {**rows, "batch_id": batch_id}
        for row in fetch(conn, sql.INSERT_GRAPH_TASKS, params):
            inserted[row["id"]] = Task.from_row(row)
        if len(inserted) != len(rows["ids"]):
            # Another submit took one of these idempotency keys a moment ago.
            raise InvalidTransition("an idempotency key of this submit was taken concurrently")
        if edges[0]:
            fetch(conn, sql.INSERT_DEPS, {"parents": edges[0], "children": edges[1]})
    if batch_id is not None:
        complete_batches(conn, [batch_id])  # every member may be final already
    out = []
    for node in nodes:
        if node.existing is not None:
            out.append(dataclasses.replace(node.existing, created=False))
        else:
            assert node.id is not None
            out.append(inserted[node.id])
    return out


# ------------------------------------------------------------------ consequences


def resolve(conn: AnyConnection, rows: Iterable[dict[str, Any]]) -> None:
    """What tasks that just changed status (rows with id, status, has_dependents,
    batch_id) mean for their children and batches; in the caller's transaction."""
    succeeded: list[uuid.UUID] = []
    ended: list[uuid.UUID] = []
    batches: set[uuid.UUID] = set()
    for row in rows:
        if row["has_dependents"]:
            if row["status"] == "succeeded":
                succeeded.append(row["id"])
            elif row["status"] in ("failed", "cancelled"):
                ended.append(row["id"])
        if row["batch_id"] is not None and row["status"] in FINAL:
            batches.add(row["batch_id"])
    if succeeded:
        released = fetch(conn, sql.RELEASE_CHILDREN, {"ids": sorted(succeeded)})
        # Runnable children wake the workers of their queues at commit.
        queue.notify(conn, {r["queue"] for r in released if r["status"] == "queued"})
    if ended:
        cancelled = fetch(conn, sql.CANCEL_DEPENDENTS, {"ids": sorted(ended)})
        batches.update(r["batch_id"] for r in cancelled if r["batch_id"] is not None)
    if batches:
        complete_batches(conn, batches)


def complete_batches(conn: AnyConnection, batch_ids: Iterable[uuid.UUID]) -> None:
    """Enqueue the on_complete task of each of these batches whose members are all final
    (exactly once: see sql.LOCK_BATCHES). In the caller's transaction."""
    ids = sorted(set(batch_ids))
    if fetch(conn, sql.LOCK_BATCHES, {"ids": ids}):
        fetch(conn, sql.COMPLETE_BATCHES, {"ids": ids})


def finish(
    conn: AnyConnection, outcomes: Sequence[Finish], *, worker_id: str
) -> tuple[list[dict[str, Any]], list[Finish]]:
    """queue.finish for a worker: independent tasks in one statement; parents and batch
    members (left alone by it) again in a transaction with their consequences."""
    applied, left = queue.finish(conn, outcomes, worker_id=worker_id, plain=True)
    if not left:
        return applied, []
    with conn.transaction():
        more, rejected = queue.finish(conn, left, worker_id=worker_id, plain=False)
        resolve(conn, more)
    return applied + more, rejected


def cancel(conn: AnyConnection, task_id: uuid.UUID) -> Task:
    """queue.cancel (blocked tasks too), cancelling the task's dependents with it."""
    with conn.transaction():
        task = queue.cancel(conn, task_id)
        if task.status == "cancelled" and (task.has_dependents or task.batch_id is not None):
            resolve(conn, [dataclasses.asdict(task)])
    return task


def retry(conn: AnyConnection, task_id: uuid.UUID) -> Task:
    """queue.retry (a task with unfinished parents goes back to blocked), re-opening the
    dependents this task's end cancelled."""
    with conn.transaction():
        task = queue.retry(conn, task_id)
        if task.has_dependents:
            reopened = fetch(conn, sql.REOPEN_DEPENDENTS, {"id": task_id})
            queue.notify(conn, {r["queue"] for r in reopened if r["status"] == "queued"})
    return task


def recover_expired(conn: AnyConnection, *, limit: int = 1000) -> list[dict[str, Any]]:
    """queue.recover_expired, with the consequences of the tasks it ends."""
    with conn.transaction():
        rows = queue.recover_expired(conn, limit=limit)
        resolve(conn, rows)
    return rows


def recover_dead_workers(
    conn: AnyConnection, worker_ids: Iterable[str], *, sweeper: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """queue.recover_dead_workers, with the consequences of the tasks it ends."""
    with conn.transaction():
        rows = queue.recover_dead_workers(conn, worker_ids, sweeper=sweeper, limit=limit)
        resolve(conn, rows)
    return rows


# ------------------------------------------------------------------ reading


def _states(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": str(r["id"]), "kind": r["kind"], "status": r["status"], "ref": r["ref"]}
        for r in rows
    ]


def describe(conn: AnyConnection, task_id: uuid.UUID) -> dict[str, Any]:
    """A task's JSON with its graph: `parents` and `dependents`, each {id, kind, status,
    ref} (the first DEPENDENTS_SHOWN children). Independent tasks cost no extra query."""
    task = queue.get(conn, task_id)
    out = task.to_json()
    parents: list[dict[str, Any]] = []
    if task.depends_on:
        found = {r["id"]: r for r in fetch(conn, sql.TASK_STATES, {"ids": task.depends_on})}
        for parent in task.depends_on:  # in submit order; a pruned parent had succeeded
            row = found.get(parent, {"id": parent, "kind": None, "status": "pruned", "ref": None})
            parents.extend(_states([row]))
    dependents: list[dict[str, Any]] = []
    if task.has_dependents:
        params = {"id": task_id, "limit": DEPENDENTS_SHOWN}
        dependents = _states(fetch(conn, sql.DEPENDENTS, params))
    out["parents"] = parents
    out["dependents"] = dependents
    return out


def get_batch(conn: AnyConnection, batch_id: uuid.UUID) -> dict[str, Any]:
    """A batch's progress: members by status, and its on_complete task once enqueued."""
    rows = fetch(conn, sql.GET_BATCH, {"id": batch_id})
    if not rows:
        raise TaskNotFound(f"no batch {batch_id}")
    row = rows[0]
    counts = {
        status: int(row["counts"].get(status, 0))
        for status in ("blocked", "queued", "running", *FINAL)
    }
    return {
        "id": str(row["id"]),
        "total": row["total"],
        "counts": counts,
        "done": sum(counts[s] for s in FINAL),
        "created_at": _iso(row["created_at"]),
        "completed_at": _iso(row["completed_at"]),
        "on_complete": None
        if row["on_complete_kind"] is None
        else {
            "kind": row["on_complete_kind"],
            "queue": row["on_complete_queue"],
            "task_id": None
            if row["on_complete_task_id"] is None
            else str(row["on_complete_task_id"]),
        },
    }


def attach_parent_results(conn: AnyConnection, claimed: list[Claimed]) -> list[Claimed]:
    """The claimed tasks, those with parents carrying the parents' results by id and by
    ref: one statement for the whole claim, none when no claimed task has parents."""
    ids = sorted({p for task in claimed for p in task.depends_on or ()})
    if not ids:
        return claimed
    rows = fetch(conn, sql.PARENT_RESULTS, {"ids": ids})
    by_id = {
        r["id"]: (r["ref"], None if r["result"] is None else json.loads(r["result"])) for r in rows
    }
    out = []
    for task in claimed:
        if not task.depends_on:
            out.append(task)
            continue
        results: dict[str, Any] = {}
        for parent in task.depends_on:
            ref, result = by_id.get(parent, (None, None))
            results[str(parent)] = result
            if ref is not None:
                results[ref] = result
        out.append(dataclasses.replace(task, parent_results=results))
    return out
