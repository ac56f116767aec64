"""`taskq dev` end to end: migrate + API + worker in one process tree, stopped by Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
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
def dev_process(env: dict[str, str], log: Path, *args: str) -> Iterator[tuple[Any, str]]:
    """`taskq dev`, its URL once the API is ready; everything it started is killed after."""
    port = free_port()
    with log.open("w") as out:
        proc = spawn_taskq(
            ["dev", "--bind", f"127.0.0.1:{port}", *args],
            env,
            stdout=out,
            stderr=subprocess.STDOUT,
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
    with dev_process(env, log, "--data-dir", str(data_dir)) as (proc, url):
        done = _submit_and_wait(url)
        assert done["status"] == "succeeded", done
        assert done["result"] == {"input": "hello"}
        assert not _postgres_for(data_dir)
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
    """The `make run` path: no DATABASE_URL, so pgserver runs PostgreSQL in --data-dir;
    stopped by Ctrl-C, and the tasks are still there on the next start."""
    pytest.importorskip("pgserver")
    data_dir = tmp_path / "pgdata"
    env = taskq_env("")
    del env["DATABASE_URL"]
    try:
        log = tmp_path / "dev.log"
        with dev_process(env, log, "--data-dir", str(data_dir)) as (proc, url):
            assert _postgres_for(data_dir), "the embedded PostgreSQL should be running"
            done = _submit_and_wait(url)
            assert done["status"] == "succeeded", done
            assert done["result"] == {"input": "hello"}
            _interrupt_and_check(proc, log)
        assert (data_dir / "PG_VERSION").exists()
        wait_until(
            lambda: not _postgres_for(data_dir),
            timeout=15,
            what="the embedded PostgreSQL to stop",
        )
        assert "Traceback" not in log.read_text()

        again = tmp_path / "dev-again.log"
        with dev_process(env, again, "--data-dir", str(data_dir)) as (proc, url):
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
    """The API cannot bind (the port is taken): dev stops the worker and exits 1."""
    env = taskq_env(database_url)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = spawn_taskq(
            ["dev", "--bind", f"127.0.0.1:{port}"],
            env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        children: set[Proc] = set()
        try:
            wait_until(
                lambda: (
                    proc.poll() is not None
                    or any(" worker" in _cmdline(pid) for pid, _ in _descendants(proc.pid))
                ),
                timeout=30,
                what="the worker to start",
            )
            children = _descendants(proc.pid)
            out, _ = proc.communicate(timeout=60)
        finally:
            stop_process(proc)
            for pid, _ in (p for p in children if _alive(p)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, out
    assert "the api exited" in out
    wait_until(lambda: not any(_alive(p) for p in children), timeout=10, what="children to exit")


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
