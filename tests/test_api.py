"""app/taskq/api in-process through Falcon's test client, against a real PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import psycopg
import pytest
from openapi_spec_validator import validate as validate_spec
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from pydantic import BaseModel
from taskq import db
from taskq import queue as q
from taskq.api import Deps, create_app
from taskq.api.asgi import on_loop
from taskq.handlers import Registry, register_builtins
from taskq.settings import Settings, load_settings

from tests.helpers import free_port

Conn = psycopg.Connection[dict[str, Any]]
Client = falcon.testing.TestClient
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    """One clone of the migrated template for this module (emptied before each test).

    Overrides the per-test clone of conftest: cloning a database per test would cost more
    than every request of this module together.
    """
    name = f"taskq_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    params: dict[str, Any] = conninfo_to_dict(server_url)
    yield make_conninfo(**{**params, "dbname": name})
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(autouse=True)
def _empty_tasks(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("TRUNCATE taskq_tasks")


class Order(BaseModel):
    """The payload of the typed kind `order`."""

    order_id: int
    lines: list[int] = []


def _registry() -> Registry:
    registry = Registry()
    register_builtins(registry)
    registry.register("order", lambda order: None, payload=Order, max_attempts=3)
    return registry


def _client(settings: Settings) -> tuple[Client, Any, falcon.App[Any, Any]]:
    pool = db.create_pool(settings, name="test")
    app = create_app(settings, Deps(pool=pool, registry=_registry()))
    return falcon.testing.TestClient(app), pool, app


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Client]]:
    pools: list[Any] = []

    def make(**overrides: Any) -> Client:
        client, pool, _ = _client(make_settings(**overrides))
        pools.append(pool)
        return client

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()


def post(client: Client, path: str, body: Any, **headers: str) -> falcon.testing.Result:
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.simulate_post(path, body=raw, headers={**JSON, **headers})


def submit(client: Client, body: Any = None, **headers: str) -> dict[str, Any]:
    result = post(client, "/tasks", {} if body is None else body, **headers)
    assert result.status_code in (200, 201), result.text
    out: dict[str, Any] = result.json
    return out


def assert_error(
    result: falcon.testing.Result, status: int, *, field: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The one error shape: {"error": {"status", "code", "message", "field"?, "details"?}}."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    body = result.json
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) <= {"status", "code", "message", "field", "details"}
    assert error["status"] == status
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in result.text
    if field is not None:
        assert error.get("field") == field, error
    if code is not None:
        assert error["code"] == code, error
    for detail in error.get("details", []):
        assert set(detail) == {"field", "message"}
    out: dict[str, Any] = error
    return out


def count_tasks(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()
    assert row is not None
    return int(row["n"])


# ------------------------------------------------------------------ POST /tasks


def test_submit_returns_201_with_the_task_and_a_location(client: Client, conn: Conn) -> None:
    result = post(client, "/tasks", {"kind": "echo", "payload": {"input": "hello"}})
    assert result.status_code == 201
    assert result.headers["content-type"] == "application/json"
    task = result.json
    assert result.headers["location"].endswith(f"/tasks/{task['id']}")
    assert task["kind"] == "echo"
    assert task["payload"] == {"input": "hello"}
    assert task["status"] == "queued"
    assert task["queue"] == "default"
    assert (task["priority"], task["attempts"], task["max_attempts"]) == (0, 0, 5)
    assert task["result"] is None
    assert task["run_at"].endswith("Z")
    stored = q.get(conn, uuid.UUID(task["id"]))
    assert stored.to_json() == task


def test_payloads_come_back_as_sent_whatever_orjson_cannot_encode(client: Client) -> None:
    # Unicode stays UTF-8 (not \\u escapes); an integer beyond 64 bits, which orjson
    # refuses, is written by json.dumps instead of failing the response.
    payload = {"text": "grüße 🚀", "big": 2**70, "nested": [1.5, None, True]}
    result = post(client, "/tasks", {"payload": payload})
    assert result.status_code == 201, result.text
    assert result.json["payload"] == payload
    assert "grüße 🚀".encode() in result.content
    many = post(client, "/tasks/batch", {"tasks": [{"payload": payload}] * 2})
    assert many.status_code == 201, many.text
    assert [t["payload"] for t in many.json["tasks"]] == [payload, payload]


def test_kind_defaults_to_echo_and_options_are_kept(client: Client) -> None:
    assert submit(client, {"payload": {"x": 1}})["kind"] == "echo"
    run_at = datetime.now(UTC) + timedelta(hours=1)
    task = submit(
        client,
        {
            "kind": "sleep",
            "queue": "emails",
            "priority": 7,
            "max_attempts": 2,
            "run_at": run_at.isoformat(),
        },
    )
    assert (task["kind"], task["queue"], task["priority"], task["max_attempts"]) == (
        "sleep",
        "emails",
        7,
        2,
    )
    assert datetime.fromisoformat(task["run_at"]) == run_at
    delayed = submit(client, {"delay": 3600})
    assert datetime.fromisoformat(delayed["run_at"]) > datetime.now(UTC) + timedelta(minutes=59)


def test_idempotency_key_header_returns_the_same_task(client: Client, conn: Conn) -> None:
    first = post(client, "/tasks", {"payload": {"n": 1}}, **{"Idempotency-Key": "order-1"})
    again = post(client, "/tasks", {"payload": {"n": 2}}, **{"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json == first.json
    assert again.headers["location"] == first.headers["location"]
    assert first.json["idempotency_key"] == "order-1"
    assert count_tasks(conn) == 1


def test_idempotency_key_field_and_matching_header(client: Client, conn: Conn) -> None:
    first = post(client, "/tasks", {"idempotency_key": "k-2"})
    same = post(client, "/tasks", {"idempotency_key": "k-2"}, **{"Idempotency-Key": "k-2"})
    assert (first.status_code, same.status_code) == (201, 200)
    assert same.json["id"] == first.json["id"]
    assert count_tasks(conn) == 1


def test_idempotency_key_header_and_field_differing_is_422(client: Client, conn: Conn) -> None:
    result = post(client, "/tasks", {"idempotency_key": "a"}, **{"Idempotency-Key": "b"})
    assert_error(result, 422, field="idempotency_key")
    assert count_tasks(conn) == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "nul\x00"])
def test_bad_idempotency_key_headers_are_422(client: Client, conn: Conn, key: str) -> None:
    result = post(client, "/tasks", {}, **{"Idempotency-Key": key})
    assert_error(result, 422, field="Idempotency-Key")
    assert count_tasks(conn) == 0


def test_concurrent_submits_with_one_key_create_one_task(client: Client, conn: Conn) -> None:
    barrier = threading.Barrier(8)
    results: list[falcon.testing.Result] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        barrier.wait(timeout=10)
        result = post(client, "/tasks", {"payload": {"n": n}}, **{"Idempotency-Key": "race"})
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8
    assert sorted(r.status_code for r in results) == [200] * 7 + [201]
    assert len({r.json["id"] for r in results}) == 1
    assert count_tasks(conn) == 1


def test_sql_metacharacters_are_stored_verbatim(client: Client, conn: Conn) -> None:
    nasty = "'; DROP TABLE taskq_tasks; -- $1 %s %(x)s \\ \" `"
    payload = {nasty: nasty, "list": [nasty, None, True, 1.5, -3], "emoji": "\U0001f600é"}
    task = submit(client, {"payload": payload, "idempotency_key": "k'; --"})
    assert task["payload"] == payload
    fetched = client.simulate_get(f"/tasks/{task['id']}").json
    assert fetched["payload"] == payload
    assert fetched["idempotency_key"] == "k'; --"
    assert count_tasks(conn) == 1


# ------------------------------------------------------------------ input errors


def test_malformed_json_is_400(client: Client) -> None:
    assert_error(post(client, "/tasks", '{"kind": "echo",'), 400)
    assert_error(post(client, "/tasks", "{'kind': 'echo'}"), 400)


def test_invalid_utf8_is_400(client: Client) -> None:
    assert_error(post(client, "/tasks", b'{"payload": {"s": "\xff\xfe"}}'), 400)
    # A lone surrogate cannot be stored as text either.
    assert_error(post(client, "/tasks", '{"payload": {"s": "\\ud800"}}'), 400)


@pytest.mark.parametrize("body", ["", "   \n"])
def test_empty_body_is_400(client: Client, body: str) -> None:
    assert_error(post(client, "/tasks", body), 400)


@pytest.mark.parametrize("body", ["[]", '[{"kind": "echo"}]', "null", "42", '"echo"'])
def test_a_body_that_is_not_an_object_is_422(client: Client, body: str) -> None:
    assert_error(post(client, "/tasks", body), 422, field="body")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": "5"}, "priority"),
        ({"priority": 5.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 40_000}, "priority"),
        ({"payload": []}, "payload"),
        ({"payload": "x"}, "payload"),
        ({"payload": None}, "payload"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"delay": -1}, "delay"),
        ({"delay": "10"}, "delay"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"run_at": "next tuesday"}, "run_at"),
        ({"run_at": 1700000000}, "run_at"),
        ({"run_at": "9999-12-31T23:59:59Z"}, "run_at"),
        ({"queue": "has space"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"kind": 5}, "kind"),
        ({"kind": "a/b"}, "kind"),
        ({"idempotency_key": 5}, "idempotency_key"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_wrong_fields_are_422_naming_the_field(
    client: Client, conn: Conn, body: dict[str, Any], field: str
) -> None:
    error = assert_error(post(client, "/tasks", body), 422, field=field)
    assert error["details"][0]["field"] == field
    assert count_tasks(conn) == 0


def test_run_at_and_delay_together_is_422(client: Client) -> None:
    body = {"run_at": "2030-01-01T00:00:00Z", "delay": 5}
    error = assert_error(post(client, "/tasks", body), 422)
    assert "run_at" in error["message"]
    assert "delay" in error["message"]


def test_run_at_with_any_iso_offset_is_accepted(client: Client) -> None:
    """ISO 8601 allows offsets up to 23:59 (PostgreSQL only to 15:59): stored in UTC."""
    result = post(client, "/tasks", {"run_at": "2030-01-01T20:00:00+18:29"})
    assert result.status_code == 201, result.text
    assert result.json["run_at"] == "2030-01-01T01:31:00Z"


def test_unknown_kind_is_422_naming_kind(client: Client) -> None:
    error = assert_error(post(client, "/tasks", {"kind": "nope"}), 422, field="kind")
    assert "echo" in error["message"]  # it tells what the known kinds are


@pytest.mark.parametrize(
    "body",
    [
        '{"payload": {"s": "a\\u0000b"}}',
        '{"payload": {"a\\u0000": 1}}',
        '{"payload": {"deep": [{"s": "\\u0000"}]}}',
        '{"idempotency_key": "k\\u0000"}',
        '{"kind": "echo\\u0000"}',
        '{"queue": "q\\u0000"}',
    ],
)
def test_nul_characters_are_refused_not_500(client: Client, conn: Conn, body: str) -> None:
    result = post(client, "/tasks", body)
    assert 400 <= result.status_code < 500, result.text
    assert_error(result, result.status_code)
    assert count_tasks(conn) == 0


@pytest.mark.parametrize(
    "body",
    [
        '{"payload": {"n": NaN}}',
        '{"payload": {"n": Infinity}}',
        '{"payload": {"n": -Infinity}}',
        '{"payload": {"n": 1e400}}',
        '{"delay": NaN}',
        '{"delay": Infinity}',
    ],
)
def test_non_finite_numbers_are_refused(client: Client, conn: Conn, body: str) -> None:
    result = post(client, "/tasks", body)
    assert result.status_code in (400, 422), result.text
    assert_error(result, result.status_code)
    assert count_tasks(conn) == 0


def test_deep_and_huge_values_are_refused_not_500(client: Client, conn: Conn) -> None:
    deep = '{"payload": {"a": ' + "[" * 100 + "]" * 100 + "}}"
    assert post(client, "/tasks", deep).status_code in (400, 422)
    very_deep = '{"payload": {"a": ' + "[" * 5000 + "]" * 5000 + "}}"
    assert post(client, "/tasks", very_deep).status_code in (400, 422)
    huge_int = '{"payload": {"n": ' + "9" * 5000 + "}}"
    assert post(client, "/tasks", huge_int).status_code in (400, 422)
    assert count_tasks(conn) == 0


def test_body_over_the_limit_is_413(make_client: Callable[..., Client], conn: Conn) -> None:
    client = make_client(api_max_body_bytes=1024)
    body = json.dumps({"payload": {"s": "x" * 2000}})
    assert_error(post(client, "/tasks", body), 413)
    assert_error(post(client, "/tasks/batch", body), 413)
    assert post(client, "/tasks", {"payload": {"s": "x" * 900}}).status_code == 201
    assert count_tasks(conn) == 1


def _chunked(client: Client, path: str, body: bytes) -> falcon.testing.Result:
    """A request without Content-Length, as a server hands over a chunked body (the
    ASGI server de-chunks it into body events; a WSGI server into a terminated input)."""
    headers = {**JSON, "Transfer-Encoding": "chunked"}
    if isinstance(client.app, falcon.asgi.App):
        scope = falcon.testing.create_scope(path=path, method="POST", headers=headers)
        emitter = falcon.testing.ASGIRequestEventEmitter(body)
        collector = falcon.testing.ASGIResponseEventCollector()
        falcon.util.async_to_sync(client.app, scope, emitter, collector)
        status = falcon.util.code_to_http_status(collector.status)
        return falcon.testing.Result(collector.body_chunks, status, collector.headers)
    env = falcon.testing.create_environ(path=path, method="POST", headers=headers)
    env.pop("CONTENT_LENGTH", None)
    env["wsgi.input"] = io.BytesIO(body)
    env["wsgi.input_terminated"] = True
    start = falcon.testing.StartResponseMock()
    chunks = client.app(env, start)
    return falcon.testing.Result(chunks, start.status, start.headers)


def test_chunked_body_over_the_limit_is_413(make_client: Callable[..., Client], conn: Conn) -> None:
    client = make_client(api_max_body_bytes=1024)
    big = json.dumps({"payload": {"s": "x" * 5000}}).encode()
    assert_error(_chunked(client, "/tasks", big), 413)
    assert count_tasks(conn) == 0


def test_chunked_body_within_the_limit_is_accepted(client: Client, conn: Conn) -> None:
    result = _chunked(client, "/tasks", b'{"payload": {"chunked": true}}')
    assert result.status_code == 201, result.text
    assert result.json["payload"] == {"chunked": True}
    assert count_tasks(conn) == 1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_or_missing_content_type_is_415(
    client: Client, conn: Conn, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    result = client.simulate_post("/tasks", body='{"kind": "echo"}', headers=headers)
    assert_error(result, 415)
    result = client.simulate_post("/tasks/batch", body='{"tasks": [{}]}', headers=headers)
    assert_error(result, 415)
    assert count_tasks(conn) == 0


def test_json_content_type_with_parameters_is_accepted(client: Client) -> None:
    result = client.simulate_post(
        "/tasks", body="{}", headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert result.status_code == 201, result.text


def test_unknown_route_is_404_json(client: Client) -> None:
    assert_error(client.simulate_get("/nope"), 404)
    assert_error(client.simulate_get("/tasks/a/b/c"), 404)


def test_wrong_method_is_405_json(client: Client) -> None:
    result = client.simulate_delete("/tasks")
    assert_error(result, 405)
    assert "POST" in result.headers["allow"]
    assert_error(client.simulate_put(f"/tasks/{uuid.uuid4()}"), 405)
    assert_error(client.simulate_get(f"/tasks/{uuid.uuid4()}/cancel"), 405)


@pytest.mark.parametrize(
    "task_id", ["nope", "123", "%00", "'; DROP TABLE taskq_tasks; --", "0" * 33, "\u0663" * 3]
)
def test_malformed_ids_are_404(client: Client, task_id: str) -> None:
    assert_error(client.simulate_get(f"/tasks/{task_id}"), 404)
    assert_error(client.simulate_post(f"/tasks/{task_id}/cancel"), 404)
    assert_error(client.simulate_post(f"/tasks/{task_id}/retry"), 404)


def test_unknown_ids_are_404(client: Client) -> None:
    missing = uuid.uuid4()
    assert_error(client.simulate_get(f"/tasks/{missing}"), 404, code="not_found")
    assert_error(client.simulate_post(f"/tasks/{missing}/cancel"), 404)
    assert_error(client.simulate_post(f"/tasks/{missing}/retry"), 404)


def test_an_unexpected_exception_is_a_500_without_a_traceback(settings: Settings) -> None:
    class Boom:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise RuntimeError("secret internals: /etc/passwd line 42")

    client, pool, app = _client(settings)
    try:
        app.add_route("/boom", on_loop(Boom(), max_body_bytes=1024))
        result = client.simulate_get("/boom")
    finally:
        pool.close()
    error = assert_error(result, 500)
    assert "secret internals" not in result.text
    assert "RuntimeError" not in result.text
    assert "File " not in result.text
    assert error["code"] == "internal_error"


def test_an_unexpected_database_error_is_logged_without_the_row_it_quotes(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "card-4111-1111-1111-1111"
    raised: list[BaseException] = []

    class BadInsert:
        """A resource with a bug: it writes a row the table's CHECK constraint refuses."""

        def __init__(self, pool: Any) -> None:
            self._pool = pool

        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            try:
                with db.pooled(self._pool) as conn:
                    conn.execute(
                        "INSERT INTO taskq_tasks (id, kind, payload, status)"
                        " VALUES (gen_random_uuid(), 'echo', %s, 'no-such-status')",
                        (Jsonb({"card": secret}),),
                    )
            except Exception as exc:
                raised.append(exc)
                raise

    client, pool, app = _client(settings)
    try:
        app.add_route("/bad-insert", on_loop(BadInsert(pool), max_body_bytes=1024))
        with caplog.at_level("DEBUG"):
            result = client.simulate_post("/bad-insert")
    finally:
        pool.close()
    assert_error(result, 500)
    assert secret not in result.text
    (exc,) = raised
    assert isinstance(exc, psycopg.errors.CheckViolation)
    assert "Failing row contains" in str(exc)  # what a plain log.exception would have logged
    assert secret in str(exc)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    assert record.exc_info is None
    assert "psycopg.errors.CheckViolation" in record.getMessage()
    assert "on_post" in record.getMessage()  # the frames are kept
    assert secret not in caplog.text
    assert "Failing row" not in caplog.text


