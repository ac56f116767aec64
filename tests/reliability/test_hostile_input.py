"""A corpus of hostile requests against the real gunicorn server: every one gets a 4xx in
the one JSON error shape, SQL metacharacters are stored verbatim and never executed, and
the tasks accepted before the corpus are untouched."""

from __future__ import annotations

import json
import socket
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.reliability.conftest import Metrics
from tests.reliability.harness import Processes, Response, request

pytestmark = pytest.mark.reliability

JSON = "application/json"


def _nested(depth: int) -> str:
    return '{"kind": "echo", "payload": {"a": ' + "[" * depth + "]" * depth + "}}"


# (name, method, path, body, headers, content type, allowed statuses)
Case = tuple[str, str, str, bytes | None, dict[str, str], str | None, set[int]]
CORPUS: list[Case] = [
    ("truncated JSON", "POST", "/tasks", b'{"kind": "echo",', {}, JSON, {400}),
    ("not JSON", "POST", "/tasks", b"kind=echo", {}, JSON, {400}),
    ("empty body", "POST", "/tasks", b"", {}, JSON, {400}),
    ("JSON with a BOM", "POST", "/tasks", b'\xef\xbb\xbf{"kind": "echo"}', {}, JSON, {400}),
    ("top-level array", "POST", "/tasks", b'[{"kind": "echo"}]', {}, JSON, {400, 422}),
    ("top-level string", "POST", "/tasks", b'"echo"', {}, JSON, {400, 422}),
    ("top-level null", "POST", "/tasks", b"null", {}, JSON, {400, 422}),
    ("kind is a number", "POST", "/tasks", b'{"kind": 5}', {}, JSON, {422}),
    ("payload is a string", "POST", "/tasks", b'{"payload": "x"}', {}, JSON, {422}),
    ("payload is a list", "POST", "/tasks", b'{"payload": [1]}', {}, JSON, {422}),
    ("priority is a string", "POST", "/tasks", b'{"priority": "5"}', {}, JSON, {422}),
    ("priority is a float", "POST", "/tasks", b'{"priority": 1.5}', {}, JSON, {422}),
    ("max_attempts is a bool", "POST", "/tasks", b'{"max_attempts": true}', {}, JSON, {422}),
    ("queue is null", "POST", "/tasks", b'{"queue": null}', {}, JSON, {422}),
    ("delay is a string", "POST", "/tasks", b'{"delay": "10"}', {}, JSON, {422}),
    ("unknown field", "POST", "/tasks", b'{"kind": "echo", "owner": "x"}', {}, JSON, {422}),
    ("unknown kind", "POST", "/tasks", b'{"kind": "rm_rf"}', {}, JSON, {422}),
    ("negative priority overflow", "POST", "/tasks", b'{"priority": -40000}', {}, JSON, {422}),
    (
        "priority past int64",
        "POST",
        "/tasks",
        b'{"priority": 9223372036854775808}',
        {},
        JSON,
        {422},
    ),
    (
        "priority of 400 digits",
        "POST",
        "/tasks",
        b'{"priority": 1' + b"0" * 400 + b"}",
        {},
        JSON,
        {400, 422},
    ),
    ("max_attempts zero", "POST", "/tasks", b'{"max_attempts": 0}', {}, JSON, {422}),
    ("max_attempts negative", "POST", "/tasks", b'{"max_attempts": -1}', {}, JSON, {422}),
    ("max_attempts past int32", "POST", "/tasks", b'{"max_attempts": 4294967296}', {}, JSON, {422}),
    ("negative delay", "POST", "/tasks", b'{"delay": -1}', {}, JSON, {422}),
    ("infinite delay", "POST", "/tasks", b'{"delay": 1e400}', {}, JSON, {400, 422}),
    ("delay of ten centuries", "POST", "/tasks", b'{"delay": 31536000000}', {}, JSON, {422}),
    ("run_at year 1", "POST", "/tasks", b'{"run_at": "0001-01-01T00:00:00Z"}', {}, JSON, {422}),
    ("run_at year 9999", "POST", "/tasks", b'{"run_at": "9999-12-31T23:59:59Z"}', {}, JSON, {422}),
    (
        "run_at year 275760",
        "POST",
        "/tasks",
        b'{"run_at": "+275760-09-13T00:00:00Z"}',
        {},
        JSON,
        {422},
    ),
    (
        "run_at without zone",
        "POST",
        "/tasks",
        b'{"run_at": "2030-01-01T00:00:00"}',
        {},
        JSON,
        {422},
    ),
    ("run_at nonsense", "POST", "/tasks", b'{"run_at": "tomorrow"}', {}, JSON, {422}),
    (
        "run_at and delay",
        "POST",
        "/tasks",
        b'{"run_at": "2030-01-01T00:00:00Z", "delay": 1}',
        {},
        JSON,
        {422},
    ),
    (
        "NUL in a payload string",
        "POST",
        "/tasks",
        b'{"payload": {"a": "x\\u0000y"}}',
        {},
        JSON,
        {422},
    ),
    ("NUL in a payload key", "POST", "/tasks", b'{"payload": {"a\\u0000": 1}}', {}, JSON, {422}),
    ("NUL in kind", "POST", "/tasks", b'{"kind": "echo\\u0000"}', {}, JSON, {422}),
    (
        "NUL in idempotency key",
        "POST",
        "/tasks",
        b'{"idempotency_key": "k\\u0000"}',
        {},
        JSON,
        {422},
    ),
    ("lone surrogate", "POST", "/tasks", b'{"payload": {"a": "\\ud800"}}', {}, JSON, {400, 422}),
    ("invalid UTF-8", "POST", "/tasks", b'{"payload": {"a": "\xff\xfe"}}', {}, JSON, {400}),
    ("overlong UTF-8", "POST", "/tasks", b'{"payload": {"a": "\xc0\xaf"}}', {}, JSON, {400}),
    ("NaN in payload", "POST", "/tasks", b'{"payload": {"a": NaN}}', {}, JSON, {400, 422}),
    (
        "Infinity in payload",
        "POST",
        "/tasks",
        b'{"payload": {"a": Infinity}}',
        {},
        JSON,
        {400, 422},
    ),
    ("nested 100 deep", "POST", "/tasks", _nested(100).encode(), {}, JSON, {400, 422}),
    ("nested 100000 deep", "POST", "/tasks", _nested(100_000).encode(), {}, JSON, {400, 413, 422}),
    (
        "body over 1 MiB",
        "POST",
        "/tasks",
        b'{"payload": {"a": "' + b"x" * (1 << 20) + b'"}}',
        {},
        JSON,
        {413},
    ),
    ("no content type", "POST", "/tasks", b'{"kind": "echo"}', {}, None, {415}),
    ("text/plain", "POST", "/tasks", b'{"kind": "echo"}', {}, "text/plain", {415}),
    (
        "form content type",
        "POST",
        "/tasks",
        b"kind=echo",
        {},
        "application/x-www-form-urlencoded",
        {415},
    ),
    (
        "queue with SQL",
        "POST",
        "/tasks",
        b'{"queue": "q\'; DROP TABLE taskq_tasks; --"}',
        {},
        JSON,
        {422},
    ),
    ("kind with SQL", "POST", "/tasks", b"{\"kind\": \"echo' OR '1'='1\"}", {}, JSON, {422}),
    (
        "idempotency header too long",
        "POST",
        "/tasks",
        b"{}",
        {"Idempotency-Key": "k" * 300},
        JSON,
        {422},
    ),
    (
        "idempotency header control char",
        "POST",
        "/tasks",
        b"{}",
        {"Idempotency-Key": "a\x7fb"},
        JSON,
        {400, 422},
    ),
    ("header of 16 KiB", "GET", "/tasks", None, {"X-Filler": "a" * 16384}, None, {400, 431}),
    ("200 headers", "GET", "/tasks", None, {f"X-H{i}": "v" for i in range(200)}, None, {400, 431}),
    ("URL of 20 KiB", "GET", "/tasks?kind=" + "a" * 20000, None, {}, None, {400, 414}),
    ("empty batch", "POST", "/tasks/batch", b'{"tasks": []}', {}, JSON, {422}),
    (
        "batch is not a list",
        "POST",
        "/tasks/batch",
        b'{"tasks": {"kind": "echo"}}',
        {},
        JSON,
        {422},
    ),
    (
        "batch of 1001",
        "POST",
        "/tasks/batch",
        json.dumps({"tasks": [{}] * 1001}).encode(),
        {},
        JSON,
        {413, 422},
    ),
    (
        "batch with one bad task",
        "POST",
        "/tasks/batch",
        json.dumps({"tasks": [{}] * 5 + [{"kind": "nope"}]}).encode(),
        {},
        JSON,
        {422},
    ),
    (
        "batch with one NUL",
        "POST",
        "/tasks/batch",
        b'{"tasks": [{}, {"payload": {"a": "\\u0000"}}]}',
        {},
        JSON,
        {422},
    ),
    (
        "list status with SQL",
        "GET",
        "/tasks?status=queued%27%20OR%201%3D1%20--",
        None,
        {},
        None,
        {422},
    ),
    (
        "list queue with SQL",
        "GET",
        "/tasks?queue=%27%3B%20DELETE%20FROM%20taskq_tasks%3B%20--",
        None,
        {},
        None,
        {422},
    ),
    ("list negative limit", "GET", "/tasks?limit=-1", None, {}, None, {422}),
    ("list huge limit", "GET", "/tasks?limit=99999999999999999999999", None, {}, None, {422}),
    ("list bad cursor", "GET", "/tasks?cursor=%27%20OR%201%3D1", None, {}, None, {422}),
    ("list NUL kind", "GET", "/tasks?kind=a%00b", None, {}, None, {422}),
    ("id with SQL", "GET", "/tasks/%27%20OR%201%3D1%20--", None, {}, None, {404}),
    ("id with NUL", "GET", "/tasks/%00", None, {}, None, {404}),
    ("id path traversal", "GET", "/tasks/..%2F..%2Fetc%2Fpasswd", None, {}, None, {404}),
    ("cancel a malformed id", "POST", "/tasks/not-a-uuid/cancel", None, {}, None, {404}),
    ("unknown route", "GET", "/admin", None, {}, None, {404}),
    ("method not allowed", "DELETE", "/tasks", None, {}, None, {405}),
]
# Raw bytes for what no well-behaved client library would send.
_HOST = b"Host: x\r\n"
_CHUNKED_JSON = (
    b"POST /tasks HTTP/1.1\r\n" + _HOST + b"Content-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_CHUNK_64K = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
_GET = b"GET /tasks HTTP/1.1\r\n" + _HOST
_POST = b"POST /tasks HTTP/1.1\r\n" + _HOST
RAW: list[tuple[str, bytes, set[int]]] = [
    ("header without colon", _GET + b"Authorization Bearer abc\r\n\r\n", {400}),
    ("garbage request line", b"\x16\x03\x01\x02\x00 / HTTP/1.1\r\n\r\n", {400}),
    ("bad Content-Length", _POST + b"Content-Length: -5\r\n\r\n", {400}),
    ("bad chunk size", _CHUNKED_JSON + b"zz\r\n{}\r\n0\r\n\r\n", {400}),
    ("chunked body over 1 MiB", _CHUNKED_JSON + _CHUNK_64K * 17 + b"0\r\n\r\n", {413}),
    ("NUL in a header", _GET + b"X-A: a\x00b\r\n\r\n", {400}),
]  # fmt: skip

# Accepted, stored verbatim, never executed.
SQL_STRINGS = [
    "'; DROP TABLE taskq_tasks; --",
    '" OR 1=1 --',
    "$$; DELETE FROM taskq_tasks; $$",
    "%(id)s %s {0} \\x00 \\\\",
    "'); SELECT pg_sleep(10); --",
    "\u202e\ufeff\u200b unicode oddities \U0001f600",
]


def _raw(port: int, data: bytes) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


@pytest.fixture(scope="module")
def accepted_before(
    api_server: tuple[int, Processes], module_database_url: str
) -> list[dict[str, Any]]:
    port, _ = api_server
    tasks = []
    for i, payload in enumerate([{"n": 1}, {"nested": {"list": [1, 2.5, None, True]}}, {}]):
        resp = request(port, "POST", "/tasks", {"kind": "echo", "payload": payload, "priority": i})
        assert resp.status == 201
        tasks.append(resp.json())
    return tasks


def _count(url: str) -> int:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()
        assert row is not None
        return int(row["n"])


def test_hostile_corpus_gets_4xx_json_errors(
    api_server: tuple[int, Processes],
    module_database_url: str,
    accepted_before: list[dict[str, Any]],
    metrics: Metrics,
) -> None:
    port, procs = api_server
    before = _count(module_database_url)
    failures = []
    by_status: dict[int, int] = {}
    for name, method, path, body, headers, content_type, allowed in CORPUS:
        resp = request(port, method, path, body, headers=headers, content_type=content_type)
        by_status[resp.status] = by_status.get(resp.status, 0) + 1
        if resp.status not in allowed or not resp.is_json_error:
            failures.append(f"{name}: {resp.status} {resp.body[:200]!r}")
    for name, data, allowed in RAW:
        resp = _raw(port, data)
        by_status[resp.status] = by_status.get(resp.status, 0) + 1
        if resp.status not in allowed or not resp.is_json_error:
            failures.append(f"{name} (raw): {resp.status} {resp.body[:200]!r}")
        # An oversized body is left unread: the answer closes the connection (`_raw` reads
        # until the server closes), rather than keeping it open for a next request.
        if resp.status == 413 and resp.headers.get("connection") != "close":
            failures.append(f"{name} (raw): 413 without Connection: close")
    assert not failures, "\n".join(failures)
    assert _count(module_database_url) == before, "a refused request inserted a task"
    for task in accepted_before:
        # GET shows the task with its graph (none here): the task's own fields unchanged.
        assert request(port, "GET", f"/tasks/{task['id']}").json() == {
            **task,
            "parents": [],
            "dependents": [],
        }
    assert "Traceback" not in procs.logs()
    metrics.record(
        "hostile_corpus",
        requests=len(CORPUS) + len(RAW),
        responses_by_status={str(k): v for k, v in sorted(by_status.items())},
        responses_5xx=sum(v for k, v in by_status.items() if k >= 500),
        non_json_errors=0,
        accepted_tasks_changed=0,
    )


def test_sql_metacharacters_are_stored_verbatim(
    api_server: tuple[int, Processes],
    module_database_url: str,
    accepted_before: list[dict[str, Any]],
) -> None:
    port, _ = api_server
    before = _count(module_database_url)
    ids = []
    for i, text in enumerate(SQL_STRINGS):
        payload = {text: text, "list": [text], "nested": {"k": text}}
        key = f"{text}-{i}" if text.isprintable() else None
        resp = request(
            port, "POST", "/tasks", {"kind": "echo", "payload": payload, "idempotency_key": key}
        )
        assert resp.status == 201, resp
        stored = request(port, "GET", f"/tasks/{resp.json()['id']}").json()
        assert stored["payload"] == payload
        assert stored["idempotency_key"] == key
        ids.append(stored["id"])
        listed = request(port, "GET", "/tasks?kind=" + "%27%20OR%20%271%27%3D%271")
        assert listed.status == 422  # not a kind name: refused as a value, never run as SQL
        assert request(port, "GET", "/tasks?kind=x%27--").status == 422
    assert _count(module_database_url) == before + len(SQL_STRINGS)
    for task in accepted_before:
        # GET shows the task with its graph (none here): the task's own fields unchanged.
        assert request(port, "GET", f"/tasks/{task['id']}").json() == {
            **task,
            "parents": [],
            "dependents": [],
        }


def test_a_body_far_over_the_limit_gets_its_413_never_a_reset(
    api_server: tuple[int, Processes],
) -> None:
    """The API answers 413 without reading an oversized body, then closes lingering: what
    the client still sends is taken in and dropped, so no reset destroys the answer (a
    plain close made about half of these end in "connection reset by peer")."""
    port, _ = api_server
    big = b" " * (4 * 1024 * 1024)
    declared = (
        _POST + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    )
    chunked = _CHUNKED_JSON + _CHUNK_64K * 64 + b"0\r\n\r\n"
    for data in [declared, chunked] * 5:
        resp = _raw(port, data)
        assert resp.status == 413
        assert resp.is_json_error
        assert resp.headers.get("connection") == "close"
