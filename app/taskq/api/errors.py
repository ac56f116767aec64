"""One JSON error shape for every failure, and the one place domain errors become HTTP.

    {"error": {"status": 422, "code": "invalid_field", "message": "...", "field": "payload",
               "details": [{"field": "...", "message": "..."}]}}

`field` and `details` appear only when they say something. No stack trace ever reaches a
client: unexpected exceptions are logged with their type and traceback frames and answered
with a 500 that names the request, nothing more. Their messages are withheld from the log:
a database error's text quotes the row it refused ("Failing row contains (...)"), payload
included.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import falcon
import falcon.asgi

from taskq.errors import (
    DatabaseUnavailable,
    InvalidInput,
    InvalidTransition,
    SchemaOutdated,
    TaskNotFound,
    TaskqError,
)

log = logging.getLogger(__name__)

# Domain error -> (HTTP status, extra headers). The only mapping in the code base.
STATUS_BY_ERROR: list[tuple[type[TaskqError], str, dict[str, str]]] = [
    (InvalidInput, falcon.HTTP_422, {}),
    (TaskNotFound, falcon.HTTP_404, {}),
    (InvalidTransition, falcon.HTTP_409, {}),
    (DatabaseUnavailable, falcon.HTTP_503, {"Retry-After": "1"}),
    (SchemaOutdated, falcon.HTTP_503, {"Retry-After": "5"}),
]


class ApiError(falcon.HTTPError):
    """An HTTPError that carries our code, field and details into the JSON body."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        code: str,
        field: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=message, headers=headers)
        self.error_code = code
        self.field = field
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status_code,
            "code": self.error_code,
            "message": self.title,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return {"error": body}


# The `code` of an error Falcon raised itself (routing, headers), by HTTP status.
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    431: "headers_too_large",
    503: "unavailable",
}


def _code_for(error: falcon.HTTPError) -> str:
    return CODE_BY_STATUS.get(error.status_code, "error")


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon's error serializer: always JSON, whatever the client's Accept header says."""
    if isinstance(error, ApiError):
        body = error.body()
    else:
        message = error.title or "error"
        if error.description:
            message = f"{message}: {error.description}"
        body = {
            "error": {"status": error.status_code, "code": _code_for(error), "message": message}
        }
    resp.media = body
    resp.content_type = falcon.MEDIA_JSON


def handle_domain_error(
    req: falcon.Request, resp: falcon.Response, error: TaskqError, params: dict[str, Any]
) -> None:
    for cls, status, headers in STATUS_BY_ERROR:
        if isinstance(error, cls):
            raise ApiError(
                status, error.message, code=error.code, field=error.field, headers=headers or None
            )
    raise ApiError(falcon.HTTP_400, error.message, code=error.code, field=error.field)


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]
) -> None:
    if isinstance(error, falcon.HTTPError):  # Falcon's own errors keep their status
        raise error
    log.error(
        "unhandled error on %s %s: %s (message withheld)\n%s",
        req.method,
        req.path,
        _qualified_name(error),
        _frames_only(error),
    )
    raise ApiError(
        falcon.HTTP_500, "internal error; the server log has the details", code="internal_error"
    )


def _qualified_name(error: BaseException) -> str:
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _frames_only(error: BaseException) -> str:
    """The traceback of `error` and of the exceptions it was raised from or while handling,
    as frames and exception types: no exception's message, which may quote user data."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{_qualified_name(current)}")
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return "\n\nwhich was raised from or while handling:\n\n".join(parts)


async def _handle_domain_error_async(
    req: falcon.Request, resp: falcon.Response, error: TaskqError, params: dict[str, Any]
) -> None:
    handle_domain_error(req, resp, error, params)


async def _handle_unexpected_async(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]
) -> None:
    handle_unexpected(req, resp, error, params)


def register(app: falcon.App[Any, Any]) -> None:
    """The error serializer and handlers, as coroutines on falcon.asgi (which wants them)."""
    app.set_error_serializer(serialize_error)
    if isinstance(app, falcon.asgi.App):
        app.add_error_handler(Exception, _handle_unexpected_async)
        app.add_error_handler(TaskqError, _handle_domain_error_async)
    else:
        app.add_error_handler(Exception, handle_unexpected)
        app.add_error_handler(TaskqError, handle_domain_error)
