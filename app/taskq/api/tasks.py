"""Task resources: submit, batch submit, read, list, cancel, retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import falcon

from taskq import metrics, queue, workflows
from taskq.api.body import parse, read_body, read_body_async
from taskq.api.deps import Deps
from taskq.api.ingest import Ingest
from taskq.db import pooled
from taskq.errors import InvalidInput
from taskq.models import (
    STATUSES,
    BatchSpec,
    Task,
    TaskSpec,
    check_kind,
    check_queue_name,
    parse_task_id,
)
from taskq.settings import Settings

IDEMPOTENCY_HEADER = "Idempotency-Key"


class _Base:
    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.settings = settings
        self.pool = deps.pool
        self.registry = deps.registry
        self.notifier = deps.notifier

    def _announce(self, conn: Any, tasks: list[Task]) -> None:
        """Wake the workers of new runnable tasks, once committed (see taskq/notifier.py)."""
        metrics.tasks_enqueued(tasks)
        if self.notifier is not None:
            queues = {t.queue for t in tasks if t.created and t.run_at <= t.created_at}
            self.notifier.announce(queues, conn)

    def _check_kind(self, spec: TaskSpec, prefix: str = "") -> TaskSpec:
        """The spec as its kind wants it (typed payload checked, the kind's max_attempts
        filled in); an unknown kind or a payload the kind's model refuses is a 422."""
        self.registry.check(spec.kind, field=prefix + "kind")
        return self.registry.prepare(spec, field=prefix + "payload")


class TasksResource(_Base):
    """/tasks: POST submits one task, GET lists a page.

    With `group_commit`, concurrent submissions of this process share one INSERT and one
    commit (taskq/api/ingest.py); `on_post_async` is the submit of the ASGI app."""

    def __init__(self, settings: Settings, deps: Deps, *, group_commit: bool = False) -> None:
        super().__init__(settings, deps)
        self.ingest = (
            Ingest(
                self.pool,
                default_max_attempts=settings.default_max_attempts,
                announce=self._announce,
            )
            if group_commit
            else None
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = self._submitted(req, read_body(req, self.settings.api_max_body_bytes))
        if self.ingest is not None and not workflows.uses_workflows(spec):
            task = self.ingest.submit(spec).result()
        else:
            task = self._enqueue(spec)
        self._created(resp, task)

    async def on_post_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = self._submitted(req, await read_body_async(req, self.settings.api_max_body_bytes))
        # A task with parents is written with its edges and parent locks in a transaction
        # of its own (taskq/workflows.py); every other one joins the group commit.
        if self.ingest is not None and not workflows.uses_workflows(spec):
            task = await self.ingest.submit_async(spec)
        else:
            task = await asyncio.to_thread(self._enqueue, spec)
        self._created(resp, task)

    def _submitted(self, req: falcon.Request, body: bytes) -> TaskSpec:
        return self._check_kind(self._with_header_key(req, parse(TaskSpec, body)))

    def _enqueue(self, spec: TaskSpec) -> Task:
        with pooled(self.pool) as conn:
            task = workflows.enqueue(
                conn, spec, default_max_attempts=self.settings.default_max_attempts
            )
            self._announce(conn, [task])
        return task

    @staticmethod
    def _created(resp: falcon.Response, task: Task) -> None:
        resp.status = falcon.HTTP_201 if task.created else falcon.HTTP_200
        resp.location = f"/tasks/{task.id}"
        resp.media = task.to_json()

    def _with_header_key(self, req: falcon.Request, spec: TaskSpec) -> TaskSpec:
        key = req.get_header(IDEMPOTENCY_HEADER)
        if key is None:
            return spec
        if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
            raise InvalidInput(
                "Idempotency-Key must be 1-255 printable ASCII characters",
                field=IDEMPOTENCY_HEADER,
            )
        if spec.idempotency_key not in (None, key):
            raise InvalidInput(
                "Idempotency-Key header and idempotency_key field differ", field="idempotency_key"
            )
        return spec.model_copy(update={"idempotency_key": key})

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = req.get_param("status")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
        queue_name = req.get_param("queue")
        if queue_name is not None:
            try:
                check_queue_name(queue_name)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="queue") from None
        kind = req.get_param("kind")
        if kind is not None:
            try:
                check_kind(kind)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="kind") from None
        limit = self._limit(req)
        cursor = None
        if (raw := req.get_param("cursor")) is not None:
            cursor = parse_task_id(raw)
            if cursor is None:
                raise InvalidInput(
                    "cursor must be a next_cursor from a previous page", field="cursor"
                )
        with pooled(self.pool) as conn:
            tasks, next_cursor = queue.list_tasks(
                conn, status=status, queue=queue_name, kind=kind, cursor=cursor, limit=limit
            )
        resp.media = {
            "tasks": [t.to_json() for t in tasks],
            "next_cursor": str(next_cursor) if next_cursor else None,
        }

    def _limit(self, req: falcon.Request) -> int:
        raw = req.get_param("limit")
        if raw is None:
            return 50
        # ASCII digits only (str.isdigit() also admits "²", which int() refuses), and few of
        # them (int() refuses more than 4300 digits).
        digits = raw.isascii() and raw.isdigit() and len(raw) <= 9
        if not digits or not 1 <= int(raw) <= self.settings.api_page_max:
            raise InvalidInput(
                f"limit must be an integer from 1 to {self.settings.api_page_max}", field="limit"
            )
        return int(raw)


