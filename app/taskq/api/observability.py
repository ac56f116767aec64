"""Request ids, access logs and HTTP metrics for every API request (Falcon middleware).

- X-Request-ID: a client's id is kept when it is a sane token (1-128 characters of
  letters, digits and ._:/+=@-), otherwise a fresh one is made; either way it is sent
  back on the response and attached to every log record of the request (app/taskq/logs.py).
- One access log line per request on `taskq.access`: method, path, route, status,
  duration, and the task id when the route names one. Never the query string, headers or
  body. Probe and scrape requests (/live, /ready, /metrics) log at DEBUG, and every
  request does with TASKQ_LOG_REQUESTS=false.
- taskq_http_requests_total and taskq_http_request_duration_seconds by route template
  (bounded label values, never raw paths), and pool gauges refreshed at most once a
  second per process (app/taskq/metrics.py).

It is the first middleware, so it also sees requests that later middleware refuses
(authentication).
"""

from __future__ import annotations

import functools
import logging
import re
import time

import falcon

from taskq import logs, metrics

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


@functools.cache
def public_template(template: str) -> str:
    """A route template as users and OpenAPI write it: `{task_id:uuid}` is `{task_id}`."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", template)


_QUIET = frozenset({"/live", "/ready", "/metrics"})

access_log = logging.getLogger("taskq.access")
_SHOWN = frozenset({"method", "path", "status", "duration_ms"})
_SHOWN_WITH_ROUTE = _SHOWN | {"route"}


class RequestObserver:
    def __init__(self, *, log_requests: bool = True) -> None:
        self._level = logging.INFO if log_requests else logging.DEBUG

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(REQUEST_ID_HEADER)
        request_id = given if given and _VALID_ID.fullmatch(given) else logs.new_request_id()
        req.context.request_id = request_id
        req.context.started = time.perf_counter()
        req.context.log_token = logs.bind_request_id(request_id)
        resp.set_header(REQUEST_ID_HEADER, request_id)

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        params: dict[str, object],
    ) -> None:
        if "task_id" in params:
            req.context.task_id = str(params["task_id"])[:64]

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        started = req.context.get("started")
        if started is None:  # an earlier middleware failed before ours ran
            return
        seconds = time.perf_counter() - started
        status = resp.status_code
        route = public_template(req.uri_template) if req.uri_template else "(unmatched)"
        resp.set_header(REQUEST_ID_HEADER, req.context.request_id)
        try:
            metrics.http_request(req.method, route, status, seconds)
            metrics.refresh(min_interval=1.0)
            level = logging.DEBUG if req.path in _QUIET else self._level
            if not access_log.isEnabledFor(level):
                return
            fields: dict[str, object] = {
                "method": req.method,
                "path": req.path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                # A text line leaves out the fields its message already shows.
                "_shown": _SHOWN_WITH_ROUTE if route == req.path else _SHOWN,
            }
            task_id = req.context.get("task_id")
            if task_id is None and status == 201 and isinstance(resp.media, dict):
                task_id = resp.media.get("id")
            if task_id is not None:
                fields["task_id"] = task_id
            access_log.log(
                level,
                "%s %s %d %.1f ms",
                req.method,
                req.path,
                status,
                seconds * 1000,
                extra=fields,
            )
        finally:
            logs.unbind_request_id(req.context.log_token)

    # falcon.asgi calls these: the same work, none of it waits on anything.
    async def process_request_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.process_request(req, resp)

    async def process_resource_async(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        params: dict[str, object],
    ) -> None:
        self.process_resource(req, resp, resource, params)

    async def process_response_async(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        self.process_response(req, resp, resource, req_succeeded)
