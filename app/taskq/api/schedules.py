"""Schedule resources: PUT/GET/DELETE /schedules/{name}, GET /schedules, enable/disable."""

from __future__ import annotations

import falcon

from taskq import schedules
from taskq.api.body import parse, read_body
from taskq.api.deps import Deps
from taskq.db import pooled
from taskq.errors import InvalidInput
from taskq.schedules import ScheduleSpec
from taskq.settings import Settings


def _name(name: str) -> str:
    try:
        return schedules.check_schedule_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="name") from None


class SchedulesResource:
    """/schedules: GET lists every schedule by name."""

    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.pool = deps.pool

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with pooled(self.pool) as conn:
            resp.media = {"schedules": [s.to_json() for s in schedules.list_all(conn)]}


class ScheduleResource:
    """/schedules/{name}: PUT creates (201) or replaces (200), GET reads, DELETE removes
    (204); POST /enable and /disable switch it without changing anything else."""

    def __init__(self, settings: Settings, deps: Deps) -> None:
        self.settings = settings
        self.pool = deps.pool
        self.registry = deps.registry

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        name = _name(name)
        spec = parse(ScheduleSpec, read_body(req, self.settings.api_max_body_bytes))
        schedules.check_kind(spec, set(self.registry.kinds()))
        with pooled(self.pool) as conn:
            created = schedules.put(conn, name, spec, source="api")
            resp.media = schedules.get(conn, name).to_json()
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.location = f"/schedules/{name}"

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with pooled(self.pool) as conn:
            resp.media = schedules.get(conn, name).to_json()

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with pooled(self.pool) as conn:
            schedules.delete(conn, name)
        resp.status = falcon.HTTP_204

    def on_post_enable(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with pooled(self.pool) as conn:
            resp.media = schedules.set_enabled(conn, name, True).to_json()

    def on_post_disable(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        with pooled(self.pool) as conn:
            resp.media = schedules.set_enabled(conn, name, False).to_json()
