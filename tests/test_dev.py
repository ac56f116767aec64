"""`taskq dev` end to end: migrate + API + worker in one process tree, stopped by Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq.cli.services import names_a_database
from taskq.settings import load_settings

from tests.helpers import free_port, spawn_taskq, stop_process, taskq_env, wait_until

pytestmark = pytest.mark.slow

Proc = tuple[int, str]  # (pid, start time): a pid alone may be reused


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" splits cleanly.
    return raw[raw.rindex(")") + 2 :].split()


def _alive(proc: Proc) -> bool:
    fields = _stat(proc[0])
    return fields is not None and fields[0] != "Z" and fields[19] == proc[1]


def _descendants(root: int) -> set[Proc]:
    parents: dict[int, list[Proc]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _postgres_for(data_dir: Path) -> list[int]:
    """PostgreSQL server processes whose command line names this data directory."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and "postgres" in (line := _cmdline(int(entry.name)))
        and str(data_dir) in line
        and (fields := _stat(int(entry.name))) is not None
        and fields[0] != "Z"
    ]


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 (our own server over http)
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (our own server)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _up(url: str) -> bool:
    try:
        return _http("GET", f"{url}/ready")[0] == 200
    except OSError:
        return False


@contextlib.contextmanager
def dev_process(
    env: dict[str, str], log: Path, *args: str, cwd: Path | None = None
) -> Iterator[tuple[Any, str]]:
    """`taskq dev`, its URL once the API is ready; everything it started is killed after."""
    port = free_port()
    with log.open("w") as out:
        proc = spawn_taskq(
            ["dev", "--bind", f"127.0.0.1:{port}", *args],
            env,
            stdout=out,
            stderr=subprocess.STDOUT,
            **({"cwd": cwd} if cwd else {}),
        )
    seen: set[Proc] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: proc.poll() is not None or _up(url),
            timeout=90,
            interval=0.2,
            what="taskq dev to serve",
        )
        assert proc.poll() is None, f"taskq dev exited:\n{log.read_text()}"
        yield proc, url
    finally:
        seen |= _descendants(proc.pid)
        stop_process(proc)
        for pid, _ in sorted(p for p in seen if _alive(p)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _submit_and_wait(url: str) -> dict[str, Any]:
    status, task = _http("POST", f"{url}/tasks", {"kind": "echo", "payload": {"input": "hello"}})
    assert status == 201, task

    def finished() -> Any:
        code, current = _http("GET", f"{url}/tasks/{task['id']}")
        assert code == 200, current
        return current if current["status"] in ("succeeded", "failed") else None

    done: dict[str, Any] = wait_until(finished, timeout=30, interval=0.1, what="the task")
    return done


def _interrupt_and_check(proc: Any, log: Path) -> None:
    """SIGINT to `taskq dev` alone (as a terminal's Ctrl-C would, the children run in
    their own sessions): it must stop every process it started and exit 0."""
    children = _descendants(proc.pid)
    commands = " | ".join(_cmdline(pid) for pid, _ in children)
    assert "api" in commands, commands
    assert "worker" in commands, commands
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log.read_text()
    wait_until(
        lambda: not any(_alive(p) for p in children),
        timeout=10,
        what="every child of taskq dev to exit",
    )


@pytest.mark.parametrize("variable", ["DATABASE_URL", "TASKQ_DATABASE_URL"])
def test_dev_against_database_url(database_url: str, tmp_path: Path, variable: str) -> None:
    """Either name of the setting points `taskq dev` at that database: no embedded server."""
    env = taskq_env(database_url)
    env[variable] = env.pop("DATABASE_URL")
    data_dir = tmp_path / "pgdata"
    log = tmp_path / "dev.log"
    with dev_process(env, log, "--data-dir", str(data_dir), "--queues", "default,emails") as (
        proc,
        url,
    ):
        done = _submit_and_wait(url)
        assert done["status"] == "succeeded", done
        assert done["result"] == {"input": "hello"}
        assert not _postgres_for(data_dir)
        # A queue nobody serves is marked as such; the worker's queues are served.
        status, _ = _http("POST", f"{url}/tasks", {"kind": "echo", "queue": "nobody_serves"})
        assert status == 201
        stats = _http("GET", f"{url}/stats")[1]
        served = {q["queue"]: q["served"] for q in stats["queues"]}
        assert served == {"default": True, "emails": True, "nobody_serves": False}, served
        _interrupt_and_check(proc, log)
    assert not data_dir.exists(), "taskq dev started an embedded PostgreSQL"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM taskq_tasks WHERE id = %s", (done["id"],))
        assert row.fetchone() == ("succeeded",)  # the task went to the configured database
    output = log.read_text()
    assert "curl" in output
    assert url.removeprefix("http://") in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, False),
        ({"DATABASE_URL": ""}, False),
        ({"DATABASE_URL": "postgresql://db.example/taskq"}, True),
        ({"TASKQ_DATABASE_URL": "postgresql://db.example/taskq"}, True),
        ({"DATABASE_URL": "host=127.0.0.1 dbname=taskq"}, True),
    ],
)
def test_dev_decides_embedded_or_not_from_the_loaded_settings(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: bool
) -> None:
    for key in ("DATABASE_URL", "TASKQ_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert names_a_database(load_settings()) is expected


def test_dev_with_embedded_postgres(tmp_path: Path) -> None:
    """The `make run` path: no DATABASE_URL, so pgserver runs PostgreSQL in ./.pgdata; the
    first screen is the banner alone (no initdb output, no warnings) with the DATABASE_URL
    to export; `taskq` commands and `taskq.database_url()` run in the same directory find
    the server; stopped by Ctrl-C, and the tasks are still there on the next start."""
    pytest.importorskip("pgserver")
    data_dir = tmp_path / ".pgdata"
    env = taskq_env("")
    del env["DATABASE_URL"]
    try:
        log = tmp_path / "dev.log"
        with dev_process(env, log, cwd=tmp_path) as (proc, url):
            assert _postgres_for(data_dir), "the embedded PostgreSQL should be running"
            done = _submit_and_wait(url)
            assert done["status"] == "succeeded", done
            assert done["result"] == {"input": "hello"}
            # The README's next steps, with DATABASE_URL unset.
            shown = subprocess.run(
                [sys.executable, "-m", "taskq.cli", "status", done["id"]],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["status"] == "succeeded"
            found = subprocess.run(
                [sys.executable, "-c", "import taskq; print(taskq.database_url())"],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert found.returncode == 0, found.stderr
            with psycopg.connect(found.stdout.strip()) as conn:
                row = conn.execute("SELECT status FROM taskq_tasks WHERE id = %s", (done["id"],))
                assert row.fetchone() == ("succeeded",)
            screen = log.read_text()
            assert f"export DATABASE_URL='{found.stdout.strip()}'" in screen
            assert "Ctrl-C" in screen
            assert f"{url}/dashboard" in screen
            for noise in ("initdb", "Warning", "RuntimeDirWarning", "pgserver", "Success."):
                assert noise not in screen, screen
            _interrupt_and_check(proc, log)
        assert (data_dir / "PG_VERSION").exists()
        wait_until(
            lambda: not _postgres_for(data_dir),
            timeout=15,
            what="the embedded PostgreSQL to stop",
        )
        assert "Traceback" not in log.read_text()
        assert not (data_dir / "taskq-database-url").exists()  # nothing to find any more

        again = tmp_path / "dev-again.log"
        with dev_process(env, again, cwd=tmp_path) as (proc, url):
            assert _http("GET", f"{url}/tasks/{done['id']}") == (200, done)
            _interrupt_and_check(proc, again)
        wait_until(lambda: not _postgres_for(data_dir), timeout=15, what="PostgreSQL to stop")
    finally:
        for pid in _postgres_for(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_dev_refuses_a_data_dir_the_embedded_postgres_cannot_use(tmp_path: Path) -> None:
    pytest.importorskip("pgserver")
    data_dir = tmp_path / "with space" / "pgdata"
    env = taskq_env("")
    del env["DATABASE_URL"]
    proc = spawn_taskq(
        ["dev", "--data-dir", str(data_dir)],
        env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 1, out + err
    assert "--data-dir" in err
    assert "Traceback" not in err
    assert not _postgres_for(data_dir)


def test_dev_stops_everything_when_a_child_fails(database_url: str, tmp_path: Path) -> None:
    """The API dies: dev stops the worker and exits 1."""
    env = taskq_env(database_url)
    log = tmp_path / "dev.log"
    with dev_process(env, log) as (proc, _):
        children = _descendants(proc.pid)
        api = [pid for pid, _ in children if " api " in _cmdline(pid)]
        assert api, [_cmdline(pid) for pid, _ in children]
        os.kill(min(api), signal.SIGKILL)  # the gunicorn master (the first one started)
        assert proc.wait(timeout=60) == 1, log.read_text()
    assert "the api exited" in log.read_text()
    wait_until(lambda: not any(_alive(p) for p in children), timeout=10, what="children to exit")


def _run_dev_expecting_failure(env: dict[str, str], *args: str) -> str:
    proc = spawn_taskq(["dev", *args], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 2, out
    assert "taskq is running" not in out
    assert "Traceback" not in out
    return out


def test_dev_with_a_busy_api_port_says_so_in_one_line(database_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = _run_dev_expecting_failure(taskq_env(database_url), "--bind", f"127.0.0.1:{port}")
    (line,) = out.strip().splitlines()
    assert f"127.0.0.1:{port}" in line
    assert "TASKQ_API_BIND" in line
    assert "--bind" in line


def test_dev_with_an_unimportable_handler_module_says_so_first(database_url: str) -> None:
    env = taskq_env(database_url, handler_modules="myapp.tasks")
    out = _run_dev_expecting_failure(env, "--bind", f"127.0.0.1:{free_port()}")
    (line,) = out.strip().splitlines()
    assert "TASKQ_HANDLER_MODULES" in line
    assert "'myapp.tasks'" in line
    assert "PYTHONPATH" in line


def test_dev_refuses_a_bad_settings_file_before_starting_anything(
    database_url: str, tmp_path: Path
) -> None:
    """`taskq dev` picks up TASKQ_CONFIG_FILE: a bad one stops it at once, naming the line."""
    path = tmp_path / "taskq.yaml"
    path.write_text("schedules:\n  - name: a\n    cron: '0 3 * *'\n    kind: echo\n")
    env = taskq_env(database_url, config_file=path)
    proc = spawn_taskq(["dev", "--bind", f"127.0.0.1:{free_port()}"], env, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 2
    assert "line 3: schedules[0].cron" in err
