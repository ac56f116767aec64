"""Flow control: per-queue limits (max_running, max_running_per_key, rate_limit), the
limited claim that enforces them, and what the statistics show about them.

Limits live in the queue registry (taskq_queues, migration 0007); `None` means no limit.
A queue with a limit is claimed in a transaction of its own under the queue's claim turn
(sql.QUEUE_TURN, sql.CLAIM_LIMITED), which makes the limits exact across every worker;
queues without limits keep the plain claim (sql.CLAIM skips limited ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from taskq import sql
from taskq.db import translate_errors
from taskq.models import Integer, check_queue_name
from taskq.queue import AnyConnection, Claimed, Finish, _decode, fetch, outcomes_json

MAX_LIMIT = 1_000_000
MAX_RATE_SECONDS = 86_400.0


# A limit's value: a whole number from 1 (5.0 counts as 5). WithJsonSchema: pydantic
# writes the bounds of an optional validated integer as "ge"/"le", unknown to JSON Schema.
Limit = Annotated[
    Integer,
    Field(ge=1, le=MAX_LIMIT),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
]


class RateLimit(BaseModel):
    """At most `count` task starts per `per_seconds`, across all workers (a sliding window)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    count: Integer = Field(ge=1, le=MAX_LIMIT)
    per_seconds: float = Field(gt=0, le=MAX_RATE_SECONDS)

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`COUNT/SECONDS`, e.g. `100/60` (the CLI's and the settings file's spelling)."""
        count, sep, seconds = text.partition("/")
        if not sep:
            raise ValueError("give COUNT/SECONDS, e.g. 100/60")
        try:
            whole, per = int(count), float(seconds)
        except ValueError:
            raise ValueError("give COUNT/SECONDS with a whole COUNT, e.g. 100/60") from None
        return cls(count=whole, per_seconds=per)


class LimitsUpdate(BaseModel):
    """`PUT /queues/{name}`: the limits to change; an absent field is left as it is and
    `null` removes that limit."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    max_running: Limit | None = None
    max_running_per_key: Limit | None = None
    rate_limit: RateLimit | None = None

    @model_validator(mode="before")
    @classmethod
    def _object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("the body must be a JSON object")
        return value


class Limits(BaseModel):
    """A queue's limits and how they are used right now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str
    max_running: int | None
    max_running_per_key: int | None
    rate_limit: RateLimit | None
    running: int = Field(description="tasks of this queue running now")
    window_starts: int = Field(description="task starts inside the rate window (0 without one)")
    held: int = Field(
        description="runnable tasks kept queued by a limit now (counted up to the stats cap)"
    )
    updated_at: datetime | None = None

    @property
    def limited(self) -> bool:
        return any(
            x is not None for x in (self.max_running, self.max_running_per_key, self.rate_limit)
        )


def set_limits(conn: AnyConnection, queue: str, update: LimitsUpdate) -> None:
    """Create or change the queue's registry row with the given limits (others untouched)."""
    check_queue_name(queue)
    given = update.model_fields_set
    rate = update.rate_limit
    params = {
        "queue": queue,
        "set_max_running": "max_running" in given,
        "max_running": update.max_running,
        "set_per_key": "max_running_per_key" in given,
        "max_running_per_key": update.max_running_per_key,
        "set_rate": "rate_limit" in given,
        "rate_count": None if rate is None else rate.count,
        "rate_seconds": None if rate is None else rate.per_seconds,
    }
    fetch(conn, sql.SET_LIMITS, params)
    # Workers waiting on a queue whose limit was raised or removed claim at once.
    fetch(conn, sql.NOTIFY_QUEUES, {"queues": [queue]})


@dataclasses.dataclass(frozen=True, slots=True)
class LimitedQueue:
    """A limited queue as a worker sees it (`limited_queues`)."""

    rated: bool  # has a rate limit, whose window `rate_wait` tells when it opens
    alone: bool  # no other live worker serves it
    max_running_only: bool  # max_running is its only limit (`claim_limited(lean=True)`)


def limited_queues(
    conn: AnyConnection, queues: Sequence[str], *, worker_id: str, fresh: float
) -> dict[str, LimitedQueue]:
    """The given queues that have a limit (claimed with `claim_limited`), and whether
    the worker `worker_id` is alone on each (no other worker seen within `fresh` s)."""
    params = {"queues": list(queues), "worker_id": worker_id, "fresh": fresh}
    rows = fetch(conn, sql.LIMITED_QUEUES, params)
    return {
        row["name"]: LimitedQueue(
            bool(row["rated"]), bool(row["alone"]), bool(row["max_running_only"])
        )
        for row in rows
    }


@dataclasses.dataclass(frozen=True, slots=True)
class LimitedClaim:
    """What `claim_limited` did: the tasks claimed, whether the queue is full now
    (max_running or the rate window used up), and for the outcomes it was given the
    FINISH rows it applied and the outcomes it left for `workflows.finish` (a lost lease,
    or a task whose end has consequences: a parent, a batch member)."""

    claimed: list[Claimed]
    full: bool
    applied: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    left: list[Finish] = dataclasses.field(default_factory=list)
    alone: bool = True  # with outcomes: no other live worker serves the queue (`fresh`)


