"""app/taskq/logs.py: JSON and text formats, request and task context, nothing secret logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from taskq import logs
from taskq.settings import Settings, load_settings

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


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_client_text_cannot_forge_a_line_or_drive_the_terminal(
    api_client: Any, captured: io.StringIO, log_format: str
) -> None:
    """A crafted path (%0A, ESC, a Unicode line separator) stays inside its one line."""
    client = api_client()
    _configure(captured, log_format=log_format, log_level="INFO")
    client.simulate_get("/x%0A12:00:00%20ERROR%20taskq.api:%20forged%1B[31m%E2%80%A8%0D%C2%9B")
    logging.getLogger("taskq.test").warning("error text %s", "a\nb\x1b[2J", extra={"e": "c\nd"})
    text = captured.getvalue()
    lines = [line for line in text.split("\n") if line]
    assert len(lines) == 2, lines
    for bad in ("\x1b", "\r", "\u2028", "\x9b"):
        assert bad not in text
    if log_format == "json":
        assert json.loads(lines[0])["path"].startswith("/x\n12:00:00 ERROR")
    else:
        assert "/x\\x0a12:00:00 ERROR taskq.api: forged\\x1b[31m\\u2028\\x0d\\x9b" in lines[0]
        assert "a\\x0ab\\x1b[2J" in lines[1]
        assert "e=c\\x0ad" in lines[1]


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


def test_secret_named_fields_are_redacted_in_text_every_time(captured: io.StringIO) -> None:
    _configure(captured, log_format="text")
    for _ in range(2):  # the second record takes the field names' remembered rules
        logging.getLogger("taskq.test").info("careless", extra={"Token": SECRET, "n": 1})
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert all("Token=[redacted]" in line and " n=1" in line for line in lines)
    assert SECRET not in captured.getvalue()


def test_request_ids_of_a_forked_process_do_not_repeat_its_parent(tmp_path: Any) -> None:
    import os

    logs.new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then leave without running pytest's teardown
        os.write(write, logs.new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = logs.new_request_id()
    assert len(child) == len(parent) == 32
    assert child[:16] != parent[:16]


def test_worker_logs_name_the_task_without_its_payload(
    captured: io.StringIO, make_settings: Any, conn: Any
) -> None:
    """Attempts log task id, queue, kind, attempt and duration; never the payload or the
    result. (At DEBUG the worker also logs a failing handler's traceback, whose message
    is the handler's own text.)"""
    from taskq import queue

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


def test_permanent_failures_are_warnings_with_task_kind_and_error(
    captured: io.StringIO, make_settings: Any, conn: Any
) -> None:
    """NonRetryableError, attempts used up and an unknown kind: the task will not run
    again, so the log says which, of what kind, and why (never the payload)."""
    from taskq import queue

    settings: Settings = make_settings(log_format="json", log_level="WARNING")
    logs.configure(settings)
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    final = queue.enqueue(conn, "fail", {"retryable": False, "message": "bad\ninput", "s": SECRET})
    used_up = queue.enqueue(conn, "fail", {"message": "flaky", "s": SECRET}, max_attempts=1)
    unknown = queue.enqueue(conn, "no_such_kind", {"s": SECRET})
    tasks = (final, used_up, unknown)
    with running_worker(settings, fresh_registry()):
        wait_until(lambda: all(queue.get(conn, t.id).finished for t in tasks), what="all failed")
    records = _json_lines(captured)
    assert SECRET not in captured.getvalue()
    for task, error in (
        (final, "(not retryable): NonRetryableError"),
        (used_up, "(attempts used up): RuntimeError"),
        (unknown, "(not retryable): no handler for kind 'no_such_kind'"),
    ):
        found = [
            r for r in records if r.get("task_id") == str(task.id) and "failed for good" in r["msg"]
        ]
        assert len(found) == 1, (task.kind, records)
        assert found[0]["level"] == "warning"
        assert found[0]["kind"] == task.kind
        assert str(task.id) in found[0]["msg"]
        assert error in found[0]["msg"]
        assert "input" not in found[0]["msg"]  # a handler's message may quote the payload


# ---------------------------------------------------------------- API requests


@pytest.fixture
def api_client(make_settings: Any) -> Iterator[Any]:
    import falcon.testing
    from taskq import db
    from taskq.api import Deps, create_app

    made: list[Any] = []

    def make(**overrides: Any) -> Any:
        settings = make_settings(**overrides)
        pool = db.create_pool(settings, name="test")
        made.append(pool)
        return falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )

    yield make
    for pool in made:
        pool.close()


