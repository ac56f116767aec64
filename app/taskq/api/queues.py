"""The queue registry over HTTP: GET /queues, POST /queues/{name}/pause and /resume, and
GET/PUT /queues/{name}: a queue's flow-control limits (a field left out of PUT keeps its
value, `null` removes that limit) and their use now (running tasks, starts in the rate
window, runnable tasks held back by a limit)."""

from __future__ import annotations

from typing import Any

import falcon

from taskq import flow, registry
from taskq.api.body import parse, read_body
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


def _name(name: str) -> str:
    try:
        return check_queue_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="name") from None


def limits_json(limits: flow.Limits) -> dict[str, Any]:
    body: dict[str, Any] = limits.model_dump(mode="json")
    if body.get("updated_at"):
        body["updated_at"] = body["updated_at"].replace("+00:00", "Z")
    return body


class QueueLimitsResource:
    """/queues/{name}: GET the queue's flow-control limits and their use; PUT changes them."""

    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.settings = settings
        self.pool = deps.pool

    def _read(self, conn: Any, name: str) -> flow.Limits:
        found = flow.limits(conn, queue=name)
        return found[0] if found else flow.no_limits(name)

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = _name(name)
        with pooled(self.pool) as conn:
            resp.media = limits_json(self._read(conn, name))
        resp.cache_control = ["no-store"]

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = _name(name)
        update = parse(flow.LimitsUpdate, read_body(req, self.settings.api_max_body_bytes))
        with pooled(self.pool) as conn:
            with conn.transaction():
                flow.set_limits(conn, name, update)
            resp.media = limits_json(self._read(conn, name))
