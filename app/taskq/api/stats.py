"""GET /stats: the statistics of taskq.stats as one JSON document.

The answer is cached for CACHE_SECONDS per API process, so any number of open dashboards
cost the database one refresh per process every couple of seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import falcon

from taskq import metrics, stats
from taskq.db import pooled

CACHE_SECONDS = 2.0


class StatsResource:
    """/stats: queues, throughput and recent failures (cached CACHE_SECONDS)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_SECONDS:
                with pooled(self.pool) as conn:
                    collected = stats.collect(conn)
                metrics.know_queues(q.queue for q in collected.queues if q.served)
                self._cached = (time.monotonic(), stats.to_json(collected))
            body = self._cached[1]
        resp.media = body
        resp.cache_control = ["no-store"]
