"""app/taskq/workers.py: the queues live workers serve, as /stats shows them."""

from __future__ import annotations

from typing import Any

from taskq import queue, registry, stats, workers

from tests.helpers import wait_until
from tests.worker_helpers import running_worker


def test_the_freshness_window_is_the_registrys() -> None:
    assert workers.PRESENCE_FRESH == registry.PRESENCE_FRESH


def test_stats_mark_the_queues_no_live_worker_serves(make_settings: Any, conn: Any) -> None:
    queue.enqueue(conn, "echo", {}, queue="orphans", delay=3600)
    settings = make_settings()
    with running_worker(settings, queues=["default", "emails"]):
        wait_until(
            lambda: workers.served_queues(conn) == {"default", "emails"},
            what="the worker's presence",
        )
        served = {q.queue: q.served for q in stats.collect(conn).queues}
        assert served == {"default": True, "emails": True, "orphans": False}
    wait_until(lambda: workers.served_queues(conn) == set(), what="the worker to leave")
    assert {q.queue: q.served for q in stats.collect(conn).queues} == {"orphans": False}
