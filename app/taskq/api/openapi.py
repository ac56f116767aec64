"""The OpenAPI 3.1 document at /openapi.json, generated from the app itself.

Paths come from the Falcon router (`falcon.inspect`): only routes the app really serves
appear, each with the operation written below. Schemas come from the models the code
uses: TaskSpec and BatchSpec (what POST bodies are parsed with), the Task dataclass
(what every task response is made from), the /stats models, and the one error shape
of app/taskq/api/errors.py. `undocumented(app)` and `unserved(app)` name any route without an
operation here, or an operation without a route; the test suite fails on either, and
validates real responses against the document. Longer than most modules because the
document is data: one operation entry per route.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import falcon
import falcon.inspect
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from taskq import __version__, flow, stats
from taskq.api.observability import public_template
from taskq.models import (
    KEY_PATTERN,
    KIND_MAX,
    MAX_PAYLOAD_DEPTH,
    NAME_PATTERN,
    QUEUE_MAX,
    STATUSES,
    BatchSpec,
    Task,
    TaskSpec,
)
from taskq.registry import QueueEntry
from taskq.schedules import ScheduleSpec
from taskq.settings import Settings

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


@dataclasses.dataclass(frozen=True)
class Response:
    description: str
    schema: str | None = None  # a component name; None for non-JSON bodies
    content_type: str = JSON
    headers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, Response]
    description: str = ""
    request: str | None = None  # component name of a JSON body
    parameters: tuple[str, ...] = ()  # names in PARAMETERS
    tags: tuple[str, ...] = ("tasks",)
    open: bool = False  # answered without a bearer token when authentication is on


def _error(description: str, *headers: str) -> Response:
    return Response(description, "Error", headers=headers)


ERRORS = {
    400: _error("malformed JSON or an empty body"),
    401: _error("authentication is on and the bearer token is missing or not accepted"),
    404: _error("no such task (malformed ids too)"),
    409: _error("the task's status does not allow this"),
    413: _error("body larger than TASKQ_API_MAX_BODY_BYTES"),
    415: _error("body is not application/json"),
    422: _error("a field is wrong; `field` names it"),
    500: _error("unexpected error; the server log has the details (no trace is sent)"),
    503: _error("PostgreSQL is unavailable; retry later", "Retry-After"),
}


def _with_errors(ok: dict[int, Response], *statuses: int) -> dict[int, Response]:
    return {**ok, **{s: ERRORS[s] for s in statuses}}


_TASK = Response("the task", "Task")
_SCHEDULE_404 = _error("no schedule with that name")
_READ = (401, 404, 500, 503)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/tasks"): Operation(
        "Submit a task",
        _with_errors(
            {
                201: Response("created", "Task", headers=("Location",)),
                200: Response(
                    "a task with this idempotency key exists: that task",
                    "Task",
                    headers=("Location",),
                ),
            },
            400,
            401,
            413,
            415,
            422,
            500,
            503,
        ),
        description="`kind` defaults to `echo`. Schedule with `run_at` or `delay`, not both. "
        "`depends_on` names existing tasks (422 naming `depends_on[i]` otherwise): the task "
        "is `blocked` until every one has succeeded, and is cancelled if one fails or is "
        "cancelled. "
        "A kind with a payload model (`Payload.<kind>`) gets its payload checked: a wrong "
        "field is a 422 naming it (`payload.order_id`).",
        request="TaskSpec",
        parameters=("Idempotency-Key",),
    ),
    ("GET", "/tasks"): Operation(
        "List tasks, newest first",
        _with_errors({200: Response("a page of tasks", "TaskPage")}, 401, 422, 500, 503),
        description="Follow `next_cursor` (null on the last page).",
        parameters=("status", "queue", "kind", "limit", "cursor"),
    ),
    ("POST", "/tasks/batch"): Operation(
        "Submit many tasks in one transaction",
        _with_errors(
            {
                201: Response("created (some may be existing idempotent tasks)", "TaskList"),
                200: Response("every task already existed (idempotency keys)", "TaskList"),
            },
            400,
            401,
            413,
            415,
            422,
            500,
            503,
        ),
        description="Up to TASKQ_API_BATCH_MAX tasks, all created or none. A task may carry "
        "a `ref` (unique in the batch) and name task ids or the refs of earlier tasks of the "
        "batch in `depends_on`: a whole graph is one request (an unknown id or ref, a ref "
        "of a later task or of itself: 422 naming `tasks[i].depends_on[j]`). With "
        "`on_complete`, the tasks form a batch (`batch_id`, GET /batches/{id}).",
        request="BatchSpec",
    ),
    ("GET", "/tasks/{task_id}"): Operation(
        "Read a task, with its parents and dependents",
        _with_errors({200: Response("the task and its place in a graph", "TaskDetail")}, *_READ),
        description="`parents` and `dependents` list the tasks this one waits for and the "
        "tasks waiting for it, each with its status (a pruned parent shows as `pruned`).",
        parameters=("task_id",),
    ),
    ("GET", "/batches/{batch_id}"): Operation(
        "Read a batch's progress",
        _with_errors(
            {200: Response("members by status, and the on_complete task", "Batch")},
            401,
            404,
            500,
            503,
        ),
        description="A batch is created by POST /tasks/batch with `on_complete`; its id is "
        "the response's `batch_id` and every member's. Once every member is final the "
        "on_complete task is enqueued (exactly once) with `batch_id` and `counts` added to "
        "its payload.",
        parameters=("batch_id",),
    ),
    ("POST", "/tasks/{task_id}/cancel"): Operation(
        "Cancel a queued or running task",
        _with_errors(
            {
                200: Response("a queued task: cancelled at once", "Task"),
                202: Response(
                    "a running task: the cancel is requested (`cancel_requested_at`); its "
                    "worker stops the attempt and the task ends cancelled, never retried",
                    "Task",
                ),
            },
            *_READ,
            409,
        ),
        description="A running task's worker learns of the cancel within a second and "
        "stops the handler (thread pool: `ctx.cancelled`; process pool: SIGTERM, then "
        "SIGKILL after TASKQ_WORKER_KILL_GRACE). If the task finishes first, the cancel "
        "is a 409: one of the two wins, never both.",
        parameters=("task_id",),
    ),
    ("POST", "/tasks/{task_id}/retry"): Operation(
        "Run a failed or cancelled task again",
        _with_errors({200: Response("the task, queued again", "Task")}, *_READ, 409),
        description="Attempts start again from zero.",
        parameters=("task_id",),
    ),
    ("GET", "/queues/{name}"): Operation(
        "Read a queue's flow-control limits and their use",
        _with_errors({200: Response("the queue's limits", "Limits")}, 401, 422, 500, 503),
        description="A queue without settings has no limits (every limit null). `held` "
        "counts runnable tasks a limit keeps queued now.",
        parameters=("name",),
        tags=("queues",),
    ),
    ("PUT", "/queues/{name}"): Operation(
        "Set a queue's flow-control limits",
        _with_errors(
            {200: Response("the queue's limits after the change", "Limits")},
            400,
            401,
            413,
            415,
            422,
            500,
            503,
        ),
        description="`max_running`: tasks of the queue running at once across all "
        "workers; `max_running_per_key`: running tasks per `concurrency_key`; "
        "`rate_limit`: at most `count` starts per `per_seconds` (a sliding window). A "
        "field left out keeps its value; `null` removes that limit. Exact across workers.",
        request="LimitsUpdate",
        parameters=("name",),
        tags=("queues",),
    ),
    ("GET", "/stats"): Operation(
        "Queue statistics (the dashboard's data)",
        _with_errors({200: Response("statistics", "Stats")}, 401, 500, 503),
        description="Counts per queue and status, throughput over the last hour, the "
        "oldest runnable task and the latest failures. Bounded queries; cached for a "
        "couple of seconds.",
        tags=("operations",),
    ),
    # ---- schedules (recurring tasks)
    ("GET", "/schedules"): Operation(
        "List schedules",
        _with_errors({200: Response("every schedule, by name", "ScheduleList")}, 401, 500, 503),
        tags=("schedules",),
    ),
    ("PUT", "/schedules/{name}"): Operation(
        "Create or replace a schedule",
        _with_errors(
            {
                201: Response("created", "Schedule", headers=("Location",)),
                200: Response("replaced", "Schedule", headers=("Location",)),
            },
            400,
            401,
            413,
            415,
            422,
            500,
            503,
        ),
        description="Exactly one of `cron` (5 fields, or 6 with seconds first) and `every` "
        "(seconds). `timezone` is an IANA name (default UTC); daylight saving follows "
        "Debian cron. Each slot creates one task, with the idempotency key "
        "`schedule:NAME:SLOT`, however many workers run. A schedule made here is left "
        "alone by the settings file unless the file lists the same name.",
        request="ScheduleSpec",
        parameters=("name",),
        tags=("schedules",),
    ),
    ("GET", "/schedules/{name}"): Operation(
        "Read a schedule (with next_run_at, last_run_at, last_task_id)",
        _with_errors({200: Response("the schedule", "Schedule")}, 401, 500, 503)
        | {404: _SCHEDULE_404},
        parameters=("name",),
        tags=("schedules",),
    ),
    ("DELETE", "/schedules/{name}"): Operation(
        "Delete a schedule (the tasks it created stay)",
        {
            **_with_errors({}, 401, 500, 503),
            204: Response("deleted; no body", content_type=""),
            404: _SCHEDULE_404,
        },
        parameters=("name",),
        tags=("schedules",),
    ),
    ("POST", "/schedules/{name}/enable"): Operation(
        "Enable a schedule from its next slot",
        _with_errors({200: Response("the schedule", "Schedule")}, 401, 500, 503)
        | {404: _SCHEDULE_404},
        description="Slots that passed while it was disabled are not caught up.",
        parameters=("name",),
        tags=("schedules",),
    ),
    ("POST", "/schedules/{name}/disable"): Operation(
        "Disable a schedule",
        _with_errors({200: Response("the schedule", "Schedule")}, 401, 500, 503)
        | {404: _SCHEDULE_404},
        parameters=("name",),
        tags=("schedules",),
    ),
    # ---- the queue registry
    ("GET", "/queues"): Operation(
        "List queues: counts by status, paused, workers",
        _with_errors({200: Response("every queue", "QueueList")}, 401, 500, 503),
        description="Every queue with queued or running tasks, tasks finished in the last "
        "hour, settings, or a worker serving it. Counts are those of /stats.",
        tags=("queues",),
    ),
    ("POST", "/queues/{name}/pause"): Operation(
        "Pause a queue",
        _with_errors({200: Response("the queue's settings", "QueueState")}, 401, 422, 500, 503),
        description="Workers stop claiming from it at their next claim; submits are still "
        "accepted and running tasks finish. Stored: it outlives restarts.",
        parameters=("name",),
        tags=("queues",),
    ),
    ("POST", "/queues/{name}/resume"): Operation(
        "Resume a paused queue",
        _with_errors({200: Response("the queue's settings", "QueueState")}, 401, 422, 500, 503),
        description="Its workers are woken and claim at once.",
        parameters=("name",),
        tags=("queues",),
    ),
    ("GET", "/live"): Operation(
        "Liveness: the process answers",
        {200: Response("alive", "Live")},
        tags=("operations",),
        open=True,
    ),
    ("HEAD", "/live"): Operation(
        "Liveness, for probes that ask with HEAD (no body)",
        {200: Response("alive (no body)", content_type="")},
        tags=("operations",),
        open=True,
    ),
    ("GET", "/ready"): Operation(
        "Readiness: PostgreSQL answers",
        {200: Response("ready", "Ready"), 503: Response("not ready", "Ready")},
        tags=("operations",),
        open=True,
    ),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics",
        {
            200: Response("text exposition format", content_type="text/plain"),
            401: ERRORS[401],
        },
        description="Counters and histograms summed over every API process, and queue "
        "depth read from PostgreSQL at scrape time (README: Metrics).",
        tags=("operations",),
    ),
    ("GET", "/openapi.json"): Operation(
        "This document",
        {200: Response("OpenAPI 3.1", "OpenApiDocument")},
        tags=("operations",),
        open=True,
    ),
    ("GET", "/dashboard"): Operation(
        "The dashboard (an HTML page; its data comes from /stats and /tasks)",
        {200: Response("the page", content_type="text/html")},
        tags=("operations",),
        open=True,
    ),
    ("HEAD", "/dashboard"): Operation(
        "The dashboard's headers, for uptime checks (no body)",
        {200: Response("the page's headers (no body)", content_type="")},
        tags=("operations",),
        open=True,
    ),
}


# Printable ASCII: what the server accepts in the Idempotency-Key header.
IDEMPOTENCY_HEADER_PATTERN = "^[ -~]+$"


_NO_NUL = "^[^\\x00]*$"


def _json_object() -> dict[str, Any]:
    return {
        "type": "object",
        "propertyNames": {"pattern": _NO_NUL},
        "additionalProperties": _ref("JsonValue"),
    }


def _name_schema(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": NAME_PATTERN}


def _parameters(settings: Settings) -> dict[str, dict[str, Any]]:
    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": description,
        }

    return {
        "name": {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_.:-]+$"},
            "description": "the schedule's or queue's name",
        },
        "batch_id": {
            "name": "batch_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "the batch's id (a UUID; anything else is a 404)",
        },
        "task_id": {
            "name": "task_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "the task's id (a UUID; anything else is a 404)",
        },
        "Idempotency-Key": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": IDEMPOTENCY_HEADER_PATTERN,
            },
            "description": "the same key returns the existing task (200), never a duplicate. "
            "The body's `idempotency_key` may be left out; if both are given they must be "
            "equal (422 otherwise).",
        },
        "status": query("status", {"type": "string", "enum": list(STATUSES)}, "only this status"),
        "queue": query("queue", _name_schema(QUEUE_MAX), "only this queue"),
        "kind": query("kind", _name_schema(KIND_MAX), "only this kind"),
        "limit": query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": settings.api_page_max, "default": 50},
            "page size",
        ),
        "cursor": query("cursor", {"type": "string", "format": "uuid"}, "next_cursor of a page"),
    }


HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "the request's id: the client's X-Request-ID if sane, else a new "
        "one; every log line of the request carries it",
        "schema": {"type": "string"},
    },
    "Location": {"description": "/tasks/{id} of the task", "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
}

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The one error shape of every failure (app/taskq/api/errors.py).",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the offending field, if one"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "additionalProperties": False,
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}


def _task_schema() -> dict[str, Any]:
    """The Task dataclass as the API writes it (Task.to_json): every field, always."""
    schema = TypeAdapter(Task).json_schema(mode="serialization", ref_template=REF)
    schema["properties"].pop("created", None)
    schema["required"] = [f.name for f in dataclasses.fields(Task) if f.name != "created"]
    schema["additionalProperties"] = False
    schema["description"] = "A task as stored. Timestamps are UTC (…Z)."
    schema["properties"]["result"]["description"] = "the handler's return value (any JSON)"
    return schema


def _workflow_schemas(task: dict[str, Any]) -> dict[str, Any]:
    """GET /tasks/{id} (a Task with its graph) and GET /batches/{id}."""
    uuid_or_null = {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]}
    node = {
        "type": "object",
        "required": ["id", "kind", "status", "ref"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "kind": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "status": {"enum": [*STATUSES, "pruned"]},
            "ref": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    detail = copy.deepcopy(task)
    detail["properties"]["parents"] = {"type": "array", "items": _ref("TaskNode")}
    detail["properties"]["dependents"] = {"type": "array", "items": _ref("TaskNode")}
    detail["required"] = [*detail["required"], "parents", "dependents"]
    detail["description"] = "A task with the tasks it waits for and those waiting for it."
    count = {"type": "integer", "minimum": 0}
    batch = {
        "type": "object",
        "required": ["id", "total", "counts", "done", "created_at", "completed_at", "on_complete"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "total": count,
            "counts": {
                "type": "object",
                "required": ["blocked", "queued", "running", "succeeded", "failed", "cancelled"],
                "additionalProperties": False,
                "properties": dict.fromkeys(STATUSES, count),
            },
            "done": {**count, "description": "members that are final"},
            "created_at": {"type": "string", "format": "date-time"},
            "completed_at": {
                "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
                "description": "when every member was final and on_complete was enqueued",
            },
            "on_complete": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["kind", "queue", "task_id"],
                        "additionalProperties": False,
                        "properties": {
                            "kind": {"type": "string"},
                            "queue": {"type": "string"},
                            "task_id": uuid_or_null,
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    }
    return {"TaskNode": node, "TaskDetail": detail, "Batch": batch}


def _payload_schemas(
    schemas: dict[str, Any], keys: dict[Any, Any], payloads: dict[str, type[BaseModel]]
) -> None:
    """One schema per typed kind, `Payload.<kind>`, and TaskSpec choosing it by `kind`
    (if kind is K then payload is Payload.K): the API refuses what these refuse (422)."""
    choices = []
    for kind, model in payloads.items():
        name = "Payload." + kind.replace(":", "_")
        schemas[name] = {
            **keys[(model, "validation")],
            "description": f"the payload of kind `{kind}` ({model.__name__})",
        }
        choices.append(
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": {"payload": _ref(name)}},
            }
        )
    if choices:
        schemas["TaskSpec"]["allOf"] = choices


def _schemas(
    payloads: dict[str, type[BaseModel]], kinds: list[str] | None = None
) -> dict[str, Any]:
    models: list[tuple[Any, Any]] = [
        (TaskSpec, "validation"),
        (BatchSpec, "validation"),
        (stats.Stats, "serialization"),
        (ScheduleSpec, "validation"),
        (QueueEntry, "serialization"),
        (flow.LimitsUpdate, "validation"),
        (flow.Limits, "serialization"),
        *((model, "validation") for model in payloads.values()),
    ]
    keys, defs = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    _payload_schemas(schemas, keys, payloads)
    # What TaskSpec's validators refuse, said in JSON Schema (tests/test_schemathesis.py
    # holds the server to it).
    spec = schemas["TaskSpec"]["properties"]
    if kinds is not None:  # the server refuses kinds without a handler (422)
        spec["kind"]["enum"] = kinds
        schemas["OnComplete"]["properties"]["kind"]["enum"] = kinds
        spec["kind"]["description"] = "a kind with a handler here (TASKQ_HANDLER_MODULES)"
    spec["payload"] = {
        **_json_object(),
        "description": "any JSON object: no NUL (\\u0000) in strings or keys, nested at "
        f"most {MAX_PAYLOAD_DEPTH} levels",
    }
    spec["idempotency_key"]["anyOf"][0]["pattern"] = KEY_PATTERN
    # Years 2-9998 (Python's datetime, converted to UTC, must hold it).
    spec["run_at"]["anyOf"][0]["pattern"] = "^(?!000[01]|9999)[0-9]{4}-"
    schemas["JsonValue"] = {
        "description": "a JSON value PostgreSQL's jsonb can store",
        "anyOf": [
            {"type": "string", "pattern": _NO_NUL},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": _ref("JsonValue")},
            _json_object(),
        ],
    }
    schemas["Task"] = _task_schema()
    schemas["TaskPage"] = {
        "type": "object",
        "required": ["tasks", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "next_cursor": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]},
        },
    }
    schemas["TaskList"] = {
        "type": "object",
        "required": ["tasks"],
        "additionalProperties": False,
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "batch_id": {
                "type": "string",
                "format": "uuid",
                "description": "with on_complete: the batch (GET /batches/{id})",
            },
        },
    }
    schemas.update(_workflow_schemas(schemas["Task"]))
    schemas["Error"] = _ERROR_SCHEMA
    schemas.update(_schedule_and_queue_schemas())
    schemas["Live"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "live"}},
    }
    schemas["Ready"] = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    schemas["OpenApiDocument"] = {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\."}},
    }
    return schemas


def _schedule_and_queue_schemas() -> dict[str, Any]:
    """Schedule (Schedule.to_json), its list, QueueState and the /queues list."""
    nullable_time = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    schedule_fields: dict[str, Any] = {
        "name": {"type": "string"},
        "cron": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "every": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "timezone": {"type": "string"},
        "kind": {"type": "string"},
        "payload": {"type": "object"},
        "queue": {"type": "string"},
        "priority": {"type": "integer"},
        "max_attempts": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "timeout_seconds": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "concurrency_key": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "enabled": {"type": "boolean"},
        "source": {"enum": ["api", "file"], "description": "who owns it"},
        "next_run_at": nullable_time | {"description": "the next slot (null when disabled)"},
        "last_run_at": nullable_time | {"description": "the slot enqueued last"},
        "last_task_id": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]},
        "last_task_status": {
            "anyOf": [{"enum": list(STATUSES)}, {"type": "null"}],
            "description": "null when the task was pruned or none ran yet",
        },
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    }
    return {
        "Schedule": {
            "type": "object",
            "description": "A schedule and its state. Timestamps are UTC (…Z).",
            "required": list(schedule_fields),
            "additionalProperties": False,
            "properties": schedule_fields,
        },
        "ScheduleList": {
            "type": "object",
            "required": ["schedules"],
            "additionalProperties": False,
            "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
        },
        "QueueState": {
            "type": "object",
            "required": ["name", "paused", "paused_at", "source"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "paused": {"type": "boolean"},
                "paused_at": nullable_time,
                "source": {"enum": ["api", "file"]},
            },
        },
        "QueueList": {
            "type": "object",
            "required": ["queues"],
            "additionalProperties": False,
            "properties": {"queues": {"type": "array", "items": _ref("QueueEntry")}},
        },
    }


def routes(app: falcon.App[Any, Any]) -> set[tuple[str, str]]:
    """(METHOD, path template) of every responder the app serves (Falcon's own 405 and
    OPTIONS responders excluded), with field converters dropped: `{task_id:uuid}` is
    `{task_id}` in OpenAPI."""
    out = set()
    for route in falcon.inspect.inspect_app(app).routes:
        path = public_template(route.path)
        for method in route.methods:
            if not method.internal:
                out.add((method.method, path))
    return out


def undocumented(app: falcon.App[Any, Any]) -> set[tuple[str, str]]:
    return routes(app) - set(OPERATIONS)


def unserved(app: falcon.App[Any, Any]) -> set[tuple[str, str]]:
    return set(OPERATIONS) - routes(app)


def _response(status: int, response: Response) -> dict[str, Any]:
    out: dict[str, Any] = {"description": response.description}
    headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    for name in response.headers:
        headers[name] = {"$ref": f"#/components/headers/{name}"}
    out["headers"] = headers
    if not response.content_type:  # no body (204)
        return out
    if response.schema is not None:
        out["content"] = {response.content_type: {"schema": _ref(response.schema)}}
    else:
        out["content"] = {response.content_type: {"schema": {"type": "string"}}}
    return out


def build(
    app: falcon.App[Any, Any],
    settings: Settings,
    payloads: dict[str, type[BaseModel]] | None = None,
    *,
    kinds: list[str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI document for the routes `app` serves; `payloads` are the typed kinds'
    payload models (kind -> model), `kinds` those with a handler."""
    parameters = _parameters(settings)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(routes(app)):
        op = OPERATIONS.get((method, path))
        if op is None:
            continue  # undocumented(app) reports it; tests fail on it
        operation: dict[str, Any] = {
            "operationId": _operation_id(method, path),
            "summary": op.summary,
            "tags": list(op.tags),
            "responses": {str(s): _response(s, r) for s, r in sorted(op.responses.items())},
        }
        if op.description:
            operation["description"] = op.description
        if op.parameters:
            operation["parameters"] = [parameters[name] for name in op.parameters]
        if op.request:
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": _ref(op.request)}},
            }
        # Authentication is optional: no token when it is off, a bearer token when on.
        operation["security"] = [{}] if op.open else [{}, {"bearerAuth": []}]
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "taskq",
            "version": __version__,
            "summary": "A task queue on PostgreSQL and nothing else.",
            "description": "Submit tasks, read their status and result, cancel or retry "
            "them. Errors share one JSON shape (Error). With TASKQ_API_TOKENS set, every "
            "operation but the probes, this document and the dashboard page needs "
            "`Authorization: Bearer <token>`.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "tasks", "description": "submit, read, cancel, retry"},
            {"name": "schedules", "description": "recurring tasks: cron or every N seconds"},
            {"name": "queues", "description": "the queue registry: list, pause, resume, limits"},
            {"name": "operations", "description": "probes, metrics, statistics, dashboard"},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(payloads or {}, kinds),
            "headers": copy.deepcopy(HEADERS),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "TASKQ_API_TOKENS / TASKQ_API_TOKENS_FILE",
                }
            },
        },
    }


def _operation_id(method: str, path: str) -> str:
    words = [p.strip("{}").replace(".", "_") for p in path.strip("/").split("/") if p]
    return method.lower() + "_" + "_".join(words or ["root"])


class OpenApiResource:
    """/openapi.json, built on first request from the finished app."""

    def __init__(self, build_document: Callable[[], dict[str, Any]]) -> None:
        self._build = build_document
        self._document: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            if self._document is None:
                self._document = self._build()
        resp.media = self._document
