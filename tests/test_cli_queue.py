"""`taskq queue show|set` and `taskq submit --concurrency-key`, in process."""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg
import pytest
from taskq import cli, logs

from tests.helpers import TEST_SETTINGS

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def taskq(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    monkeypatch.setattr(logs, "configure", lambda settings: None)
    for key in [k for k in os.environ if k.startswith(("TASKQ_", "PG"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", database_url)
    for key, value in TEST_SETTINGS.items():
        monkeypatch.setenv(f"TASKQ_{key.upper()}", str(value))

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse refusals
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_set_then_show(taskq: Any, conn: Conn) -> None:
    code, out, _ = taskq("queue", "set", "emails", "--max-running", "4", "--rate-limit", "100/60")
    assert code == 0
    body = json.loads(out)
    assert (body["queue"], body["max_running"], body["max_running_per_key"]) == ("emails", 4, None)
    assert body["rate_limit"] == {"count": 100, "per_seconds": 60.0}
    code, out, _ = taskq(
        "queue", "set", "emails", "--max-running-per-key", "2", "--rate-limit", "none"
    )
    body = json.loads(out)
    assert (body["max_running"], body["max_running_per_key"], body["rate_limit"]) == (4, 2, None)
    code, out, _ = taskq("queue", "show", "emails")
    assert code == 0
    assert json.loads(out)["max_running_per_key"] == 2
    code, out, _ = taskq("queue", "set", "emails", "--max-running", "none")
    assert json.loads(out)["max_running"] is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["queue", "set", "q"], "give --max-running"),
        (["queue", "set", "q", "--max-running", "0"], "--max-running"),
        (["queue", "set", "q", "--max-running-per-key", "x"], "--max-running-per-key"),
        (["queue", "set", "q", "--rate-limit", "5"], "--rate-limit"),
        (["queue", "set", "q", "--rate-limit", "0/1"], "--rate-limit: count"),
        (["queue", "set", "q", "--rate-limit", "5/0"], "--rate-limit: per_seconds"),
        (["queue", "set", "bad name", "--max-running", "1"], "NAME"),
    ],
)
def test_usage_errors_exit_2_naming_the_option(
    taskq: Any, conn: Conn, args: list[str], words: str
) -> None:
    code, out, err = taskq(*args)
    assert code == 2
    assert words in err
    assert out == ""
    assert conn.execute("SELECT 1 FROM taskq_queues").fetchone() is None


def test_submit_with_a_concurrency_key(taskq: Any, conn: Conn) -> None:
    code, out, _ = taskq("submit", "echo", "--concurrency-key", "tenant-1")
    assert code == 0
    assert json.loads(out)["concurrency_key"] == "tenant-1"
    code, _, err = taskq("submit", "echo", "--concurrency-key", "a b")
    assert code == 2
    assert "--concurrency-key" in err


def test_stats_shows_held_tasks_and_limits(taskq: Any, conn: Conn) -> None:
    taskq("queue", "set", "lim", "--max-running", "1")
    taskq("submit", "echo", "--queue", "lim", "--count", "3")
    conn.execute(
        "UPDATE taskq_tasks SET status = 'running', worker_id = 'w', lease_expires_at = now()"
        " + interval '1 minute', started_at = now()"
        " WHERE id = (SELECT id FROM taskq_tasks ORDER BY id LIMIT 1)"
    )
    code, out, _ = taskq("stats")
    assert code == 0
    assert "held by limit" in out
    line = next(row for row in out.splitlines() if row.startswith("lim "))
    # runnable, scheduled, running, blocked, held
    assert line.split()[1:6] == ["2", "0", "1", "0", "2"]
    assert "lim: max running 1" in out
    code, out, _ = taskq("stats", "--json")
    [lim] = [q for q in json.loads(out)["queues"] if q["queue"] == "lim"]
    assert (lim["held"], lim["max_running"]) == (2, 1)
