"""app/logs.py: JSON and text formats, request and task context, nothing secret logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app import logs
from app.settings import Settings, load_settings
from tests.helpers import wait_until
from tests.worker_helpers import fresh_registry, running_worker

SECRET = "s3cr3t-payload-marker-7731"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root handler that logs.configure installed, writing into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    yield buffer
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _configure(buffer: io.StringIO, **overrides: Any) -> None:
    logs.configure(load_settings(**overrides))
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)


def _json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be one JSON object


def test_json_lines_carry_request_and_task_context(captured: io.StringIO) -> None:
    _configure(captured, log_format="json", log_level="DEBUG")
    log = logging.getLogger("taskq.test")
    with logs.request_context("req-42"):
        log.info("inside a request", extra={"duration_ms": 1.5})
    with logs.task_context("t-1", "emails", "send", 3):
        log.warning("inside a task")
    log.info("outside")
    first, second, third = _json_lines(captured)
    assert first["request_id"] == "req-42"
    assert first["duration_ms"] == 1.5
    assert first["msg"] == "inside a request"
    assert {"ts", "level", "logger"} <= set(first)
    assert second["level"] == "warning"
    assert (second["task_id"], second["queue"], second["kind"], second["attempt"]) == (
        "t-1",
        "emails",
        "send",
        3,
    )
    assert "request_id" not in third
    assert "task_id" not in third


def test_text_format_is_readable_with_fields_after_the_message(captured: io.StringIO) -> None:
    _configure(captured, log_format="text", log_level="INFO")
    with logs.request_context("abc"):
        logging.getLogger("taskq.access").info("GET /tasks 200", extra={"status": 200})
    line = captured.getvalue().strip()
    assert "INFO" in line
    assert "taskq.access: GET /tasks 200" in line
    assert " status=200" in line
    assert " request_id=abc" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_setting_filters(captured: io.StringIO) -> None:
    _configure(captured, log_format="json", log_level="WARNING")
    logging.getLogger("taskq.test").info("hidden")
    logging.getLogger("taskq.test").warning("shown")
    assert [r["msg"] for r in _json_lines(captured)] == ["shown"]


def test_secret_named_fields_are_redacted(captured: io.StringIO) -> None:
    _configure(captured, log_format="json")
    logging.getLogger("taskq.test").info(
        "careless", extra={"payload": {"card": SECRET}, "token": SECRET, "result": SECRET}
    )
    (record,) = _json_lines(captured)
    assert SECRET not in json.dumps(record)
    assert record["payload"] == "[redacted]"


def test_worker_logs_name_the_task_without_its_payload(
    captured: io.StringIO, make_settings: Any, conn: Any
) -> None:
    """Attempts log task id, queue, kind, attempt and duration; never the payload or the
    result. (At DEBUG the worker also logs a failing handler's traceback, whose message
    is the handler's own text.)"""
    from app import queue

    settings: Settings = make_settings(log_format="json", log_level="DEBUG")
    logs.configure(settings)
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    ok = queue.enqueue(conn, "echo", {"secret": SECRET}, queue="mail")
    bad = queue.enqueue(
        conn, "fail", {"message": "card declined", "card": SECRET}, queue="mail", max_attempts=1
    )
    with running_worker(settings, fresh_registry(), queues=["mail"]):
        wait_until(
            lambda: all(queue.get(conn, t.id).finished for t in (ok, bad)),
            what="both tasks finished",
        )
    records = _json_lines(captured)
    assert SECRET not in captured.getvalue()
    finished = [r for r in records if r.get("task_id") == str(ok.id) and "duration_ms" in r]
    assert finished, records
    assert finished[0]["queue"] == "mail"
    assert finished[0]["kind"] == "echo"
    assert finished[0]["attempt"] == 1
    assert finished[0]["outcome"] == "succeeded"
    raised = [r for r in records if r.get("task_id") == str(bad.id) and r["level"] == "warning"]
    assert raised, records
    assert raised[0]["kind"] == "fail"
