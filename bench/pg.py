"""The PostgreSQL server under test: databases, facts, and the pgbench/psql tools.

Each system gets its own database on the same server (bench_taskq, bench_pgqueuer,
bench_procrastinate), created at the start of a run and dropped at the end.
"""

from __future__ import annotations

import re
import shutil
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

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


def explain_generic(
    conn: psycopg.Connection[Any], statement: str, params: dict[str, Any], options: str = ""
) -> list[Any]:
    """EXPLAIN (`options`) of the generic plan of `statement` (psycopg's %(name)s
    placeholders) run with `params`: the plan a prepared statement runs under
    plan_cache_mode = force_generic_plan, as taskq's claims do. Inside a transaction that
    is rolled back, so EXPLAIN ANALYZE of a claim claims nothing."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, statement).replace("%%", "%")
    args = sql.SQL(", ").join(sql.Literal(params[name]) for name in names)
    explain = f"EXPLAIN ({options}) " if options else "EXPLAIN "
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(sql.SQL("PREPARE taskq_explain AS {}").format(sql.SQL(text)))  # type: ignore[arg-type]
        try:
            query = sql.SQL(explain + "EXECUTE taskq_explain({})").format(args)  # type: ignore[arg-type]
            with conn.cursor(row_factory=tuple_row) as cur:
                return [row[0] for row in cur.execute(query).fetchall()]
        finally:
            conn.execute("DEALLOCATE taskq_explain")
