"""app/taskq/db.py: pools that survive a database restart, and error translation."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from taskq import db
from taskq.errors import DatabaseUnavailable, InvalidInput, SchemaOutdated
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
    with pytest.raises(psycopg.errors.SyntaxError), db.translate_errors():
        conn.execute("SELEKT 1")


def test_a_missing_table_means_the_schema_is_outdated(conn: Any) -> None:
    with pytest.raises(SchemaOutdated), db.translate_errors():
        conn.execute("SELECT * FROM no_such_table")


def test_conninfo_bounds_waits_on_a_vanished_peer() -> None:
    info = db.conninfo(load_settings(database_url="postgresql://h/d"), application_name="x")
    params = psycopg.conninfo.conninfo_to_dict(info)
    assert params["keepalives"] == "1"
    assert params["keepalives_idle"] == "10"
    assert params["tcp_user_timeout"] == "10000"
    # The URL's own parameters win; zero turns a default off.
    mine = load_settings(
        database_url="postgresql://h/d?keepalives_idle=60", db_tcp_user_timeout_ms=0
    )
    params = psycopg.conninfo.conninfo_to_dict(db.conninfo(mine, application_name="x"))
    assert params["keepalives_idle"] == "60"
    assert "tcp_user_timeout" not in params


def test_the_watchdog_abandons_a_connection_whose_server_stops_answering(
    make_settings: Any,
) -> None:
    """A server that keeps its socket open but never answers (here: a statement without a
    server-side timeout) costs TASKQ_DB_CLIENT_TIMEOUT, then DatabaseUnavailable; the
    pool and a Dedicated connection serve again at once."""
    settings = make_settings(db_statement_timeout_ms=0, db_client_timeout=0.5)
    pool = db.create_pool(settings, name="watched", min_size=1, max_size=1, open_wait=True)
    dedicated = db.Dedicated(settings, name="watched-dedicated")
    try:
        for use in (lambda: db.pooled(pool), dedicated.use):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable), use() as conn:
                conn.execute("SELECT pg_sleep(30)")
            assert time.monotonic() - started < 3
            with use() as conn:
                assert conn.execute("SELECT 1 AS x").fetchone() == {"x": 1}
    finally:
        dedicated.close()
        pool.close()


def test_a_read_only_node_is_unavailable_and_its_connection_discarded(
    make_settings: Any,
) -> None:
    settings = make_settings()
    pool = db.create_pool(settings, name="ro", min_size=1, max_size=1, open_wait=True)
    try:
        with db.pooled(pool) as conn:
            conn.execute("SET default_transaction_read_only = on")
            pid = conn.info.backend_pid
        assert db.ping(pool) is False  # a node that cannot write is not ready
        with db.pooled(pool) as conn:
            assert conn.info.backend_pid != pid  # ping closed the read-only session
            conn.execute("SET default_transaction_read_only = on")
            pid = conn.info.backend_pid
        with (
            pytest.raises(DatabaseUnavailable, match="ReadOnlySqlTransaction"),
            db.pooled(pool) as conn,
        ):
            conn.execute("CREATE TEMP TABLE t (x int)")
        with db.pooled(pool) as conn:  # a fresh session, writable again
            assert conn.info.backend_pid != pid
            conn.execute("CREATE TEMP TABLE t (x int)")
        assert db.ping(pool) is True
    finally:
        pool.close()


def test_behind_a_transaction_pooler_settings_last_one_transaction(make_settings: Any) -> None:
    """TASKQ_DB_POOLER=transaction: no session state (the pooler would hand it to another
    client); each borrowing runs in a transaction that carries the settings."""
    settings = make_settings(db_pooler="transaction", db_statement_timeout_ms=1234)
    assert settings.prepare_threshold is None
    assert make_settings(db_pooler="transaction", db_prepare_threshold=3).prepare_threshold == 3
    assert make_settings().prepare_threshold == 5
    pool = db.create_pool(settings, name="tx", min_size=1, max_size=1, open_wait=True)
    try:
        with db.pooled(pool) as conn:
            assert conn.prepare_threshold is None
            assert conn.execute("SHOW statement_timeout").fetchone() == {
                "statement_timeout": "1234ms"
            }
        with pool.connection() as raw:  # the same session, outside taskq's transaction
            assert raw.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "0"}
            notify = raw.execute("SELECT current_setting('taskq.notify', true) AS n").fetchone()
            assert notify["n"] in (None, "")
    finally:
        pool.close()


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
