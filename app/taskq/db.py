"""Database boundary: connection pools, connections, and psycopg error translation.

Nothing outside this module catches psycopg exceptions: `translate_errors` turns them into
the domain's DatabaseUnavailable / InvalidInput so the API and worker speak one language.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from taskq import sql
from taskq.errors import DatabaseRefused, DatabaseUnavailable, InvalidInput, SchemaOutdated
from taskq.settings import Settings

log = logging.getLogger(__name__)

Connection = psycopg.Connection[dict[str, Any]]
Pool = psycopg_pool.ConnectionPool[Connection]

# Data the server refused although the API validated it (e.g. a value out of range).
_BAD_INPUT_CLASSES = ("22",)

# "Not this node, not now": a read-only transaction (a database made read-only, a node
# demoted to standby), an administrator's or the server's shutdown, recovery in progress,
# too many connections. The connection that saw one is discarded: a new one, through a
# multi-host URL with target_session_attrs=read-write, finds the node that can write.
_WRONG_NODE_STATES = frozenset({"25006", "57P01", "57P02", "57P03", "53300"})

# An undefined table or function: this release's migrations have not run on the database.
_MISSING_OBJECT_STATES = frozenset({"42P01", "42883"})

# Once the pool has failed to reach PostgreSQL, callers wait at most this long for a
# connection instead of the full TASKQ_DB_POOL_TIMEOUT. During an outage every request
# would otherwise hold a (single-threaded) API process for the whole pool timeout, and
# /live and /ready would queue behind them until probes time out. The short wait still
# asks the pool for a connection, so the first request after PostgreSQL returns
# reconnects; the first successful connection ends the fast-fail mode.
UNREACHABLE_WAIT = 0.25


# A failed connection attempt that retrying cannot change. libpq gives connection
# failures no SQLSTATE, so the server's (and the resolver's) words are matched. Refused
# connections, timeouts, a server starting up or shutting down, and a temporary resolver
# failure are not here: those are waited out.
_PERMANENT_CONNECT_FAILURES = (
    "password authentication failed",
    "authentication failed for user",
    "no password supplied",
    "no pg_hba.conf entry",
    'FATAL:  role "',
    'FATAL:  database "',
    "Name or service not known",
    "nodename nor servname provided",
    "No address associated with hostname",
)


def is_permanent(exc: BaseException) -> bool:
    """Whether a connection failure is a wrong setting rather than an outage."""
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) and any(
        needle in text for needle in _PERMANENT_CONNECT_FAILURES
    )


class _Reachability:
    """Whether a pool's last attempt to open a connection failed."""

    def __init__(self) -> None:
        self.down = False


_REACHABILITY: weakref.WeakKeyDictionary[Any, _Reachability] = weakref.WeakKeyDictionary()
_IDLE = TransactionStatus.IDLE


class _PoolOptions:
    """What `pooled` needs to know about a pool besides the pool itself."""

    def __init__(self, settings: Settings, pairs: tuple[str, ...]) -> None:
        self.settings = settings
        self.pairs = pairs


_OPTIONS: weakref.WeakKeyDictionary[Any, _PoolOptions] = weakref.WeakKeyDictionary()


