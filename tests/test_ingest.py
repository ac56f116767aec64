"""Group commit of single submissions (app/taskq/api/ingest.py), against a real database.

A group is made deterministic by holding the table lock from another session: the first
submission's INSERT waits on it, the next ones queue behind it, and when the lock is
released they are written together. Rows committed by one transaction share its xmin,
which is how the tests tell the groups apart from the rows themselves.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
from psycopg.rows import dict_row
from taskq import db, metrics
from taskq.api import Deps, create_app
from taskq.api.ingest import Ingest
from taskq.errors import InvalidInput
from taskq.models import Task, TaskSpec
from taskq.settings import Settings

from tests.helpers import wait_until
from tests.test_metrics import parse, value
from tests.worker_helpers import fresh_registry

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def pool(settings: Settings) -> Iterator[Any]:
    pool = db.create_pool(settings, name="test")
    yield pool
    pool.close()


class TableLock:
    """Holds a lock on taskq_tasks that INSERT waits for, from its own session."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, row_factory=dict_row)
        self.conn.execute("LOCK TABLE taskq_tasks IN SHARE ROW EXCLUSIVE MODE")
        self._url = database_url

    def insert_waiting(self) -> bool:
        return self.inserts_waiting() > 0

    def inserts_waiting(self) -> int:
        with psycopg.connect(self._url, autocommit=True) as other:
            row = other.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO taskq_tasks%'"
            ).fetchone()
        return int(row[0]) if row else 0

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()


def _rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, idempotency_key, xmin::text AS xid, created_at FROM taskq_tasks"
        ).fetchall()


def _visible(database_url: str, task_id: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM taskq_tasks WHERE id = %s", (task_id,)).fetchone()
            is not None
        )


def _spec(**fields: Any) -> TaskSpec:
    return TaskSpec.model_validate({"kind": "echo", **fields})


def test_concurrent_submissions_share_one_commit_and_answer_after_it(
    settings: Settings, pool: Any, database_url: str
) -> None:
    app = create_app(settings, Deps(pool=pool, registry=fresh_registry()))
    ingest = app._router.find("/tasks")[0].resource.ingest
    assert isinstance(ingest, Ingest)
    results: dict[str, tuple[int, dict[str, Any], bool]] = {}

    def post(name: str, body: dict[str, Any], **headers: str) -> None:
        client = falcon.testing.TestClient(app)
        result = client.simulate_post("/tasks", body=json.dumps(body), headers={**JSON, **headers})
        task_id = result.json.get("id")
        # Durable before answered: the row is visible to any other session the moment
        # the response exists.
        visible = task_id is not None and _visible(database_url, task_id)
        results[name] = (result.status_code, result.json, visible)

    before = parse(metrics.exposition()[0].decode())
    lock = TableLock(database_url)
    # One submission per writer thread: both INSERTs wait on the lock, so nothing is
    # written while the later submissions arrive.
    threads = [
        threading.Thread(target=post, args=(name, {"payload": {"n": n}}))
        for n, name in enumerate(("first", "second"), start=10)
    ]
    try:
        for waiting, thread in enumerate(threads, start=1):
            thread.start()
            wait_until(
                lambda n=waiting: lock.inserts_waiting() == n,
                timeout=10,
                what=f"{waiting} INSERT(s) to wait on the lock",
            )
        later = {
            "a": ({"payload": {"n": 1}}, {}),
            "b": ({"payload": {"n": 2}}, {}),
            "key1": ({"payload": {"n": 3}}, {"Idempotency-Key": "same"}),
            "key2": ({"payload": {"n": 4}, "idempotency_key": "same"}, {}),
        }
        for name, (body, headers) in later.items():
            thread = threading.Thread(target=post, args=(name, body), kwargs=headers)
            thread.start()
            threads.append(thread)
        wait_until(lambda: ingest.pending == 4, timeout=10, what="4 submissions queued")
        assert results == {}  # nothing answered while nothing is committed
    finally:
        lock.release()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(r[0] for r in results.values()) == [200, 201, 201, 201, 201, 201]
    assert all(visible for _, _, visible in results.values())
    assert results["key1"][1]["id"] == results["key2"][1]["id"]
    assert {results["key1"][0], results["key2"][0]} == {200, 201}  # the first of the two won
    rows = _rows(database_url)
    assert len(rows) == 6 - 1  # the duplicate key made no row
    by_id = {str(row["id"]): row["xid"] for row in rows}
    group = {by_id[results[name][1]["id"]] for name in ("a", "b", "key1")}
    assert len(group) == 1  # the four queued requests were written by one transaction
    alone = {by_id[results[name][1]["id"]] for name in ("first", "second")}
    assert len(alone) == 2  # each writer's own transaction
    assert not alone & group
    assert ingest.groups == 3
    assert ingest.written == 6
    after = parse(metrics.exposition()[0].decode())
    groups = value(after, "taskq_api_group_commit_tasks_count") - value(
        before, "taskq_api_group_commit_tasks_count"
    )
    sizes = value(after, "taskq_api_group_commit_tasks_sum") - value(
        before, "taskq_api_group_commit_tasks_sum"
    )
    assert (groups, sizes) == (3, 6)  # two groups of 1, then one of 4 (the duplicate key too)


