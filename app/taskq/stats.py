"""Queue statistics: what `/stats`, the dashboard, `taskq stats` and the depth metrics show.

Every number comes from an index, and every query is bounded (app/taskq/sql.py):
- queued and runnable counts and the oldest runnable task per queue: the ready index,
  counted up to STATS_CAP per queue (`capped` says when a count reached it);
- running per queue: the index of running tasks (as many rows as tasks in flight);
- finished in the last hour per queue, status and minute: the finished index, reading at
  most FINISHED_BUDGET rows (at higher throughput `throughput.complete_since` says from
  when the series is complete);
- recent failures: the partial index on failed tasks (migration 0002).
One set of caps (STATS_CAP, MAX_GROUPS, TIMEOUT_MS) bounds every caller.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskq import flow, queue, sql, workers
from taskq.db import translate_errors
from taskq.models import FINISHED
from taskq.queue import AnyConnection

STATS_CAP = 10_000
MAX_GROUPS = 1_000
FINISHED_WINDOW = 3600
FINISHED_BUCKET = 60
FINISHED_BUDGET = 100_000
FAILURES_SHOWN = 10
ERROR_PREVIEW = 500
TIMEOUT_MS = 3_000


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueStats(_Out):
    queue: str
    runnable: int = Field(description="queued tasks whose run_at has come (up to the cap)")
    scheduled: int = Field(description="queued tasks whose run_at is ahead (up to the cap)")
    queued: int = Field(description="runnable + scheduled")
    running: int
    blocked: int = Field(0, description="tasks waiting for their parents (depends_on)")
    succeeded: int = Field(description="finished in the throughput window")
    failed: int = Field(description="finished in the throughput window")
    cancelled: int = Field(description="finished in the throughput window")
    oldest_runnable_age_seconds: float = Field(description="0 when nothing is runnable")
    held: int = Field(
        0, description="runnable tasks a flow-control limit keeps queued now (up to the cap)"
    )
    max_running: int | None = Field(None, description="flow control: null when unlimited")
    max_running_per_key: int | None = Field(None, description="flow control: null when unlimited")
    rate_limit: flow.RateLimit | None = Field(None, description="flow control: null when unlimited")
    served: bool = Field(
        description="a live worker serves this queue; false: its tasks wait until one does"
    )


class Totals(_Out):
    runnable: int
    scheduled: int
    queued: int
    running: int
    blocked: int
    held: int
    succeeded: int
    failed: int
    cancelled: int


class OldestTask(_Out):
    id: str
    queue: str
    run_at: datetime
    age_seconds: float


class Point(_Out):
    t: datetime = Field(description="start of the bucket")
    succeeded: int
    failed: int
    cancelled: int


class Throughput(_Out):
    window_seconds: int
    bucket_seconds: int
    complete_since: datetime = Field(
        description="counts before this instant are partial (row budget reached)"
    )
    points: list[Point]


class Failure(_Out):
    id: str
    queue: str
    kind: str
    attempts: int
    max_attempts: int
    last_error: str | None = Field(description=f"first {ERROR_PREVIEW} characters")
    finished_at: datetime | None


class Stats(_Out):
    generated_at: datetime
    cap: int = Field(description="runnable and scheduled counts stop at this number per queue")
    capped: bool = Field(description="some count reached the cap: it means at least that many")
    totals: Totals
    queues: list[QueueStats]
    oldest_runnable: OldestTask | None
    throughput: Throughput
    recent_failures: list[Failure]


# ---------------------------------------------------------------- queries


def _stats_rows(
    conn: AnyConnection, query: Any, params: dict[str, Any], timeout_ms: int
) -> list[dict[str, Any]]:
    """Run a read-only statistics query with its own planner settings (sql.STATS_SESSION)."""
    with translate_errors(), conn.transaction():
        queue.fetch(conn, sql.STATS_SESSION, {"timeout_ms": str(int(timeout_ms))})
        return queue.fetch(conn, query, params)


def queue_stats(
    conn: AnyConnection, *, cap: int = 10_000, max_groups: int = 1_000, timeout_ms: int = 2_000
) -> list[dict[str, Any]]:
    """Per queue with queued tasks: runnable and scheduled counts (each at most `cap`),
    queued (their sum), and the oldest runnable task's id, run_at and age in seconds
    (None/0 when none)."""
    params = {"cap": cap, "max_groups": max_groups}
    rows = _stats_rows(conn, sql.QUEUE_STATS, params, timeout_ms)
    for row in rows:
        row["queued"] = row["runnable"] + row["scheduled"]
    return rows


def blocked_counts(conn: AnyConnection, *, cap: int = 10_000) -> dict[str, int]:
    """Blocked tasks per queue (at most `cap` counted in all)."""
    rows = queue.fetch(conn, sql.COUNT_BLOCKED, {"cap": cap})
    return {row["queue"]: int(row["n"]) for row in rows}


def running_counts(conn: AnyConnection) -> dict[str, int]:
    """Running tasks per queue."""
    return {row["queue"]: int(row["n"]) for row in queue.fetch(conn, sql.COUNT_RUNNING, {})}


def finished_series(
    conn: AnyConnection,
    *,
    window_seconds: int = 3600,
    bucket_seconds: int = 60,
    budget: int = 100_000,
    timeout_ms: int = 2_000,
) -> tuple[list[dict[str, Any]], datetime]:
    """Rows (queue, status, bucket, n, oldest) of tasks finished in the window, and the
    database's now(); only the `budget` most recent finishes are read (FINISHED_SERIES)."""
    params = {"window": window_seconds, "bucket": bucket_seconds, "budget": budget}
    with translate_errors(), conn.transaction():
        queue.fetch(conn, sql.STATS_SESSION, {"timeout_ms": str(int(timeout_ms))})
        rows = queue.fetch(conn, sql.FINISHED_SERIES, params)
        now: datetime = queue.fetch(conn, sql.DATABASE_NOW, {})[0]["now"]
    return rows, now