def _transaction(conn: AnyConnection) -> contextlib.AbstractContextManager[Any]:
    """The transaction of a pipelined claim. On an idle autocommit connection, the
    pipeline's own: every statement up to its single sync runs in one implicit
    transaction, committed at the sync (no BEGIN and COMMIT to send and process)."""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        return contextlib.nullcontext()
    return conn.transaction()


def claim_limited(
    conn: AnyConnection,
    *,
    queue: str,
    limit: int,
    worker_id: str,
    lease: float,
    finish: Sequence[Finish] = (),
    fresh: float = 15.0,
    lean: bool = False,
) -> LimitedClaim:
    """Claim up to `limit` tasks of one limited queue within its limits, in a transaction
    of its own that waits for the queue's claim turn (never for other queues).

    `finish`: outcomes of this worker's tasks of the queue, recorded in the same
    transaction before the turn (FINISH without consequences), so the claim counts the
    room they free: one commit and one round trip where there would be two of each, in
    sequence, when the limit binds. The worker does this only where it is alone on the
    queue: the room its outcomes free goes straight back to it, which is fair only when
    no other worker waits for it; whether that is still so (no other worker seen within
    `fresh` seconds) comes back with the claim.

    `lean`: the queue's only limit is max_running (sql.CLAIM_MAX_RUNNING, which claims
    nothing if that is no longer so)."""
    if limit <= 0 and not finish:
        return LimitedClaim([], False)
    params = {"queue": queue, "limit": max(0, limit), "worker_id": worker_id, "lease": lease}
    # Pipelined: FINISH, the turn and the claim go out together in one transaction and
    # their results come back in one round trip (the claim still starts only once the
    # turn is held, and sees the FINISH: an earlier statement of its own transaction).
    with (
        translate_errors(),
        conn.cursor(row_factory=tuple_row) as cur,
        conn.cursor(row_factory=dict_row) as fcur,
        conn.cursor(row_factory=tuple_row) as acur,
    ):
        with conn.pipeline(), _transaction(conn):
            if finish:
                fcur.execute(
                    sql.FINISH,
                    {"outcomes": outcomes_json(finish), "worker_id": worker_id, "plain": True},
                )
                acur.execute(
                    sql.STILL_ALONE, {"queue": queue, "worker_id": worker_id, "fresh": fresh}
                )
            cur.execute(sql.QUEUE_TURN, {"queue": queue})
            cur.execute(sql.CLAIM_MAX_RUNNING if lean else sql.CLAIM_LIMITED, params)
        rows = cur.fetchall()
        applied = fcur.fetchall() if finish else []
        alone = bool(acur.fetchone()[0]) if finish else True  # type: ignore[index]
    claimed = [
        Claimed(tid, q, kind, _decode(payload), attempts, max_attempts, waited, timeout, parents)
        for tid, q, kind, payload, attempts, max_attempts, waited, timeout, _, parents in rows
    ]
    done = {row["id"] for row in applied}
    return LimitedClaim(
        claimed,
        bool(rows) and rows[0][8] is not None and rows[0][8] <= 0,
        applied,
        [o for o in finish if o.lease.id not in done],
        alone,
    )


def rate_wait(conn: AnyConnection, queue: str) -> float | None:
    """Seconds until the queue's rate window may have room (None: no rate limit in use)."""
    rows = fetch(conn, sql.RATE_WAIT, {"queue": queue})
    wait = rows[0]["wait"] if rows else None
    return None if wait is None else max(0.0, float(wait))


def limits(
    conn: AnyConnection,
    *,
    queue: str | None = None,
    runnable: dict[str, int] | None = None,
    cap: int = 10_000,
    only_limited: bool = False,
) -> list[Limits]:
    """Every queue with a registry row (or just `queue`), with its limits and use.

    `held` counts runnable tasks a limit keeps queued: all of them (from `runnable`, the
    statistics' per-queue count) while max_running or the rate window is full, else those
    whose key is at max_running_per_key (up to `cap`).
    """
    params = {
        "queue": queue,
        "cap": cap,
        "count_runnable": runnable is None,
        "only_limited": only_limited,
    }
    rows = fetch(conn, sql.QUEUE_LIMITS, params)
    out = []
    for row in rows:
        rate = (
            RateLimit(count=row["rate_limit_count"], per_seconds=row["rate_limit_per_seconds"])
            if row["rate_limit_count"] is not None and row["rate_limit_per_seconds"] is not None
            else None
        )
        running = int(row["running"])
        starts = int(row["window_starts"])
        full = (row["max_running"] is not None and running >= row["max_running"]) or (
            rate is not None and starts >= rate.count
        )
        waiting = (runnable or {}).get(row["queue"], int(row["runnable"]))
        out.append(
            Limits(
                queue=row["queue"],
                max_running=row["max_running"],
                max_running_per_key=row["max_running_per_key"],
                rate_limit=rate,
                running=running,
                window_starts=starts,
                held=waiting if full else int(row["held_by_key"]),
                updated_at=row["updated_at"],
            )
        )
    return out


def no_limits(queue: str) -> Limits:
    """What a queue without a registry row has: no limits."""
    return Limits(
        queue=queue,
        max_running=None,
        max_running_per_key=None,
        rate_limit=None,
        running=0,
        window_starts=0,
        held=0,
    )
