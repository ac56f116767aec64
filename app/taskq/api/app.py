"""The Falcon application factory."""

from __future__ import annotations

import dataclasses
from typing import Any

import falcon

from taskq import db, metrics
from taskq.api import errors
from taskq.api.auth import BearerAuth
from taskq.api.dashboard import DashboardResource
from taskq.api.observability import RequestObserver
from taskq.api.openapi import OpenApiResource, build
from taskq.api.stats import StatsResource
from taskq.api.tasks import (
    BatchResource,
    CancelResource,
    RetryResource,
    TaskResource,
    TasksResource,
)
from taskq.handlers import Registry, default_registry
from taskq.health import LiveResource, MetricsResource, ReadyResource
from taskq.notifier import Notifier
from taskq.settings import Settings


@dataclasses.dataclass
class Deps:
    """What the API needs from the outside world; tests pass their own."""

    pool: Any
    registry: Registry = dataclasses.field(default_factory=lambda: default_registry)
    # Set when the pool's sessions leave waking the workers to the API (app/taskq/notifier.py);
    # None means the enqueue trigger notifies at commit, as for any other session.
    notifier: Notifier | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        default_registry.load_modules(settings.handler_modules)
        return cls(
            pool=db.create_pool(settings, name="api", notify_on_insert=False),
            registry=default_registry,
            notifier=Notifier(settings),
        )


def create_app(
    settings: Settings, deps: Deps | None = None
) -> falcon.App[falcon.Request, falcon.Response]:
    deps = deps or Deps.from_settings(settings)
    auth = BearerAuth.from_settings(settings)
    # The observer comes first so that refused requests get a request id and a log line.
    observer = RequestObserver(log_requests=settings.log_requests)
    middleware: list[Any] = [observer, *([auth] if auth else [])]
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)

    shared = (settings, deps.pool, deps.registry, deps.notifier)
    app.add_route("/tasks", TasksResource(*shared))
    app.add_route("/tasks/batch", BatchResource(*shared))
    app.add_route("/tasks/{task_id}", TaskResource(*shared))
    app.add_route("/tasks/{task_id}/cancel", CancelResource(*shared))
    app.add_route("/tasks/{task_id}/retry", RetryResource(*shared))
    app.add_route("/live", LiveResource())
    app.add_route("/ready", ReadyResource(lambda: {"database": db.ping(deps.pool)}))
    app.add_route("/metrics", MetricsResource([metrics.QueueCollector(deps.pool)]))
    app.add_route("/stats", StatsResource(deps.pool))
    app.add_route("/dashboard", DashboardResource())
    app.add_route("/openapi.json", OpenApiResource(lambda: build(app, settings)))
    metrics.track_pool(deps.pool, "api")
    return app
