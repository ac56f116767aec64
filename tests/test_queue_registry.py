"""The queue registry: pausing stops every worker's claims within a second and resuming
wakes them (real worker processes, judged by the rows' own timestamps); GET /queues,
the CLI; the settings file: apply, upsert, removal, and a bad file stopping the worker."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import psycopg
import pytest
from taskq import db, registry, schedules, settings_file
from taskq import queue as q
from taskq.api import Deps, create_app
from taskq.schedules import ScheduleSpec
from taskq.settings import Settings

from tests.helpers import spawn_taskq, stop_process, taskq_env, wait_until
from tests.worker_helpers import fresh_registry

Conn = psycopg.Connection[dict[str, Any]]


def _now(conn: Conn) -> Any:
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def _started(conn: Conn, queue: str) -> list[Any]:
    rows = conn.execute(
        "SELECT started_at FROM taskq_tasks WHERE queue = %s AND started_at IS NOT NULL"
        " ORDER BY started_at",
        (queue,),
    ).fetchall()
    return [r["started_at"] for r in rows]


@pytest.mark.slow
def test_pause_stops_claims_within_a_second_across_workers_and_resume_wakes_them(
    database_url: str, conn: Conn
) -> None:
    env = taskq_env(database_url, poll_interval=0.1)
    workers = [
        spawn_taskq(["worker", "--queues", "p", "--health-port", "0"], env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        # Both workers serve the queue (their presence rows say so).
        wait_until(lambda: registry.workers_per_queue(conn).get("p") == 2, timeout=30)
        # A steady stream: a task becomes runnable every 25 ms for 10 seconds, and one
        # long task that is running when the pause comes.
        q.enqueue(conn, "sleep", {"seconds": 2.0}, queue="p")
        specs = [
            q.TaskSpec(kind="echo", queue="p", delay=0.5 + i * 0.025, payload={"i": i})
            for i in range(400)
        ]
        q.enqueue_many(conn, specs)
        wait_until(lambda: len(_started(conn, "p")) >= 20, timeout=20, what="claims before")
        paused = registry.set_paused(conn, "p", True)
        assert paused.paused
        paused_at = paused.paused_at
        assert paused_at is not None
        # Submits are still accepted while paused.
        during = q.enqueue(conn, "echo", {"during": True}, queue="p")
        wait_until(lambda: _now(conn) > paused_at + timedelta(seconds=2.5), timeout=10)
        started = _started(conn, "p")
        late = [s for s in started if s > paused_at + timedelta(seconds=1)]
        assert not late, f"{len(late)} claims more than a second after the pause"
        waiting = conn.execute(
            "SELECT count(*) AS n FROM taskq_tasks WHERE queue = 'p' AND status = 'queued'"
            " AND run_at <= now()"
        ).fetchone()["n"]
        assert waiting > 50  # the stream went on arriving: there was something to claim
        # The task that was running when the pause came finished.
        slow = conn.execute(
            "SELECT status, finished_at FROM taskq_tasks WHERE kind = 'sleep'"
        ).fetchone()
        assert slow["status"] == "succeeded"
        assert slow["finished_at"] > paused_at

        resumed = registry.set_paused(conn, "p", False)
        assert not resumed.paused
        resumed_at = _now(conn)
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) AS n FROM taskq_tasks"
                    " WHERE queue = 'p' AND status <> 'succeeded'"
                ).fetchone()["n"]
                == 0
            ),
            timeout=30,
            what="every task done after resume",
        )
        after = [s for s in _started(conn, "p") if s > resumed_at]
        assert after, "nothing was claimed after the resume"
        assert after[0] - resumed_at < timedelta(seconds=1), after[0] - resumed_at
        assert q.get(conn, during.id).status == "succeeded"
        alive = [w.poll() is None for w in workers]
    finally:
        codes = [stop_process(w) for w in workers]
    assert all(alive)
    assert codes == [0, 0]
    assert registry.workers_per_queue(conn).get("p") is None  # stopped workers say so


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[falcon.testing.TestClient]:
    settings = make_settings()
    pool = db.create_pool(settings, name="test")
    try:
        yield falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )
    finally:
        pool.close()


def test_get_queues_lists_queues_with_tasks_settings_or_workers(
    client: falcon.testing.TestClient, conn: Conn
) -> None:
    q.enqueue(conn, "echo", queue="with-tasks")
    registry.set_paused(conn, "with-settings", True)
    registry.worker_seen(conn, "w1", ["with-worker", "with-tasks"])
    result = client.simulate_get("/queues")
    assert result.status_code == 200
    by_name = {e["name"]: e for e in result.json["queues"]}
    assert set(by_name) == {"with-tasks", "with-settings", "with-worker"}
    assert by_name["with-tasks"]["counts"]["queued"] == 1
    assert by_name["with-tasks"]["workers"] == 1
    assert by_name["with-settings"]["paused"] is True
    assert by_name["with-settings"]["paused_at"].endswith("Z")
    assert by_name["with-worker"]["paused"] is False
    paused = client.simulate_post("/queues/with-tasks/pause")
    assert paused.status_code == 200
    assert paused.json["paused"] is True
    again = client.simulate_post("/queues/with-tasks/pause").json
    assert again["paused_at"] == paused.json["paused_at"]  # pausing twice keeps the moment
    assert client.simulate_post("/queues/with-tasks/resume").json["paused"] is False
    bad = client.simulate_post("/queues/no%20spaces/pause")
    assert bad.status_code == 422
    assert bad.json["error"]["field"] == "name"


def test_cli_queue_list_pause_resume(database_url: str, conn: Conn) -> None:
    env = taskq_env(database_url)
    q.enqueue(conn, "echo", queue="reports")

    def run(*args: str) -> tuple[int, str, str]:
        proc = spawn_taskq(list(args), env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    code, out, _ = run("queue", "pause", "reports")
    assert code == 0
    assert json.loads(out)["paused"] is True
    code, out, _ = run("queue", "list")
    assert code == 0
    assert "reports" in out
    assert "paused" in out
    code, out, _ = run("queue", "list", "--json")
    assert [e["paused"] for e in json.loads(out)] == [True]
    code, out, _ = run("queue", "resume", "reports")
    assert json.loads(out)["paused"] is False


# ---------------------------------------------------------------- the settings file

FILE = """\
schedules:
  - name: nightly
    cron: "0 3 * * *"
    timezone: Europe/Berlin
    kind: echo
    payload: {day: yesterday}
  - name: often
    every: 30
    kind: echo
    queue: fast
