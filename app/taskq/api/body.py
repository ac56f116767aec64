"""Reading request bodies: content type, size limit, strict JSON, and field errors.

Bodies are parsed and validated in one pass by pydantic's JSON parser, which rejects
invalid UTF-8, unpaired surrogates and absurd nesting as malformed JSON (400); a body
that parses but has a wrong field is a 422 naming the field.
"""

from __future__ import annotations

from typing import Any, TypeVar

import falcon
from pydantic import BaseModel, ValidationError

from taskq.api.errors import ApiError
from taskq.validation import problems

M = TypeVar("M", bound=BaseModel)


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    _check_head(req, max_bytes)
    prefetched = req.context.get("body")
    if prefetched is not None:  # read from the event loop already (taskq/api/asgi.py)
        body: bytes = prefetched
    else:
        try:
            body = _read_at_most(_body_stream(req), max_bytes + 1)
        except Exception:  # the server refused the body's framing (bad chunking) or lost the client
            raise _bad_framing() from None
    return _checked(body, max_bytes)


async def read_body_async(req: falcon.Request, max_bytes: int) -> bytes:
    """read_body for falcon.asgi requests: the same checks, the body read without
    blocking the event loop."""
    _check_head(req, max_bytes)
    prefetched = req.context.get("body")
    return _checked(
        prefetched if prefetched is not None else await read_at_most_async(req, max_bytes + 1),
        max_bytes,
    )


async def read_at_most_async(req: falcon.Request, limit: int) -> bytes:
    """Up to `limit` bytes of a falcon.asgi request's body (which the server de-chunks)."""
    stream: Any = req.stream
    parts: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            part = await stream.read(remaining)
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
    except Exception:  # the client went away mid-body
        raise _bad_framing() from None
    return b"".join(parts)


def _check_head(req: falcon.Request, max_bytes: int) -> None:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(
            falcon.HTTP_415,
            "send the body as application/json",
            code="unsupported_media_type",
            field="content-type",
        )
    length = req.content_length
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)


def _checked(body: bytes, max_bytes: int) -> bytes:
    if len(body) > max_bytes:  # chunked bodies have no Content-Length to check up front
        raise _too_large(max_bytes)
    if not body.strip():
        raise ApiError(
            falcon.HTTP_400, "request body is empty; send a JSON object", code="malformed_json"
        )
    return body


def _bad_framing() -> ApiError:
    return ApiError(falcon.HTTP_400, "malformed request body framing", code="malformed_body")


def _body_stream(req: falcon.Request) -> Any:
    """The stream holding the body.

    Falcon's bounded_stream trusts Content-Length alone and reads nothing without it, so a
    chunked body (no Content-Length) would look empty. The server de-chunks such a body
    and ends the raw stream where the body ends; read that, still at most the limit.
    """
    encoding = (req.get_header("Transfer-Encoding") or "").lower()
    if req.content_length is None and "chunked" in encoding:
        return req.stream
    return req.bounded_stream


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes; a short read is not the end, an empty one is."""
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _too_large(max_bytes: int) -> ApiError:
    # The rest of the body is never read, so the connection cannot carry another request:
    # it is closed with the answer instead of waiting out the keep-alive timeout.
    return ApiError(
        falcon.HTTP_413,
        f"request body is larger than {max_bytes} bytes",
        code="payload_too_large",
        headers={"Connection": "close"},
    )


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    found = problems(exc)
    if found[0].malformed:
        return ApiError(
            falcon.HTTP_400, f"malformed JSON: {found[0].message}", code="malformed_json"
        )
    details = [{"field": p.field or "body", "message": p.message} for p in found]
    first = details[0]
    return ApiError(
        falcon.HTTP_422,
        f"{first['field']}: {first['message']}",
        code="invalid_field",
        field=first["field"],
        details=details,
    )
