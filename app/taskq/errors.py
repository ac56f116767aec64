"""The domain's error hierarchy.

Everything the queue can refuse is a TaskqError; the API maps each class to one HTTP status
in one place (app/taskq/api/errors.py). psycopg errors never leak past app/taskq/db.py: they are
translated there into DatabaseUnavailable or InvalidInput.
"""

from __future__ import annotations


class TaskqError(Exception):
    """Base class: a refusal the caller can act on."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(TaskqError):
    """The request is well-formed JSON but a field is wrong (422)."""

    code = "invalid_field"


class TaskNotFound(TaskqError):
    """No task with that id (404); a malformed id is reported the same way."""

    code = "not_found"


class InvalidTransition(TaskqError):
    """The task's state forbids the operation, e.g. cancelling a running task (409)."""

    code = "conflict"


class DatabaseUnavailable(TaskqError):
    """PostgreSQL cannot be reached or the pool is exhausted (503, retry later)."""

    code = "database_unavailable"


class SchemaOutdated(TaskqError):
    """The database lacks a table or function this release needs: its migrations have not
    run yet (503: a rolling release applies them before long)."""

    code = "schema_outdated"


class DatabaseRefused(DatabaseUnavailable):
    """PostgreSQL (or DNS) refused the connection for a reason retrying cannot change:
    credentials, an unknown database or role, a host name that does not resolve. Start-up
    reports it at once instead of waiting for the database to come up."""


class HandlerModuleError(TaskqError):
    """A module named by TASKQ_HANDLER_MODULES cannot be imported."""

    code = "handler_module"


class UnknownKind(InvalidInput):
    """No handler is registered for the task's kind."""


class NonRetryableError(Exception):
    """Raised by a handler to fail the task at once, without further attempts."""


class Snooze(Exception):
    """Raised by a handler: run the task again in `seconds`, without using up an attempt
    (the task counts the snooze instead)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snoozed for {seconds:g} s")
        self.seconds = _delay(seconds)


class RetryLater(Exception):
    """Raised by a handler: this attempt failed; retry in `seconds` instead of the backoff
    (the attempt counts against max_attempts as any failure does)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry in {seconds:g} s")
        self.seconds = _delay(seconds)


class TaskCancelled(Exception):
    """Raised inside a handler by `TaskContext.check()` / `sleep()` once the attempt was
    cancelled or ran past its timeout: the handler should let it propagate."""


def _delay(seconds: float) -> float:
    value = float(seconds)
    if not 0 <= value <= 10 * 365 * 86_400:  # NaN fails this too
        raise ValueError("the delay must be between 0 seconds and 10 years")
    return value