queues:
  reports:
    paused: true
"""


def test_file_apply_upserts_and_removes_only_its_own_rows(tmp_path: Path, conn: Conn) -> None:
    path = tmp_path / "taskq.yaml"
    path.write_text(FILE)
    schedules.put(conn, "made-by-api", ScheduleSpec(every=60, kind="echo"))
    applied = settings_file.apply(conn, settings_file.load(path))
    assert sorted(applied.schedules_created) == ["nightly", "often"]
    nightly = schedules.get(conn, "nightly")
    assert nightly.source == "file"
    assert nightly.spec.payload == {"day": "yesterday"}
    assert registry.paused_queues(conn) == {"reports": True}

    # Applied again (another worker starting): nothing changes.
    again = settings_file.apply(conn, settings_file.load(path))
    assert sorted(again.schedules_updated) == ["nightly", "often"]
    assert schedules.get(conn, "nightly").next_run_at == nightly.next_run_at

    # Edited: one schedule changed, one removed, the queue no longer listed.
    path.write_text("schedules:\n  - name: nightly\n    cron: '0 4 * * *'\n    kind: echo\n")
    applied = settings_file.apply(conn, settings_file.load(path))
    assert applied.schedules_deleted == ["often"]
    assert applied.queues_deleted == ["reports"]
    assert schedules.get(conn, "nightly").spec.cron == "0 4 * * *"
    names = [s.name for s in schedules.list_all(conn)]
    assert names == ["made-by-api", "nightly"]  # the API's schedule is left alone
    assert registry.paused_queues(conn) == {}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("schedules:\n  - name: a\n    cron: '0 3 * *'\n    kind: echo\n",
         "line 3: schedules[0].cron"),
        ("schedules:\n  - name: a\n    every: 5\n    timezone: Mars/X\n    kind: echo\n",
         "line 4: schedules[0].timezone"),
        ("schedules:\n  - name: a\n    kind: echo\n    every: 5\n    cron: '* * * * *'\n",
         "line 4: schedules[0].every"),
        ("schedules:\n  - name: a\n    every: 5\n", "line 2: schedules[0].kind"),
        ("schedules:\n  - name: a\n    every: 5\n    kind: echo\n  - name: a\n    every: 6\n"
         "    kind: echo\n", "line 5: schedules[1].name"),
        ("queues:\n  reports:\n    paused: maybe\n", "line 3: queues.reports.paused"),
        ("schedule:\n  - name: a\n", "line 1: schedule"),
        ("schedules: [\n", "line 2"),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_line_and_the_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "taskq.yaml"
    path.write_text(text)
    with pytest.raises(settings_file.SettingsFileError) as info:
        settings_file.load(path)
    assert where in str(info.value), str(info.value)


def test_a_worker_with_a_bad_file_stops_naming_line_and_field(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "taskq.yaml"
    path.write_text("schedules:\n  - name: a\n    every: 5\n    kind: no-such-kind\n")
    env = taskq_env(database_url, config_file=path)
    proc = spawn_taskq(["worker", "--health-port", "0"], env, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 2
    assert "line 2" in err
    assert "schedules[a].kind" in err or "schedules[0].kind" in err
    assert "no-such-kind" in err


def test_a_worker_applies_the_file_at_start_and_runs_its_schedules(
    tmp_path: Path, database_url: str, conn: Conn
) -> None:
    path = tmp_path / "taskq.yaml"
    path.write_text("schedules:\n  - name: every-second\n    every: 1\n    kind: echo\n")
    env = taskq_env(database_url, config_file=path, poll_interval=0.2)
    proc = spawn_taskq(["worker", "--health-port", "0"], env, stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) AS n FROM taskq_tasks WHERE status = 'succeeded'"
                    " AND idempotency_key LIKE 'schedule:every-second:%'"
                ).fetchone()["n"]
                >= 2
            ),
            timeout=30,
            what="two scheduled tasks run",
        )
    finally:
        assert stop_process(proc) == 0
    got = schedules.get(conn, "every-second")
    assert got.source == "file"
    assert got.last_task_status == "succeeded"


def test_a_running_worker_applies_the_file_again_when_it_changes(
    tmp_path: Path, make_settings: Callable[..., Settings], conn: Conn
) -> None:
    """A ConfigMap update reaches the mounted file without a restart: the worker notices
    and applies it; a bad new version is logged and the current settings stay."""
    import hashlib
    import threading

    from taskq.worker import Worker
    from taskq.worker.scheduler import SettingsFileWatch

    path = tmp_path / "taskq.yaml"
    path.write_text("schedules:\n  - name: first\n    every: 3600\n    kind: echo\n")
    worker = Worker(
        make_settings(config_file=path), registry=fresh_registry(), health_port=0, queues=["x"]
    )
    (watch,) = [s for s in worker.maintenance.services if isinstance(s, SettingsFileWatch)]
    watch.interval = watch.first_delay = 0.1
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: [s.name for s in schedules.list_all(conn)] == ["first"], timeout=20)
        path.write_text("schedules:\n  - name: second\n    every: 3600\n    kind: echo\n")
        wait_until(lambda: [s.name for s in schedules.list_all(conn)] == ["second"], timeout=20)
        bad = b"schedules:\n  - name: third\n    every: 0\n    kind: echo\n"
        path.write_bytes(bad)
        seen = hashlib.sha256(bad).hexdigest()
        wait_until(lambda: watch.applied_digest == seen, timeout=20, what="the bad file seen")
        assert watch.reapplied == 1
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert [s.name for s in schedules.list_all(conn)] == ["second"]  # the bad one was ignored
