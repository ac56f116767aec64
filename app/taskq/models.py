"""The task model: what a client may submit (TaskSpec) and what the queue returns (Task).

Validation happens here, once, for the API and the library alike, so anything PostgreSQL
would reject (NUL characters, NaN, out-of-range integers) is refused as a field error
before it reaches SQL.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

Status = Literal["blocked", "queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("blocked", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED: tuple[Status, ...] = ("succeeded", "failed", "cancelled")

# Mirrors the CHECK constraints in db/migrations/0003: names safe in URLs, logs and shells.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
_NAME = re.compile(NAME_PATTERN)
QUEUE_MAX = 64
KIND_MAX = 128
# The one wording of each rule, whichever surface refuses a name: the API (bodies and
# query parameters), the CLI, the library, settings (taskq.validation maps pydantic's
# pattern and length errors on these fields to it).
NAME_RULES = {
    "queue": f"queue names are 1-{QUEUE_MAX} characters of letters, digits and _ . : -",
    "kind": f"kinds are 1-{KIND_MAX} characters of letters, digits and _ . : -",
    "ref": "refs are 1-64 characters of letters, digits and _ . : -",
}
# Control characters (C0, DEL, C1): refused in idempotency keys; KEY_PATTERN says the same
# in the OpenAPI document.
KEY_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_DELAY_SECONDS = 10 * 365 * 86_400
MAX_PAYLOAD_DEPTH = 64
MAX_TIMEOUT_SECONDS = 7 * 86_400
# Parents one task may wait for: a fan-in wider than this is a tree of tasks, or a batch
# with an on_complete task (which waits for any number of members).
MAX_PARENTS = 100
REF_MAX = 64


def check_queue_name(value: str) -> str:
    if not 1 <= len(value) <= QUEUE_MAX or not _NAME.fullmatch(value):
        raise ValueError(NAME_RULES["queue"])
    return value


def check_kind(value: str) -> str:
    if not 1 <= len(value) <= KIND_MAX or not _NAME.fullmatch(value):
        raise ValueError(NAME_RULES["kind"])
    return value


def check_json_value(value: Any, path: str = "payload", depth: int = 0) -> None:
    """Refuse what jsonb cannot store: NUL in strings or keys, NaN/Infinity, deep nesting."""
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path}: strings must not contain the NUL character (\\u0000)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                raise ValueError(f"{path}: keys must be strings without the NUL character")
            check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]", depth + 1)
    elif value is not None and not isinstance(value, bool | int):
        raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (as JSON Schema says), 5.5 is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field: strict (no "5" strings, no booleans), but 5.0 counts as 5.
Integer = Annotated[int, BeforeValidator(_integral)]

# Task options a schedule's tasks carry too (schedules.ScheduleSpec): one definition each.
TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)]
TIMEOUT_DOC = (
    "seconds an attempt may run before the worker stops it (a retryable failure); "
    "default: the kind's timeout, else none"
)
ConcurrencyKey = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
CONCURRENCY_KEY_DOC = "groups tasks for the queue's max_running_per_key (a tenant, a customer)"


def _check_parent(value: str) -> str:
    if not 1 <= len(value) <= REF_MAX or not _NAME.fullmatch(value):
        raise ValueError("must be a task id or the ref of an earlier task of the batch")
    return value


# An entry of depends_on: a task id, or (in a batch) the ref of an earlier task.
Parent = Annotated[
    str,
    AfterValidator(_check_parent),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": REF_MAX, "pattern": NAME_PATTERN}
    ),
]


class TaskSpec(BaseModel):
    """A task to enqueue. Strict: "5" is not an integer, unknown fields are errors."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        # The document states `_schedule` too: not both run_at and delay (null is absent).
        json_schema_extra={
            "not": {
                "required": ["run_at", "delay"],
                "properties": {"run_at": {"type": "string"}, "delay": {"type": "number"}},
            }
        },
    )

    kind: str = Field("echo", min_length=1, max_length=KIND_MAX, pattern=NAME_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field("default", min_length=1, max_length=QUEUE_MAX, pattern=NAME_PATTERN)
    priority: Integer = Field(0, ge=-32768, le=32767, description="higher runs first")
    run_at: AwareDatetime | None = None
    delay: float | None = Field(None, ge=0, le=MAX_DELAY_SECONDS, description="seconds")
    # WithJsonSchema: pydantic writes the bounds of an optional validated integer as
    # "ge"/"le", which JSON Schema does not know.
    max_attempts: (
        Annotated[
            Integer,
            Field(ge=1, le=1000),
            WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 1000}),
        ]
        | None
    ) = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    timeout_seconds: TimeoutSeconds | None = Field(None, description=TIMEOUT_DOC)
    concurrency_key: ConcurrencyKey | None = Field(None, description=CONCURRENCY_KEY_DOC)
    depends_on: list[Parent] | None = Field(
        None,
        max_length=MAX_PARENTS,
        description="tasks this one waits for (status blocked until every one has "
        "succeeded): task ids, or inside a batch the refs of earlier tasks of the batch",
    )
    ref: str | None = Field(
        None,
        min_length=1,
        max_length=REF_MAX,
        pattern=NAME_PATTERN,
        description="a name for the task within its batch: later tasks of the batch name it "
        "in depends_on, and children read its result by it",
    )

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value)
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("must be text without control characters")
        return value

    @field_validator("run_at")
    @classmethod
    def _run_at(cls, value: datetime | None) -> datetime | None:
        # PostgreSQL accepts years up to 294276, Python up to 9999; refuse the edges where
        # converting to UTC would overflow.
        if value is None:
            return None
        if not 1 < value.year < 9999:
            raise ValueError("must be between years 2 and 9998")
        # In UTC: ISO 8601 allows offsets up to 23:59, PostgreSQL up to 15:59.
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _schedule(self) -> TaskSpec:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give either run_at or delay, not both")
        return self


