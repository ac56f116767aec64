"""Schedules: slots (DST in a non-UTC zone), exactly one task per slot with workers
racing, catch-up after downtime, the REST surface and its 422s, the CLI."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import falcon
import falcon.testing
import psycopg
import pytest
from taskq import db, schedules
from taskq.api import Deps, create_app
from taskq.cron import CronError, Slots
from taskq.schedules import ScheduleSpec
from taskq.settings import Settings

from tests.helpers import spawn_taskq, stop_process, taskq_env, wait_until
from tests.worker_helpers import fresh_registry

BERLIN = ZoneInfo("Europe/Berlin")
JSON = {"content-type": "application/json"}


def _walk(slots: Slots, start: datetime, n: int) -> list[str]:
    out, t = [], start
    for _ in range(n):
        t = slots.next_after(t)
        out.append(t.astimezone(BERLIN).isoformat())
    return out


# ---------------------------------------------------------------- slots and DST


def test_spring_gap_runs_a_fixed_time_job_once_right_after_the_jump() -> None:
    # 2026-03-29: Berlin's clocks jump from 02:00 to 03:00; 02:30 does not exist.
    daily = Slots("30 2 * * *", None, "Europe/Berlin")
    assert _walk(daily, datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # The same with seconds (6 fields): the seconds are offsets within the minute.
    assert _walk(
        Slots("15 30 2 * * *", None, "Europe/Berlin"), datetime(2026, 3, 29, tzinfo=BERLIN), 1
    ) == ["2026-03-29T03:00:15+02:00"]
    # A wildcard-hour job follows real time: nothing in the skipped hour, no burst after.
    half_hourly = Slots("*/30 * * * *", None, "Europe/Berlin")
    assert _walk(half_hourly, datetime(2026, 3, 29, 1, 15, tzinfo=BERLIN), 3) == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
    ]


def test_autumn_repeat_runs_a_fixed_time_job_once_and_real_time_jobs_in_both_passes() -> None:
    # 2026-10-25: Berlin's clocks go from 03:00 back to 02:00; 02:00-02:59 happens twice.
    daily = Slots("30 2 * * *", None, "Europe/Berlin")
    assert _walk(daily, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2) == [
        "2026-10-25T02:30:00+02:00",  # the first pass only
        "2026-10-26T02:30:00+01:00",
    ]
    # From inside the second pass, the latest slot is still the first pass's.
    second_pass = datetime(2026, 10, 25, 1, 45, tzinfo=UTC)  # 02:45 CET
    assert daily.latest_at_or_before(second_pass) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    half_hourly = Slots("*/30 * * * *", None, "Europe/Berlin")
    assert _walk(half_hourly, datetime(2026, 10, 25, 1, 45, tzinfo=BERLIN), 5) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    # Every slot is a distinct instant, so each has its own key.
    instants = [
        datetime.fromisoformat(s)
        for s in _walk(half_hourly, datetime(2026, 10, 25, tzinfo=BERLIN), 12)
    ]
    assert len({schedules.slot_key("x", i) for i in instants}) == 12
    assert instants == sorted(instants, key=lambda d: d.astimezone(UTC))


def test_every_slots_are_epoch_aligned_and_latest_is_inclusive() -> None:
    every = Slots(None, 60)
    moment = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert every.next_after(moment) == datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    assert every.latest_at_or_before(moment) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    exact = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert Slots("0 12 * * *", None).latest_at_or_before(exact) == exact
    assert Slots("*/20 * * * * *", None).latest_at_or_before(moment) == datetime(
        2026, 1, 1, 12, 0, 20, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("cron", "every", "timezone"),
    [("* * *", None, "UTC"), ("61 * * * *", None, "UTC"), ("* * * * *", None, "Mars/Base"),
     (None, None, "UTC"), ("* * * * *", 5, "UTC"), ("* * * * *", None, "../../etc/passwd")],
)  # fmt: skip
def test_unusable_slots_are_refused(cron: str | None, every: int | None, timezone: str) -> None:
    with pytest.raises(CronError):
        Slots(cron, every, timezone)


# ---------------------------------------------------------------- enqueueing slots


def _tasks_of(conn: psycopg.Connection[Any], name: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, idempotency_key, created_at, kind, queue, payload, priority, max_attempts"
        " FROM taskq_tasks WHERE idempotency_key LIKE %s ORDER BY idempotency_key",
        (f"schedule:{name}:%",),
    ).fetchall()


def _slot(key: str) -> datetime:
    """The slot of a key `schedule:NAME:2026-01-01T03:00:00Z` (its last 20 characters)."""
    return datetime.strptime(key[-20:], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_a_slot_enqueued_twice_is_one_task(conn: psycopg.Connection[Any]) -> None:
    spec = ScheduleSpec(every=1, kind="echo", payload={"n": 1}, queue="cron", priority=3)
    schedules.put(conn, "tick", spec)
    wait_until(lambda: schedules.enqueue_due(conn), timeout=5, what="a due slot")
    first = schedules.get(conn, "tick")
    assert first.last_task_id is not None
    assert first.last_run_at is not None
    # A second scheduler that saw the same slot (a slow worker, another clock) inserts
    # nothing: put the schedule back to that slot and enqueue it again elsewhere.
    conn.execute(
        "UPDATE taskq_schedules SET next_run_at = %s WHERE name = 'tick'", (first.last_run_at,)
    )
    with psycopg.connect(conn.info.dsn, autocommit=True) as other:
        again = [e for e in schedules.enqueue_due(other) if e.slot == first.last_run_at]
    if again:  # the database's clock may have reached the next slot meanwhile
        assert again[0].created is False
        assert again[0].task.id == first.last_task_id
    tasks = _tasks_of(conn, "tick")
    assert Counter(t["idempotency_key"] for t in tasks).most_common(1)[0][1] == 1
    task = tasks[0]
    assert (task["kind"], task["queue"], task["payload"], task["priority"]) == (
        "echo", "cron", {"n": 1}, 3,
    )  # fmt: skip


def test_a_slots_task_carries_the_schedules_timeout_and_concurrency_key(
    conn: psycopg.Connection[Any],
) -> None:
    spec = ScheduleSpec(
        every=1, kind="echo", queue="tenants", timeout_seconds=2.5, concurrency_key="acme"
    )
    schedules.put(conn, "per-tenant", spec)
    stored = schedules.get(conn, "per-tenant")
    assert (stored.spec.timeout_seconds, stored.spec.concurrency_key) == (2.5, "acme")
    [done] = wait_until(lambda: schedules.enqueue_due(conn), timeout=5, what="a due slot")
    task = conn.execute(
        "SELECT timeout_seconds, concurrency_key FROM taskq_tasks WHERE id = %s", (done.task.id,)
    ).fetchone()
    assert task == {"timeout_seconds": 2.5, "concurrency_key": "acme"}
    # Without them, the slot's task has neither (the kind's timeout applies, no key).
    schedules.put(conn, "per-tenant", ScheduleSpec(every=1, kind="echo", queue="tenants"))
    assert schedules.get(conn, "per-tenant").to_json()["concurrency_key"] is None


def test_catch_up_after_downtime_enqueues_only_the_latest_slot(
    conn: psycopg.Connection[Any],
) -> None:
    schedules.put(conn, "minutely", ScheduleSpec(cron="* * * * *", kind="echo"))
    # Nothing ran for three hours: 180 slots were missed.
    conn.execute(
        "UPDATE taskq_schedules SET next_run_at = date_trunc('minute', now()) - interval '3 hours'"
    )
    done = schedules.enqueue_due(conn)
    assert len(done) == 1
    now = conn.execute("SELECT now() AS now").fetchone()["now"]
    assert now - timedelta(minutes=1) < done[0].slot <= now
    assert done[0].slot.second == 0
    assert len(_tasks_of(conn, "minutely")) == 1
    after = schedules.get(conn, "minutely")
    assert after.next_run_at is not None
    assert after.next_run_at > now
    assert schedules.enqueue_due(conn) == []  # nothing else is due


def test_reapplying_an_unchanged_schedule_keeps_a_missed_slot(
    conn: psycopg.Connection[Any],
) -> None:
    spec = ScheduleSpec(cron="0 * * * *", kind="echo")
    schedules.put(conn, "hourly", spec, source="file")
    conn.execute("UPDATE taskq_schedules SET next_run_at = now() - interval '10 minutes'")
    missed = schedules.get(conn, "hourly").next_run_at
    assert schedules.put(conn, "hourly", spec, source="file") is False  # a worker restarts
    assert schedules.get(conn, "hourly").next_run_at == missed
    changed = ScheduleSpec(cron="30 * * * *", kind="echo")
    schedules.put(conn, "hourly", changed, source="file")
    assert schedules.get(conn, "hourly").next_run_at != missed  # new timing: from now on


def test_disabled_schedules_enqueue_nothing_and_enable_from_the_next_slot(
    conn: psycopg.Connection[Any],
) -> None:
    schedules.put(conn, "off", ScheduleSpec(every=1, kind="echo", enabled=False))
    conn.execute("UPDATE taskq_schedules SET next_run_at = now() - interval '1 hour'")
    assert schedules.enqueue_due(conn) == []
    enabled = schedules.set_enabled(conn, "off", True)
    now = conn.execute("SELECT now() AS now").fetchone()["now"]
    assert enabled.spec.enabled
    assert enabled.next_run_at is not None
    assert enabled.next_run_at > now - timedelta(seconds=1)


def test_three_workers_racing_enqueue_each_slot_exactly_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    schedules.put(conn, "race", ScheduleSpec(every=1, kind="echo", queue="nobody-serves-this"))
    env = taskq_env(database_url, poll_interval=0.2)
    workers = [
        spawn_taskq(["worker", "--queues", "other", "--health-port", "0"], env) for _ in range(3)
    ]
    try:
        wait_until(lambda: len(_tasks_of(conn, "race")) >= 6, timeout=30, what="six slots")
        first = len(_tasks_of(conn, "race"))
        # Let them race over several more slots.
        wait_until(lambda: len(_tasks_of(conn, "race")) >= first + 4, timeout=30)
        running = [w.poll() is None for w in workers]
    finally:
        codes = [stop_process(w) for w in workers]
    assert all(running)
    assert codes == [0, 0, 0]
    tasks = _tasks_of(conn, "race")
    keys = [t["idempotency_key"] for t in tasks]
    assert len(keys) == len(set(keys))  # one task per slot
    slots = sorted(_slot(k) for k in keys)
    # The rows' own timestamps: each task was created within a second or so of its slot
    # (the scheduler is at most a second late; the margin covers a loaded machine), and
    # the slots are consecutive seconds (at most one missed slot is ever caught up).
    lateness = [(t["created_at"] - _slot(t["idempotency_key"])).total_seconds() for t in tasks]
    assert min(lateness) >= 0
    assert sorted(lateness)[len(lateness) // 2] < 1.0, lateness
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert all(g >= 1 for g in gaps)
    assert sum(1 for g in gaps if g == 1) >= len(gaps) * 0.7, gaps


# ---------------------------------------------------------------- REST and CLI


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


def _put(client: falcon.testing.TestClient, name: str, body: Any) -> falcon.testing.Result:
    return client.simulate_put(f"/schedules/{name}", body=json.dumps(body), headers=JSON)


def test_put_get_list_delete(client: falcon.testing.TestClient) -> None:
    body = {"cron": "0 3 * * *", "timezone": "Europe/Berlin", "kind": "echo", "payload": {"a": 1}}
    created = _put(client, "nightly", body)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/schedules/nightly"
    got = created.json
    assert (got["cron"], got["every"], got["source"], got["enabled"]) == (
        "0 3 * * *",
        None,
        "api",
        True,
    )
    next_run = datetime.fromisoformat(got["next_run_at"].replace("Z", "+00:00"))
    assert next_run.astimezone(BERLIN).hour == 3
    assert next_run.minute == 0
    assert (got["timeout_seconds"], got["concurrency_key"]) == (None, None)
    assert got["last_run_at"] is None
    assert got["last_task_id"] is None
    options = {"timeout_seconds": 30, "concurrency_key": "tenant-7"}
    replaced = _put(client, "nightly", {**body, "cron": None, "every": 60, **options})
    assert replaced.status_code == 200
    assert replaced.json["every"] == 60
    assert (replaced.json["timeout_seconds"], replaced.json["concurrency_key"]) == (30, "tenant-7")
    assert client.simulate_get("/schedules/nightly").json["every"] == 60
    assert [s["name"] for s in client.simulate_get("/schedules").json["schedules"]] == ["nightly"]
    disabled = client.simulate_post("/schedules/nightly/disable").json
    assert disabled["enabled"] is False
    assert disabled["next_run_at"] is None
    assert client.simulate_post("/schedules/nightly/enable").json["enabled"] is True
    deleted = client.simulate_delete("/schedules/nightly")
    assert deleted.status_code == 204
    assert not deleted.content
    assert client.simulate_get("/schedules/nightly").status_code == 404
    assert client.simulate_delete("/schedules/nightly").status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"cron": "0 3 * *", "kind": "echo"}, "cron", "5 fields"),
        ({"cron": "0 25 * * *", "kind": "echo"}, "cron", "hour"),
        ({"every": 5, "timezone": "Mars/Olympus", "kind": "echo"}, "timezone", "unknown timezone"),
        ({"cron": "* * * * *", "every": 5, "kind": "echo"}, "every", "not both"),
        ({"kind": "echo"}, "every", "cron"),
        ({"every": 5, "kind": "no-such-kind"}, "kind", "unknown kind"),
        ({"every": 0, "kind": "echo"}, "every", "greater than or equal to 1"),
        ({"every": "5", "kind": "echo"}, "every", "integer"),
        ({"every": 5}, "kind", "required"),
        ({"every": 5, "kind": "echo", "queue": "no spaces"}, "queue", "letters, digits"),
        ({"every": 5, "kind": "echo", "extra": 1}, "extra", "unknown field"),
        ({"every": 5, "kind": "echo", "concurrency_key": "a b"}, "concurrency_key", "pattern"),
        ({"every": 5, "kind": "echo", "concurrency_key": ""}, "concurrency_key", "at least 1"),
        ({"every": 5, "kind": "echo", "timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"every": 5, "kind": "echo", "timeout_seconds": "9"}, "timeout_seconds", "number"),
    ],
)
def test_every_invalid_schedule_is_a_422_naming_the_field(
    client: falcon.testing.TestClient, body: dict[str, Any], field: str, words: str
) -> None:
    result = _put(client, "bad", body)
    assert result.status_code == 422, result.text
    error = result.json["error"]
    assert error["field"] == field, error
    assert words in error["message"], error


def test_an_invalid_schedule_name_is_a_422(client: falcon.testing.TestClient) -> None:
    result = _put(client, "x" * 65, {"every": 5, "kind": "echo"})
    assert result.status_code == 422
    assert result.json["error"]["field"] == "name"


def test_cli_schedule_set_list_delete(database_url: str) -> None:
    env = taskq_env(database_url)

    def run(*args: str) -> tuple[int, str, str]:
        proc = spawn_taskq(list(args), env, stdout=-1, stderr=-1)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    code, out, _ = run("schedule", "set", "nightly", "--cron", "0 3 * * *", "--kind", "echo",
                       "--timezone", "Europe/Berlin", "--payload", '{"a": 1}')  # fmt: skip
    assert code == 0
    assert json.loads(out)["timezone"] == "Europe/Berlin"
    code, out, _ = run("schedule", "set", "keyed", "--every", "60", "--kind", "echo",
                       "--timeout", "4", "--concurrency-key", "tenant-1")  # fmt: skip
    assert code == 0
    assert (json.loads(out)["timeout_seconds"], json.loads(out)["concurrency_key"]) == (
        4.0, "tenant-1",
    )  # fmt: skip
    code, _, err = run(
        "schedule", "set", "bad", "--every", "5", "--kind", "echo", "--concurrency-key", "a b"
    )
    assert code == 2
    assert "--concurrency-key" in err
    code, out, _ = run("schedule", "delete", "keyed")
    assert code == 0
    code, out, _ = run("schedule", "list", "--json")
    assert code == 0
    assert [s["name"] for s in json.loads(out)] == ["nightly"]
    code, out, _ = run("schedule", "list")
    assert code == 0
    assert "nightly" in out
    assert "0 3 * * *" in out
    code, _, err = run("schedule", "set", "bad", "--cron", "0 3 * *", "--kind", "echo")
    assert code == 2
    assert "--cron" in err
    assert "5 fields" in err
    code, _, err = run(
        "schedule", "set", "bad", "--every", "5", "--kind", "echo", "--timezone", "X/Y"
    )
    assert code == 2
    assert "--timezone" in err
    code, _, _ = run("schedule", "delete", "nightly")
    assert code == 0
    code, _, err = run("schedule", "delete", "nightly")
    assert code == 1
    assert "no schedule" in err
