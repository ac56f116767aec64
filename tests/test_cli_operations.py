"""The operator's CLI: `taskq stats`, `status --wait` progress, `submit --file`, progress
bars on a terminal (and none in a pipe), --json, and errors that name what to fix."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import cli, logs
from taskq import queue as q
from taskq.stats import Stats

from tests.helpers import REPO, TEST_SETTINGS, free_port, taskq_env, wait_until

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`taskq ARGS` in this process against `url`; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(logs, "configure", lambda settings: None)

    def run(url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith(("TASKQ_", "PG"))]:
                patch.delenv(key)
            patch.setenv("DATABASE_URL", url)
            for key, value in TEST_SETTINGS.items():
                patch.setenv(f"TASKQ_{key.upper()}", str(value))
            if stdin is not None:
                import io

                patch.setattr(sys, "stdin", io.StringIO(stdin))
            capsys.readouterr()
            code = cli.main(list(args))
            out, err = capsys.readouterr()
        return code, out, err

    return run


def _count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()
    assert row is not None
    return int(row["n"])


def _in_a_terminal(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `python -m taskq.cli ARGS` with stderr on a pseudo-terminal (stdout piped); returns
    (exit code, everything written to the terminal)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskq.cli", *args],
        env={**env, "TERM": "xterm", "COLUMNS": "100"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
        if proc.stdout is not None:
            proc.stdout.close()
    return proc.returncode, seen.decode(errors="replace")


# ------------------------------------------------------------------ stats


def test_stats_prints_a_table_of_queues(run_main: Any, database_url: str, conn: Conn) -> None:
    for _ in range(3):
        q.enqueue(conn, "echo", {}, queue="alpha")
    q.enqueue(conn, "echo", {}, queue="beta", delay=3600)
    failed = q.enqueue(conn, "echo", {}, queue="beta")
    conn.execute(
        "UPDATE taskq_tasks SET status = 'failed', finished_at = now(),"
        " last_error = 'ValueError: bad input' WHERE id = %s",
        (failed.id,),
    )
    code, out, err = run_main(database_url, "stats")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "queue", "runnable", "scheduled", "running", "blocked", "held", "by", "limit",
        "succeeded", "1h", "failed", "1h", "cancelled", "1h", "oldest", "waiting",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["alpha"][1:9] == ["3", "0", "0", "0", "0", "0", "0", "0"]
    assert rows["beta"][1:9] == ["0", "1", "0", "0", "0", "0", "1", "0"]
    assert rows["(all)"][1:9] == ["3", "1", "0", "0", "0", "0", "1", "0"]
    assert "1 finished in the last hour (1 failed)." in out
    assert "Oldest waiting: " in out
    assert "ValueError: bad input" in out
    # No worker runs: both queues with queued tasks are named as unserved.
    assert "No live worker serves alpha, beta" in out


def test_stats_json_is_the_shape_of_the_api(run_main: Any, database_url: str, conn: Conn) -> None:
    q.enqueue(conn, "echo", {"secret": "not-in-stats"}, queue="alpha")
    code, out, _ = run_main(database_url, "stats", "--json")
    assert code == 0
    body = json.loads(out)
    Stats.model_validate(body)  # the model /stats is documented with
    assert body["totals"]["runnable"] == 1
    assert "not-in-stats" not in out


def test_stats_on_an_empty_database(run_main: Any, database_url: str) -> None:
    code, out, _ = run_main(database_url, "stats")
    assert code == 0
    assert out.startswith("no tasks")


# ------------------------------------------------------------------ submit --file


def _jsonl(path: Path, tasks: list[Any]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def test_submit_file_enqueues_every_line_in_one_transaction(
    run_main: Any, database_url: str, conn: Conn, tmp_path: Path
) -> None:
    tasks = [{"kind": "echo", "payload": {"i": i}, "queue": "bulk"} for i in range(2500)]
    tasks[10]["idempotency_key"] = "order-7"
    tasks[11] = {"kind": "echo", "idempotency_key": "order-7"}  # the same task again
    path = _jsonl(tmp_path / "tasks.jsonl", tasks)
    path.write_text(path.read_text() + "\n\n")  # blank lines are skipped
    code, out, err = run_main(database_url, "submit", "--file", str(path))
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["submitted"], summary["created"], summary["existing"]) == (2500, 2499, 1)
    assert _count(conn) == 2499
    assert err == ""  # no progress bar without a terminal


def test_a_bad_line_names_itself_and_enqueues_nothing(
    run_main: Any, database_url: str, conn: Conn, tmp_path: Path
) -> None:
    tasks: list[Any] = [{"kind": "echo"} for _ in range(1500)]
    tasks[1200] = {"kind": "echo", "priority": "high"}
    path = _jsonl(tmp_path / "tasks.jsonl", tasks)
    code, _, err = run_main(database_url, "submit", "--file", str(path))
    assert code == 2
    assert f"{path}:1201: priority: Input should be a valid integer" in err
    assert _count(conn) == 0  # the first 1000, already inserted, were rolled back
    for bad, words in (
        ("{not json", ":1: not a JSON object"),
        ('{"kind": "echo", "colour": "red"}', ":1: colour: unknown field"),
        ("[1]", ":1: "),
    ):
        (tmp_path / "bad.jsonl").write_text(bad + "\n")
        code, _, err = run_main(database_url, "submit", "--file", str(tmp_path / "bad.jsonl"))
        assert code == 2, bad
        assert words in err, err
    assert _count(conn) == 0


def test_submit_file_from_stdin_and_usage_errors(
    run_main: Any, database_url: str, conn: Conn, tmp_path: Path
) -> None:
    code, out, _ = run_main(
        database_url, "submit", "--file", "-", stdin='{"kind": "echo"}\n{"queue": "b"}\n'
    )
    assert code == 0
    assert json.loads(out)["submitted"] == 2
    for args, words in (
        (["submit", "echo", "--file", "-"], "not both"),
        (["submit"], "give a KIND"),
        (["submit", "--file", str(tmp_path / "missing.jsonl")], "no such file"),
        (["submit", "--file", "-", "--count", "2"], "--count"),
    ):
        code, _, err = run_main(database_url, *args, stdin="")
        assert code == 2, args
        assert words in err, err
    code, _, err = run_main(database_url, "submit", "--file", "-", stdin="\n")
    assert code == 2
    assert "holds no task" in err
    assert _count(conn) == 2


# ------------------------------------------------------------------ progress


def test_progress_bars_on_a_terminal_and_never_in_a_pipe(
    database_url: str, conn: Conn, tmp_path: Path
) -> None:
    env = taskq_env(database_url)
    path = _jsonl(tmp_path / "tasks.jsonl", [{"kind": "echo"} for _ in range(3000)])
    code, screen = _in_a_terminal(env, "submit", "--file", str(path))
    assert code == 0, screen
    assert "submitting [" in screen
    assert "100% 3,000/3,000 tasks" in screen
    assert "\r" in screen  # one line, redrawn in place
    conn.execute(
        "UPDATE taskq_tasks SET status = 'succeeded', finished_at = now() - interval '9 days'"
    )
    code, screen = _in_a_terminal(env, "prune")
    assert code == 0, screen
    assert "pruning [" in screen
    assert "100% 3,000/3,000 tasks" in screen
    assert _count(conn) == 0
    piped = subprocess.run(
        [sys.executable, "-m", "taskq.cli", "submit", "--file", str(path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert json.loads(piped.stdout)["submitted"] == 3000


def test_status_wait_follows_the_task_then_prints_it(
    run_main: Any, database_url: str, conn: Conn
) -> None:
    task = q.enqueue(conn, "echo", {})

    def cli_has_read_the_task() -> bool:
        # The CLI's connection is idle after reading the task: it has seen it queued and
        # prints that line before it reads again.
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'taskq-cli'"
            "   AND state = 'idle' AND position('FROM taskq_tasks WHERE id' IN query) > 0"
        ).fetchone()
        return bool(row and row["n"])

    ran: list[tuple[int, str, str]] = []
    cli_thread = threading.Thread(
        target=lambda: ran.append(
            run_main(
                database_url, "status", str(task.id), "--wait", "--timeout", "20", "--progress"
            )
        )
    )
    cli_thread.start()
    try:
        wait_until(cli_has_read_the_task, timeout=15, what="the CLI to read the queued task")
        conn.execute(
            "UPDATE taskq_tasks SET status = 'succeeded', attempts = 1, finished_at = now(),"
            " result = '{\"ok\": true}' WHERE id = %s",
            (task.id,),
        )
    finally:
        cli_thread.join(30)
    ((code, out, err),) = ran
    assert code == 0
    assert json.loads(out)["status"] == "succeeded"  # stdout: the task, for scripts
    assert f"task {task.id}: queued, attempt 0/5" in err  # stderr: what a person watches
    assert f"task {task.id}: succeeded after" in err


def test_prune_json(run_main: Any, database_url: str, conn: Conn) -> None:
    q.enqueue(conn, "echo", {})
    conn.execute(
        "UPDATE taskq_tasks SET status = 'cancelled', finished_at = now() - interval '30 days'"
    )
    code, out, err = run_main(database_url, "prune", "--json")
    assert code == 0, err
    assert json.loads(out) == {"deleted": 1, "older_than_days": 7.0}


# ------------------------------------------------------------------ errors that say what to fix


def test_a_database_without_the_schema_says_run_migrate(
    run_main: Any, empty_database_url: str
) -> None:
    for args in (["status", str(uuid.uuid4())], ["stats"], ["submit", "echo"]):
        code, _, err = run_main(empty_database_url, *args)
        assert code == 1, args
        assert "has no taskq schema" in err
        assert "taskq migrate" in err
        assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"postgresql://root@127.0.0.1:{free_port()}/x", "nothing listens at that host and port"),
        ("postgresql://root@no-such-host.invalid:5432/x", "does not resolve"),
        ("postgresql://root@127.0.0.1:5432/taskq_no_such_database", "does not exist"),
    ],
)
def test_connection_errors_name_the_setting_to_fix(
    run_main: Any, url: str, words: str, server_url: str
) -> None:
    if "5432" in url and "127.0.0.1" not in server_url:
        pytest.skip("needs the PostgreSQL server at 127.0.0.1:5432")
    code, _, err = run_main(url, "stats")
    assert code == 1
    assert words in err
    assert "DATABASE_URL" in err
    assert "Traceback" not in err


def test_both_entry_points_run_the_cli() -> None:
    for module in ("taskq.cli", "taskq"):
        result = subprocess.run(
            [sys.executable, "-m", module, "stats", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "--json" in result.stdout
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'taskq = "taskq.cli:main"' in pyproject