# ------------------------------------------------------------------ batch


def test_batch_creates_every_task_in_order(client: Client, conn: Conn) -> None:
    items = [{"payload": {"i": i}, "queue": "q1" if i % 2 else "q2"} for i in range(25)]
    items.append({"kind": "sleep", "payload": {"seconds": 0}})
    result = post(client, "/tasks/batch", {"tasks": items})
    assert result.status_code == 201, result.text
    tasks = result.json["tasks"]
    assert [t["payload"] for t in tasks] == [item["payload"] for item in items]
    assert [t["queue"] for t in tasks[:25]] == [item["queue"] for item in items[:25]]
    assert tasks[-1]["kind"] == "sleep"
    assert len({t["id"] for t in tasks}) == 26
    assert count_tasks(conn) == 26
    # One transaction: now() is the transaction's start, the same for every row.
    row = conn.execute("SELECT count(DISTINCT created_at) AS n FROM taskq_tasks").fetchone()
    assert row == {"n": 1}


def test_batch_with_one_invalid_item_creates_nothing(client: Client, conn: Conn) -> None:
    items: list[dict[str, Any]] = [{"payload": {"i": i}} for i in range(5)]
    bad_kind = [*items[:2], {"kind": "nope"}, *items[2:]]
    assert_error(post(client, "/tasks/batch", {"tasks": bad_kind}), 422, field="tasks[2].kind")
    bad_type = [*items, {"priority": "high"}]
    assert_error(post(client, "/tasks/batch", {"tasks": bad_type}), 422, field="tasks[5].priority")
    bad_nul = [*items, {"payload": {"s": "\u0000"}}]
    assert post(client, "/tasks/batch", {"tasks": bad_nul}).status_code == 422
    assert count_tasks(conn) == 0


