"""app/taskq/migrate.py and db/migrations: apply, repeat, run concurrently, roll back."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from taskq import migrate
from taskq.errors import DatabaseUnavailable
from taskq.settings import load_settings

from tests.helpers import free_port


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _all_ids() -> list[str]:
    directory = migrate.migrations_dir()
    return sorted(p.stem for p in directory.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def test_every_migration_has_a_rollback() -> None:
    directory = migrate.migrations_dir()
    forward = sorted(p for p in directory.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    assert forward, f"no migrations in {directory}"
    for path in forward:
        assert path.with_name(path.stem + ".rollback.sql").exists(), path.name


def test_apply_is_idempotent_and_rolls_back(empty_database_url: str) -> None:
    settings = load_settings(database_url=empty_database_url)
    everything = _all_ids()
    assert everything[0] == "0001.create-tasks"
    assert migrate.apply(settings) == everything
    assert "taskq_tasks" in _tables(empty_database_url)
    assert migrate.apply(settings) == []
    assert migrate.rollback(settings, count=len(everything)) == everything[::-1]
    assert "taskq_tasks" not in _tables(empty_database_url)
    assert migrate.apply(settings) == everything
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("INSERT INTO taskq_tasks (kind) VALUES ('echo')")


def test_concurrent_runs_apply_once(empty_database_url: str) -> None:
    settings = load_settings(database_url=empty_database_url)
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate.apply(settings))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == [[], [], [], _all_ids()]


def test_wait_gives_up_after_its_deadline() -> None:
    settings = load_settings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        migrate.apply(settings, wait=1.0)
    assert 0.9 < time.monotonic() - started < 10


@pytest.mark.parametrize(
    "name",
    ["default", "a", "q" * 64, "emails.high:eu-1_x", "", "q" * 65, "bad queue", "default\n", "é"],
)
def test_name_checks_accept_exactly_what_the_api_accepts(conn: Any, name: str) -> None:
    """The database's queue and kind checks (0003) agree with TaskSpec's validation."""
    from pydantic import ValidationError
    from taskq.models import TaskSpec

    try:
        TaskSpec(queue=name, kind=name if len(name) <= 128 else "echo")
        api_accepts = True
    except ValidationError:
        api_accepts = False
    try:
        with conn.transaction():
            conn.execute("INSERT INTO taskq_tasks (queue, kind) VALUES (%s, %s)", (name, name))
        database_accepts = True
    except psycopg.errors.CheckViolation:
        database_accepts = False
    assert database_accepts == api_accepts, name
