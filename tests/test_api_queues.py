"""PUT/GET /queues/{name} (flow-control limits) and concurrency_key on submitted tasks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
from taskq import db
from taskq.api import Deps, create_app
from taskq.settings import Settings, load_settings

from tests.helpers import free_port
from tests.test_api import _registry, assert_error, post

Conn = psycopg.Connection[dict[str, Any]]
Client = falcon.testing.TestClient
JSON = {"content-type": "application/json"}


def _make(settings: Settings) -> tuple[Client, Any]:
    pool = db.create_pool(settings, name="test")
    return falcon.testing.TestClient(
        create_app(settings, Deps(pool=pool, registry=_registry()))
    ), pool


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    made, pool = _make(settings)
    try:
        yield made
    finally:
        pool.close()


def put(client: Client, path: str, body: Any) -> falcon.testing.Result:
    raw = body if isinstance(body, str) else json.dumps(body)
    return client.simulate_put(path, body=raw, headers=JSON)


def test_put_sets_limits_and_get_reads_them(client: Client, conn: Conn) -> None:
    result = put(
        client,
        "/queues/emails",
        {
            "max_running": 4,
            "max_running_per_key": 1,
            "rate_limit": {"count": 100, "per_seconds": 60},
        },
    )
    assert result.status_code == 200, result.text
    body = result.json
    assert body["queue"] == "emails"
    assert (body["max_running"], body["max_running_per_key"]) == (4, 1)
    assert body["rate_limit"] == {"count": 100, "per_seconds": 60.0}
    assert (body["running"], body["held"], body["window_starts"]) == (0, 0, 0)
    assert body["updated_at"].endswith("Z")
    assert client.simulate_get("/queues/emails").json == body
    row = conn.execute("SELECT * FROM taskq_queues WHERE name = 'emails'").fetchone()
    assert row is not None
    assert (row["max_running"], row["rate_limit_count"], row["source"]) == (4, 100, "api")


def test_absent_fields_are_kept_and_null_removes_a_limit(client: Client) -> None:
    put(client, "/queues/q1", {"max_running": 4, "rate_limit": {"count": 5, "per_seconds": 1}})
    body = put(client, "/queues/q1", {"max_running_per_key": 2}).json
    assert (body["max_running"], body["max_running_per_key"]) == (4, 2)
    assert body["rate_limit"] == {"count": 5, "per_seconds": 1.0}
    body = put(client, "/queues/q1", {"max_running": None, "rate_limit": None}).json
    assert (body["max_running"], body["max_running_per_key"], body["rate_limit"]) == (None, 2, None)


def test_a_queue_without_settings_has_no_limits(client: Client) -> None:
    result = client.simulate_get("/queues/never-configured")
    assert result.status_code == 200
    body = result.json
    assert body["queue"] == "never-configured"
    assert (body["max_running"], body["max_running_per_key"], body["rate_limit"]) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_running": 0}, "max_running"),
        ({"max_running": -1}, "max_running"),
        ({"max_running": "4"}, "max_running"),
        ({"max_running": 1.5}, "max_running"),
        ({"max_running_per_key": 0}, "max_running_per_key"),
        ({"rate_limit": {"count": 0, "per_seconds": 1}}, "rate_limit.count"),
        ({"rate_limit": {"count": 5}}, "rate_limit.per_seconds"),
        ({"rate_limit": {"count": 5, "per_seconds": 0}}, "rate_limit.per_seconds"),
        ({"rate_limit": {"count": 5, "per_seconds": 1, "burst": 2}}, "rate_limit.burst"),
        ({"rate_limit": "5/1"}, "rate_limit"),
        ({"max_runing": 3}, "max_runing"),
    ],
)
def test_invalid_limits_are_422_naming_the_field(
    client: Client, conn: Conn, body: dict[str, Any], field: str
) -> None:
    assert_error(put(client, "/queues/q1", body), 422, field=field)
    assert conn.execute("SELECT 1 FROM taskq_queues").fetchone() is None


def test_bad_bodies_and_names(client: Client) -> None:
    assert_error(put(client, "/queues/q1", "{"), 400)
    assert_error(put(client, "/queues/q1", "[1]"), 422)
    assert_error(put(client, "/queues/bad%20name", {"max_running": 1}), 422, field="name")
    assert_error(client.simulate_get("/queues/" + "x" * 65), 422, field="name")


def test_concurrency_key_through_post_and_batch(client: Client) -> None:
    one = post(client, "/tasks", {"kind": "echo", "concurrency_key": "tenant-7"})
    assert one.status_code == 201, one.text
    assert one.json["concurrency_key"] == "tenant-7"
    assert client.simulate_get(f"/tasks/{one.json['id']}").json["concurrency_key"] == "tenant-7"
    batch = post(client, "/tasks/batch", {"tasks": [{"concurrency_key": "a"}, {}]})
    assert [t["concurrency_key"] for t in batch.json["tasks"]] == ["a", None]
    assert_error(
        post(client, "/tasks", {"concurrency_key": "no spaces"}), 422, field="concurrency_key"
    )
    assert_error(post(client, "/tasks", {"concurrency_key": ""}), 422, field="concurrency_key")
    assert_error(
        post(client, "/tasks/batch", {"tasks": [{"concurrency_key": 5}]}),
        422,
        field="tasks[0].concurrency_key",
    )


def test_database_unavailable_is_503() -> None:
    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x", db_pool_timeout=0.3
    )
    down, pool = _make(settings)
    try:
        for result in (
            put(down, "/queues/q1", {"max_running": 1}),
            down.simulate_get("/queues/q1"),
        ):
            assert_error(result, 503)
            assert result.headers["retry-after"].isdigit()
        assert_error(put(down, "/queues/q1", {"max_running": 0}), 422, field="max_running")
    finally:
        pool.close()


def test_metrics_show_held_tasks_and_the_limits(client: Client, conn: Conn) -> None:
    from tests.test_metrics import parse, value

    put(client, "/queues/lim", {"max_running": 1, "rate_limit": {"count": 10, "per_seconds": 2}})
    post(client, "/tasks/batch", {"tasks": [{"queue": "lim"}] * 3})
    post(client, "/tasks", {"queue": "free"})
    conn.execute(
        "UPDATE taskq_tasks SET status = 'running', worker_id = 'w', started_at = now(),"
        " lease_expires_at = now() + interval '1 minute'"
        " WHERE id = (SELECT id FROM taskq_tasks WHERE queue = 'lim' ORDER BY id LIMIT 1)"
    )
    samples = parse(client.simulate_get("/metrics").text)
    assert value(samples, "taskq_queue_limit_held", queue="lim") == 2
    assert value(samples, "taskq_queue_max_running", queue="lim") == 1
    assert value(samples, "taskq_queue_rate_limit_count", queue="lim") == 10
    assert value(samples, "taskq_queue_rate_limit_seconds", queue="lim") == 2
    assert ("taskq_queue_max_running_per_key", frozenset({("queue", "lim")})) not in samples
    assert ("taskq_queue_limit_held", frozenset({("queue", "free")})) not in samples
    stats = client.simulate_get("/stats").json
    [lim] = [q for q in stats["queues"] if q["queue"] == "lim"]
    assert (lim["held"], lim["max_running"], lim["rate_limit"]) == (
        2,
        1,
        {"count": 10, "per_seconds": 2.0},
    )
    assert stats["totals"]["held"] == 2