def test_batch_idempotency_keys(client: Client, conn: Conn) -> None:
    existing = submit(client, {"idempotency_key": "old"})
    items = [{"idempotency_key": "old"}, {"idempotency_key": "new"}, {"idempotency_key": "new"}]
    result = post(client, "/tasks/batch", {"tasks": items})
    assert result.status_code == 201
    ids = [t["id"] for t in result.json["tasks"]]
    assert ids[0] == existing["id"]
    assert ids[1] == ids[2] != ids[0]
    assert count_tasks(conn) == 2
    again = post(client, "/tasks/batch", {"tasks": items})
    assert again.status_code == 200  # nothing new
    assert [t["id"] for t in again.json["tasks"]] == ids


def test_batch_over_the_maximum_is_422_naming_tasks(
    make_client: Callable[..., Client], conn: Conn
) -> None:
    client = make_client(api_batch_max=3)
    assert post(client, "/tasks/batch", {"tasks": [{}] * 3}).status_code == 201
    assert_error(post(client, "/tasks/batch", {"tasks": [{}] * 4}), 422, field="tasks")
    assert count_tasks(conn) == 3


def test_default_batch_maximum_is_1000(client: Client, conn: Conn) -> None:
    assert post(client, "/tasks/batch", {"tasks": [{}] * 1000}).status_code == 201
    assert_error(post(client, "/tasks/batch", {"tasks": [{}] * 1001}), 422, field="tasks")
    assert count_tasks(conn) == 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": {}}, "tasks"),
        ({}, "tasks"),
        ({"tasks": [[]]}, "tasks[0]"),
        ({"tasks": [{}], "extra": 1}, "extra"),
    ],
)
def test_batch_shape_errors_are_422(client: Client, body: dict[str, Any], field: str) -> None:
    assert_error(post(client, "/tasks/batch", body), 422, field=field)