class OnComplete(BaseModel):
    """The task a batch enqueues once every member is final. Its payload gets `batch_id`
    and `counts` (members by status) added."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=KIND_MAX, pattern=NAME_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field("default", min_length=1, max_length=QUEUE_MAX, pattern=NAME_PATTERN)

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value)
        return value


class BatchSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    tasks: list[TaskSpec] = Field(min_length=1)
    on_complete: OnComplete | None = Field(
        None,
        description="a task enqueued once every task of the batch is final (GET "
        "/batches/{id} shows the progress)",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """A task row as stored. `created` tells an enqueue whether this call inserted it."""

    id: uuid.UUID
    queue: str
    kind: str
    payload: dict[str, Any]
    status: Status
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    lease_expires_at: datetime | None
    worker_id: str | None
    last_error: str | None
    result: Any
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    timeout_seconds: float | None = None
    cancel_requested_at: datetime | None = None
    snoozes: int = 0
    concurrency_key: str | None = None
    depends_on: list[uuid.UUID] | None = None
    ref: str | None = None
    blocked_by: int = 0
    has_dependents: bool = False
    cancelled_by: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None
    created: bool = dataclasses.field(default=False, compare=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        """The task of a `SELECT *` row. Columns a later migration added are left out:
        during a rolling upgrade the schema is ahead of the pods not yet replaced."""
        if row.keys() <= _TASK_FIELDS:
            return cls(**row)
        return cls(**{key: value for key, value in row.items() if key in _TASK_FIELDS})

    @classmethod
    def inserted(
        cls,
        spec: TaskSpec,
        *,
        id: uuid.UUID,
        run_at: datetime,
        created_at: datetime,
        max_attempts: int,
    ) -> Task:
        """The row an INSERT of `spec` just wrote, from the spec and what the database
        chose: everything else of a new task is known without reading it back."""
        return cls(
            id=id,
            queue=spec.queue,
            kind=spec.kind,
            payload=spec.payload,
            status="queued",
            priority=spec.priority,
            run_at=run_at,
            attempts=0,
            max_attempts=max_attempts,
            lease_expires_at=None,
            worker_id=None,
            last_error=None,
            result=None,
            idempotency_key=spec.idempotency_key,
            created_at=created_at,
            started_at=None,
            finished_at=None,
            updated_at=created_at,
            timeout_seconds=spec.timeout_seconds,
            concurrency_key=spec.concurrency_key,
            created=True,
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape used by the API and the CLI (every field but `created`).

        Spelled out field by field: it runs for every response, and a loop over
        dataclasses.fields() with type checks costs several times as much.
        """
        return {
            "id": str(self.id),
            "queue": self.queue,
            "kind": self.kind,
            "payload": self.payload,
            "status": self.status,
            "priority": self.priority,
            "run_at": _iso(self.run_at),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "lease_expires_at": _iso(self.lease_expires_at),
            "worker_id": self.worker_id,
            "last_error": self.last_error,
            "result": self.result,
            "idempotency_key": self.idempotency_key,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
            "timeout_seconds": self.timeout_seconds,
            "cancel_requested_at": _iso(self.cancel_requested_at),
            "snoozes": self.snoozes,
            "concurrency_key": self.concurrency_key,
            "depends_on": None if self.depends_on is None else [str(p) for p in self.depends_on],
            "ref": self.ref,
            "blocked_by": self.blocked_by,
            "has_dependents": self.has_dependents,
            "cancelled_by": None if self.cancelled_by is None else str(self.cancelled_by),
            "batch_id": None if self.batch_id is None else str(self.batch_id),
        }


# What Task.from_row keeps of a row.
_TASK_FIELDS = frozenset(field.name for field in dataclasses.fields(Task))


def _iso(value: datetime | None) -> str | None:
    """UTC, ISO 8601 with a Z: `2026-01-01T12:00:00.123456Z`."""
    if value is None:
        return None
    return _iso_text(value)


@functools.lru_cache(maxsize=1024)
def _iso_text(value: datetime) -> str:
    # Cached: the tasks one statement writes share their timestamps (created_at is the
    # transaction's, run_at the same for immediate tasks), and a batch's response spells
    # them out for every task. Equal instants give equal text, whatever their zone.
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_task_id() -> uuid.UUID:
    """A version 7 UUID (time-ordered), matching taskq_uuid_v7() in the database."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return uuid.UUID(bytes=bytes(raw))


def parse_task_id(value: str) -> uuid.UUID | None:
    """The UUID in `value`, or None when it is not one (the API answers 404 either way)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
