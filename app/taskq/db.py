"""Database boundary: connection pools, connections, and psycopg error translation.

Nothing outside this module catches psycopg exceptions: `translate_errors` turns them into
the domain's DatabaseUnavailable / InvalidInput so the API and worker speak one language.
"""

from __future__ import annotations

import contextlib
import logging
import select
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from taskq.errors import DatabaseUnavailable, InvalidInput
from taskq.settings import Settings

log = logging.getLogger(__name__)

Connection = psycopg.Connection[dict[str, Any]]
Pool = psycopg_pool.ConnectionPool[Connection]

# Data the server refused although the API validated it (e.g. a value out of range).
_BAD_INPUT_CLASSES = ("22",)

# Once the pool has failed to reach PostgreSQL, callers wait at most this long for a
# connection instead of the full TASKQ_DB_POOL_TIMEOUT. During an outage every request
# would otherwise hold a (single-threaded) API process for the whole pool timeout, and
# /live and /ready would queue behind them until probes time out. The short wait still
# asks the pool for a connection, so the first request after PostgreSQL returns
# reconnects; the first successful connection ends the fast-fail mode.
UNREACHABLE_WAIT = 0.25


class _Reachability:
    """Whether a pool's last attempt to open a connection failed."""

    def __init__(self) -> None:
        self.down = False


_REACHABILITY: weakref.WeakKeyDictionary[Any, _Reachability] = weakref.WeakKeyDictionary()


def conninfo(settings: Settings, *, application_name: str) -> str:
    """The libpq conninfo for DATABASE_URL with our connection defaults added."""
    params: dict[str, Any] = conninfo_to_dict(settings.database_url)
    params.setdefault("connect_timeout", str(settings.db_connect_timeout))
    params.setdefault("application_name", application_name)
    return make_conninfo(**params)


def redact(url: str) -> str:
    """DATABASE_URL with any password replaced, for logs and error messages."""
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable DATABASE_URL>"
    if "password" in params:
        params["password"] = "***"  # noqa: S105  (a mask, not a password)
    return make_conninfo(**params)


def _configure(
    settings: Settings,
    reachability: _Reachability | None = None,
    *,
    synchronous_commit: bool = True,
    notify_on_insert: bool = True,
) -> Any:
    def configure(conn: psycopg.Connection[Any]) -> None:
        if settings.db_statement_timeout_ms:
            conn.execute(f"SET statement_timeout = {int(settings.db_statement_timeout_ms)}")
        if not notify_on_insert:
            # This session wakes the workers itself after commit (app/taskq/notifier.py).
            conn.execute("SET taskq.notify = off")
        if not synchronous_commit:
            # Worker-side transitions only (see TASKQ_WORKER_SYNCHRONOUS_COMMIT): a database
            # crash may undo the last few, and leases then re-run those tasks.
            conn.execute("SET synchronous_commit = off")
        else:
            # An accepted task must be on disk whatever the server's default: raise `off`
            # to `on`, and leave a stricter setting (remote_write, remote_apply) alone.
            conn.execute(
                "SELECT set_config('synchronous_commit', 'on', false)"
                " WHERE current_setting('synchronous_commit') = 'off'"
            )
        if reachability is not None and reachability.down:
            reachability.down = False
            log.info("database reachable again")

    return configure


def _wait_for(pool: Any, timeout: float | None) -> float | None:
    """How long to wait for a pooled connection: short while the database is unreachable."""
    state = _REACHABILITY.get(pool)
    if state is None or not state.down:
        return timeout
    return min(UNREACHABLE_WAIT, timeout if timeout is not None else pool.timeout)


def _still_usable(conn: psycopg.Connection[Any]) -> None:
    """Cheap pool check: an idle connection has nothing to read unless the server spoke.

    After a PostgreSQL restart the server sends a FATAL message and closes the socket; a
    readable idle socket therefore means "look closer". Only then do we pay a round trip,
    so healthy checkouts cost one poll() instead of a query.
    """
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        conn.execute("SELECT 1")