def recent_failures(conn: AnyConnection, *, limit: int = 10) -> list[dict[str, Any]]:
    """The latest failed tasks, newest first (no payloads or results)."""
    return queue.fetch(conn, sql.RECENT_FAILURES, {"limit": limit})


# ---------------------------------------------------------------- the document


def depths(conn: Any) -> list[dict[str, Any]]:
    """Per queue: runnable, queued and the oldest runnable age (the depth gauges)."""
    return queue_stats(conn, cap=STATS_CAP, max_groups=MAX_GROUPS, timeout_ms=TIMEOUT_MS)


def collect(conn: Any) -> Stats:
    """Read the statistics (a few bounded, index-only or index-driven queries)."""
    per_queue = depths(conn)
    running = running_counts(conn)
    blocked = blocked_counts(conn, cap=STATS_CAP)
    series, now = finished_series(
        conn,
        window_seconds=FINISHED_WINDOW,
        bucket_seconds=FINISHED_BUCKET,
        budget=FINISHED_BUDGET,
        timeout_ms=TIMEOUT_MS,
    )
    failures = recent_failures(conn, limit=FAILURES_SHOWN)
    runnable = {r["queue"]: int(r["runnable"]) for r in per_queue}
    limited = {
        x.queue: x for x in flow.limits(conn, runnable=runnable, cap=STATS_CAP, only_limited=True)
    }
    served = workers.served_queues(conn)
    now = now.astimezone(UTC)

    finished: dict[str, dict[str, int]] = {}
    buckets: dict[int, dict[str, int]] = {}
    read = 0
    oldest_read = now
    for row in series:
        n = int(row["n"])
        read += n
        oldest_read = min(oldest_read, row["oldest"])
        counts = finished.setdefault(row["queue"], dict.fromkeys(FINISHED, 0))
        counts[row["status"]] += n
        bucket = buckets.setdefault(int(row["bucket"]), dict.fromkeys(FINISHED, 0))
        bucket[row["status"]] += n
    window_start = now - timedelta(seconds=FINISHED_WINDOW)
    complete_since = oldest_read if read >= FINISHED_BUDGET else window_start

    first = int(window_start.timestamp()) // FINISHED_BUCKET * FINISHED_BUCKET
    last = int(now.timestamp()) // FINISHED_BUCKET * FINISHED_BUCKET
    points = [
        Point(t=datetime.fromtimestamp(t, UTC), **buckets.get(t, dict.fromkeys(FINISHED, 0)))
        for t in range(first + FINISHED_BUCKET, last + 1, FINISHED_BUCKET)
    ]

    names = sorted(
        {r["queue"] for r in per_queue}
        | set(running)
        | set(blocked)
        | set(finished)
        | set(limited)
        | served
    )
    ready = {r["queue"]: r for r in per_queue}
    queues = []
    for name in names:
        r = ready.get(name, {})
        done = finished.get(name, dict.fromkeys(FINISHED, 0))
        lim = limited.get(name)
        queues.append(
            QueueStats(
                queue=name,
                runnable=int(r.get("runnable", 0)),
                scheduled=int(r.get("scheduled", 0)),
                queued=int(r.get("queued", 0)),
                running=running.get(name, 0),
                blocked=blocked.get(name, 0),
                oldest_runnable_age_seconds=round(float(r.get("oldest_age_seconds", 0.0)), 3),
                served=name in served,
                **done,
                **(
                    {}
                    if lim is None
                    else {
                        "held": lim.held,
                        "max_running": lim.max_running,
                        "max_running_per_key": lim.max_running_per_key,
                        "rate_limit": lim.rate_limit,
                    }
                ),
            )
        )
    oldest = min(
        (r for r in per_queue if r["oldest_id"] is not None),
        key=lambda r: r["oldest_run_at"],
        default=None,
    )
    return Stats(
        generated_at=now,
        cap=STATS_CAP,
        capped=any(q.scheduled >= STATS_CAP or q.runnable >= STATS_CAP for q in queues),
        totals=Totals(
            **{
                field: sum(getattr(q, field) for q in queues)
                for field in (
                    "runnable",
                    "scheduled",
                    "queued",
                    "running",
                    "blocked",
                    "held",
                    *FINISHED,
                )
            }
        ),
        queues=queues,
        oldest_runnable=None
        if oldest is None
        else OldestTask(
            id=str(oldest["oldest_id"]),
            queue=oldest["queue"],
            run_at=oldest["oldest_run_at"],
            age_seconds=round(float(oldest["oldest_age_seconds"]), 3),
        ),
        throughput=Throughput(
            window_seconds=FINISHED_WINDOW,
            bucket_seconds=FINISHED_BUCKET,
            complete_since=complete_since,
            points=points,
        ),
        recent_failures=[
            Failure(
                id=str(f["id"]),
                queue=f["queue"],
                kind=f["kind"],
                attempts=f["attempts"],
                max_attempts=f["max_attempts"],
                last_error=None if f["last_error"] is None else f["last_error"][:ERROR_PREVIEW],
                finished_at=f["finished_at"],
            )
            for f in failures
        ],
    )


def to_json(stats: Stats) -> dict[str, Any]:
    out: dict[str, Any] = _zulu(stats.model_dump(mode="json"))
    return out


def _zulu(value: Any) -> Any:
    """Timestamps as the task JSON writes them: ...Z rather than +00:00."""
    if isinstance(value, dict):
        return {k: _zulu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_zulu(v) for v in value]
    if isinstance(value, str) and value.endswith("+00:00") and "T" in value:
        return value.removesuffix("+00:00") + "Z"
    return value