def test_a_row_the_database_refuses_fails_only_its_own_request(
    pool: Any, database_url: str
) -> None:
    announced: list[Task] = []
    # One writer: the three later submissions wait for it and form one group.
    ingest = Ingest(
        pool, default_max_attempts=5, announce=lambda conn, t: announced.extend(t), writers=1
    )
    lock = TableLock(database_url)
    try:
        first = ingest.submit(_spec(payload={"n": 0}))
        wait_until(lock.insert_waiting, timeout=10, what="the first INSERT to wait on the lock")
        # Validation refuses NUL characters; built around it, the row reaches PostgreSQL,
        # whose jsonb refuses it (SQLSTATE 22P05) and fails the group's INSERT.
        bad_spec = TaskSpec.model_construct(**{**_spec().__dict__, "payload": {"s": "\x00"}})
        good1 = ingest.submit(_spec(payload={"n": 1}))
        bad = ingest.submit(bad_spec)
        good2 = ingest.submit(_spec(payload={"n": 2}, idempotency_key="k"))
        wait_until(lambda: ingest.pending == 3, timeout=10, what="3 submissions queued")
    finally:
        lock.release()
    assert first.result(timeout=30).created
    with pytest.raises(InvalidInput):
        bad.result(timeout=30)
    tasks = [good1.result(timeout=30), good2.result(timeout=30)]
    assert all(t.created for t in tasks)
    # Rows written in savepoints carry their subtransaction's xid; created_at is the
    # transaction's start (now()), shared by the rows of one transaction only.
    rows = {row["id"]: row["created_at"] for row in _rows(database_url)}
    assert len(rows) == 3
    assert rows[tasks[0].id] == rows[tasks[1].id]  # the good rows still committed together
    assert rows[tasks[0].id] != rows[first.result().id]
    assert {t.id for t in announced} == set(rows)


def test_a_lone_submission_is_written_at_once(pool: Any) -> None:
    ingest = Ingest(pool, default_max_attempts=5, announce=lambda conn, t: None)
    futures = [ingest.submit(_spec(payload={"n": n})) for n in range(3)]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 3
    assert all(f.result().created for f in futures)
    assert ingest.written == 3


def test_the_database_away_fails_every_request_of_the_group_with_503(
    make_settings: Any,
) -> None:
    from tests.helpers import free_port

    settings = make_settings(
        database_url=f"postgresql://root@127.0.0.1:{free_port()}/nowhere", db_pool_timeout=1
    )
    pool = db.create_pool(settings, name="test")
    try:
        app = create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        client = falcon.testing.TestClient(app)
        body = json.dumps({"payload": {}})
        result = client.simulate_post("/tasks", body=body, headers=JSON)
    finally:
        pool.close()
    assert result.status_code == 503
    assert result.headers.get("Retry-After")
    assert result.json["error"]["code"]
