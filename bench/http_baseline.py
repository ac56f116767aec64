"""The HTTP ceiling of taskq's own stack: POST /tasks without the database.

Same gunicorn settings (taskq.server.GunicornServer, 4 sync workers: the API's stack and
process count before it moved to an event loop, whatever TASKQ_API_WORKERS is now), same
Falcon app options and error handling, same body reading and TaskSpec validation, and a
response of the same shape (Task.to_json of a task built in memory). The only thing
missing is the INSERT, so taskq's ingest rate divided by this one is the share of the
stack's HTTP capacity the database round trip leaves.

    python -m bench.http_baseline --bind 127.0.0.1:8090
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.asgi
from taskq.api import errors
from taskq.api.asgi import on_loop
from taskq.api.body import parse, read_body
from taskq.health import LiveResource
from taskq.models import Task, TaskSpec, new_task_id
from taskq.server import GunicornServer
from taskq.settings import Settings, load_settings

# The sync stack's process count as it shipped (the default of TASKQ_API_WORKERS then).
SYNC_WORKERS = 4


class BaselineTasks:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = parse(TaskSpec, read_body(req, self.settings.api_max_body_bytes))
        now = datetime.now(UTC)
        task = Task.inserted(  # the object POST /tasks builds after its INSERT
            spec,
            id=new_task_id(),
            run_at=now,
            created_at=now,
            max_attempts=spec.max_attempts or self.settings.default_max_attempts,
        )
        resp.status = falcon.HTTP_201
        resp.location = f"/tasks/{task.id}"
        resp.media = task.to_json()


def create_app(settings: Settings, *, asgi: bool = False) -> falcon.App[Any, Any]:
    app: falcon.App[Any, Any] = (
        falcon.asgi.App(media_type=falcon.MEDIA_JSON)
        if asgi
        else falcon.App(media_type=falcon.MEDIA_JSON)
    )
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)
    tasks: object = BaselineTasks(settings)
    live: object = LiveResource()
    if asgi:
        size = settings.api_max_body_bytes
        tasks, live = (on_loop(r, max_body_bytes=size, blocking=False) for r in (tasks, live))
    app.add_route("/tasks", tasks)
    app.add_route("/live", live)
    return app


class BaselineServer(GunicornServer):
    def load(self) -> Any:
        return create_app(self._settings, asgi=self._design == "asgi")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    # Sync workers by default, the stack before the API moved to ASGI: the ceiling stays
    # comparable across releases, whatever design the API itself runs on. "asgi" gives
    # the ceiling of the API's own stack (uvicorn workers), for the profile notes.
    parser.add_argument("--design", choices=("sync", "asgi"), default="sync")
    parser.add_argument("--workers", type=int, default=SYNC_WORKERS)
    args = parser.parse_args()
    BaselineServer(load_settings(), bind=args.bind, workers=args.workers, design=args.design).run()


if __name__ == "__main__":
    main()
