"""The PostgreSQL server under test: databases, facts, and the pgbench/psql tools.

Each system gets its own database on the same server (bench_taskq, bench_pgqueuer,
bench_procrastinate), created at the start of a run and dropped at the end.
"""

from __future__ import annotations

import shutil
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Settings that shape the results; recorded with every run.
FACT_SETTINGS = (
    "shared_buffers",
    "max_connections",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_wal_size",
    "checkpoint_timeout",
    "work_mem",
    "effective_cache_size",
    "random_page_cost",
    "jit",
    "autovacuum",
)


class Server:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, dbname: str) -> str:
        params: dict[str, Any] = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        host = str(params.get("host", "127.0.0.1"))
        port = params.get("port", "5432")
        user = params.get("user", "root")
        if host.startswith("/"):  # a socket directory (e.g. a throwaway test server)
            return f"postgresql://{user}@/{dbname}?host={quote(host)}&port={port}"
        return f"postgresql://{user}@{host}:{port}/{dbname}"

    def conninfo(self, dbname: str) -> str:
        params: dict[str, Any] = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        return make_conninfo(**params)

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def create(self, dbname: str) -> str:
        self.drop(dbname)
        self._admin(f'CREATE DATABASE "{dbname}"')
        return self.url(dbname)

    def drop(self, dbname: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def facts(self) -> dict[str, Any]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in FACT_SETTINGS
            }
        return {"version": version[0] if version else "?", "settings": settings}


def execute(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection; rows if it returned any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (make bench installs it)")
    return path