def test_batch_body_errors(client: Client) -> None:
    assert_error(post(client, "/tasks/batch", "[{}]"), 422, field="body")
    assert_error(post(client, "/tasks/batch", '{"tasks": ['), 400)
    assert_error(post(client, "/tasks/batch", ""), 400)


# ------------------------------------------------------------------ reading


def test_get_a_task(client: Client) -> None:
    task = submit(client, {"payload": {"a": 1}})
    result = client.simulate_get(f"/tasks/{task['id']}")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    assert result.json == {**task, "parents": [], "dependents": []}
    # Ids in any spelling uuid accepts resolve to the same task.
    assert client.simulate_get(f"/tasks/{task['id'].upper()}").json == result.json


def _page_through(client: Client, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        result = client.simulate_get("/tasks", params=query)
        assert result.status_code == 200, result.text
        page = result.json
        assert len(page["tasks"]) <= int(params.get("limit", 50))
        seen.extend(page["tasks"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    pytest.fail("paging did not end")


def test_list_pages_through_everything_exactly_once(client: Client, conn: Conn) -> None:
    post(client, "/tasks/batch", {"tasks": [{"payload": {"i": i}} for i in range(23)]})
    for i in range(23, 30):
        submit(client, {"payload": {"i": i}})
    seen = _page_through(client, limit=4)
    assert len(seen) == 30
    assert sorted(t["payload"]["i"] for t in seen) == list(range(30))
    assert [t["id"] for t in seen] == sorted((t["id"] for t in seen), reverse=True)  # newest first
    # A page exactly at the end says so.
    assert len(_page_through(client, limit=30)) == 30
    assert len(_page_through(client, limit=10)) == 30
    assert len(_page_through(client)) == 30


def test_list_filters(client: Client, conn: Conn) -> None:
    a = [submit(client, {"queue": "a", "payload": {"i": i}}) for i in range(3)]
    b = [submit(client, {"queue": "b", "kind": "sleep"}) for _ in range(2)]
    cancelled = submit(client, {"queue": "a"})
    assert client.simulate_post(f"/tasks/{cancelled['id']}/cancel").status_code == 200

    def ids(**params: Any) -> set[str]:
        return {t["id"] for t in _page_through(client, limit=2, **params)}

    assert ids(queue="a") == {t["id"] for t in a} | {cancelled["id"]}
    assert ids(queue="b") == {t["id"] for t in b}
    assert ids(kind="sleep") == {t["id"] for t in b}
    assert ids(status="cancelled") == {cancelled["id"]}
    assert ids(status="queued", queue="a") == {t["id"] for t in a}
    assert ids(status="queued", queue="a", kind="sleep") == set()
    assert ids(queue="nobody") == set()
    assert ids(kind="nothing") == set()
    assert len(ids()) == 6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "QUEUED"}, "status"),
        ({"status": "queued\x00"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"cursor": "nope"}, "cursor"),
        ({"cursor": "\x00"}, "cursor"),
        ({"queue": "has space"}, "queue"),
        ({"queue": "q\x00"}, "queue"),
        ({"kind": "k\x00"}, "kind"),
        ({"kind": "k" * 200}, "kind"),
    ],
)
def test_list_with_invalid_parameters_is_422(
    client: Client, params: dict[str, str], field: str
) -> None:
    assert_error(client.simulate_get("/tasks", params=params), 422, field=field)


