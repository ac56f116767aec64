"""Recurring tasks: schedules, stored in taskq_schedules, enqueued slot by slot.

A schedule is a task template plus when it fires (taskq/cron.py). Every worker's
scheduler (worker/maintenance.py `Scheduler`) calls `enqueue_due`: the task of a slot
carries the idempotency key `schedule:NAME:SLOT`, so a slot enqueued by several workers
at once is inserted once, and the others' inserts are no-ops. After downtime only the
latest missed slot is enqueued. Schedules come from the API and CLI (source 'api') or
the settings file (source 'file', taskq/settings_file.py).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from taskq import queue as q
from taskq import sql
from taskq.cron import CronError, Slots, zone
from taskq.errors import InvalidInput, TaskNotFound
from taskq.models import (
    _NAME,
    CONCURRENCY_KEY_DOC,
    TIMEOUT_DOC,
    ConcurrencyKey,
    Task,
    TaskSpec,
    TimeoutSeconds,
    _iso,
    check_json_value,
)
from taskq.queue import AnyConnection

log = logging.getLogger(__name__)

Source = Literal["api", "file"]
MAX_EVERY_SECONDS = 366 * 86_400


class ScheduleNotFound(TaskNotFound):
    """No schedule with that name (404)."""


def check_schedule_name(value: str) -> str:
    if not 1 <= len(value) <= 64 or not _NAME.fullmatch(value):
        raise ValueError("schedule names are 1-64 characters of letters, digits and _ . : -")
    return value


class ScheduleSpec(BaseModel):
    """What a schedule is: when (exactly one of `cron` and `every`, in `timezone`) and the
    task it creates. Strict, like TaskSpec; errors name the field."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    cron: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="5 fields (minute hour day month weekday), or 6 with seconds first",
    )
    every: int | None = Field(
        None,
        ge=1,
        le=MAX_EVERY_SECONDS,
        validate_default=True,
        description="seconds between slots (slots are multiples of it since the Unix epoch)",
    )
    timezone: str = Field("UTC", min_length=1, max_length=64, description="IANA name")
    kind: str = Field(min_length=1, max_length=128, pattern=_NAME.pattern)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field("default", min_length=1, max_length=64, pattern=_NAME.pattern)
    priority: int = Field(0, ge=-32768, le=32767)
    max_attempts: int | None = Field(None, ge=1, le=1000)
    timeout_seconds: TimeoutSeconds | None = Field(None, description=TIMEOUT_DOC)
    concurrency_key: ConcurrencyKey | None = Field(None, description=CONCURRENCY_KEY_DOC)
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Slots(value, None)
            except CronError as exc:
                raise ValueError(str(exc)) from None
            value = " ".join(value.split())
        return value

    @field_validator("every")
    @classmethod
    def _one_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        has_cron = info.data.get("cron") is not None
        if value is not None and has_cron:
            raise ValueError("give either cron or every, not both")
        if value is None and not has_cron and "cron" in info.data:
            raise ValueError("give cron (an expression) or every (seconds)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zone(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_value(value)
        return value

    def slots(self) -> Slots:
        return Slots(self.cron, self.every, self.timezone)


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as stored, with when it runs next and what it created last."""

    name: str
    spec: ScheduleSpec
    source: Source
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_task_id: uuid.UUID | None
    last_task_status: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Schedule:
        spec = ScheduleSpec.model_construct(
            cron=row["cron"],
            every=row["every_seconds"],
            timezone=row["timezone"],
            kind=row["kind"],
            payload=row["payload"],
            queue=row["queue"],
            priority=row["priority"],
            max_attempts=row["max_attempts"],
            timeout_seconds=row["timeout_seconds"],
            concurrency_key=row["concurrency_key"],
            enabled=row["enabled"],
        )
        return cls(
            name=row["name"],
            spec=spec,
            source=row["source"],
            next_run_at=row["next_run_at"],
            last_run_at=row["last_run_at"],
            last_task_id=row["last_task_id"],
            last_task_status=row["last_task_status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name,
            "cron": s.cron,
            "every": s.every,
            "timezone": s.timezone,
            "kind": s.kind,
            "payload": s.payload,
            "queue": s.queue,
            "priority": s.priority,
            "max_attempts": s.max_attempts,
            "timeout_seconds": s.timeout_seconds,
            "concurrency_key": s.concurrency_key,
            "enabled": s.enabled,
            "source": self.source,
            "next_run_at": _iso(self.next_run_at) if s.enabled else None,
            "last_run_at": _iso(self.last_run_at),
            "last_task_id": None if self.last_task_id is None else str(self.last_task_id),
            "last_task_status": self.last_task_status,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def slot_key(name: str, slot: datetime) -> str:
    """The idempotency key of a slot's task: `schedule:NAME:2026-01-01T03:00:00Z`."""
    return f"schedule:{name}:{slot.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _db_now(conn: AnyConnection) -> datetime:
    now: datetime = q.fetch(conn, sql.SCHEDULE_NOW, {})[0]["now"]
    return now


def put(conn: AnyConnection, name: str, spec: ScheduleSpec, *, source: Source = "api") -> bool:
    """Create or replace schedule `name`; True when it was created."""
    check_schedule_name(name)
    next_run_at = spec.slots().next_after(_db_now(conn))
    params = {
        "name": name,
        "cron": spec.cron,
        "every": spec.every,
        "timezone": spec.timezone,
        "kind": spec.kind,
        "payload": Jsonb(spec.payload),
        "queue": spec.queue,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "timeout_seconds": spec.timeout_seconds,
        "concurrency_key": spec.concurrency_key,
        "enabled": spec.enabled,
        "source": source,
        "next_run_at": next_run_at,
    }
    return bool(q.fetch(conn, sql.UPSERT_SCHEDULE, params)[0]["created"])


def get(conn: AnyConnection, name: str) -> Schedule:
    rows = q.fetch(conn, sql.GET_SCHEDULE, {"name": name})
    if not rows:
        raise ScheduleNotFound(f"no schedule {name!r}")
    return Schedule.from_row(rows[0])


def list_all(conn: AnyConnection) -> list[Schedule]:
    return [Schedule.from_row(row) for row in q.fetch(conn, sql.LIST_SCHEDULES, {})]


def delete(conn: AnyConnection, name: str) -> None:
    """Delete a schedule (the tasks it created stay); ScheduleNotFound if there is none."""
    if not q.fetch(conn, sql.DELETE_SCHEDULE, {"name": name}):
        raise ScheduleNotFound(f"no schedule {name!r}")


def set_enabled(conn: AnyConnection, name: str, enabled: bool) -> Schedule:
    """Enable (from the next slot after now) or disable a schedule, keeping its source."""
    current = get(conn, name)
    next_run_at = current.spec.slots().next_after(_db_now(conn))
    params = {"name": name, "enabled": enabled, "next_run_at": next_run_at}
    q.fetch(conn, sql.SET_SCHEDULE_ENABLED, params)
    return get(conn, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Enqueued:
    """One slot a scheduler handled: the task is `created` unless another worker was first."""

    schedule: str
    slot: datetime
    task: Task
    created: bool


def enqueue_due(
    conn: AnyConnection, *, default_max_attempts: int = 5, limit: int = 100
) -> list[Enqueued]:
    """Enqueue the latest due slot of every due schedule, and advance each to its next slot.

    One transaction: the due rows are locked (SKIP LOCKED: another worker's scheduler
    handles those), each slot's task is inserted with its slot key, and next_run_at moves
    past the database's now(). Only the latest missed slot is enqueued, never a burst.
    """
    out: list[Enqueued] = []
    with conn.transaction():
        for row in q.fetch(conn, sql.LOCK_DUE_SCHEDULES, {"limit": limit}):
            now: datetime = row["db_now"]
            name = row["name"]
            try:
                slots = Slots(row["cron"], row["every_seconds"], row["timezone"])
                slot = slots.latest_at_or_before(now) or row["next_run_at"]
                next_run_at: datetime | None = slots.next_after(now)
            except CronError as exc:  # e.g. a timezone the system no longer knows
                log.warning("schedule %s cannot run: %s", name, exc)
                q.fetch(conn, sql.ADVANCE_SCHEDULE, _advance(name, None, None, None))
                continue
            slot = max(slot, row["next_run_at"])
            spec = TaskSpec(
                kind=row["kind"],
                payload=row["payload"],
                queue=row["queue"],
                priority=row["priority"],
                max_attempts=row["max_attempts"],
                timeout_seconds=row["timeout_seconds"],
                concurrency_key=row["concurrency_key"],
                idempotency_key=slot_key(name, slot),
            )
            task = q.enqueue(conn, spec, default_max_attempts=default_max_attempts)
            q.fetch(conn, sql.ADVANCE_SCHEDULE, _advance(name, slot, task.id, next_run_at))
            out.append(Enqueued(name, slot, task, task.created))
    return out


def _advance(
    name: str, slot: datetime | None, task_id: uuid.UUID | None, next_run_at: datetime | None
) -> dict[str, Any]:
    return {"name": name, "slot": slot, "task_id": task_id, "next_run_at": next_run_at}


def next_due_in(conn: AnyConnection) -> float | None:
    """Seconds until the earliest enabled schedule is due, by the database's clock (<= 0:
    due now); None when no schedule is enabled."""
    seconds = q.fetch(conn, sql.NEXT_SCHEDULE_DUE, {})[0]["seconds"]
    return None if seconds is None else float(seconds)


def delete_file_schedules_except(conn: AnyConnection, names: list[str]) -> list[str]:
    """Delete the settings file's schedules not in `names`; the names deleted."""
    rows = q.fetch(conn, sql.DELETE_FILE_SCHEDULES_EXCEPT, {"names": names})
    return [row["name"] for row in rows]


def check_kind(spec: ScheduleSpec, kinds: set[str] | None, field: str = "kind") -> None:
    """InvalidInput naming `field` when `kinds` is given and lacks the spec's kind."""
    if kinds is not None and spec.kind not in kinds:
        known = ", ".join(sorted(kinds))
        raise InvalidInput(f"unknown kind {spec.kind!r}; known kinds: {known}", field=field)
