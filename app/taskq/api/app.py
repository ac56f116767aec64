"""The Falcon application factory."""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import falcon
import falcon.asgi
import orjson

from taskq import db, metrics
from taskq.api import errors
from taskq.api.asgi import AsyncResponder, on_loop
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


def _dumps(media: Any) -> bytes:
    """Response bodies through orjson (a tenth of json.dumps's time on a task), or
    json.dumps for what orjson refuses (an integer beyond 64 bits in a payload)."""
    try:
        return orjson.dumps(media)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(media, ensure_ascii=False).encode()


def create_app(
    settings: Settings,
    deps: Deps | None = None,
    *,
    asgi: bool = True,
    group_commit: bool | None = None,
) -> falcon.App[Any, Any]:
    """The API as served by `taskq api`: a falcon.asgi app, concurrent submissions of a
    process written in one commit (taskq/api/ingest.py). `asgi=False` builds the same API
    as a WSGI app (sync or threaded servers, embedding); `group_commit` defaults to on for
    ASGI and off for WSGI, where a sync worker holds one request at a time."""
    deps = deps or Deps.from_settings(settings)
    if group_commit is None:
        group_commit = asgi
    auth = BearerAuth.from_settings(settings)
    # The observer comes first so that refused requests get a request id and a log line.
    observer = RequestObserver(log_requests=settings.log_requests)
    middleware: list[Any] = [observer, *([auth] if auth else [])]
    app: falcon.App[Any, Any]
    if asgi:
        app = falcon.asgi.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    else:
        app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=_dumps)
    errors.register(app)

    # Threads for the resources' queries: with the ingest thread's connection, no more
    # than the pool holds (a sync worker likewise never used more than one at a time).
    executor = (
        concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.db_pool_max - 1), thread_name_prefix="api"
        )
        if asgi
        else None
    )

    def route(
        path: str,
        resource: object,
        *,
        suffix: str | None = None,
        blocking: bool = True,
        native: dict[str, AsyncResponder] | None = None,
    ) -> None:
        if asgi:
            resource = on_loop(
                resource,
                max_body_bytes=settings.api_max_body_bytes,
                blocking=blocking,
                native=native,
                executor=executor,
            )
        app.add_route(path, resource, suffix=suffix)

    tasks = TasksResource(settings, deps, group_commit=group_commit)
    route("/tasks", tasks, native={"on_post": tasks.on_post_async})
    route("/tasks/batch", BatchResource(settings, deps))
    task = TaskResource(settings, deps)
    route("/tasks/{task_id:uuid}", task)
    route("/tasks/{task_id:uuid}/cancel", task, suffix="cancel")
    route("/tasks/{task_id:uuid}/retry", task, suffix="retry")
    route("/batches/{batch_id:uuid}", BatchStatusResource(settings, deps))
    route("/schedules", SchedulesResource(settings, deps))
    schedule = ScheduleResource(settings, deps)
    route("/schedules/{name}", schedule)
    route("/schedules/{name}/enable", schedule, suffix="enable")
    route("/schedules/{name}/disable", schedule, suffix="disable")
    route("/queues", QueuesResource(settings, deps))
    queue_resource = QueueResource(settings, deps)
    route("/queues/{name}/pause", queue_resource, suffix="pause")
    route("/queues/{name}/resume", queue_resource, suffix="resume")
    route("/queues/{name}", QueueLimitsResource(settings, deps))
    route("/live", LiveResource(), blocking=False)
    route("/ready", ReadyResource(lambda: {"database": db.ping(deps.pool)}))
    route("/metrics", MetricsResource([metrics.QueueCollector(deps.pool)]))
    route("/stats", StatsResource(deps.pool))
    route("/dashboard", DashboardResource(), blocking=False)
    route(
        "/openapi.json",
        OpenApiResource(
            lambda: build(
                app, settings, deps.registry.payload_models(), kinds=deps.registry.kinds()
            )
        ),
        blocking=False,
    )
    metrics.track_pool(deps.pool, "api")
    metrics.know_queues(settings.worker_queues)
    return app
