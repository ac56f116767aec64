"""app/taskq/notifier.py and the deferrable enqueue trigger (db/migrations/0004)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import psycopg
import pytest
from taskq import db
from taskq import queue as q
from taskq.api import Deps, create_app
from taskq.handlers import Registry, register_builtins
from taskq.models import TaskSpec
from taskq.notifier import Notifier
from taskq.settings import Settings

from tests.helpers import wait_until

SENTINEL = "test-sentinel"


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN taskq")
        yield conn


def _until_sentinel(listener: psycopg.Connection[Any], database_url: str) -> list[str]:
    """Every payload delivered before a sentinel sent now from another session.

    Notifications arrive in commit order, so whatever was committed before the sentinel
    has been seen by the time it arrives: no waiting on the absence of something.
    """
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_notify('taskq', %s)", (SENTINEL,))
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for note in listener.notifies(timeout=0.5):
            if note.payload == SENTINEL:
                return seen
            seen.append(note.payload)
    raise AssertionError(f"no sentinel within 10 s (saw {seen})")


def _next_payloads(listener: psycopg.Connection[Any], n: int, timeout: float = 5) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += [x.payload for x in listener.notifies(timeout=0.2, stop_after=n - len(got))]
    return got


def test_sessions_marked_notify_off_insert_silently(
    settings: Settings, listener: psycopg.Connection[Any], database_url: str
) -> None:
    quiet = db.create_pool(settings, name="quiet", notify_on_insert=False, open_wait=True)
    try:
        with db.pooled(quiet) as conn:
            q.enqueue(conn, "echo", queue="quiet")
            q.enqueue_many(conn, [TaskSpec(queue="quiet")] * 3)
    finally:
        quiet.close()
    with psycopg.connect(database_url, autocommit=True) as loud:
        q.enqueue(loud, "echo", queue="loud")  # any other session still notifies
    assert _until_sentinel(listener, database_url) == ["loud"]


def test_after_a_quiet_spell_the_request_connection_announces_at_once(
    settings: Settings, listener: psycopg.Connection[Any], database_url: str
) -> None:
    notifier = Notifier(settings, interval=60)
    with psycopg.connect(database_url, autocommit=True) as conn:
        notifier.announce({"emails", "reports"}, conn)
        # Sent before announce returned, from the caller's thread and connection, in a
        # transaction of its own that did not change the session's commit mode.
        assert notifier.sent == 1
        assert notifier._thread is None
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    assert sorted(_next_payloads(listener, 2)) == ["emails", "reports"]


def test_a_connection_inside_a_transaction_is_never_used(
    settings: Settings, listener: psycopg.Connection[Any], database_url: str
) -> None:
    notifier = Notifier(settings, interval=0.0)
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SELECT 1")
        notifier.announce({"later"}, conn)  # must not join (or commit) the caller's work
        assert _next_payloads(listener, 1) == ["later"]  # sent by the notifier's thread
    # The thread counts after its commit returns, which may be after the listener heard it.
    wait_until(lambda: notifier.sent == 1, what="the notifier thread to count its send")


def test_without_a_connection_the_thread_announces(
    settings: Settings, listener: psycopg.Connection[Any]
) -> None:
    notifier = Notifier(settings, interval=0.0)
    notifier.announce({"emails", "reports"})
    assert sorted(_next_payloads(listener, 2)) == ["emails", "reports"]


def test_a_burst_becomes_few_notifications_and_none_is_dropped(
    settings: Settings, listener: psycopg.Connection[Any], database_url: str
) -> None:
    notifier = Notifier(settings, interval=0.3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        notifier.announce({"first"}, conn)
        assert _next_payloads(listener, 1) == ["first"]  # after a quiet spell: at once
        started = time.monotonic()
        for i in range(50):
            notifier.announce({"burst"}, conn)
            notifier.announce({f"q{i % 2}"}, conn)
    trailing = _next_payloads(listener, 3)
    assert sorted(trailing) == ["burst", "q0", "q1"]  # every queue, in one trailing round
    assert time.monotonic() - started < 5
    wait_until(lambda: notifier.sent == 2, what="the second round to be counted")
    assert _until_sentinel(listener, database_url) == []  # and nothing more


def test_an_unreachable_database_loses_the_round_not_the_notifier(
    make_settings: Callable[..., Settings],
) -> None:
    notifier = Notifier(
        make_settings(database_url="postgresql://root@127.0.0.1:1/none", db_connect_timeout=1),
        interval=0.0,
    )
    started = time.monotonic()
    notifier.announce({"default"})
    assert time.monotonic() - started < 0.5  # the request that poked does not wait
    wait_until(lambda: notifier.failed == 1, what="a failed round")
    notifier.announce({"default"})
    wait_until(lambda: notifier.failed == 2, what="the thread to survive and try again")
    assert notifier.sent == 0


def test_the_api_wakes_workers_after_commit_not_from_the_trigger(
    settings: Settings, listener: psycopg.Connection[Any], database_url: str
) -> None:
    registry = Registry()
    register_builtins(registry)
    deps = Deps.from_settings(settings)
    deps.registry = registry
    client = falcon.testing.TestClient(create_app(settings, deps))
    try:
        created = client.simulate_post("/tasks", json={"kind": "echo", "queue": "api"})
        assert created.status_code == 201
        assert _next_payloads(listener, 1) == ["api"]
        later = client.simulate_post("/tasks", json={"queue": "api-later", "delay": 600})
        assert later.status_code == 201
        batch = client.simulate_post(
            "/tasks/batch", json={"tasks": [{"queue": "api-batch"}, {"queue": "api-batch"}]}
        )
        assert batch.status_code == 201
        assert _next_payloads(listener, 1) == ["api-batch"]
        # Nothing for the scheduled task, nothing twice (the trigger stayed quiet).
        assert _until_sentinel(listener, database_url) == []
    finally:
        deps.pool.close()
