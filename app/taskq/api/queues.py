"""The queue registry over HTTP: GET /queues, POST /queues/{name}/pause and /resume."""

from __future__ import annotations

import falcon

from taskq import registry
from taskq.api.deps import Deps
from taskq.db import pooled
from taskq.errors import InvalidInput
from taskq.models import check_queue_name
from taskq.settings import Settings


class QueuesResource:
    """/queues: every queue with tasks, settings or a worker."""

    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.pool = deps.pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with pooled(self.pool) as conn:
            entries = registry.list_queues(conn)
        resp.media = {"queues": [registry.entry_json(e) for e in entries]}
        resp.cache_control = ["no-store"]


class QueueResource:
    """/queues/{name}/pause and /resume: stored, so a pause outlives every restart."""

    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.pool = deps.pool

    def _set(self, resp: falcon.Response, name: str, paused: bool) -> None:
        try:
            check_queue_name(name)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="name") from None
        with pooled(self.pool) as conn:
            resp.media = registry.set_paused(conn, name, paused).to_json()

    def on_post_pause(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._set(resp, name, True)

    def on_post_resume(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._set(resp, name, False)
