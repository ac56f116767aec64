"""The API's resources on an event loop (falcon.asgi).

falcon.asgi wants coroutine responders. The resources are written once, as plain
methods over the synchronous data layer; `on_loop` gives falcon.asgi an adapter whose
responders await them on a thread of `executor` (carrying the request's log context
along), so a query never blocks the loop. The API sizes that executor to its pool
(taskq/api/app.py): a process never has more queries in flight than pooled connections.
A request body is read on the loop first (at most the size limit plus one byte) and
handed to `read_body` through `req.context.body`. Responders named in `native` are
coroutines already and are served as they are (POST /tasks: app/taskq/api/ingest.py).
`blocking=False` serves quick responders that touch nothing outside the process (/live,
the dashboard page) on the loop itself, so they answer even while every thread waits
on a hung database.

The same resource objects serve the worker's WSGI probe server (taskq/health.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import falcon

from taskq.api.body import read_at_most_async

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})

Responder = Callable[..., Any]
AsyncResponder = Callable[..., Awaitable[None]]


def on_loop(
    resource: object,
    *,
    max_body_bytes: int,
    blocking: bool = True,
    native: dict[str, AsyncResponder] | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> object:
    """An object with a coroutine for each `on_*` responder of `resource` (run on
    `executor`, the loop's default one when None)."""
    adapter = _Adapter(resource)
    for name in dir(resource):
        if not name.startswith("on_"):
            continue
        if native and name in native:
            setattr(adapter, name, native[name])
            continue
        method = getattr(resource, name)
        if callable(method):
            setattr(adapter, name, _wrap(method, name, max_body_bytes, blocking, executor))
    return adapter


class _Adapter:
    def __init__(self, resource: object) -> None:
        self.resource = resource  # what the adapter serves (inspection, tests)


def _wrap(
    method: Responder,
    name: str,
    max_body_bytes: int,
    blocking: bool,
    executor: concurrent.futures.Executor | None,
) -> AsyncResponder:
    http_method = name[3:].split("_", 1)[0].upper()
    with_body = http_method in _WITH_BODY

    @functools.wraps(method)
    async def responder(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        if with_body:
            await prefetch_body(req, max_body_bytes)
        if blocking:
            call = functools.partial(contextvars.copy_context().run, method, req, resp, **params)
            await asyncio.get_running_loop().run_in_executor(executor, call)
        else:
            method(req, resp, **params)

    return responder


async def prefetch_body(req: falcon.Request, max_bytes: int) -> None:
    """Read the body into req.context.body for read_body, unless its declared length is
    over the limit (read_body answers 413 without reading) or it is not JSON (415)."""
    length = req.content_length
    if length is not None and length > max_bytes:
        return
    if not (req.content_type or "").lower().startswith("application/json"):
        return
    req.context.body = await read_at_most_async(req, max_bytes + 1)
