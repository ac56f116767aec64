"""taskq: a task queue on PostgreSQL and nothing else.

The library API is what this module exports; everything else is internal:

    import taskq

    @taskq.handler("send_email", timeout=30)
    def send_email(payload): ...

    with psycopg.connect(url) as conn, conn.transaction():
        taskq.enqueue(conn, "send_email", {"to": "a@example.com"}, concurrency_key="tenant-1")
        taskq.set_queue_limits(conn, "default", taskq.LimitsUpdate(max_running_per_key=1))

Handlers may raise NonRetryableError (fail now), Snooze(seconds) (run again later without
using an attempt) or RetryLater(seconds) (a retry after the handler's own delay).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskq import workflows as _workflows
from taskq.errors import NonRetryableError, RetryLater, Snooze, TaskCancelled
from taskq.flow import LimitsUpdate, RateLimit
from taskq.flow import set_limits as set_queue_limits
from taskq.handlers import TaskContext, default_registry, handler
from taskq.library import check_kinds as _check_kinds
from taskq.models import OnComplete, Task, TaskSpec
from taskq.registry import pause as pause_queue
from taskq.registry import resume as resume_queue
from taskq.schedules import ScheduleSpec
from taskq.schedules import delete as delete_schedule
from taskq.schedules import put as set_schedule

__version__ = "0.1.0"


def database_url() -> str:
    """The database taskq uses here: DATABASE_URL (or TASKQ_DATABASE_URL) when set, else
    the embedded PostgreSQL that `make run` / `taskq dev` runs from ./.pgdata, else the
    default postgresql://127.0.0.1:5432/taskq."""
    from taskq import embedded
    from taskq.settings import load_settings

    return embedded.resolve(load_settings()).database_url


__all__ = [
    "LimitsUpdate",
    "NonRetryableError",
    "OnComplete",
    "RateLimit",
    "RetryLater",
    "ScheduleSpec",
    "Snooze",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskSpec",
    "__version__",
    "database_url",
    "delete_schedule",
    "enqueue",
    "enqueue_many",
    "handler",
    "pause_queue",
    "resume_queue",
    "set_queue_limits",
    "set_schedule",
]


def enqueue(
    conn: Any,
    kind_or_spec: str | TaskSpec,
    payload: dict[str, Any] | None = None,
    *,
    default_max_attempts: int = 5,
    **options: Any,
) -> Task:
    """Insert one task on `conn` (inside your transaction, if one is open). `options` are
    TaskSpec fields (queue, priority, run_at, delay, max_attempts, idempotency_key,
    timeout_seconds, depends_on: ids of tasks this one waits for). A kind registered in
    this process has its payload model checked (InvalidInput naming the field) and its
    max_attempts applied."""
    if isinstance(kind_or_spec, TaskSpec):
        spec = kind_or_spec
    else:
        fields = {"kind": kind_or_spec, "payload": payload or {}, **options}
        spec = TaskSpec.model_validate(fields)
    _check_kinds([spec])  # as the API does: a kind without a handler here is refused
    spec = default_registry.prepare(spec)
    return _workflows.enqueue(conn, spec, default_max_attempts=default_max_attempts)


def enqueue_many(
    conn: Any,
    specs: Sequence[TaskSpec],
    *,
    default_max_attempts: int = 5,
    on_complete: OnComplete | None = None,
) -> list[Task]:
    """Insert many tasks in one statement per chunk, results in input order; each spec
    is prepared as `enqueue` does (InvalidInput names `tasks[i].payload...`).

    A spec may carry a `ref` and name earlier refs in `depends_on`: the whole graph goes
    in one transaction. With `on_complete`, the tasks form a batch (each task's batch_id)
    and that task is enqueued once every one of them is final."""
    _check_kinds(specs, batch=True)
    prepared = [
        default_registry.prepare(spec, field=f"tasks[{i}].payload") for i, spec in enumerate(specs)
    ]
    return _workflows.enqueue_many(
        conn, prepared, default_max_attempts=default_max_attempts, on_complete=on_complete
    )
