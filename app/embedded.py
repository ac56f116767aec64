"""An embedded PostgreSQL for `taskq dev` / `make run` when DATABASE_URL is not set.

Uses the `pgserver` wheel (PostgreSQL binaries on PyPI), listening on a Unix socket only,
with its data under a git-ignored directory so tasks survive a restart of `make run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "taskq"


class EmbeddedUnavailable(RuntimeError):
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
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE};")
    url: str = server.get_uri(DATABASE)
    log.info("embedded PostgreSQL running with data in %s", data_dir)
    return server, url
