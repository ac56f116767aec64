"""An embedded PostgreSQL for `taskq dev` / `make run` when DATABASE_URL is not set.

Uses the `pgserver` wheel (PostgreSQL binaries on PyPI), listening on a Unix socket only,
with its data under a git-ignored directory so tasks survive a restart of `make run`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from taskq.settings import Settings, load_settings

log = logging.getLogger(__name__)

DATABASE = "taskq"
# The default --data-dir of `taskq dev`, relative to the directory it runs in.
DEFAULT_DATA_DIR = Path(".pgdata")
# Written into the data directory while the server runs: its DATABASE_URL, for the other
# `taskq` commands and the library (`discover`).
URL_FILE = "taskq-database-url"

# pgserver hands the socket directory (the data directory when its path is short enough)
# to pg_ctl as one unquoted option string, so PostgreSQL splits a path at whitespace and
# cannot start; quotes and backslashes break the same way.
_UNSAFE_PATH = re.compile(r"[\s'\"\\]")


class EmbeddedError(RuntimeError):
    """The embedded PostgreSQL cannot run; the message says what to do instead."""


class EmbeddedUnavailable(EmbeddedError):
    """pgserver is not installed (install the `embedded` extra)."""


def start(data_dir: Path) -> tuple[Any, str]:
    """Start (or attach to) the server in `data_dir`; returns (handle, DATABASE_URL)."""
    try:
        with warnings.catch_warnings():  # platformdirs warns on import (see below)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "no DATABASE_URL and pgserver is not installed: pip install 'taskq[embedded]' "
            "or set DATABASE_URL"
        ) from exc
    data_dir = data_dir.expanduser().resolve()
    if _UNSAFE_PATH.search(str(data_dir)):
        raise EmbeddedError(
            f"the embedded PostgreSQL cannot use {str(data_dir)!r}: its path holds a space, "
            "quote or backslash; pass --data-dir with a plain path or set DATABASE_URL"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    # pgserver logs initdb's whole output at INFO, and platformdirs warns when
    # XDG_RUNTIME_DIR is unset: noise on the first screen of `make run`. pgserver's errors
    # (with the server log) still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL did not start ({exc}); its log is {data_dir / 'log'}"
        ) from exc
    try:
        _ensure_database(server.get_uri("postgres"))
    except psycopg.Error as exc:
        server.cleanup()
        raise EmbeddedError(f"the embedded PostgreSQL refused to create {DATABASE}: {exc}") from exc
    url: str = server.get_uri(DATABASE)
    (data_dir / URL_FILE).write_text(url + "\n", encoding="utf-8")
    log.info("embedded PostgreSQL running with data in %s", data_dir)
    return server, url


def stop(server: Any, data_dir: Path) -> None:
    """Stop the server `start` returned; other commands no longer find it."""
    with contextlib.suppress(OSError):
        (data_dir.expanduser().resolve() / URL_FILE).unlink()
    server.cleanup()


def discover(data_dir: Path = DEFAULT_DATA_DIR) -> str | None:
    """The DATABASE_URL of the embedded server `taskq dev` runs from `data_dir`, or None
    when none runs there (no URL file, or its socket is gone)."""
    try:
        url = (data_dir / URL_FILE).read_text(encoding="utf-8").strip()
        params = conninfo_to_dict(url)
    except (OSError, UnicodeDecodeError, psycopg.ProgrammingError):
        return None
    host = str(params.get("host") or "")
    port = str(params.get("port") or "5432")
    if host.startswith("/") and not (Path(host) / f".s.PGSQL.{port}").exists():
        return None  # a server that did not stop cleanly left the file behind
    return url or None


def _ensure_database(admin_url: str) -> None:
    """Create the taskq database once; a concurrent creator winning the race is fine."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))


def names_a_database(settings: Settings) -> bool:
    """Whether DATABASE_URL (or its alias TASKQ_DATABASE_URL) was set to a database, as
    opposed to the built-in default that `taskq dev` replaces with an embedded server."""
    return "database_url" in settings.model_fields_set and bool(settings.database_url)


def resolve(settings: Settings) -> Settings:
    """`settings`, pointed at the embedded server of `make run` in this directory when
    DATABASE_URL is unset and that server runs; otherwise unchanged."""
    if names_a_database(settings):
        return settings
    url = discover()
    if url is None:
        return settings
    return load_settings(database_url=url)
