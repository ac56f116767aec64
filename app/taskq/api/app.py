"""The Falcon application factory."""

from __future__ import annotations

from typing import Any

import falcon

from taskq import db, metrics
from taskq.api import errors
from taskq.api.auth import BearerAuth
from taskq.api.dashboard import DashboardResource
from taskq.api.deps import Deps
from taskq.api.observability import RequestObserver
from taskq.api.openapi import OpenApiResource, build
from taskq.api.queues import QueueLimitsResource, QueueResource, QueuesResource
from taskq.api.schedules import ScheduleResource, SchedulesResource
from taskq.api.stats import StatsResource
from taskq.api.tasks import BatchResource, BatchStatusResource, TaskResource, TasksResource
from taskq.health import LiveResource, MetricsResource, ReadyResource
from taskq.settings import Settings


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

    app.add_route("/tasks", TasksResource(settings, deps))
    app.add_route("/tasks/batch", BatchResource(settings, deps))
    task = TaskResource(settings, deps)
    app.add_route("/tasks/{task_id:uuid}", task)
    app.add_route("/tasks/{task_id:uuid}/cancel", task, suffix="cancel")
    app.add_route("/tasks/{task_id:uuid}/retry", task, suffix="retry")
    app.add_route("/batches/{batch_id:uuid}", BatchStatusResource(settings, deps))
    app.add_route("/schedules", SchedulesResource(settings, deps))
    schedule = ScheduleResource(settings, deps)
    app.add_route("/schedules/{name}", schedule)
    app.add_route("/schedules/{name}/enable", schedule, suffix="enable")
    app.add_route("/schedules/{name}/disable", schedule, suffix="disable")
    app.add_route("/queues", QueuesResource(settings, deps))
    queue_resource = QueueResource(settings, deps)
    app.add_route("/queues/{name}/pause", queue_resource, suffix="pause")
    app.add_route("/queues/{name}/resume", queue_resource, suffix="resume")
    app.add_route("/queues/{name}", QueueLimitsResource(settings, deps))
    app.add_route("/live", LiveResource())
    app.add_route("/ready", ReadyResource(lambda: {"database": db.ping(deps.pool)}))
    app.add_route("/metrics", MetricsResource([metrics.QueueCollector(deps.pool)]))
    app.add_route("/stats", StatsResource(deps.pool))
    app.add_route("/dashboard", DashboardResource())
    app.add_route(
        "/openapi.json",
        OpenApiResource(
            lambda: build(
                app, settings, deps.registry.payload_models(), kinds=deps.registry.kinds()
            )
        ),
    )
    metrics.track_pool(deps.pool, "api")
    metrics.know_queues(settings.worker_queues)
    return app