# ------------------------------------------------------------------ cancel and retry


def _claim_one(conn: Conn) -> Any:
    claimed = q.claim(conn, queues=["default"], limit=1, worker_id="test-worker", lease=30)
    assert len(claimed) == 1
    return claimed[0]


def test_cancel_a_queued_task(client: Client, conn: Conn) -> None:
    task = submit(client)
    result = client.simulate_post(f"/tasks/{task['id']}/cancel")
    assert result.status_code == 200, result.text
    assert result.json["status"] == "cancelled"
    assert result.json["finished_at"] is not None
    assert q.get(conn, uuid.UUID(task["id"])).status == "cancelled"
    # Cancelling a finished task is a conflict.
    assert_error(client.simulate_post(f"/tasks/{task['id']}/cancel"), 409, code="conflict")


def test_cancel_a_running_task_is_202_and_requested(client: Client, conn: Conn) -> None:
    task = submit(client)
    claimed = _claim_one(conn)
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN taskq_control")
        result = client.simulate_post(f"/tasks/{task['id']}/cancel")
        notes = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert result.status_code == 202, result.text
    assert result.json["status"] == "running"
    assert result.json["cancel_requested_at"] is not None
    assert notes == [task["id"]]  # the owning worker is told at commit
    # Whatever the worker then records, the task ends cancelled, never retried.
    q.finish(conn, [q.Finish(claimed.lease, "retry", error="x")], worker_id="test-worker")
    done = client.simulate_get(f"/tasks/{task['id']}").json
    assert (done["status"], done["attempts"]) == ("cancelled", 1)
    assert_error(client.simulate_post(f"/tasks/{task['id']}/cancel"), 409)


