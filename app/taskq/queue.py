"""The queue: runs the task statements of taskq/sql.py (statistics: taskq/stats.py).

Every function takes a psycopg connection, so callers choose the transaction: enqueue on
your own connection inside your own transaction and the task exists exactly when your
rows do (the workers are notified at commit). Rows come back as dicts whatever the
connection's own row factory is.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import orjson
import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb

from taskq import sql
from taskq.db import translate_errors
from taskq.errors import InvalidTransition, TaskNotFound
from taskq.models import Task, TaskSpec, new_task_id

Outcome = Literal["succeeded", "retry", "failed", "snooze", "cancelled"]
_decode = json.JSONDecoder().decode
_json_encode = json.JSONEncoder().encode


def _encode(rows: list[dict[str, Any]]) -> str:
    """INSERT_TASKS's rows as JSON text: orjson (several times faster than json on every
    submission's row), or json for what orjson refuses (integers beyond 64 bits) and for
    non-ASCII text, which json writes as \\u escapes that any client encoding carries."""
    try:
        out = orjson.dumps(rows)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _json_encode(rows)
    return out.decode() if out.isascii() else _json_encode(rows)


AnyConnection = psycopg.Connection[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """What a worker holds for a claimed task: its id and the attempt it claimed."""

    id: uuid.UUID
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class Claimed:
    """A task as a worker needs it after claiming: what to run and the lease it holds.

    Leaner than Task on purpose: a claim returns only these columns, which is measurably
    cheaper to transfer and decode at thousands of claims per second. `waited` is how long
    the task was runnable before this claim, in seconds.
    """

    id: uuid.UUID
    queue: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    waited: float
    timeout_seconds: float | None = None  # the task's own; the kind's default applies if None
    depends_on: list[uuid.UUID] | None = None  # its parents (workflows)
    # The parents' results by id and by ref, fetched for a claimed batch at once
    # (workflows.attach_parent_results); None for a task without parents.
    parent_results: dict[str, Any] | None = None

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.attempts)


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """The outcome of one attempt, to be recorded by `finish`."""

    lease: Lease
    outcome: Outcome
    result_json: str | None = None  # serialized by the caller, so a bad value fails one task
    error: str | None = None
    retry_delay: float = 0.0


def fetch(conn: AnyConnection, query: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one statement of taskq.sql; its rows as dicts (none for a statement without)."""
    with translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        # pgresult, not cur.description: the latter builds a Column object per column
        # on every call, which shows up in profiles of the hot paths.
        result = cur.pgresult
        return cur.fetchall() if result and result.status == ExecStatus.TUPLES_OK else []


def to_spec(
    kind_or_spec: str | TaskSpec, payload: dict[str, Any] | None, **options: Any
) -> TaskSpec:
    """The TaskSpec of an enqueue call (validated as the API validates a body)."""
    if isinstance(kind_or_spec, TaskSpec):
        return kind_or_spec
    return TaskSpec.model_validate({"kind": kind_or_spec, "payload": payload or {}, **options})


def _insert_params(spec: TaskSpec, default_max_attempts: int) -> dict[str, Any]:
    return {
        "queue": spec.queue,
        "kind": spec.kind,
        "payload": Jsonb(spec.payload),
        "priority": spec.priority,
        "run_at": spec.run_at,
        "delay": spec.delay or 0.0,
        "max_attempts": spec.max_attempts or default_max_attempts,
        "idempotency_key": spec.idempotency_key,
        "timeout": spec.timeout_seconds,
        "concurrency_key": spec.concurrency_key,
    }


def enqueue(
    conn: AnyConnection,
    kind_or_spec: str | TaskSpec,
    payload: dict[str, Any] | None = None,
    *,
    default_max_attempts: int = 5,
    **options: Any,
) -> Task:
    """Insert one task (or return the existing one with the same idempotency key).

    `options` are TaskSpec fields: queue, priority, run_at, delay, max_attempts,
    idempotency_key, concurrency_key. The returned task's `created` is False for an
    idempotent repeat.
    """
    spec = to_spec(kind_or_spec, payload, **options)
    params = _insert_params(spec, default_max_attempts)
    with translate_errors(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.INSERT_TASK, params)
        inserted = cur.fetchone()
    if inserted is not None:
        task_id, run_at, created_at = inserted
        return Task.inserted(
            spec,
            id=task_id,
            run_at=run_at,
            created_at=created_at,
            max_attempts=params["max_attempts"],
        )
    # The key exists. Read it in a fresh statement so a row committed by a concurrent
    # submitter after this statement's snapshot is visible.
    assert spec.idempotency_key is not None
    existing = fetch(conn, sql.SELECT_BY_KEYS, {"keys": [spec.idempotency_key]})
    if not existing:  # pruned between the two statements: vanishingly rare, try once more
        return enqueue(conn, spec, default_max_attempts=default_max_attempts)
    return Task.from_row(existing[0])


