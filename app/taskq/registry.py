"""The queue registry: queues as things users can list, pause and resume.

A queue exists for users when it has tasks, settings (a row in taskq_queues) or a worker
serving it (taskq_workers, renewed by each worker's `Presence` service). Pausing is a
stored setting: CLAIM skips paused queues, so every worker stops claiming from one at
its next claim; submits are still accepted and running tasks finish. Resuming notifies
the queue's workers, which claim at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskq import flow, sql, stats
from taskq import queue as q
from taskq.models import _iso, check_queue_name
from taskq.queue import AnyConnection

# A worker not seen for this long no longer counts as serving its queues (it renews its
# row every PRESENCE_INTERVAL seconds).
PRESENCE_INTERVAL = 5.0
PRESENCE_FRESH = 3 * PRESENCE_INTERVAL


COUNTED = (
    "runnable",
    "scheduled",
    "queued",
    "running",
    "blocked",
    "succeeded",
    "failed",
    "cancelled",
)


class QueueSettings(BaseModel):
    """A queue's settings as the settings file declares them; a setting left out is left
    as it is in the database."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    paused: bool | None = None
    # Flow control (taskq/flow.py); given as null, a limit is removed.
    max_running: int | None = Field(None, ge=1, le=flow.MAX_LIMIT)
    max_running_per_key: int | None = Field(None, ge=1, le=flow.MAX_LIMIT)
    rate_limit: flow.RateLimit | None = None

    def limits(self) -> flow.LimitsUpdate | None:
        """The flow-control limits the file gives (None: it gives none)."""
        given = self.model_fields_set & {"max_running", "max_running_per_key", "rate_limit"}
        if not given:
            return None
        return flow.LimitsUpdate.model_validate(
            {name: getattr(self, name) for name in given}, strict=False
        )


@dataclasses.dataclass(frozen=True, slots=True)
class QueueState:
    """A queue's stored settings (its taskq_queues row)."""

    name: str
    paused: bool
    paused_at: datetime | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paused": self.paused,
            "paused_at": _iso(self.paused_at),
            "source": self.source,
        }


def set_paused(conn: AnyConnection, name: str, paused: bool) -> QueueState:
    """Pause or resume a queue (creating its row); resuming wakes its workers at commit."""
    check_queue_name(name)
    with conn.transaction():
        row = q.fetch(conn, sql.SET_QUEUE_PAUSED, {"name": name, "paused": paused})[0]
        if not paused:
            q.notify(conn, [name])
    return QueueState(row["name"], row["paused"], row["paused_at"], row["source"])


def pause(conn: AnyConnection, name: str) -> QueueState:
    """Pause queue `name`: every worker stops claiming from it (stored; outlives restarts)."""
    return set_paused(conn, name, True)


def resume(conn: AnyConnection, name: str) -> QueueState:
    """Resume queue `name`; its workers are woken and claim at once."""
    return set_paused(conn, name, False)


def settings_rows(conn: AnyConnection) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in q.fetch(conn, sql.LIST_QUEUE_SETTINGS, {})}


def paused_queues(conn: AnyConnection) -> dict[str, bool]:
    """Every queue with settings, and whether it is paused (the taskq_queue_paused gauge)."""
    return {name: bool(row["paused"]) for name, row in settings_rows(conn).items()}


def workers_per_queue(conn: AnyConnection) -> dict[str, int]:
    rows = q.fetch(conn, sql.WORKERS_PER_QUEUE, {"fresh": PRESENCE_FRESH})
    return {row["queue"]: int(row["n"]) for row in rows}


class QueueEntry(BaseModel):
    """One queue of GET /queues and `taskq queue list`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    paused: bool
    paused_at: datetime | None
    source: str | None  # None: the queue has no settings row
    workers: int
    counts: dict[str, int]


def list_queues(conn: AnyConnection) -> list[QueueEntry]:
    """Every queue with tasks (queued, running, or finished in the last hour), settings or
    a worker: its counts by status (the bounded statistics of taskq.stats), whether it is
    paused, and how many workers serve it."""
    settings = settings_rows(conn)
    workers = workers_per_queue(conn)
    per_queue = {s.queue: s for s in stats.collect(conn).queues}
    out = []
    for name in sorted(set(settings) | set(workers) | set(per_queue)):
        row = settings.get(name)
        st = per_queue.get(name)
        counts = {key: int(getattr(st, key, 0) if st else 0) for key in COUNTED}
        out.append(
            QueueEntry(
                name=name,
                paused=bool(row and row["paused"]),
                paused_at=row["paused_at"] if row else None,
                source=row["source"] if row else None,
                workers=workers.get(name, 0),
                counts=counts,
            )
        )
    return out


def entry_json(entry: QueueEntry) -> dict[str, Any]:
    out: dict[str, Any] = entry.model_dump(mode="json")
    out["paused_at"] = _iso(entry.paused_at)
    return out


def apply_file_queues(conn: AnyConnection, queues: dict[str, QueueSettings]) -> list[str]:
    """Upsert the settings file's queues (source 'file') and delete the file's queue rows
    it no longer lists; returns the names deleted."""
    for name, settings in queues.items():
        q.fetch(conn, sql.UPSERT_FILE_QUEUE, {"name": name, "paused": settings.paused})
        limits = settings.limits()
        if limits is not None:
            flow.set_limits(conn, name, limits)
    deleted = [
        row["name"] for row in q.fetch(conn, sql.DELETE_FILE_QUEUES_EXCEPT, {"names": list(queues)})
    ]
    # Workers of a queue that may have been resumed claim at once.
    q.notify(conn, [name for name, s in queues.items() if not s.paused] + deleted)
    return deleted


def worker_seen(conn: AnyConnection, worker_id: str, queues: Sequence[str]) -> None:
    q.fetch(conn, sql.WORKER_SEEN, {"id": worker_id, "queues": list(queues)})


def worker_gone(conn: AnyConnection, worker_id: str) -> None:
    q.fetch(conn, sql.WORKER_GONE, {"id": worker_id})
