"""app/taskq/models.py: what a task may contain, and the task's public shape."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from taskq.models import Task, TaskSpec, check_json_value, new_task_id, parse_task_id


def test_defaults() -> None:
    spec = TaskSpec()
    assert (spec.kind, spec.queue, spec.priority, spec.payload) == ("echo", "default", 0, {})
    assert spec.run_at is None
    assert spec.delay is None
    assert spec.max_attempts is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"priority": "5"}, "priority"),
        ({"priority": 40_000}, "priority"),
        ({"payload": []}, "payload"),
        ({"payload": "x"}, "payload"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"delay": -1}, "delay"),
        ({"queue": "has space"}, "queue"),
        ({"kind": ""}, "kind"),
        ({"kind": "a" * 129}, "kind"),
        ({"colour": "red"}, "colour"),
        ({"idempotency_key": "x\x00"}, "idempotency_key"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),  # naive: which timezone?
    ],
)
def test_rejects_wrong_fields(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskSpec.model_validate(fields)
    assert info.value.errors()[0]["loc"][0] == field


def test_run_at_and_delay_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="either run_at or delay"):
        TaskSpec.model_validate({"run_at": datetime.now(UTC), "delay": 5})


def test_run_at_accepts_any_offset() -> None:
    at = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert TaskSpec.model_validate({"run_at": at}).run_at == at


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"a": "x\x00y"}, "NUL"),
        ({"k\x00": 1}, "keys"),
        ({"a": [1, {"b": float("nan")}]}, "finite"),
        ({"a": float("inf")}, "finite"),
        ({"a": {1, 2}}, "not a JSON value"),
    ],
)
def test_payload_must_be_storable_as_jsonb(payload: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_json_value(payload)


def test_payload_depth_is_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(ValueError, match="nested deeper"):
        check_json_value(deep)


def test_json_input_is_strict_but_accepts_iso_datetimes() -> None:
    spec = TaskSpec.model_validate_json('{"run_at": "2030-01-01T00:00:00Z", "payload": {"n": 1}}')
    assert spec.run_at == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError):
        TaskSpec.model_validate_json('{"max_attempts": 2.5}')


def test_ids_are_version_7_and_time_ordered() -> None:
    first = new_task_id()
    time.sleep(0.002)
    second = new_task_id()
    assert first.version == 7
    assert first.variant == uuid.RFC_4122
    assert first < second
    millis = int.from_bytes(second.bytes[:6], "big")
    assert abs(millis / 1000 - time.time()) < 5


def test_parse_task_id() -> None:
    tid = new_task_id()
    assert parse_task_id(str(tid)) == tid
    assert parse_task_id("not-a-uuid") is None
    assert parse_task_id("'; DROP TABLE taskq_tasks; --") is None


def test_public_json_shape() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    task = Task(
        id=uuid.UUID(int=1),
        queue="default",
        kind="echo",
        payload={"a": 1},
        status="queued",
        priority=0,
        run_at=now,
        attempts=0,
        max_attempts=5,
        lease_expires_at=None,
        worker_id=None,
        last_error=None,
        result=None,
        idempotency_key=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
        created=True,
    )
    out = task.to_json()
    assert out["id"] == "00000000-0000-0000-0000-000000000001"
    assert out["run_at"] == "2026-01-02T03:04:05.678000Z"
    assert "created" not in out
    # to_json spells the fields out: a field added to Task must be added there too.
    assert set(out) == {f.name for f in dataclasses.fields(Task)} - {"created"}
    assert set(out) == {
        "id",
        "queue",
        "kind",
        "payload",
        "status",
        "priority",
        "run_at",
        "attempts",
        "max_attempts",
        "lease_expires_at",
        "worker_id",
        "last_error",
        "result",
        "idempotency_key",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "timeout_seconds",
        "cancel_requested_at",
        "snoozes",
        "concurrency_key",
        "depends_on",
        "ref",
        "blocked_by",
        "has_dependents",
        "cancelled_by",
        "batch_id",
    }


@pytest.mark.parametrize("key", ["", "a b", "x" * 65, "é", "a\x00"])
def test_concurrency_key_follows_the_queue_name_rules(key: str) -> None:
    with pytest.raises(ValidationError) as err:
        TaskSpec.model_validate({"kind": "echo", "concurrency_key": key})
    assert err.value.errors()[0]["loc"] == ("concurrency_key",)


def test_concurrency_key_accepts_names_like_queues() -> None:
    assert TaskSpec.model_validate({"concurrency_key": "tenant:42_a.b-c"}).concurrency_key
    assert TaskSpec.model_validate({}).concurrency_key is None


def test_timestamps_are_utc_text_whatever_their_zone() -> None:
    """One instant in two zones gives one text (the spelled-out text is cached by value)."""
    spec = TaskSpec()
    utc = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    plus_two = utc.astimezone(timezone(timedelta(hours=2)))
    for created in (plus_two, utc, plus_two):
        task = Task.inserted(
            spec, id=new_task_id(), run_at=created, created_at=created, max_attempts=3
        )
        shape = task.to_json()
        assert shape["created_at"] == shape["run_at"] == "2030-01-02T03:04:05.600000Z"