def test_cancel_a_succeeded_task_is_409(client: Client, conn: Conn) -> None:
    task = submit(client)
    claimed = _claim_one(conn)
    lease = q.Lease(claimed.id, claimed.attempts)
    q.finish(conn, [q.Finish(lease, "succeeded", result_json="1")], worker_id="test-worker")
    assert_error(client.simulate_post(f"/tasks/{task['id']}/cancel"), 409)
    assert q.get(conn, uuid.UUID(task["id"])).status == "succeeded"


def test_retry_a_failed_task(client: Client, conn: Conn) -> None:
    task = submit(client, {"max_attempts": 1})
    assert_error(client.simulate_post(f"/tasks/{task['id']}/retry"), 409)  # queued
    claimed = _claim_one(conn)
    assert_error(client.simulate_post(f"/tasks/{task['id']}/retry"), 409)  # running
    lease = q.Lease(claimed.id, claimed.attempts)
    q.finish(conn, [q.Finish(lease, "failed", error="boom")], worker_id="test-worker")
    result = client.simulate_post(f"/tasks/{task['id']}/retry")
    assert result.status_code == 200, result.text
    assert result.json["status"] == "queued"
    assert result.json["attempts"] == 0
    assert q.get(conn, uuid.UUID(task["id"])).status == "queued"