def test_request_ids_are_kept_or_made_and_returned(api_client: Any) -> None:
    client = api_client()
    given = client.simulate_get("/live", headers={"X-Request-ID": "trace-01:abc/7"})
    assert given.headers["x-request-id"] == "trace-01:abc/7"
    for bad in ("has spaces", "x" * 129, 'quote"', "ünïcode"):
        result = client.simulate_get("/live", headers={"X-Request-ID": bad})
        made = result.headers["x-request-id"]
        assert made != bad
        assert len(made) == 32
    assert client.simulate_get("/nowhere").headers["x-request-id"]  # on errors too


def test_one_access_line_per_request_with_the_request_and_task(
    api_client: Any, captured: io.StringIO
) -> None:
    client = api_client()
    _configure(captured, log_format="json", log_level="INFO")
    created = client.simulate_post(
        "/tasks",
        json={"payload": {"card": SECRET}},
        headers={"X-Request-ID": "req-7", "Authorization": f"Bearer {SECRET}"},
    ).json
    client.simulate_get(f"/tasks/{created['id']}?cursor={SECRET}")
    client.simulate_get("/live")  # probes: DEBUG only
    lines = [r for r in _json_lines(captured) if r["logger"] == "taskq.access"]
    assert [(r["method"], r["route"], r["status"]) for r in lines] == [
        ("POST", "/tasks", 201),
        ("GET", "/tasks/{task_id}", 200),
    ]
    assert lines[0]["request_id"] == "req-7"
    assert lines[0]["task_id"] == created["id"] == lines[1]["task_id"]
    assert all(isinstance(r["duration_ms"], float) for r in lines)
    assert SECRET not in captured.getvalue()  # no payload, header or query string


def test_text_access_lines_do_not_repeat_their_message(
    api_client: Any, captured: io.StringIO
) -> None:
    client = api_client()
    _configure(captured, log_format="text", log_level="INFO")
    created = client.simulate_post("/tasks", json={}, headers={"X-Request-ID": "req-8"}).json
    client.simulate_get(f"/tasks/{created['id']}")
    lines = [line for line in captured.getvalue().splitlines() if "taskq.access:" in line]
    assert len(lines) == 2
    assert "taskq.access: POST /tasks 201 " in lines[0]
    assert f" task_id={created['id']}" in lines[0]
    assert " request_id=req-8" in lines[0]
    for field in ("method=", "path=", "status=", "duration_ms=", "route="):
        assert field not in lines[0]
    # A route differs from its path when it has parameters: the line names it.
    assert f"GET /tasks/{created['id']} 200 " in lines[1]
    assert " route=/tasks/{task_id}" in lines[1]
    assert "status=" not in lines[1]


def test_request_lines_move_to_debug_when_asked(api_client: Any, captured: io.StringIO) -> None:
    client = api_client(log_requests=False)
    _configure(captured, log_format="json", log_level="INFO")
    client.simulate_post("/tasks", json={})
    assert [r for r in _json_lines(captured) if r["logger"] == "taskq.access"] == []


def test_a_worker_on_a_wrong_database_url_says_what_is_wrong(
    captured: io.StringIO, make_settings: Any, server_url: str
) -> None:
    """Started against a role that does not exist, the worker's first warning names it
    (it keeps retrying: the role may yet be created)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params: dict[str, Any] = conninfo_to_dict(server_url)
    url = make_conninfo(**{**params, "user": "taskq_no_such_role", "dbname": "postgres"})
    settings: Settings = make_settings(database_url=url, log_format="text")
    logs.configure(settings)
    logging.getLogger().handlers[0].setStream(captured)  # type: ignore[attr-defined]
    with running_worker(settings):
        wait_until(
            lambda: any(
                "cannot claim" in line and 'role "taskq_no_such_role" does not exist' in line
                for line in captured.getvalue().splitlines()
            ),
            what="the worker to name the missing role",
        )