def create_pool(
    settings: Settings,
    *,
    name: str,
    min_size: int | None = None,
    max_size: int | None = None,
    open_wait: bool = False,
    synchronous_commit: bool = True,
    notify_on_insert: bool = True,
) -> psycopg_pool.ConnectionPool[Connection]:
    """A pool of autocommit connections returning dict rows.

    `notify_on_insert=False`: the enqueue trigger does not notify for this pool's
    sessions, whose owner sends the notifications itself (app/taskq/notifier.py).

    The pool is opened without waiting: a process that starts while PostgreSQL is down
    comes up, reports not-ready, and serves once the database returns.
    """
    reachability = _Reachability()

    def reconnect_failed(pool: Any) -> None:
        if not reachability.down:
            log.warning("database unreachable; answering at once until it returns")
        reachability.down = True

    pool: psycopg_pool.ConnectionPool[Connection] = psycopg_pool.ConnectionPool(
        conninfo(settings, application_name=f"taskq-{name}"),
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        timeout=settings.db_pool_timeout,
        kwargs={"autocommit": True, "row_factory": dict_row},
        configure=_configure(
            settings,
            reachability,
            synchronous_commit=synchronous_commit,
            notify_on_insert=notify_on_insert,
        ),
        check=_still_usable,
        # A failed connection attempt is retried once, then given up (and reported to
        # reconnect_failed); the next request for a connection starts a fresh attempt.
        # Reconnection is thus driven by demand, never stuck in a long backoff.
        reconnect_timeout=0,
        reconnect_failed=reconnect_failed,
        name=name,
        open=False,
        connection_class=psycopg.Connection[dict[str, Any]],
    )
    _REACHABILITY[pool] = reachability
    pool.open(wait=open_wait)
    return pool


def connect(settings: Settings, *, name: str, synchronous_commit: bool = True) -> Connection:
    """A single dedicated autocommit connection (listener, CLI, worker hot paths)."""
    with translate_errors():
        conn = psycopg.connect(
            conninfo(settings, application_name=f"taskq-{name}"),
            autocommit=True,
            row_factory=dict_row,
        )
        _configure(settings, synchronous_commit=synchronous_commit)(conn)
    return conn


class Dedicated:
    """One connection owned by one thread, reopened on demand after a failure.

    The worker's claim loop and completer each talk to PostgreSQL thousands of times a
    second; a pool checkout costs more CPU than the statement itself, and a thread that
    never shares its connection does not need one.
    """

    def __init__(self, settings: Settings, *, name: str, synchronous_commit: bool = True) -> None:
        self._settings = settings
        self._name = name
        self._synchronous_commit = synchronous_commit
        self._conn: Connection | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[Connection]:
        """The live connection; a database failure closes it and raises DatabaseUnavailable."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self._settings, name=self._name, synchronous_commit=self._synchronous_commit
            )
        try:
            with translate_errors():
                yield self._conn
        except DatabaseUnavailable:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn psycopg/pool exceptions into domain errors at the database boundary."""
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        raise DatabaseUnavailable("database unavailable: no connection within timeout") from exc
    except psycopg.OperationalError as exc:
        # OperationalError covers lost connections, shutdowns and statement timeouts.
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except psycopg.DataError as exc:
        sqlstate = exc.sqlstate or ""
        if sqlstate.startswith(_BAD_INPUT_CLASSES):
            raise InvalidInput(f"value rejected by the database: {_first_line(exc)}") from exc
        raise
    except psycopg.InterfaceError as exc:
        raise DatabaseUnavailable("database unavailable: connection closed") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def pooled(pool: psycopg_pool.ConnectionPool[Connection]) -> Iterator[Connection]:
    """Borrow a connection, translating every database failure on the way."""
    with translate_errors(), pool.connection(timeout=_wait_for(pool, None)) as conn:
        yield conn


def ping(pool: psycopg_pool.ConnectionPool[Connection], timeout: float = 1.0) -> bool:
    """True when a pooled connection answers `SELECT 1` within `timeout` seconds."""
    try:
        with pool.connection(timeout=_wait_for(pool, timeout)) as conn:
            conn.execute("SELECT 1")
        return True
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return False