def test_retry_a_cancelled_task(client: Client) -> None:
    task = submit(client)
    client.simulate_post(f"/tasks/{task['id']}/cancel")
    result = client.simulate_post(f"/tasks/{task['id']}/retry")
    assert result.status_code == 200
    assert result.json["status"] == "queued"


# ------------------------------------------------------------------ health and outages


def test_live_and_ready_when_the_database_is_up(client: Client) -> None:
    live = client.simulate_get("/live")
    assert (live.status_code, live.json) == (200, {"status": "live"})
    ready = client.simulate_get("/ready")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": True}


def test_head_live_and_dashboard_answer_200_without_a_body(client: Client) -> None:
    """Probes and uptime checkers ask with HEAD."""
    for path, content_type in (("/live", "application/json"), ("/dashboard", "text/html")):
        result = client.simulate_head(path)
        assert result.status_code == 200, path
        assert result.headers["content-type"].startswith(content_type)
        assert result.content == b""


@pytest.fixture
def down_client() -> Iterator[Client]:
    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x", db_pool_timeout=0.3
    )
    client, pool, _ = _client(settings)
    try:
        yield client
    finally:
        pool.close()


def test_database_unavailable_is_503_with_retry_after(down_client: Client) -> None:
    task_id = uuid.uuid4()
    for result in (
        post(down_client, "/tasks", {"payload": {"a": 1}}),
        post(down_client, "/tasks/batch", {"tasks": [{}]}),
        down_client.simulate_get(f"/tasks/{task_id}"),
        down_client.simulate_get("/tasks"),
        down_client.simulate_post(f"/tasks/{task_id}/cancel"),
        down_client.simulate_post(f"/tasks/{task_id}/retry"),
    ):
        error = assert_error(result, 503)
        assert result.headers["retry-after"].isdigit()
        assert "nobody" not in error["message"]
    ready = down_client.simulate_get("/ready")
    assert ready.status_code == 503
    assert ready.json["checks"] == {"database": False}
    assert down_client.simulate_get("/live").status_code == 200


def test_input_errors_do_not_wait_for_the_database(down_client: Client) -> None:
    assert_error(post(down_client, "/tasks", "{"), 400)
    assert_error(post(down_client, "/tasks", {"priority": "x"}), 422, field="priority")
    assert_error(down_client.simulate_get("/tasks/not-a-uuid"), 404)
    assert_error(down_client.simulate_get("/tasks", params={"limit": "0"}), 422, field="limit")


# ------------------------------------------------------------------ typed payloads


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "payload.order_id"),
        ({"order_id": "seven"}, "payload.order_id"),
        ({"order_id": 7, "lines": [1, "x"]}, "payload.lines[1]"),
    ],
)
def test_typed_payload_is_validated_at_submit(
    client: Client, conn: Conn, payload: dict[str, Any], field: str
) -> None:
    result = client.simulate_post("/tasks", json={"kind": "order", "payload": payload})
    error = assert_error(result, 422, field=field)
    assert error["message"].startswith(field + ": ")
    assert q.counts(conn) == []


def test_typed_payload_accepted_with_the_kinds_max_attempts(client: Client) -> None:
    task = submit(client, {"kind": "order", "payload": {"order_id": 7}})
    assert task["max_attempts"] == 3
    assert (
        submit(client, {"kind": "order", "payload": {"order_id": 8}, "max_attempts": 9})[
            "max_attempts"
        ]
        == 9
    )


def test_typed_payload_in_a_batch_names_the_task(client: Client, conn: Conn) -> None:
    body = {
        "tasks": [
            {"kind": "order", "payload": {"order_id": 1}},
            {"kind": "order", "payload": {"order_id": None}},
        ]
    }
    assert_error(
        client.simulate_post("/tasks/batch", json=body), 422, field="tasks[1].payload.order_id"
    )
    assert q.counts(conn) == []


def test_timeout_seconds_is_stored_and_validated(client: Client) -> None:
    task = submit(client, {"kind": "echo", "timeout_seconds": 2.5})
    assert task["timeout_seconds"] == 2.5
    assert task["snoozes"] == 0
    assert task["cancel_requested_at"] is None
    for bad in (0, -1, "5", 10**9):
        result = client.simulate_post("/tasks", json={"timeout_seconds": bad})
        assert_error(result, 422, field="timeout_seconds")