def conninfo(settings: Settings, *, application_name: str, url: str | None = None) -> str:
    """The libpq conninfo for DATABASE_URL (or `url`) with our connection defaults added.

    Keepalives and tcp_user_timeout make the kernel give up on a peer that vanished (a
    lost host, a cut network) in seconds instead of the kernel's two hours; parameters
    in the URL win over these defaults.
    """
    params: dict[str, Any] = conninfo_to_dict(settings.database_url if url is None else url)
    params.setdefault("connect_timeout", str(settings.db_connect_timeout))
    params.setdefault("application_name", application_name)
    if settings.db_keepalives_idle:
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", str(settings.db_keepalives_idle))
        params.setdefault("keepalives_interval", str(max(1, settings.db_keepalives_idle // 3)))
        params.setdefault("keepalives_count", "3")
    if settings.db_tcp_user_timeout_ms:
        params.setdefault("tcp_user_timeout", str(settings.db_tcp_user_timeout_ms))
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


def session_settings(
    settings: Settings, *, synchronous_commit: bool = True, notify_on_insert: bool = True
) -> tuple[str, ...]:
    """The settings a taskq session runs with, as `name` / `value` pairs flattened."""
    pairs: list[str] = []
    if settings.db_statement_timeout_ms:
        pairs += ["statement_timeout", str(int(settings.db_statement_timeout_ms))]
    if not notify_on_insert:
        # This session wakes the workers itself after commit (app/taskq/notifier.py).
        pairs += ["taskq.notify", "off"]
    if not synchronous_commit:
        # Worker-side transitions only (see TASKQ_WORKER_SYNCHRONOUS_COMMIT): a database
        # crash may undo the last few, and leases then re-run those tasks.
        pairs += ["synchronous_commit", "off"]
    return tuple(pairs)


def _apply_settings(conn: psycopg.Connection[Any], pairs: tuple[str, ...], *, local: bool) -> None:
    """One round trip: every setting of `pairs` (sql.SESSION_SETTINGS).

    `local`: for this transaction only (set_config(..., true)), which is what a
    transaction pooler needs: a session setting would stay on the server connection and
    reach whichever client the pooler hands it to next.
    """
    names = list(pairs[0::2])
    durable = "synchronous_commit" not in names
    conn.execute(
        sql.SESSION_SETTINGS_DURABLE if durable else sql.SESSION_SETTINGS,
        {"local": local, "names": names, "values": list(pairs[1::2])},
        prepare=False,
    )


def _configure(
    settings: Settings,
    reachability: _Reachability | None = None,
    *,
    synchronous_commit: bool = True,
    notify_on_insert: bool = True,
) -> Any:
    pairs = session_settings(
        settings, synchronous_commit=synchronous_commit, notify_on_insert=notify_on_insert
    )

    def configure(conn: psycopg.Connection[Any]) -> None:
        _watch_replication_notices(conn)
        if settings.db_pooler != "transaction":
            _apply_settings(conn, pairs, local=False)
        if reachability is not None and reachability.down:
            reachability.down = False
            log.info("database reachable again")

    return configure


def transaction_settings(conn: Connection, settings: Settings) -> None:
    """Inside a caller's own transaction: give it taskq's settings when a transaction
    pooler keeps them out of the session (a no-op otherwise)."""
    if settings.db_pooler == "transaction":
        with translate_errors():
            _apply_settings(conn, session_settings(settings), local=True)


# PostgreSQL's warning when a commit's wait for the synchronous standby was cancelled
# (pg_cancel_backend, a failover manager): the transaction committed locally but may be
# lost with this node. It is a notice, not an error, so psycopg would report success.
_UNREPLICATED_DETAIL = "The transaction has already committed locally"
_UNREPLICATED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def _watch_replication_notices(conn: psycopg.Connection[Any]) -> None:
    ref = weakref.ref(conn)

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        owner = ref()
        if owner is not None and (diag.message_detail or "").startswith(_UNREPLICATED_DETAIL):
            _UNREPLICATED.add(owner)

    conn.add_notice_handler(on_notice)


def _check_replicated(conn: psycopg.Connection[Any]) -> None:
    """Raise DatabaseUnavailable when a commit on `conn` was not confirmed by the
    synchronous standby: the client must not take it as durable (503: retry, with an
    Idempotency-Key), and the connection is dropped (its node may be on its way out)."""
    if conn in _UNREPLICATED:
        _UNREPLICATED.discard(conn)
        conn.close()
        raise DatabaseUnavailable("database unavailable: commit not confirmed by the standby")


@contextlib.contextmanager
def scoped(conn: Connection, settings: Settings, pairs: tuple[str, ...]) -> Iterator[Connection]:
    """Behind a transaction pooler, run the caller's statements in one transaction that
    carries the session's settings; otherwise the settings are the session's already."""
    if settings.db_pooler != "transaction" or conn.info.transaction_status != _IDLE:
        yield conn
        return
    with conn.transaction():
        _apply_settings(conn, pairs, local=True)
        yield conn


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
        with WATCHDOG.watch(conn, 2.0):
            conn.execute("SELECT 1")


def _connect_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "prepare_threshold": settings.prepare_threshold,
    }


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
        kwargs=_connect_kwargs(settings),
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
    _OPTIONS[pool] = _PoolOptions(
        settings,
        session_settings(
            settings, synchronous_commit=synchronous_commit, notify_on_insert=notify_on_insert
        ),
    )
    pool.open(wait=open_wait)
    return pool


def connect(
    settings: Settings,
    *,
    name: str,
    synchronous_commit: bool = True,
    url: str | None = None,
    session: bool = False,
) -> Connection:
    """A single dedicated autocommit connection (listener, CLI, worker hot paths).

    `url`: another URL than DATABASE_URL (the listener's direct one). `session`: the
    connection keeps session state (LISTEN, advisory locks) and must not go through a
    transaction pooler, so its settings are session settings and statements may be
    prepared as usual.
    """
    with translate_errors():
        conn = psycopg.connect(
            conninfo(settings, application_name=f"taskq-{name}", url=url),
            **(
                {"autocommit": True, "row_factory": dict_row}
                if session
                else _connect_kwargs(settings)
            ),
        )
        pairs = session_settings(settings, synchronous_commit=synchronous_commit)
        if session or settings.db_pooler != "transaction":
            with WATCHDOG.watch(conn, settings.client_timeout):
                _apply_settings(conn, pairs, local=False)
    return conn


class Dedicated:
    """One connection owned by one thread, reopened on demand after a failure.

    The worker's claim loop and completer each talk to PostgreSQL thousands of times a
    second; a pool checkout costs more CPU than the statement itself, and a thread that
    never shares its connection does not need one. Every use is watched: a server that
    stops answering loses the connection after TASKQ_DB_CLIENT_TIMEOUT.
    """

    def __init__(self, settings: Settings, *, name: str, synchronous_commit: bool = True) -> None:
        self._settings = settings
        self._name = name
        self._synchronous_commit = synchronous_commit
        self._pairs = session_settings(settings, synchronous_commit=synchronous_commit)
        self._conn: Connection | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[Connection]:
        """The live connection; a database failure closes it and raises DatabaseUnavailable."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self._settings, name=self._name, synchronous_commit=self._synchronous_commit
            )
        conn = self._conn
        try:
            with (
                translate_errors(),
                WATCHDOG.watch(conn, self._settings.client_timeout),
                scoped(conn, self._settings, self._pairs),
            ):
                yield conn
        except DatabaseUnavailable:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class Watchdog:
    """Abandons connections whose server stopped answering.

    A frozen server (a stopped process, a hung disk, a paused VM) keeps its sockets open
    and its kernel acknowledges every packet, so neither keepalives nor the server's own
    statement_timeout ever fire and libpq would wait forever. Code that talks to the
    database registers the connection for the duration (`watch`); a thread per process
    shuts down the socket of one still busy after its bound, which fails the waiting call
    at once (psycopg raises OperationalError: DatabaseUnavailable for the caller) and makes
    the owner reconnect — through a multi-host URL, to whichever node now accepts writes.
    """

    TICK = 0.2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[psycopg.Connection[Any], float]] = {}
        self._next = 0
        self._pid = 0
        self.abandoned = 0

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (after a fork)
                self._pid = os.getpid()
                self._watched.clear()
                threading.Thread(target=self._run, name="db-watchdog", daemon=True).start()
            self._next += 1
            key = self._next
            self._watched[key] = (conn, time.monotonic() + seconds)
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:  # held while abandoning: a connection cannot be reused meanwhile
                expired = [k for k, (_, deadline) in self._watched.items() if deadline <= now]
                for key in expired:
                    conn, _ = self._watched.pop(key)
                    if abandon(conn):
                        self.abandoned += 1
                        log.warning(
                            "the database did not answer in time; connection abandoned",
                            extra={"application_name": _application_name(conn)},
                        )


def _application_name(conn: psycopg.Connection[Any]) -> str:
    with contextlib.suppress(Exception):
        return str(conn.pgconn.parameter_status(b"application_name") or b"", "ascii", "replace")
    return ""


def abandon(conn: psycopg.Connection[Any]) -> bool:
    """Shut down the connection's socket under whoever is waiting on it (any thread)."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return False  # closed already
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    finally:
        sock.close()
    return True


WATCHDOG = Watchdog()


def wrong_node(exc: BaseException) -> bool:
    """True for errors that mean "not this node, not now" (see _WRONG_NODE_STATES)."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    return isinstance(cause, psycopg.Error) and (cause.sqlstate or "") in _WRONG_NODE_STATES


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn psycopg/pool exceptions into domain errors at the database boundary."""
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        raise DatabaseUnavailable("database unavailable: no connection within timeout") from exc
    except psycopg.OperationalError as exc:
        if is_permanent(exc):
            raise DatabaseRefused(f"database refused the connection: {type(exc).__name__}") from exc
        # OperationalError covers lost connections, shutdowns and statement timeouts.
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
    except psycopg.DataError as exc:
        sqlstate = exc.sqlstate or ""
        if sqlstate.startswith(_BAD_INPUT_CLASSES):
            raise InvalidInput(f"value rejected by the database: {_first_line(exc)}") from exc
        raise
    except psycopg.InterfaceError as exc:
        raise DatabaseUnavailable("database unavailable: connection closed") from exc
    except psycopg.Error as exc:
        if (exc.sqlstate or "") in _MISSING_OBJECT_STATES:
            raise SchemaOutdated(f"database schema outdated: {type(exc).__name__}") from exc
        if (exc.sqlstate or "") in _WRONG_NODE_STATES:
            # A read-only transaction is an InternalError to psycopg; for us it is "not
            # here, not now", like a shutdown.
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        raise


def cause_line(exc: BaseException) -> str:
    """What PostgreSQL or libpq said behind a DatabaseUnavailable (its first line), for
    operators' logs: libpq never quotes a password, and it says which role, database or
    host it could not use. Empty when there is no driver error behind it."""
    cause = exc.__cause__
    if not isinstance(cause, psycopg.Error):
        return ""
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def pooled(pool: psycopg_pool.ConnectionPool[Connection]) -> Iterator[Connection]:
    """Borrow a connection, translating every database failure on the way.

    The borrowing is watched (TASKQ_DB_CLIENT_TIMEOUT), and a connection that met a
    "wrong node" error is closed, so the pool opens a new one instead of reusing it.
    """
    options = _OPTIONS.get(pool)
    with translate_errors(), pool.connection(timeout=_wait_for(pool, None)) as conn:
        if options is None:
            yield conn
            return
        try:
            with (
                WATCHDOG.watch(conn, options.settings.client_timeout),
                scoped(conn, options.settings, options.pairs),
            ):
                yield conn
        except BaseException as exc:
            if wrong_node(exc):
                conn.close()  # the pool discards a closed connection on its return
            raise
        _check_replicated(conn)


def ping(pool: psycopg_pool.ConnectionPool[Connection], timeout: float = 1.0) -> bool:
    """True when a pooled connection answers within `timeout` seconds and can write
    (a database made read-only, or a node that became a standby, is not ready)."""
    try:
        with pool.connection(timeout=_wait_for(pool, timeout)) as conn:
            try:
                with WATCHDOG.watch(conn, max(timeout, 1.0) + 1.0):
                    row = conn.execute(sql.PING_WRITABLE, prepare=False).fetchone()
            except psycopg.Error as exc:
                if wrong_node(exc):
                    conn.close()
                raise
            if not (row and row["writable"]):
                conn.close()  # a writable node is one reconnect away (target_session_attrs)
                return False
        return True
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return False
