"""app/taskq/api/auth.py: optional bearer tokens, open probes, 401 in the one JSON error shape."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from taskq import db
from taskq.api import Deps, create_app
from taskq.api import auth as auth_module
from taskq.api.auth import BearerAuth, TokenSet
from taskq.settings import Settings, SettingsError, load_settings

from tests.worker_helpers import fresh_registry

TOKEN = "tok-0123456789abcdef"
OTHER = "tok-fedcba9876543210"


@pytest.fixture
def client_for(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    pools = []

    def make(**overrides: Any) -> falcon.testing.TestClient:
        settings = make_settings(**overrides)
        pool = db.create_pool(settings, name="auth-test")
        pools.append(pool)
        return falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )

    yield make
    for pool in pools:
        pool.close()


def _post(client: falcon.testing.TestClient, **headers: str) -> falcon.testing.Result:
    return client.simulate_post(
        "/tasks", json={"kind": "echo", "payload": {}}, headers=headers or None
    )


def test_without_tokens_the_api_is_open(client_for: Callable[..., Any]) -> None:
    assert _post(client_for()).status_code == 201


def test_a_configured_token_is_required(client_for: Callable[..., Any]) -> None:
    client = client_for(api_tokens=f"{TOKEN},{OTHER}")
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token-000000000"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ):
        resp = _post(client, **headers)
        assert resp.status_code == 401, headers
        assert resp.headers["www-authenticate"] == 'Bearer realm="taskq"'
        error = resp.json["error"]
        assert (error["status"], error["code"]) == (401, "unauthorized")
        assert TOKEN not in resp.text
        assert OTHER not in resp.text
    assert _post(client, Authorization=f"Bearer {TOKEN}").status_code == 201
    assert _post(client, Authorization=f"bearer {OTHER}").status_code == 201
    task_id = _post(client, Authorization=f"Bearer {TOKEN}").json["id"]
    assert client.simulate_get(f"/tasks/{task_id}").status_code == 401
    assert client.simulate_get("/tasks").status_code == 401
    got = client.simulate_get(f"/tasks/{task_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 200


def test_probes_stay_open(client_for: Callable[..., Any]) -> None:
    client = client_for(api_tokens=TOKEN)
    assert client.simulate_get("/live").status_code == 200
    assert client.simulate_get("/ready").status_code == 200


def test_tokens_from_a_mounted_secret_file_are_reloaded(
    client_for: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "RELOAD_CHECK_SECONDS", 0.0)
    secret = tmp_path / "tokens"
    secret.write_text(f"# rotated monthly\n{TOKEN}\n\n")
    client = client_for(api_tokens_file=str(secret))
    assert _post(client, Authorization=f"Bearer {TOKEN}").status_code == 201
    assert _post(client, Authorization=f"Bearer {OTHER}").status_code == 401

    secret.write_text(f"{OTHER}\n")  # the Secret is rotated
    later = time.time() + 5
    os.utime(secret, (later, later))
    assert _post(client, Authorization=f"Bearer {OTHER}").status_code == 201
    assert _post(client, Authorization=f"Bearer {TOKEN}").status_code == 401

    secret.unlink()  # a Secret being swapped: keep the last tokens, never open up
    assert _post(client, Authorization=f"Bearer {OTHER}").status_code == 201
    assert _post(client).status_code == 401


def test_token_set_compares_every_token() -> None:
    tokens = TokenSet([TOKEN, OTHER])
    assert tokens.accepts(TOKEN)
    assert tokens.accepts(OTHER)
    assert not tokens.accepts(TOKEN[:-1])
    assert not tokens.accepts("")
    assert not tokens.accepts("\udcff" * 20)  # undecodable bytes from a header


def _attribute_values(obj: object, seen: set[int] | None = None) -> Iterator[object]:
    """Every value reachable from `obj` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    children: Iterable[object] = ()
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = vars(obj).values()
    for child in children:
        yield from _attribute_values(child, seen)


def test_the_middleware_keeps_only_digests_of_the_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "RELOAD_CHECK_SECONDS", 0.0)
    secret = tmp_path / "tokens"
    secret.write_text(f"{OTHER}\n")
    auth = BearerAuth.from_settings(load_settings(api_tokens=TOKEN, api_tokens_file=str(secret)))
    assert auth is not None
    assert auth._current().accepts(TOKEN)
    assert auth._current().accepts(OTHER)
    secret.write_text(f"{OTHER}\n# rotated\n")  # and after a reload
    later = time.time() + 5
    os.utime(secret, (later, later))
    assert auth._current().accepts(TOKEN)
    values = list(_attribute_values(auth))
    assert any(isinstance(v, TokenSet) for v in values)  # the walk reached the token set
    for token in (TOKEN, OTHER):
        for value in values:
            assert not (isinstance(value, str) and token in value), "a token in plaintext"
            assert not (isinstance(value, bytes) and token.encode() in value), "a token as bytes"


@pytest.mark.parametrize(
    ("value", "message"),
    [("short", "at least 16"), ("has a space in it 123", "printable ASCII")],
)
def test_weak_tokens_are_refused_at_start_without_echoing_them(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(api_tokens=value)
    assert value not in str(info.value)


def test_an_unreadable_or_empty_tokens_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TASKQ_API_TOKENS_FILE"):
        load_settings(api_tokens_file=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SettingsError, match="holds no token"):
        load_settings(api_tokens_file=str(empty))


def test_tokens_never_show_in_settings_reprs() -> None:
    settings = load_settings(api_tokens=f"{TOKEN},{OTHER}")
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())
    assert BearerAuth.from_settings(load_settings()) is None