def enqueue_many(
    conn: AnyConnection,
    specs: Sequence[TaskSpec],
    *,
    default_max_attempts: int = 5,
    chunk_size: int = 5000,
) -> list[Task]:
    """Insert many tasks, one statement per `chunk_size`, results in input order.

    Run it inside a transaction to make the whole batch atomic (the API does); workers
    get one notification per queue at commit, not one per task.
    """
    out: list[Task] = []
    for start in range(0, len(specs), chunk_size):
        out.extend(_enqueue_chunk(conn, specs[start : start + chunk_size], default_max_attempts))
    return out


def insert_params(
    specs: Sequence[TaskSpec], default_max_attempts: int
) -> tuple[list[uuid.UUID], list[int], dict[str, str]]:
    """INSERT_TASKS's parameter for `specs`, with the ids and max_attempts it gives them."""
    # Sorted: ids minted within one millisecond would otherwise tie-break claims randomly.
    ids = sorted(new_task_id() for _ in specs)
    max_attempts = [s.max_attempts or default_max_attempts for s in specs]
    rows = [
        {
            "id": str(task_id),
            "queue": s.queue,
            "kind": s.kind,
            "payload": s.payload,
            "priority": s.priority,
            "run_at": s.run_at.isoformat() if s.run_at is not None else None,
            "delay": float(s.delay or 0),
            "max_attempts": attempts,
            "key": s.idempotency_key,
            "timeout": s.timeout_seconds,
            "ckey": s.concurrency_key,
        }
        for task_id, s, attempts in zip(ids, specs, max_attempts, strict=True)
    ]
    return ids, max_attempts, {"tasks": _encode(rows)}


