"""app/taskq/settings.py: environment parsing and clear start-up errors."""

from __future__ import annotations

import pytest
from taskq.settings import SettingsError, load_settings, parse_bind


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TASKQ_") or key == "DATABASE_URL":
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.database_url == "postgresql://127.0.0.1:5432/taskq"
    assert (s.api_bind, s.worker_health_bind) == ("127.0.0.1:8080", "127.0.0.1:8081")
    assert (s.lease_seconds, s.default_max_attempts, s.api_max_body_bytes) == (30, 5, 1 << 20)
    assert s.worker_queues == ["default"]
    assert s.heartbeat_interval == 10


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db:5432/jobs")
    monkeypatch.setenv("TASKQ_WORKER_QUEUES", "emails, reports")
    monkeypatch.setenv("TASKQ_HANDLER_MODULES", "myapp.tasks,myapp.more")
    monkeypatch.setenv("TASKQ_WORKER_CONCURRENCY", "32")
    monkeypatch.setenv("TASKQ_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.database_url == "postgresql://app@db:5432/jobs"
    assert s.worker_queues == ["emails", "reports"]
    assert s.handler_modules == ["myapp.tasks", "myapp.more"]
    assert (s.worker_concurrency, s.log_level) == (32, "DEBUG")


def test_keyword_conninfo_is_accepted() -> None:
    assert load_settings(database_url="host=/run/pg dbname=taskq").database_url.startswith("host")


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("TASKQ_WORKER_CONCURRENCY", "0", "TASKQ_WORKER_CONCURRENCY"),
        ("TASKQ_LEASE_SECONDS", "abc", "TASKQ_LEASE_SECONDS"),
        ("TASKQ_API_BIND", "8080", "TASKQ_API_BIND"),
        ("TASKQ_WORKER_QUEUES", "bad queue!", "TASKQ_WORKER_QUEUES"),
        ("TASKQ_LOG_FORMAT", "xml", "TASKQ_LOG_FORMAT"),
        ("DATABASE_URL", "mysql://root@localhost/db", "DATABASE_URL"),
    ],
)
def test_invalid_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert f"  {named}:" in str(info.value)


def test_inconsistent_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_DB_POOL_MIN", "5")
    monkeypatch.setenv("TASKQ_DB_POOL_MAX", "2")
    with pytest.raises(SettingsError, match="TASKQ_DB_POOL_MIN must not exceed"):
        load_settings()


def test_errors_never_echo_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:s3cret@host:notaport/db")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)


def test_worker_ids_are_unique_per_settings_object() -> None:
    assert load_settings().worker_id != load_settings().worker_id


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:81", ("::1", 81)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_parse_bind(value: str, parsed: tuple[str, int]) -> None:
    assert parse_bind(value) == parsed


@pytest.mark.parametrize("value", ["8080", ":80", "host:", "host:99999", "host:http"])
def test_parse_bind_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(value)


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    from taskq.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        variable = "DATABASE_URL" if name == "database_url" else f"TASKQ_{name.upper()}"
        assert f"`{variable}`" in readme, f"{variable} is missing from the README settings table"
