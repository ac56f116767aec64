"""app/taskq/embedded.py: how commands and the library find the server of `make run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import taskq
from taskq import embedded
from taskq.settings import DEFAULT_DATABASE_URL, load_settings


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("DATABASE_URL", "TASKQ_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)


def test_a_running_embedded_server_is_found_from_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert taskq.database_url() == DEFAULT_DATABASE_URL  # nothing runs here
    data = tmp_path / ".pgdata"
    data.mkdir()
    url = f"postgresql://postgres:@/taskq?host={data}"
    (data / embedded.URL_FILE).write_text(url + "\n")
    assert embedded.discover() is None  # the file of a server that did not stop cleanly
    (data / ".s.PGSQL.5432").touch()  # where the running server's socket is
    assert embedded.discover() == url
    assert taskq.database_url() == url
    assert embedded.resolve(load_settings()).database_url == url
    # DATABASE_URL, when set, wins.
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")
    assert taskq.database_url() == "postgresql://db.example/app"
