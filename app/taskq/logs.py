"""Logging set-up: human-readable text for a terminal, one JSON object per line for
clusters (TASKQ_LOG_FORMAT), at TASKQ_LOG_LEVEL.

Context travels with the work: inside an API request every record carries the request
id (`request_context`, set by app/taskq/api/observability.py from X-Request-ID), and inside a
task attempt every record, the handler's own included, carries task_id, queue, kind and
attempt (`bind_task` in the worker, or a `task_context` block). Fields given with
`extra=` (durations, statuses) appear as JSON keys, or as key=value after the message in
text.

Log records never carry payloads, results or credentials; as a last line of defence the
formatters replace fields with such names by "[redacted]".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any

from taskq.settings import Settings

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# A record's own attributes come first in its __dict__, in a fixed order; `extra=` fields,
# the context filter's and the formatter's come after them.
_OWN = len(vars(logging.makeLogRecord({})))
# Field names that must never carry a value into a log line.
_SECRET_FIELDS = frozenset(
    {"payload", "result", "password", "passwd", "token", "authorization", "secret", "api_key"}
)

_request_id: ContextVar[str | None] = ContextVar("taskq_request_id", default=None)
_TaskFields = tuple[object, str, str, int]  # task_id, queue, kind, attempt
_TASK_KEYS = ("task_id", "queue", "kind", "attempt")
_task_fields: ContextVar[_TaskFields | None] = ContextVar("taskq_task_fields", default=None)


_id_source: tuple[str, Iterator[int]] | None = None


def _forget_id_source() -> None:
    global _id_source
    _id_source = None


# A forked child (a gunicorn worker) makes its own prefix: the parent's counter must not
# be continued in two processes. (Platforms without fork have nothing to forget.)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id_source)


def new_request_id() -> str:
    """A request id unique across processes and restarts: a random per-process prefix and
    a counter (no system call per request, unlike uuid4 or a pid check)."""
    global _id_source
    if _id_source is None:
        _id_source = (uuid.uuid4().hex[:16], itertools.count())
    return f"{_id_source[0]}{next(_id_source[1]):016x}"


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Every record logged inside carries `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Like request_context, for code that ends the request elsewhere (middleware)."""
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


@contextlib.contextmanager
def task_context(task_id: object, queue: str, kind: str, attempt: int) -> Iterator[None]:
    """Every record logged inside (by the worker or the handler) names the task attempt."""
    token = bind_task(task_id, queue, kind, attempt)
    try:
        yield
    finally:
        unbind_task(token)


def bind_task(task_id: object, queue: str, kind: str, attempt: int) -> Token[_TaskFields | None]:
    """Like task_context, without the context manager's overhead (the worker's hot path).
    The id is turned into text only when a record is actually logged."""
    return _task_fields.set((task_id, queue, kind, attempt))


def unbind_task(token: Token[_TaskFields | None]) -> None:
    _task_fields.reset(token)


class ContextFilter(logging.Filter):
    """Adds the request and task context to each record (explicit extras win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        fields = _task_fields.get()
        if fields:
            for key, value in zip(_TASK_KEYS, fields, strict=True):
                if not hasattr(record, key):
                    setattr(record, key, str(value) if key == "task_id" else value)
        return True


# What extras() does with each field name: _SKIP (a record attribute, or private), _KEEP,
# or _REDACT. Field names come from code, so the memo stays small; it is bounded anyway.
_SKIP, _KEEP, _REDACT = 0, 1, 2
_FIELD_RULE: dict[str, int] = {}


def _rule(key: str) -> int:
    if key in _RESERVED or key.startswith("_"):
        rule = _SKIP
    else:
        rule = _REDACT if key.lower() in _SECRET_FIELDS else _KEEP
    if len(_FIELD_RULE) < 1024:
        _FIELD_RULE[key] = rule
    return rule


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields (everything beyond the standard attributes)."""
    out: dict[str, Any] = {}
    rules = _FIELD_RULE
    for key, value in itertools.islice(vars(record).items(), _OWN, None):
        rule = rules.get(key)
        if rule is None:
            rule = _rule(key)
        if rule == _KEEP:
            out[key] = value
        elif rule == _REDACT:
            out[key] = "[redacted]"
    return out


# What must not reach a text log as is: C0/C1 control characters (a newline would start a
# forged line, ESC drives the terminal), Unicode line separators and bidi overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with control characters written as \\xNN / \\uNNNN, so a value taken from
    a client (a request path, an error message) stays inside its one log line."""
    if text.isascii() and text.isprintable():  # the common case, two C calls: nothing to do
        return text
    return _UNSAFE.sub(_escaped, text) if _UNSAFE.search(text) else text


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _text(value: object) -> str:
    """A field's value for a text line: numbers as they are, anything else escaped."""
    if type(value) is int or type(value) is float:
        return str(value)
    return escape(str(value))


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO    taskq.access: POST /tasks 201 3.1 ms task_id=… request_id=…`.

    Fields a record's message already shows (named in its `_shown` attribute, as the
    access line does) are not repeated after it; JSON lines carry every field."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._second = -1
        self._asctime = ""

    def format(self, record: logging.LogRecord) -> str:
        # The message is escaped on its own; only a traceback (formatted by us, from our
        # frames) may add lines below it.
        record.message = message = escape(record.getMessage())
        second = int(record.created)
        if second != self._second:  # the time has whole seconds: format it once per second
            self._asctime = self.formatTime(record, self.datefmt)
            self._second = second
        record.asctime = self._asctime
        # The format string above, written out: this runs for every access line.
        line = f"{self._asctime} {record.levelname:<7} {record.name}: {message}"
        shown = getattr(record, "_shown", ())
        parts = [
            f"{key}={_text(value)}" for key, value in extras(record).items() if key not in shown
        ]
        if parts:
            line += " " + " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure(settings: Settings) -> None:
    # No formatter here prints where a record was made (file, line, thread, process):
    # skip collecting it for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Library chatter below WARNING is noise for operators.
    for noisy in ("yoyo", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
