"""An embedded PostgreSQL for `taskq dev` / `make run` when DATABASE_URL is not set.

Uses the `pgserver` wheel (PostgreSQL binaries on PyPI), listening on a Unix socket only,
with its data under a git-ignored directory so tasks survive a restart of `make run`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE = "taskq"

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
    try:
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
    log.info("embedded PostgreSQL running with data in %s", data_dir)
    return server, url


def _ensure_database(admin_url: str) -> None:
    """Create the taskq database once; a concurrent creator winning the race is fine."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