class BatchResource(_Base):
    """/tasks/batch: POST submits up to TASKQ_API_BATCH_MAX tasks in one transaction."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        batch = parse(BatchSpec, read_body(req, self.settings.api_max_body_bytes))
        if len(batch.tasks) > self.settings.api_batch_max:
            raise InvalidInput(
                f"at most {self.settings.api_batch_max} tasks per batch", field="tasks"
            )
        specs = [
            self._check_kind(spec, prefix=f"tasks[{index}].")
            for index, spec in enumerate(batch.tasks)
        ]
        if batch.on_complete is not None:
            self.registry.check(batch.on_complete.kind, field="on_complete.kind")
        with pooled(self.pool) as conn:
            with conn.transaction():
                tasks = workflows.enqueue_many(
                    conn,
                    specs,
                    default_max_attempts=self.settings.default_max_attempts,
                    on_complete=batch.on_complete,
                )
            self._announce(conn, tasks)
        resp.status = falcon.HTTP_201 if any(t.created for t in tasks) else falcon.HTTP_200
        resp.media = {"tasks": [t.to_json() for t in tasks]}
        batch_id = next((t.batch_id for t in tasks if t.batch_id is not None), None)
        if batch.on_complete is not None and batch_id is not None:
            resp.media["batch_id"] = str(batch_id)


class BatchStatusResource(_Base):
    """/batches/{id}: GET a batch's progress (members by status, its on_complete task)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, batch_id: uuid.UUID) -> None:
        with pooled(self.pool) as conn:
            resp.media = workflows.get_batch(conn, batch_id)


class TaskResource(_Base):
    """/tasks/{id}: GET one task; POST /cancel (a queued task at once: 200; a running one
    on request: 202, its worker stops it) and /retry (failed or cancelled only), 409 from
    any other state. Routed with Falcon's uuid converter, so a malformed id is a 404
    before the database is asked."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: uuid.UUID) -> None:
        with pooled(self.pool) as conn:
            resp.media = workflows.describe(conn, task_id)

    def on_post_cancel(
        self, req: falcon.Request, resp: falcon.Response, task_id: uuid.UUID
    ) -> None:
        with pooled(self.pool) as conn:
            task = workflows.cancel(conn, task_id)
        resp.status = falcon.HTTP_202 if task.status == "running" else falcon.HTTP_200
        resp.media = task.to_json()

    def on_post_retry(self, req: falcon.Request, resp: falcon.Response, task_id: uuid.UUID) -> None:
        with pooled(self.pool) as conn:
            resp.media = workflows.retry(conn, task_id).to_json()
