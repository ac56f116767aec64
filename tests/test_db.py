"""app/taskq/db.py: pools that survive a database restart, and error translation."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from taskq import db
from taskq.errors import DatabaseUnavailable, InvalidInput
from taskq.settings import Settings, load_settings

from tests.helpers import free_port, wait_until


def test_pool_recovers_after_its_connections_are_killed(settings: Settings, conn: Any) -> None:
    pool = db.create_pool(settings, name="probe", min_size=2, max_size=2, open_wait=True)
    try:
        with db.pooled(pool) as c:
            c.execute("SELECT 1")
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE application_name = 'taskq-probe'"
        ).fetchone()
        assert killed["n"] == 2
        # pg_terminate_backend only signals; wait until the backends are really gone.
        alive = "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'taskq-probe'"
        wait_until(lambda: conn.execute(alive).fetchone()["n"] == 0, what="backends to exit")
        # The checkout check notices the dead sockets, so no caller sees the failure.
        for _ in range(4):
            with db.pooled(pool) as c:
                assert c.execute("SELECT 42 AS x").fetchone() == {"x": 42}
    finally:
        pool.close()


def test_pool_times_out_cleanly_when_the_database_is_down() -> None:
    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x", db_pool_timeout=0.5
    )
    pool = db.create_pool(settings, name="down")
    try:
        with pytest.raises(DatabaseUnavailable), db.pooled(pool):
            pass
        assert db.ping(pool, timeout=0.2) is False
    finally:
        pool.close()


def test_an_exhausted_pool_times_out_then_serves_again(make_settings: Any) -> None:
    timeout = 0.5
    settings = make_settings(db_pool_timeout=timeout)
    pool = db.create_pool(settings, name="one", min_size=1, max_size=1, open_wait=True)
    try:
        with db.pooled(pool) as held:  # the pool's only connection is checked out
            held.execute("SELECT 1")
            started = time.monotonic()
            with (
                pytest.raises(DatabaseUnavailable, match="no connection within timeout"),
                db.pooled(pool),
            ):
                pass
            waited = time.monotonic() - started
            assert timeout * 0.9 <= waited < timeout + 2  # the pool timeout, not forever
            assert db.ping(pool, timeout=0.2) is False  # the probe says so too
        # Returned: the same pool serves again, with no reconnect in between.
        with db.pooled(pool) as again:
            assert again.execute("SELECT 42 AS x").fetchone() == {"x": 42}
        assert db.ping(pool) is True
        assert pool.get_stats()["pool_max"] == 1
    finally:
        pool.close()


def test_statement_timeout_applies(make_settings: Any) -> None:
    settings = make_settings(db_statement_timeout_ms=100)
    pool = db.create_pool(settings, name="slow", open_wait=True)
    try:
        with pytest.raises(DatabaseUnavailable), db.pooled(pool) as c:
            c.execute("SELECT pg_sleep(2)")
    finally:
        pool.close()


def test_data_errors_become_invalid_input(conn: Any) -> None:
    with pytest.raises(InvalidInput, match="value rejected"), db.translate_errors():
        conn.execute("SELECT '\\u0000'::jsonb")


def test_programming_errors_are_not_disguised(conn: Any) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable), db.translate_errors():
        conn.execute("SELECT * FROM no_such_table")


def test_redact_hides_passwords() -> None:
    assert "s3cret" not in db.redact("postgresql://u:s3cret@h:5432/d")
    assert "***" in db.redact("postgresql://u:s3cret@h:5432/d")
    assert db.redact("not a url at all") == "<unparseable DATABASE_URL>"


def test_conninfo_names_the_application() -> None:
    info = db.conninfo(load_settings(database_url="postgresql://h/d"), application_name="taskq-x")
    assert "application_name=taskq-x" in info
    assert "connect_timeout=3" in info


def test_an_unreachable_database_fails_fast_after_the_first_attempt() -> None:
    """While PostgreSQL is known to be down, callers wait UNREACHABLE_WAIT, not the pool
    timeout, so a single-threaded API process keeps answering (503) and its probes too."""
    import time

    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x", db_pool_timeout=3.0
    )
    pool = db.create_pool(settings, name="down")
    try:
        wait_until(lambda: db._REACHABILITY[pool].down, what="the pool to give up connecting")
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable), db.pooled(pool):
                pass
            assert time.monotonic() - started < db.UNREACHABLE_WAIT + 0.5
        started = time.monotonic()
        assert db.ping(pool) is False
        assert time.monotonic() - started < db.UNREACHABLE_WAIT + 0.5
    finally:
        pool.close()


def test_enqueue_sessions_commit_durably_whatever_the_server_default(
    settings: Settings, database_url: str
) -> None:
    """A database default of synchronous_commit=off must not make accepted tasks volatile;
    the worker's own sessions keep the asynchronous commit they ask for."""
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    durable = db.create_pool(settings, name="durable", open_wait=True)
    worker_side = db.create_pool(settings, name="async", open_wait=True, synchronous_commit=False)
    try:
        for pool, expected in ((durable, "on"), (worker_side, "off")):
            with db.pooled(pool) as conn:
                assert conn.execute("SHOW synchronous_commit").fetchone() == {
                    "synchronous_commit": expected
                }
        with db.connect(settings, name="cli") as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
            assert row == {"synchronous_commit": "on"}
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = remote_apply')
        stricter = db.create_pool(settings, name="strict", open_wait=True)
        try:
            with db.pooled(stricter) as conn:  # a stricter setting is left alone
                row = conn.execute("SHOW synchronous_commit").fetchone()
                assert row == {"synchronous_commit": "remote_apply"}
        finally:
            stricter.close()
    finally:
        durable.close()
        worker_side.close()
