"""One attempt: run a task's handler and turn what happens into an outcome to record.

Handler errors are retryable failures by contract (with backoff); NonRetryableError,
an unknown kind, a payload its model refuses and a result that is not storable JSON fail
the task at once. Snooze queues it again without using an attempt; RetryLater retries it
after the handler's own delay. An attempt stopped by its Control ends as a timeout (a
retryable failure unless the kind says otherwise) or as cancelled, whatever the handler
did after it was stopped.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskq import backoff
from taskq.errors import NonRetryableError, RetryLater, Snooze, UnknownKind
from taskq.handlers import Handler, Registry, TaskContext
from taskq.queue import Claimed, Finish
from taskq.settings import Settings
from taskq.validation import problems

if TYPE_CHECKING:
    from taskq.worker.control import Control

log = logging.getLogger(__name__)

# Handler results as stored: compact, and NaN/Infinity refused (jsonb cannot hold them).
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def backoff_delay(
    attempt: int, settings: Settings, policy: tuple[float, float] | None = None
) -> float:
    """The delay before a task's next attempt after attempt number `attempt` failed; a
    kind's own (base, cap) replaces the settings' when given."""
    base, cap = policy or (settings.retry_backoff_base, settings.retry_backoff_max)
    return backoff.exponential(attempt, base, cap, settings.retry_jitter)


def timeout_of(task: Claimed, registry: Registry) -> float | None:
    """The attempt's time limit: the task's own, else its kind's, else none."""
    if task.timeout_seconds is not None:
        return task.timeout_seconds
    try:
        return registry.get(task.kind).timeout
    except UnknownKind:
        return None


def stopped_outcome(
    task: Claimed, registry: Registry, settings: Settings, control: Control
) -> Finish:
    """The outcome of an attempt its Control stopped (control.reason is set)."""
    lease = task.lease
    if control.reason == "cancel":
        return Finish(lease, "cancelled", error="cancelled while running")
    error = f"timed out after {control.timeout or 0:g} s"
    try:
        handler: Handler | None = registry.get(task.kind)
    except UnknownKind:
        handler = None
    if handler is not None and not handler.retry_on_timeout:
        return Finish(lease, "failed", error=error)
    policy = handler.backoff if handler is not None else None
    return Finish(
        lease, "retry", error=error, retry_delay=backoff_delay(task.attempts, settings, policy)
    )


def run_attempt(
    task: Claimed,
    registry: Registry,
    settings: Settings,
    stopping: threading.Event,
    control: Control | None = None,
) -> Finish:
    """Run the handler once; with a `control`, a stop overrides whatever it returned."""
    outcome = _run(task, registry, settings, stopping, control)
    if control is not None and control.reason is not None:
        return stopped_outcome(task, registry, settings, control)
    return outcome


def _run(
    task: Claimed,
    registry: Registry,
    settings: Settings,
    stopping: threading.Event,
    control: Control | None,
) -> Finish:
    lease = task.lease
    try:
        handler = registry.get(task.kind)
    except UnknownKind:
        return _failed(task, f"no handler for kind {task.kind!r}")
    try:
        argument = handler.parse_payload(task.payload)
    except ValidationError as exc:  # stored before the kind had its model, or changed since
        found = problems(exc)[0]
        where = f"payload.{found.field}" if found.field else "payload"
        return Finish(lease, "failed", error=f"invalid payload: {where}: {found.message}")
    try:
        result: Any
        if handler.takes_context:
            ctx = TaskContext(
                task.id,
                task.kind,
                task.queue,
                task.attempts,
                task.max_attempts,
                stopping,
                control.cancelled if control is not None else threading.Event(),
                task.parent_results or {},
            )
            result = handler.fn(argument, ctx)
        else:
            result = handler.fn(argument)
    except Snooze as exc:
        return Finish(lease, "snooze", retry_delay=exc.seconds)
    except RetryLater as exc:
        return Finish(lease, "retry", error=describe(exc), retry_delay=exc.seconds)
    except NonRetryableError as exc:
        return _failed(task, describe(exc), logged=type(exc).__name__)
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
        delay = backoff_delay(task.attempts, settings, handler.backoff)
        if task.attempts >= task.max_attempts:  # the database records this one as failed
            _log_failed(task, type(exc).__name__, "attempts used up")
        return Finish(lease, "retry", error=describe(exc), retry_delay=delay)
    try:
        encoded = _RESULT_ENCODER.encode(result)
    except (TypeError, ValueError) as exc:  # a handler bug: retrying cannot help
        return _failed(task, f"result is not JSON: {exc}")
    if "\\u0000" in encoded:
        return _failed(task, "result contains a NUL character")
    return Finish(lease, "succeeded", result_json=encoded)


def _failed(task: Claimed, error: str, *, logged: str | None = None) -> Finish:
    _log_failed(task, error if logged is None else logged, "not retryable")
    return Finish(task.lease, "failed", error=error)


def _log_failed(task: Claimed, error: str, why: str) -> None:
    """A task that will not run again is worth a WARNING: an operator sees which task, of
    which kind, and why. A handler's exception is named by its type only (its message may
    quote the payload; the task's last_error keeps it); taskq's own reasons in full."""
    log.warning(
        "task %s (%s) failed for good after attempt %d/%d (%s): %s",
        task.id,
        task.kind,
        task.attempts,
        task.max_attempts,
        why,
        error[:500],
    )


def describe(exc: BaseException) -> str:
    """The error kept in last_error: type and message, in text PostgreSQL can store (a NUL
    or a lone surrogate would make it refuse the whole batch of outcomes)."""
    text = f"{type(exc).__name__}: {exc}"[:4000]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
