"""Maintenance services of every worker: the scheduler, the worker's presence, and the
settings file's watch.

Scheduler: enqueues the due slots of schedules (taskq/schedules.py). Every worker runs it;
the slot keys make concurrent runs harmless, so no leader is elected. It sleeps until the
earliest schedule is due by the database's clock, but never longer than a second, so a
schedule created or changed elsewhere is picked up within a second.

Presence: renews this worker's row in taskq_workers (the queues it serves), so GET /queues
lists queues that have a worker even while they have no task.

SettingsFileWatch: applies TASKQ_CONFIG_FILE again when its content changes (a ConfigMap
update reaches a mounted file without a restart). A bad new version is logged and
ignored: a running worker keeps the settings it has.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from taskq import db, metrics, registry, schedules, settings_file
from taskq.settings import Settings

log = logging.getLogger(__name__)

MAX_SLEEP = 1.0  # the scheduler looks at least this often
MIN_SLEEP = 0.01


class Scheduler:
    """Enqueues due schedule slots; its interval follows the next due slot."""

    name = "scheduler"
    first_delay = 0.0

    def __init__(self, pool: db.Pool, settings: Settings) -> None:
        self._pool = pool
        self._default_max_attempts = settings.default_max_attempts
        self.interval = MAX_SLEEP
        self.enqueued = 0  # slots this worker inserted (others' duplicates not counted)

    def run_once(self) -> None:
        self.interval = MAX_SLEEP  # if the database fails below, look again in a second
        with db.pooled(self._pool) as conn:
            done = schedules.enqueue_due(conn, default_max_attempts=self._default_max_attempts)
            due_in = schedules.next_due_in(conn)
        created = [d.task for d in done if d.created]
        self.enqueued += len(created)
        metrics.tasks_enqueued(created)
        for item in done:
            log.info(
                "schedule %s: slot %s %s task %s",
                item.schedule,
                item.slot.isoformat(),
                "enqueued" if item.created else "already had",
                item.task.id,
            )
        if due_in is not None:
            self.interval = min(MAX_SLEEP, max(MIN_SLEEP, due_in + 0.001))


class Presence:
    """Keeps this worker's taskq_workers row fresh; removes it when the worker stops."""

    name = "worker presence"
    first_delay = 0.0
    interval = registry.PRESENCE_INTERVAL

    def __init__(self, pool: db.Pool, worker_id: str, queues: Sequence[str]) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._queues = list(queues)

    def run_once(self) -> None:
        with db.pooled(self._pool) as conn:
            registry.worker_seen(conn, self._worker_id, self._queues)

    def gone(self) -> None:
        with db.pooled(self._pool) as conn:
            registry.worker_gone(conn, self._worker_id)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class SettingsFileWatch:
    """Re-applies the settings file when its content changes."""

    name = "settings file watch"
    interval = first_delay = 10.0

    def __init__(self, pool: db.Pool, path: Path, kinds: Callable[[], set[str]]) -> None:
        self._pool = pool
        self._path = path
        self._kinds = kinds
        self.applied_digest = _digest(path)  # the worker applied this version at start
        self.reapplied = 0

    def run_once(self) -> None:
        digest = _digest(self._path)
        if digest is None or digest == self.applied_digest:
            return
        try:
            loaded = settings_file.load(self._path)
            loaded.check_kinds(self._kinds())
        except settings_file.SettingsFileError as exc:
            log.error("settings file changed but cannot be used; keeping the current: %s", exc)
            self.applied_digest = digest  # report it once, not every interval
            return
        with db.pooled(self._pool) as conn:
            applied = settings_file.apply(conn, loaded)
        self.applied_digest = digest
        self.reapplied += 1
        log.info(
            "settings file %s changed and was applied: %d schedule(s) created, %d updated, "
            "%d deleted",
            self._path,
            len(applied.schedules_created),
            len(applied.schedules_updated),
            len(applied.schedules_deleted),
        )
