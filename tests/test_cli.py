"""The `taskq` command line: in-process through taskq.cli.main, and as real subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from taskq import cli, logs
from taskq import queue as q
from taskq.models import TaskSpec

from tests.helpers import (
    REPO,
    TEST_SETTINGS,
    free_port,
    spawn_taskq,
    stop_process,
    taskq_env,
)

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(scope="module")
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    """One clone of the migrated template for this module (emptied before each test that
    uses it); a clone per test would cost more than the commands themselves."""
    name = f"taskq_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    params: dict[str, Any] = conninfo_to_dict(server_url)
    yield make_conninfo(**{**params, "dbname": name})
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        connection.execute("TRUNCATE taskq_tasks")
        yield connection


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `taskq ARGS` in this process with DATABASE_URL=url and the test settings (plus
    `env`); returns (exit code, stdout, stderr)."""
    # Leave the test runner's logging alone (main() would take over the root logger).
    monkeypatch.setattr(logs, "configure", lambda settings: None)

    def run(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith(("TASKQ_", "PG"))]:
                patch.delenv(key)
            patch.setenv("DATABASE_URL", url)
            for key, value in TEST_SETTINGS.items():
                patch.setenv(f"TASKQ_{key.upper()}", str(value))
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            capsys.readouterr()
            code = cli.main(list(args))
            out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def taskq(run_main: Any, database_url: str, conn: Conn) -> Any:
    """`taskq ARGS` against this module's (emptied) database."""
    return lambda *args, **kw: run_main(database_url, *args, **kw)


def run_taskq(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskq.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) AS n FROM taskq_tasks").fetchone()
    assert row is not None
    return int(row["n"])


# ------------------------------------------------------------------ submit


def test_submit_one_task_prints_its_json(taskq: Any, conn: Conn) -> None:
    code, out, _ = taskq(
        "submit", "echo", "--payload", '{"input": "hello"}', "--queue", "mail", "--priority", "3"
    )
    assert code == 0
    task = json.loads(out)
    assert (task["kind"], task["queue"], task["priority"], task["status"]) == (
        "echo",
        "mail",
        3,
        "queued",
    )
    assert task["payload"] == {"input": "hello"}
    assert q.get(conn, uuid.UUID(task["id"])).to_json() == task


def test_submit_options(taskq: Any, conn: Conn) -> None:
    code, out, _ = taskq(
        "submit", "sleep", "--delay", "60", "--max-attempts", "2", "--idempotency-key", "k1"
    )
    assert code == 0
    first = json.loads(out)
    assert (first["max_attempts"], first["idempotency_key"]) == (2, "k1")
    code, out, _ = taskq("submit", "sleep", "--idempotency-key", "k1")
    assert code == 0
    assert json.loads(out)["id"] == first["id"]
    assert _count(conn) == 1


