"""Schema migrations with yoyo, safe to run repeatedly and concurrently.

Concurrency: every run first takes a PostgreSQL advisory lock on a dedicated connection,
so two `taskq migrate` processes (two Job pods, a Job and a developer) run one after the
other; the lock dies with its session, so a killed run never leaves a stale lock behind
(yoyo's own lock table would). Repeatability: yoyo records applied migrations, and each
run applies only what is missing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from taskq import db
from taskq.backoff import Backoff
from taskq.errors import DatabaseRefused, DatabaseUnavailable
from taskq.settings import Settings

log = logging.getLogger(__name__)

# Arbitrary constant identifying "taskq schema changes" among advisory locks.
_ADVISORY_LOCK_KEY = 0x7461736B71  # "taskq"


def migrations_dir() -> Path:
    """Packaged copy inside the wheel, else the repository's db/migrations."""
    packaged = Path(__file__).with_name("migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "db" / "migrations"


def _yoyo_backend(settings: Settings):  # type: ignore[no-untyped-def]
    from yoyo import get_backend

    # yoyo picks its psycopg 3 driver from the URL scheme and passes query parameters to
    # psycopg.connect as keywords, so any libpq conninfo (URL or key=value, Unix socket
    # hosts included) maps onto a URL without a netloc. libpq still reads PGPASSWORD.
    params = conninfo_to_dict(settings.database_url)
    dbname = str(params.pop("dbname", "") or "")
    return get_backend(f"postgresql+psycopg:///{quote(dbname)}?{urlencode(params)}")


def _wait_for_database(settings: Settings, wait: float) -> db.Connection:
    """Connect, waiting up to `wait` seconds for a database that is not up yet; a wrong
    setting (credentials, database, role, host name) is raised at once."""
    deadline = time.monotonic() + wait
    retry = Backoff(0.25, 5.0)
    while True:
        try:
            return db.connect(settings, name="migrate")
        except DatabaseRefused:
            raise
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            log.info(
                "database not reachable yet; retrying for %.0fs more", deadline - time.monotonic()
            )
            time.sleep(min(retry.next(), max(0.0, deadline - time.monotonic())))


def _lock(conn: db.Connection) -> None:
    """Take the advisory lock, polling rather than blocking in pg_advisory_lock.

    A session blocked in pg_advisory_lock sits in a statement that holds a snapshot, and
    CREATE INDEX CONCURRENTLY (in the migration the lock holder is running) waits for
    every such snapshot to go away: the two would wait on each other until the statement
    timeout. Between polls this session holds no snapshot, so concurrent runs queue up
    without blocking the migration they wait for.
    """
    retry = Backoff(0.05, 0.5)
    while True:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s) AS ok", (_ADVISORY_LOCK_KEY,)
        ).fetchone()
        if row and row["ok"]:
            return
        time.sleep(retry.next())


def apply(settings: Settings, *, wait: float = 0.0) -> list[str]:
    """Apply pending migrations; returns the ids applied (empty when up to date)."""
    from yoyo import read_migrations

    lock_conn = _wait_for_database(settings, wait)
    try:
        _lock(lock_conn)
        backend = _yoyo_backend(settings)
        migrations = read_migrations(str(migrations_dir()))
        with backend.lock():
            pending = backend.to_apply(migrations)
            ids = [m.id for m in pending]
            if ids:
                log.info("applying migrations: %s", ", ".join(ids))
                backend.apply_migrations(pending)
            else:
                log.info("schema is up to date")
        backend.connection.close()
        return ids
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable during migration: {exc}") from exc
    finally:
        lock_conn.close()  # releases the advisory lock


def rollback(settings: Settings, *, count: int = 1) -> list[str]:
    """Roll back the `count` most recent migrations; returns their ids."""
    from yoyo import read_migrations

    lock_conn = _wait_for_database(settings, 0)
    try:
        _lock(lock_conn)
        backend = _yoyo_backend(settings)
        migrations = read_migrations(str(migrations_dir()))
        with backend.lock():
            applied = backend.to_rollback(migrations)[:count]
            backend.rollback_migrations(applied)
        backend.connection.close()
        return [m.id for m in applied]
    finally:
        lock_conn.close()


def database_name(settings: Settings) -> str:
    return str(conninfo_to_dict(settings.database_url).get("dbname", ""))