def _enqueue_chunk(
    conn: AnyConnection, specs: Sequence[TaskSpec], default_max_attempts: int
) -> list[Task]:
    ids, max_attempts, params = insert_params(specs, default_max_attempts)
    with translate_errors(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(sql.INSERT_TASKS, params)
        written = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
    inserted: dict[uuid.UUID, Task] = {}
    for task_id, spec, attempts in zip(ids, specs, max_attempts, strict=True):
        if task_id in written:
            run_at, created_at = written[task_id]
            inserted[task_id] = Task.inserted(
                spec, id=task_id, run_at=run_at, created_at=created_at, max_attempts=attempts
            )
    skipped_keys = [
        s.idempotency_key
        for task_id, s in zip(ids, specs, strict=True)
        if task_id not in inserted and s.idempotency_key is not None
    ]
    existing: dict[str | None, Task] = {}
    if skipped_keys:
        rows = fetch(conn, sql.SELECT_BY_KEYS, {"keys": skipped_keys})
        existing = {row["idempotency_key"]: Task.from_row(row) for row in rows}
    out = []
    for task_id, spec in zip(ids, specs, strict=True):
        task = inserted.get(task_id) or existing.get(spec.idempotency_key)
        if task is None:  # two items of this batch shared a key: the first one won
            task = next(t for t in inserted.values() if t.idempotency_key == spec.idempotency_key)
            task = dataclasses.replace(task, created=False)
        out.append(task)
    return out


def claim(
    conn: AnyConnection, *, queues: Sequence[str], limit: int, worker_id: str, lease: float
) -> list[Claimed]:
    """Move up to `limit` runnable tasks to running under this worker's lease."""
    if limit <= 0:
        return []
    params = {"queues": list(queues), "limit": limit, "worker_id": worker_id, "lease": lease}
    with translate_errors(), conn.cursor(row_factory=tuple_row) as cur:
        if (
            conn.prepare_threshold is not None
            and conn.autocommit
            and conn.info.transaction_status == TransactionStatus.IDLE
        ):
            # One implicit transaction (the pipeline's single sync) in which CLAIM, once
            # prepared, runs its generic plan: planning it anew, as PostgreSQL otherwise
            # chooses to, costs about half of what running it does.
            with conn.pipeline():
                cur.execute(sql.GENERIC_PLAN)
                cur.execute(sql.CLAIM, params)
        else:  # inside the caller's transaction: leave its planner settings alone
            cur.execute(sql.CLAIM, params)
        rows = cur.fetchall()
        # In claim order (see sql.CLAIM); the payload comes as text and is decoded here,
        # which skips psycopg's bytes-to-JSON detour.
        return [
            Claimed(tid, queue, kind, _decode(payload), attempts, max_attempts, waited, timeout, p)
            for tid, queue, kind, payload, attempts, max_attempts, waited, timeout, p in rows
        ]


def _lease_arrays(leases: Iterable[Lease]) -> dict[str, list[Any]]:
    items = list(leases)
    return {"ids": [x.id for x in items], "attempts": [x.attempt for x in items]}


def heartbeat(
    conn: AnyConnection, leases: Iterable[Lease], *, worker_id: str, lease: float
) -> dict[uuid.UUID, bool]:
    """Renew leases; returns the ids still owned (the others were lost), each with whether
    its cancel was requested."""
    params = {**_lease_arrays(leases), "worker_id": worker_id, "lease": lease}
    if not params["ids"]:
        return {}
    return {row["id"]: row["cancel"] for row in fetch(conn, sql.HEARTBEAT, params)}


def finish(
    conn: AnyConnection, outcomes: Sequence[Finish], *, worker_id: str, plain: bool = False
) -> tuple[list[dict[str, Any]], list[Finish]]:
    """Record outcomes; returns (applied rows, rejected outcomes whose lease was lost).
    `plain`: parents and batch members are rejected too (taskq.workflows.finish records
    them with their consequences)."""
    if not outcomes:
        return [], []
    params = {"outcomes": outcomes_json(outcomes), "worker_id": worker_id, "plain": plain}
    applied = fetch(conn, sql.FINISH, params)
    rejected: list[Finish] = []
    if len(applied) != len(outcomes):
        done = {row["id"] for row in applied}
        rejected = [o for o in outcomes if o.lease.id not in done]
    return applied, rejected


def outcomes_json(outcomes: Sequence[Finish]) -> str:
    """FINISH's parameter: `[[id, attempt, outcome, result, error, delay], ...]` as JSON.

    Written by hand because every part is already safe JSON (a uuid, ints, a fixed word, a
    float, the result as the worker serialized it) except the error text, which json.dumps
    escapes.
    """
    dumps = json.dumps
    return (
        "["
        + ",".join(
            f'["{o.lease.id}",{o.lease.attempt},"{o.outcome}",{o.result_json or "null"},'
            f"{'null' if o.error is None else dumps(o.error)},{float(o.retry_delay)!r}]"
            for o in outcomes
        )
        + "]"
    )


def release(conn: AnyConnection, leases: Iterable[Lease], *, worker_id: str) -> list[uuid.UUID]:
    """Put unfinished tasks back to queued (shutdown) and wake other workers."""
    params = {**_lease_arrays(leases), "worker_id": worker_id}
    if not params["ids"]:
        return []
    rows = fetch(conn, sql.RELEASE, params)
    notify(conn, {row["queue"] for row in rows})
    return [row["id"] for row in rows]


def recover_expired(conn: AnyConnection, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Requeue (or fail) tasks whose lease expired; returns what was recovered."""
    rows = fetch(conn, sql.RECOVER_EXPIRED, {"limit": limit})
    # Every recovered task frees room in a limited queue; the requeued ones are runnable.
    notify(conn, {row["queue"] for row in rows})
    return rows


def liveness_key(worker_id: str) -> int:
    """The second key of a worker's liveness lock: a stable non-negative int4 of its id."""
    return zlib.crc32(worker_id.encode()) & 0x7FFFFFFF


def register_worker(conn: AnyConnection, worker_id: str) -> bool:
    """Take this worker's liveness lock on `conn` (a session that lives as long as the
    worker, not through a transaction pooler) and register it, so that its tasks are
    recovered at once when that session ends. False when the lock is held elsewhere."""
    key = liveness_key(worker_id)
    rows = fetch(conn, sql.LIVENESS_LOCK, {"key": key})
    if not (rows and rows[0]["locked"]):
        return False
    fetch(conn, sql.REGISTER_WORKER, {"id": worker_id, "key": key})
    return True


def lock_free_workers(conn: AnyConnection, *, sweeper: str) -> set[str]:
    """Registered workers (other than `sweeper`) whose liveness lock is free."""
    return {row["id"] for row in fetch(conn, sql.LOCK_FREE_WORKERS, {"self": sweeper})}


def recover_dead_workers(
    conn: AnyConnection, worker_ids: Iterable[str], *, sweeper: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """Requeue (or fail) the running tasks of these workers if their liveness lock is
    still free (their session is gone)."""
    params = {"ids": sorted(worker_ids), "self": sweeper, "limit": limit}
    rows = fetch(conn, sql.RECOVER_DEAD_WORKERS, params)
    # Every recovered task frees room in a limited queue; the requeued ones are runnable.
    notify(conn, {row["queue"] for row in rows})
    return rows


def notify(conn: AnyConnection, queues: Iterable[str], *, durable: bool = True) -> None:
    """Wake the workers of these queues (at commit). `durable=False`: as a transaction of
    its own that does not wait for the WAL flush (autocommit connections only)."""
    names = sorted(set(queues))
    if names:
        fetch(conn, sql.NOTIFY_QUEUES if durable else sql.NOTIFY_QUEUES_NOWAIT, {"queues": names})


def get(conn: AnyConnection, task_id: uuid.UUID) -> Task:
    rows = fetch(conn, sql.GET_TASK, {"id": task_id})
    if not rows:
        raise TaskNotFound(f"no task {task_id}")
    return Task.from_row(rows[0])


def list_tasks(
    conn: AnyConnection,
    *,
    status: str | None = None,
    queue: str | None = None,
    kind: str | None = None,
    cursor: uuid.UUID | None = None,
    limit: int = 50,
) -> tuple[list[Task], uuid.UUID | None]:
    """A page of tasks, newest first, and the cursor for the next page (None at the end)."""
    params = {"status": status, "queue": queue, "kind": kind, "cursor": cursor, "limit": limit + 1}
    tasks = [Task.from_row(r) for r in fetch(conn, sql.LIST_TASKS, params)]
    more = len(tasks) > limit
    tasks = tasks[:limit]
    return tasks, (tasks[-1].id if more else None)


def cancel(conn: AnyConnection, task_id: uuid.UUID) -> Task:
    """Cancel a task. A queued one comes back cancelled; a running one comes back still
    running with `cancel_requested_at` set, and its worker is told (at commit) to stop it;
    finished tasks raise InvalidTransition."""
    rows = fetch(conn, sql.CANCEL, {"id": task_id})
    if rows:
        task = Task.from_row(rows[0])
        if task.status == "running":
            fetch(conn, sql.NOTIFY_CANCEL, {"id": str(task_id)})
        return task
    task = get(conn, task_id)
    raise InvalidTransition(
        f"task {task_id} is {task.status}; only queued or running tasks can be cancelled"
    )


def retry(conn: AnyConnection, task_id: uuid.UUID) -> Task:
    """Queue a failed or cancelled task again with a fresh attempt budget."""
    rows = fetch(conn, sql.RETRY, {"id": task_id})
    if rows:
        notify(conn, [rows[0]["queue"]])
        return Task.from_row(rows[0])
    task = get(conn, task_id)
    raise InvalidTransition(
        f"task {task_id} is {task.status}; only failed or cancelled tasks can be retried"
    )


def prune(
    conn: AnyConnection,
    *,
    older_than_seconds: float,
    batch: int = 5000,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete finished tasks older than the given age, in batches; returns how many.
    `on_batch` hears how many each batch deleted (progress bars)."""
    total = 0
    while True:
        params = {"older_than": older_than_seconds, "limit": batch}
        deleted = int(fetch(conn, sql.PRUNE_BATCH, params)[0]["n"])
        total += deleted
        if on_batch is not None:
            on_batch(deleted)
        if deleted < batch:
            return total


def count_prunable(conn: AnyConnection, *, older_than_seconds: float) -> int:
    """How many finished tasks `prune` would delete (a count on the finished index)."""
    rows = fetch(conn, sql.COUNT_PRUNABLE, {"older_than": older_than_seconds})
    return int(rows[0]["n"])


def counts(conn: AnyConnection) -> list[dict[str, Any]]:
    """Rows of (queue, status, n)."""
    return fetch(conn, sql.COUNT_BY_QUEUE, {})
