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


class UnknownKind(InvalidInput):
    """No handler is registered for the task's kind."""


class NonRetryableError(Exception):
    """Raised by a handler to fail the task at once, without further attempts."""