def test_submit_count_creates_n_tasks_in_one_transaction(taskq: Any, conn: Conn) -> None:
    code, out, _ = taskq("submit", "echo", "--payload", '{"n": 1}', "--count", "500")
    assert code == 0
    summary = json.loads(out)
    assert summary["submitted"] == 500
    rows = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT created_at) AS stamps,"
        " count(DISTINCT payload) AS payloads FROM taskq_tasks"
    ).fetchone()
    # One transaction: now() (created_at) is the same for every row.
    assert rows == {"n": 500, "ids": 500, "stamps": 1, "payloads": 1}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["submit", "echo", "--payload", "{nope"], "--payload"),
        (["submit", "echo", "--payload", "[1, 2]"], "--payload"),
        (["submit", "echo", "--payload", '{"s": "\\u0000"}'], "--payload"),
        (["submit", "bad kind!"], "KIND"),
        (["submit", "echo", "--queue", "no spaces"], "--queue"),
        (["submit", "echo", "--priority", "99999"], "--priority"),
        (["submit", "echo", "--count", "2", "--idempotency-key", "k"], "--idempotency-key"),
        (["status", "not-a-uuid"], "not-a-uuid"),
    ],
)
def test_usage_errors_exit_2(taskq: Any, conn: Conn, args: list[str], words: str) -> None:
    code, out, err = taskq(*args)
    assert code == 2, (out, err)
    assert words in err
    assert "Traceback" not in err
    assert _count(conn) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "echo", "--count", "0"],
        ["submit", "echo", "--count", "x"],
        ["submit", "echo", "--delay", "-1"],
        ["submit", "echo", "--max-attempts", "0"],
        ["api", "--workers", "0"],
        ["api", "--bind", "nope"],
        ["api", "--bind", "127.0.0.1:99999"],
        ["worker", "--concurrency", "0"],
        ["worker", "--queues", ","],
        ["worker", "--health-port", "-1"],
        ["prune", "--older-than-days", "-1"],
        ["dev", "--bind", "localhost"],
        ["nonsense"],
        [],
    ],
)
def test_bad_arguments_exit_2(run_main: Any, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main("postgresql://127.0.0.1:1/never-used", *args)
    assert exit_info.value.code == 2


def test_kinds_are_checked_as_the_api_checks_them(taskq: Any) -> None:
    """The CLI loads TASKQ_HANDLER_MODULES as the API does and refuses the same kinds."""
    code, _, err = taskq("submit", "my.custom_kind")
    assert code == 2
    assert "KIND: unknown kind 'my.custom_kind'; known kinds: " in err
    env = {"TASKQ_HANDLER_MODULES": "tests.handlers_for_tests"}
    code, out, err = taskq("submit", "record", env=env)
    assert code == 0, err
    assert json.loads(out)["kind"] == "record"


# ------------------------------------------------------------------ status


def test_status_prints_a_task(taskq: Any, conn: Conn) -> None:
    task = q.enqueue(conn, "echo", {"a": 1})
    code, out, _ = taskq("status", str(task.id))
    assert code == 0
    assert json.loads(out) == task.to_json()


def test_status_of_a_missing_task_exits_1(taskq: Any) -> None:
    code, _, err = taskq("status", str(uuid.uuid4()))
    assert code == 1
    assert "no task" in err


def test_status_wait_gives_up_at_the_timeout(taskq: Any, conn: Conn) -> None:
    task = q.enqueue(conn, "echo", {})
    code, out, _ = taskq("status", str(task.id), "--wait", "--timeout", "0.3")
    assert code == 1
    assert json.loads(out)["status"] == "queued"


def test_status_wait_exits_1_for_a_failed_or_cancelled_task(taskq: Any, conn: Conn) -> None:
    """As the README says: a script waiting on a task learns whether it worked."""
    failed = q.enqueue(conn, "fail", {})
    conn.execute(
        "UPDATE taskq_tasks SET status = 'failed', finished_at = now() WHERE id = %s", (failed.id,)
    )
    cancelled = q.enqueue(conn, "echo", {})
    q.cancel(conn, cancelled.id)
    for task, status in ((failed, "failed"), (cancelled, "cancelled")):
        code, out, _ = taskq("status", str(task.id), "--wait", "--timeout", "5")
        assert (code, json.loads(out)["status"]) == (1, status)
        # Without --wait, status only shows the task.
        assert taskq("status", str(task.id))[0] == 0


@pytest.mark.slow
def test_status_wait_returns_when_a_worker_finishes_the_task(
    taskq: Any, conn: Conn, database_url: str
) -> None:
    task = q.enqueue(conn, "sleep", {"seconds": 0.3})
    worker = spawn_taskq(
        ["worker", "--health-port", "0"],
        taskq_env(database_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        code, out, _ = taskq("status", str(task.id), "--wait", "--timeout", "20")
    finally:
        assert stop_process(worker) == 0
    assert code == 0
    done = json.loads(out)
    assert done["status"] == "succeeded"
    assert done["result"]["slept"] >= 0.3


# ------------------------------------------------------------------ prune


def test_prune_deletes_only_old_finished_tasks(taskq: Any, conn: Conn) -> None:
    tasks = q.enqueue_many(conn, [TaskSpec(payload={"i": i}) for i in range(5)])
    old_done, old_failed, recent_done, old_queued, _ = (t.id for t in tasks)
    conn.execute(
        "UPDATE taskq_tasks SET status = 'succeeded', finished_at = now() - interval '10 days'"
        " WHERE id = %s",
        (old_done,),
    )
    conn.execute(
        "UPDATE taskq_tasks SET status = 'failed', finished_at = now() - interval '3 days'"
        " WHERE id = %s",
        (old_failed,),
    )
    conn.execute(
        "UPDATE taskq_tasks SET status = 'succeeded', finished_at = now() WHERE id = %s",
        (recent_done,),
    )
    conn.execute(
        "UPDATE taskq_tasks SET created_at = now() - interval '30 days' WHERE id = %s",
        (old_queued,),
    )
    code, out, _ = taskq("prune", "--older-than-days", "5")
    assert code == 0
    assert "deleted 1 " in out
    remaining = {row["id"] for row in conn.execute("SELECT id FROM taskq_tasks")}
    assert remaining == {t.id for t in tasks} - {old_done}
    code, out, _ = taskq("prune", "--older-than-days", "1")
    assert "deleted 1 " in out
    # The default retention (TASKQ_RETENTION_DAYS, 7) keeps what is left.
    code, out, _ = taskq("prune")
    assert code == 0
    assert "deleted 0 " in out
    assert _count(conn) == 3


# ------------------------------------------------------------------ migrate


def test_migrate_is_idempotent(empty_database_url: str, run_main: Any) -> None:
    code, out, _ = run_main(empty_database_url, "migrate")
    assert code == 0
    assert out.startswith("applied: 0001")
    code, out, _ = run_main(empty_database_url, "migrate")
    assert code == 0
    assert out.strip() == "schema is up to date"
    # Roll the latest back, and apply it again.
    code, out, _ = run_main(empty_database_url, "migrate", "--rollback", "1")
    assert code == 0
    assert out.startswith("rolled back: "), out
    latest = out.removeprefix("rolled back: ").strip()
    code, out, _ = run_main(empty_database_url, "migrate")
    assert (code, out.strip()) == (0, f"applied: {latest}")
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM taskq_tasks").fetchone() == (0,)


def test_migrate_subprocess_on_a_migrated_database(database_url: str, conn: Conn) -> None:
    result = run_taskq(taskq_env(database_url), "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"


# ------------------------------------------------------------------ settings and outages


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASKQ_WORKER_CONCURRENCY", "0"),
        ("TASKQ_LEASE_SECONDS", "abc"),
        ("TASKQ_LOG_LEVEL", "LOUD"),
        ("TASKQ_API_BIND", "nowhere"),
        ("TASKQ_WORKER_QUEUES", "bad queue"),
        ("TASKQ_DB_POOL_MIN", "9"),  # more than TASKQ_DB_POOL_MAX
    ],
)
def test_invalid_settings_exit_2_naming_the_variable(
    run_main: Any, variable: str, value: str
) -> None:
    code, _, err = run_main(
        "postgresql://127.0.0.1:1/never-used", "status", str(uuid.uuid4()), env={variable: value}
    )
    assert code == 2, err
    assert variable in err
    assert "Traceback" not in err


def test_invalid_settings_exit_2_from_the_console(tmp_path: Any) -> None:
    env = taskq_env("postgresql://127.0.0.1:1/never-used", worker_concurrency=0)
    result = run_taskq(env, "worker")
    assert result.returncode == 2, result.stderr
    assert "TASKQ_WORKER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_database_url_is_named_as_database_url(run_main: Any) -> None:
    code, _, err = run_main("postgresql://u:s3cret@db:notaport/x", "status", str(uuid.uuid4()))
    assert code == 2
    assert "TASKQ_DATABASE_URL" not in err
    assert "DATABASE_URL" in err


@pytest.mark.parametrize("url", ["postgresql://u:s3cret@db:notaport/x", "mysql://u:s3cret@db/x"])
def test_invalid_database_url_never_echoes_the_password(run_main: Any, url: str) -> None:
    code, out, err = run_main(url, "status", str(uuid.uuid4()))
    assert code == 2
    assert "DATABASE_URL" in err
    assert "s3cret" not in out + err


@pytest.mark.parametrize(
    "args",
    [
        ["status", "0190b0b0-0000-7000-8000-000000000000"],
        ["submit", "echo", "--payload", '{"a": 1}'],
        ["submit", "echo", "--count", "3"],
        ["prune"],
        ["migrate"],
        ["migrate", "--wait", "0.3"],
    ],
)
def test_unreachable_database_exits_1_without_the_password(run_main: Any, args: list[str]) -> None:
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/x"
    code, out, err = run_main(url, *args)
    assert code == 1, out + err
    assert "s3cret" not in out + err
    assert "database unavailable" in err
    assert "127.0.0.1" in err  # says where it looked
    assert "Connection refused" in err  # and what went wrong
    assert "DATABASE_URL" in err  # and what to check
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("where", "said", "hint"),
    [
        ("database", 'database "taskq_missing_db" does not exist', "database named in"),
        ("role", 'role "taskq_missing_role" does not exist', "no role (user)"),
        ("host", "Name or service not known", "does not resolve"),
    ],
)
def test_wrong_database_url_fails_at_once_with_the_right_words(
    run_main: Any, server_url: str, where: str, said: str, hint: str
) -> None:
    """A setting that retrying cannot fix is reported at once, even with --wait (as
    `taskq dev` migrates); a missing role is not reported as a missing database."""
    params: dict[str, Any] = conninfo_to_dict(server_url)
    params["dbname"] = "taskq_missing_db"
    if where == "role":
        params["dbname"] = "postgres"
        params["user"] = "taskq_missing_role"
    if where == "host":
        params["host"] = "no-such-host.invalid"
    started = time.monotonic()
    code, out, err = run_main(make_conninfo(**params), "migrate", "--wait", "30")
    assert time.monotonic() - started < 10, err  # not the 30 s of --wait
    assert code == 1, out + err
    assert said in err
    assert hint in err
    if where == "role":
        assert "database named in" not in err
    assert "Traceback" not in err


def test_refused_connections_are_still_waited_for(run_main: Any) -> None:
    url = f"postgresql://u@127.0.0.1:{free_port()}/x"
    started = time.monotonic()
    code, _, err = run_main(url, "migrate", "--wait", "1.5")
    assert code == 1
    assert time.monotonic() - started >= 1.5
    assert "Connection refused" in err


def test_unreachable_database_from_the_console(tmp_path: Any) -> None:
    env = taskq_env(f"postgresql://u:s3cret@127.0.0.1:{free_port()}/x")
    result = run_taskq(env, "submit", "echo")
    assert result.returncode == 1, result.stderr
    assert "database unavailable" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_password_from_pgpassword_is_never_printed(run_main: Any) -> None:
    url = f"postgresql://u@127.0.0.1:{free_port()}/x"
    code, out, err = run_main(url, "submit", "echo", env={"PGPASSWORD": "s3cret"})
    assert code == 1
    assert "s3cret" not in out + err


def test_the_console_script_runs_end_to_end(database_url: str, conn: Conn) -> None:
    env = taskq_env(database_url)
    submitted = run_taskq(env, "submit", "echo", "--payload", '{"via": "subprocess"}')
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["id"]
    shown = run_taskq(env, "status", task_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["payload"] == {"via": "subprocess"}
    assert _count(conn) == 1


def test_a_busy_health_port_is_a_clear_error(database_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = taskq_env(database_url, worker_health_bind=f"127.0.0.1:{port}")
        result = run_taskq(env, "worker", "--burst")
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "TASKQ_WORKER_HEALTH_BIND" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ typed payloads, timeout, cancel

TYPED = {"TASKQ_HANDLER_MODULES": "tests.handlers_for_tests"}


def test_submit_checks_a_typed_payload_and_the_timeout(run_main: Any, database_url: str) -> None:
    code, _, err = run_main(
        database_url, "submit", "typed_order", "--payload", '{"order_id": "x"}', env=TYPED
    )
    assert code == 2
    assert "--payload.order_id" in err
    code, out, _ = run_main(
        database_url,
        "submit",
        "typed_order",
        "--payload",
        '{"order_id": 5}',
        "--timeout",
        "1.5",
        env=TYPED,
    )
    assert code == 0
    task = json.loads(out)
    assert (task["timeout_seconds"], task["max_attempts"]) == (1.5, 2)
    code, _, err = run_main(database_url, "submit", "echo", "--timeout", "0")
    assert code == 2
    assert "--timeout" in err


def test_submit_file_names_the_line_of_a_bad_typed_payload(
    run_main: Any, database_url: str, conn: Conn, tmp_path: Any
) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        '{"kind": "typed_order", "payload": {"order_id": 1}}\n'
        "\n"
        '{"kind": "typed_order", "payload": {"order_id": 2, "extra": true}}\n'
    )
    code, _, err = run_main(database_url, "submit", "--file", str(path), env=TYPED)
    assert code == 2
    assert f"{path}:3: payload.extra" in err
    assert _count(conn) == 0  # all or nothing


def test_cancel_command(taskq: Any, conn: Conn) -> None:
    queued, running = q.enqueue(conn, "echo"), q.enqueue(conn, "echo", priority=1)
    q.claim(conn, queues=["default"], limit=1, worker_id="w", lease=30)
    code, out, _ = taskq("cancel", str(queued.id))
    assert code == 0
    assert json.loads(out)["status"] == "cancelled"
    code, out, _ = taskq("cancel", str(running.id))
    assert code == 0
    task = json.loads(out)
    assert task["status"] == "running"
    assert task["cancel_requested_at"] is not None
    code, _, err = taskq("cancel", str(queued.id))
    assert code == 1
    assert "cancelled" in err
    code, _, err = taskq("cancel", "nope")
    assert code == 2


def test_a_busy_api_port_is_one_line_naming_the_setting(database_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_taskq(taskq_env(database_url), "api", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "TASKQ_API_BIND" in line
    assert "--bind" in line


@pytest.mark.parametrize("command", [["worker", "--burst"], ["api"]])
def test_an_unimportable_handler_module_is_one_line(database_url: str, command: list[str]) -> None:
    env = taskq_env(
        database_url, handler_modules="myapp.tasks", api_bind=f"127.0.0.1:{free_port()}"
    )
    result = run_taskq(env, *command)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "TASKQ_HANDLER_MODULES" in line
    assert "'myapp.tasks'" in line
    assert "PYTHONPATH" in line


# ------------------------------------------------------------------ workflows


def test_submit_depends_on_and_a_graph_from_a_file(taskq: Any, conn: Conn, tmp_path: Any) -> None:
    code, out, _ = taskq("submit", "echo")
    parent = json.loads(out)
    code, out, _ = taskq("submit", "echo", "--depends-on", parent["id"])
    assert code == 0
    child = json.loads(out)
    assert (child["status"], child["depends_on"]) == ("blocked", [parent["id"]])
    code, _, err = taskq("submit", "echo", "--depends-on", str(uuid.uuid4()))
    assert code == 1
    assert "no task" in err
    path = tmp_path / "graph.jsonl"
    path.write_text(
        '{"kind": "echo", "ref": "extract"}\n'
        '{"kind": "echo", "ref": "transform", "depends_on": ["extract"]}\n'
        '{"kind": "echo", "depends_on": ["transform", "extract"]}\n'
    )
    code, out, _ = taskq("submit", "--file", str(path))
    assert code == 0
    assert json.loads(out)["created"] == 3
    rows = conn.execute(
        "SELECT ref, status, blocked_by FROM taskq_tasks WHERE id > %s ORDER BY id",
        (uuid.UUID(child["id"]),),
    ).fetchall()
    assert [(r["ref"], r["status"], r["blocked_by"]) for r in rows] == [
        ("extract", "queued", 0),
        ("transform", "blocked", 1),
        (None, "blocked", 2),
    ]


def test_status_graph_prints_parents_and_dependents_indented(taskq: Any, conn: Conn) -> None:
    from taskq import workflows

    a, b, c = workflows.enqueue_many(
        conn,
        [
            TaskSpec(kind="echo", ref="a"),
            TaskSpec(kind="echo", ref="b", depends_on=["a"]),
            TaskSpec(kind="echo", ref="c", depends_on=["b"]),
        ],
    )
    code, out, _ = taskq("status", str(b.id), "--graph")
    assert code == 0
    assert out.splitlines() == [
        f"{b.id} (b) echo blocked",
        "  waits for:",
        f"    {a.id} (a) echo queued",
        "  waited for by:",
        f"    {c.id} (c) echo blocked",
    ]
    code, out, _ = taskq("status", str(a.id), "--graph")
    assert out.splitlines()[1:] == [
        "  waited for by:",
        f"    {b.id} (b) echo blocked",
        f"        {c.id} (c) echo blocked",
    ]