def test_openapi_has_one_payload_schema_per_typed_kind(client: Client) -> None:
    import jsonschema
    from referencing import Registry as SchemaRegistry
    from referencing import Resource
    from referencing.jsonschema import DRAFT202012

    doc = client.simulate_get("/openapi.json").json
    validate_spec(doc)
    schemas = doc["components"]["schemas"]
    assert "Payload.order" in schemas
    assert schemas["TaskSpec"]["allOf"] == [
        {
            "if": {"properties": {"kind": {"const": "order"}}, "required": ["kind"]},
            "then": {"properties": {"payload": {"$ref": "#/components/schemas/Payload.order"}}},
        }
    ]
    registry: SchemaRegistry[Any] = SchemaRegistry().with_resource(
        "urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:doc#/components/schemas/TaskSpec"}, registry=registry
    )
    assert validator.is_valid({"kind": "order", "payload": {"order_id": 1}})
    assert not validator.is_valid({"kind": "order", "payload": {"order_id": "x"}})
    assert validator.is_valid({"kind": "echo", "payload": {"order_id": "x"}})


# ------------------------------------------------------------------ workflows


def test_submit_with_depends_on_is_blocked_and_get_shows_the_graph(client: Client) -> None:
    parent = submit(client, {"kind": "echo", "delay": 3600})
    child = submit(client, {"kind": "echo", "depends_on": [parent["id"]]})
    assert (child["status"], child["blocked_by"], child["depends_on"]) == (
        "blocked",
        1,
        [parent["id"]],
    )
    top = client.simulate_get(f"/tasks/{parent['id']}").json
    assert top["has_dependents"] is True
    assert [(d["id"], d["status"]) for d in top["dependents"]] == [(child["id"], "blocked")]
    below = client.simulate_get(f"/tasks/{child['id']}").json
    assert [(p["id"], p["status"]) for p in below["parents"]] == [(parent["id"], "queued")]
    cancelled = post(client, f"/tasks/{parent['id']}/cancel", {})
    assert cancelled.status_code == 200
    after = client.simulate_get(f"/tasks/{child['id']}").json
    assert (after["status"], after["cancelled_by"]) == ("cancelled", parent["id"])
    assert after["last_error"] == f"cancelled: dependency {parent['id']} was cancelled"
    again = post(client, f"/tasks/{parent['id']}/retry", {})
    assert again.json["status"] == "queued"
    assert client.simulate_get(f"/tasks/{child['id']}").json["status"] == "blocked"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"depends_on": ["x y"]}, "depends_on[0]", "task id or the ref"),
        ({"depends_on": ["nope"]}, "depends_on[0]", "neither a task id"),
        ({"depends_on": ["018f0000-0000-7000-8000-000000000000"]}, "depends_on[0]", "no task"),
        ({"depends_on": [f"r{i}" for i in range(101)]}, "depends_on", "at most 100"),
        ({"depends_on": "abc"}, "depends_on", "array"),
        ({"ref": "bad ref"}, "ref", "letters, digits"),
    ],
)
def test_bad_dependencies_are_422_naming_the_field(
    client: Client, body: dict[str, Any], field: str, words: str
) -> None:
    error = assert_error(post(client, "/tasks", body), 422, field=field)
    assert words in error["message"]


@pytest.mark.parametrize(
    ("tasks", "field", "words"),
    [
        ([{"ref": "a"}, {"ref": "a"}], "tasks[1].ref", "already the ref of tasks[0]"),
        ([{"ref": "a", "depends_on": ["a"]}], "tasks[0].depends_on[0]", "itself"),
        ([{"depends_on": ["b"]}, {"ref": "b"}], "tasks[0].depends_on[0]", "later task"),
        ([{"ref": "a"}, {"depends_on": ["a", "zz"]}], "tasks[1].depends_on[1]", "neither"),
    ],
)
def test_bad_graphs_in_a_batch_are_422_naming_the_task_and_field(
    client: Client, conn: Conn, tasks: list[dict[str, Any]], field: str, words: str
) -> None:
    error = assert_error(post(client, "/tasks/batch", {"tasks": tasks}), 422, field=field)
    assert words in error["message"]
    assert count_tasks(conn) == 0  # all or nothing


def test_a_batch_with_on_complete_and_its_progress(client: Client) -> None:
    result = post(
        client,
        "/tasks/batch",
        {
            "tasks": [{"ref": "a"}, {"depends_on": ["a"]}],
            "on_complete": {"kind": "echo", "queue": "reports"},
        },
    )
    assert result.status_code == 201
    body = result.json
    assert all(t["batch_id"] == body["batch_id"] for t in body["tasks"])
    progress = client.simulate_get(f"/batches/{body['batch_id']}").json
    assert progress["total"] == 2
    assert (progress["counts"]["queued"], progress["counts"]["blocked"]) == (1, 1)
    assert progress["on_complete"] == {"kind": "echo", "queue": "reports", "task_id": None}
    assert client.simulate_get(f"/batches/{uuid.uuid4()}").status_code == 404
    error = assert_error(
        post(client, "/tasks/batch", {"tasks": [{}], "on_complete": {"kind": "no pe"}}),
        422,
        field="on_complete.kind",
    )
    assert "letters, digits" in error["message"]
