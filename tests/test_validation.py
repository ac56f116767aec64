"""One validation for every surface: the API, the CLI and taskq.enqueue refuse the same
kinds and queue names with the same words (taskq.models.NAME_RULES, Registry.check)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pydantic
import pytest
import taskq
from taskq import cli, db, logs
from taskq.api import Deps, create_app
from taskq.errors import UnknownKind
from taskq.handlers import default_registry
from taskq.validation import problems

from tests.helpers import TEST_SETTINGS

CASES = [
    ("kind", "has space"),
    ("kind", "k" * 129),
    ("kind", "no_such_kind"),
    ("queue", "bad/queue"),
    ("queue", "q" * 65),
    ("queue", ""),
]


@pytest.fixture
def api(make_settings: Any) -> Iterator[falcon.testing.TestClient]:
    settings = make_settings()
    pool = db.create_pool(settings, name="test")
    try:
        yield falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=default_registry))
        )
    finally:
        pool.close()


def _api_error(api: falcon.testing.TestClient, field: str, value: str) -> str:
    result = api.simulate_post("/tasks", json={field: value})
    assert result.status_code == 422, result.text
    error = result.json["error"]
    assert error["field"] == field
    message: str = error["message"].removeprefix(f"{field}: ")
    return message


def _library_error(conn: Any, field: str, value: str) -> str:
    options = {"queue": value} if field == "queue" else {}
    kind = value if field == "kind" else "echo"
    with pytest.raises((pydantic.ValidationError, UnknownKind)) as info:
        taskq.enqueue(conn, kind, {}, **options)
    if isinstance(info.value, UnknownKind):
        assert info.value.field == field
        return info.value.message
    (problem,) = problems(info.value)
    assert problem.field == field
    return problem.message


def _cli_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    field: str,
    value: str,
) -> str:
    monkeypatch.setattr(logs, "configure", lambda settings: None)
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("TASKQ_")]:
            patch.delenv(key)
        patch.setenv("DATABASE_URL", url)
        for key, setting in TEST_SETTINGS.items():
            patch.setenv(f"TASKQ_{key.upper()}", str(setting))
        args = ["submit", value] if field == "kind" else ["submit", "echo", "--queue", value]
        capsys.readouterr()
        code = cli.main(args)
        _, err = capsys.readouterr()
    assert code == 2, err
    name = "KIND" if field == "kind" else "--queue"
    line = err.strip()
    assert line.startswith(f"taskq: {name}: "), line
    return line.removeprefix(f"taskq: {name}: ")


@pytest.mark.parametrize(("field", "value"), CASES)
def test_api_cli_and_library_refuse_alike(
    api: falcon.testing.TestClient,
    conn: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: str,
) -> None:
    said = _api_error(api, field, value)
    assert "should match pattern" not in said  # the rule in words, not a regex
    assert _library_error(conn, field, value) == said
    assert _cli_error(monkeypatch, capsys, database_url, field, value) == said
    assert conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()["n"] == 0


def test_query_parameters_use_the_same_words(api: falcon.testing.TestClient) -> None:
    for field, value in (("kind", "has space"), ("queue", "bad/queue")):
        body = api.simulate_post("/tasks", json={field: value}).json["error"]
        listed = api.simulate_get("/tasks", params={field: value})
        assert listed.status_code == 422
        assert listed.json["error"]["field"] == field
        assert listed.json["error"]["message"] == body["message"].removeprefix(f"{field}: ")
