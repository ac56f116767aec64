"""Shared fixtures: a real PostgreSQL, and a fresh migrated database per test.

Server: DATABASE_URL when set, else the server at 127.0.0.1:5432, else a throwaway
server from the pgserver wheel. The schema is migrated once into a template database;
each test gets its own clone (CREATE DATABASE ... TEMPLATE), so tests are isolated, may
run worker processes against their database, and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon.util.sync
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from taskq import migrate
from taskq.settings import Settings, load_settings

from tests.helpers import TEST_SETTINGS

REPO = Path(__file__).resolve().parent.parent


class _RunnerPerThread:
    """falcon.testing drives an ASGI app (the API is one) through one process-wide
    asyncio runner, so two threads simulating requests at once collide ("This event loop
    is already running"). Tests race real requests from threads: each thread gets its own
    runner."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> asyncio.Runner:
        runner: asyncio.Runner | None = getattr(self._local, "runner", None)
        if runner is None or runner.get_loop().is_closed():
            runner = self._local.runner = asyncio.Runner()
        return runner


falcon.util.sync._active_runner = _RunnerPerThread()  # type: ignore[assignment]
LOCAL_SERVER = "postgresql://root@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL for a PostgreSQL server on which tests may create databases."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    if _reachable(LOCAL_SERVER):
        yield LOCAL_SERVER
        return
    import pgserver  # type: ignore[import-untyped,unused-ignore]

    with tempfile.TemporaryDirectory(prefix="taskq-pg-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        yield server.get_uri("postgres")
        server.cleanup()


def _with_db(url: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"taskq_tpl_{os.getpid()}"
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    migrate.apply(load_settings(database_url=_with_db(server_url, name)))
    yield name
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with no schema (for migration tests)."""
    name = f"taskq_t_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield _with_db(server_url, name)
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh clone of the migrated template: this test's own database."""
    name = f"taskq_t_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield _with_db(server_url, name)
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return load_settings(**{"database_url": database_url, **TEST_SETTINGS, **overrides})

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def api_get(settings: Settings) -> Iterator[Callable[[Any], dict[str, Any]]]:
    """GET /tasks/{id} through the real Falcon app on this test's database."""
    import falcon.testing
    from taskq import db
    from taskq.api import Deps, create_app

    pool = db.create_pool(settings, name="test")
    client = falcon.testing.TestClient(create_app(settings, Deps(pool=pool)))

    def get(task_id: Any) -> dict[str, Any]:
        result = client.simulate_get(f"/tasks/{task_id}")
        assert result.status_code == 200, result.text
        body: dict[str, Any] = result.json
        return body

    yield get
    pool.close()
