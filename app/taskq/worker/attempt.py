"""One attempt: run a task's handler and turn what happens into an outcome to record.

Handler errors are retryable failures by contract (with backoff); NonRetryableError,
an unknown kind and a result that is not storable JSON fail the task at once.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from typing import Any

from taskq import backoff
from taskq.errors import NonRetryableError, UnknownKind
from taskq.handlers import Registry, TaskContext
from taskq.queue import Claimed, Finish
from taskq.settings import Settings

log = logging.getLogger(__name__)

# Handler results as stored: compact, and NaN/Infinity refused (jsonb cannot hold them).
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def backoff_delay(attempt: int, settings: Settings) -> float:
    """The delay before a task's next attempt after attempt number `attempt` failed."""
    return backoff.exponential(
        attempt, settings.retry_backoff_base, settings.retry_backoff_max, settings.retry_jitter
    )


def run_attempt(
    task: Claimed, registry: Registry, settings: Settings, stopping: threading.Event
) -> Finish:
    lease = task.lease
    try:
        handler = registry.get(task.kind)
    except UnknownKind:
        return Finish(lease, "failed", error=f"no handler for kind {task.kind!r}")
    try:
        result: Any
        if handler.takes_context:
            ctx = TaskContext(
                task.id, task.kind, task.queue, task.attempts, task.max_attempts, stopping
            )
            result = handler.fn(task.payload, ctx)
        else:
            result = handler.fn(task.payload)
    except NonRetryableError as exc:
        return Finish(lease, "failed", error=describe(exc))
    except Exception as exc:  # any handler error is a retryable failure by contract
        log.warning(
            "task %s (%s) attempt %d/%d raised %s",
            task.id,
            task.kind,
            task.attempts,
            task.max_attempts,
            type(exc).__name__,
        )
        # Frames only: the exception's text may quote the payload (it is kept in the
        # task's last_error, which only API clients read).
        log.debug(
            "task %s traceback (message withheld):\n%s%s",
            task.id,
            "".join(traceback.format_tb(exc.__traceback__)),
            type(exc).__name__,
        )
        return Finish(
            lease, "retry", error=describe(exc), retry_delay=backoff_delay(task.attempts, settings)
        )
    try:
        encoded = _RESULT_ENCODER.encode(result)
    except (TypeError, ValueError) as exc:  # a handler bug: retrying cannot help
        return Finish(lease, "failed", error=f"result is not JSON: {exc}")
    if "\\u0000" in encoded:
        return Finish(lease, "failed", error="result contains a NUL character")
    return Finish(lease, "succeeded", result_json=encoded)


def describe(exc: BaseException) -> str:
    """The error kept in last_error: type and message, in text PostgreSQL can store (a NUL
    or a lone surrogate would make it refuse the whole batch of outcomes)."""
    text = f"{type(exc).__name__}: {exc}"[:4000]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
