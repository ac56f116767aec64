"""Handlers: the registry of task kinds and the built-in ones.

A handler is a plain function taking the task's payload (a dict) and returning a JSON
value, which becomes the task's result. Raising an exception retries the task with
backoff; raising NonRetryableError fails it at once. Functions that need to know which
task they run ask for the context with `takes_context=True`.

Users register their own kinds in a module named by TASKQ_HANDLER_MODULES:

    from taskq.handlers import handler

    @handler("send_email")
    def send_email(payload):
        ...
        return {"sent": True}
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from taskq.errors import NonRetryableError, UnknownKind


@dataclasses.dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may know about the task it runs."""

    id: uuid.UUID
    kind: str
    queue: str
    attempt: int
    max_attempts: int
    # Set when the worker is shutting down; long handlers may check it and return early.
    stopping: threading.Event


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    kind: str
    fn: Callable[..., Any]
    takes_context: bool = False


class Registry:
    """kind -> handler. One per process; `default_registry` is the one the CLI uses."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, fn: Callable[..., Any], *, takes_context: bool = False) -> None:
        with self._lock:
            self._handlers[kind] = Handler(kind, fn, takes_context)

    def handler(
        self, kind: str, *, takes_context: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of `register`."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(kind, fn, takes_context=takes_context)
            return fn

        return decorate

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownKind(f"unknown kind {kind!r}", field="kind") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import user modules; their @handler decorators register into this registry."""
        for name in modules:
            importlib.import_module(name)


default_registry = Registry()
handler = default_registry.handler
register = default_registry.register


def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Result = payload. The smoke test of a deployment."""
    return payload


def _sleep(payload: dict[str, Any]) -> dict[str, float]:
    """Sleep `seconds` (default 1): a stand-in for slow work in demos and drills."""
    seconds = payload.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise NonRetryableError("payload.seconds must be a non-negative number")
    started = time.monotonic()
    time.sleep(seconds)
    return {"slept": round(time.monotonic() - started, 3)}


def _fail(payload: dict[str, Any]) -> None:
    """Always raises: `{"retryable": false}` fails at once, otherwise retries until exhausted."""
    message = str(payload.get("message", "task failed as requested"))
    if payload.get("retryable", True) is False:
        raise NonRetryableError(message)
    raise RuntimeError(message)


def register_builtins(registry: Registry) -> None:
    registry.register("echo", _echo)
    registry.register("sleep", _sleep)
    registry.register("fail", _fail)


register_builtins(default_registry)
