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

A kind may carry its own policy: `@handler("charge", max_attempts=3, backoff=(2, 60),
timeout=30, payload=Charge)`. With `payload=` a pydantic model, submissions are validated
against it (the API answers 422 naming the field) and the handler receives the model.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from taskq.errors import (
    HandlerModuleError,
    InvalidInput,
    NonRetryableError,
    TaskCancelled,
    UnknownKind,
)
from taskq.models import MAX_TIMEOUT_SECONDS, TaskSpec
from taskq.validation import problems


@dataclasses.dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may know about the task it runs, and how it learns to stop."""

    id: uuid.UUID
    kind: str
    queue: str
    attempt: int
    max_attempts: int
    # Set when the worker is shutting down; long handlers may check it and return early.
    stopping: threading.Event
    # Set when this attempt was cancelled or ran past its timeout: stop as soon as you can.
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    # The results of the tasks this one depends on, by parent id (as a string) and by the
    # parent's ref: {"fetch": {...}, "0190...": {...}}. Empty for a task without parents.
    parents: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Raise TaskCancelled if the attempt was cancelled or timed out."""
        if self.cancelled.is_set():
            raise TaskCancelled("the attempt was cancelled or ran past its timeout")

    def sleep(self, seconds: float) -> None:
        """Sleep like time.sleep, but wake and raise TaskCancelled on cancel or timeout."""
        if self.cancelled.wait(max(0.0, seconds)):
            self.check()


@dataclasses.dataclass(frozen=True, slots=True)
class Handler:
    """A kind's function and its policy (each None: the worker's settings apply)."""

    kind: str
    fn: Callable[..., Any]
    takes_context: bool = False
    max_attempts: int | None = None
    backoff: tuple[float, float] | None = None  # (first delay, cap) in seconds
    timeout: float | None = None  # seconds per attempt, unless the task sets its own
    retry_on_timeout: bool = True  # False: an attempt past its timeout fails the task
    payload: type[BaseModel] | None = None  # validated at submit; the handler receives it

    def parse_payload(self, payload: dict[str, Any]) -> Any:
        """What the handler is called with: the payload, or an instance of its model."""
        return payload if self.payload is None else self.payload.model_validate(payload)


def _check_policy(
    max_attempts: int | None,
    backoff: tuple[float, float] | None,
    timeout: float | None,
    payload: type[BaseModel] | None,
) -> None:
    if max_attempts is not None and not 1 <= max_attempts <= 1000:
        raise ValueError("max_attempts must be 1-1000")
    if backoff is not None and (len(backoff) != 2 or not 0 <= backoff[0] <= backoff[1]):
        raise ValueError("backoff is (first delay, cap) with 0 <= first delay <= cap")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT_SECONDS} s")
    if payload is not None and not (isinstance(payload, type) and issubclass(payload, BaseModel)):
        raise TypeError("payload= takes a pydantic model class")


class Registry:
    """kind -> handler. One per process; `default_registry` is the one the CLI uses."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def register(
        self,
        kind: str,
        fn: Callable[..., Any],
        *,
        takes_context: bool = False,
        max_attempts: int | None = None,
        backoff: tuple[float, float] | None = None,
        timeout: float | None = None,
        retry_on_timeout: bool = True,
        payload: type[BaseModel] | None = None,
    ) -> None:
        _check_policy(max_attempts, backoff, timeout, payload)
        entry = Handler(
            kind, fn, takes_context, max_attempts, backoff, timeout, retry_on_timeout, payload
        )
        with self._lock:
            self._handlers[kind] = entry

    def handler(
        self,
        kind: str,
        *,
        takes_context: bool = False,
        max_attempts: int | None = None,
        backoff: tuple[float, float] | None = None,
        timeout: float | None = None,
        retry_on_timeout: bool = True,
        payload: type[BaseModel] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of `register`."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(
                kind,
                fn,
                takes_context=takes_context,
                max_attempts=max_attempts,
                backoff=backoff,
                timeout=timeout,
                retry_on_timeout=retry_on_timeout,
                payload=payload,
            )
            return fn

        return decorate

    def prepare(self, spec: TaskSpec, field: str = "payload") -> TaskSpec:
        """`spec` as its kind wants it: the payload checked against the kind's model
        (InvalidInput naming the field inside it, e.g. `payload.order_id`) and the kind's
        max_attempts filled in when the spec has none. Unknown kinds pass unchanged."""
        entry = self._handlers.get(spec.kind)
        if entry is None:
            return spec
        if entry.payload is not None:
            try:
                entry.payload.model_validate(spec.payload)
            except ValidationError as exc:
                found = problems(exc)[0]
                name = field
                if found.field:
                    sep = "" if found.field.startswith("[") else "."
                    name = f"{field}{sep}{found.field}"
                raise InvalidInput(f"{name}: {found.message}", field=name) from None
        if spec.max_attempts is None and entry.max_attempts is not None:
            return spec.model_copy(update={"max_attempts": entry.max_attempts})
        return spec

    def payload_models(self) -> dict[str, type[BaseModel]]:
        """kind -> payload model, for the kinds that have one (the OpenAPI document)."""
        return {k: h.payload for k, h in sorted(self._handlers.items()) if h.payload is not None}

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownKind(f"unknown kind {kind!r}", field="kind") from None

    def check(self, kind: str, *, field: str = "kind") -> None:
        """Refuse a kind without a handler, in the words of every surface (the API's 422,
        the CLI, taskq.enqueue)."""
        if kind not in self._handlers:
            known = ", ".join(self.kinds())
            raise UnknownKind(f"unknown kind {kind!r}; known kinds: {known}", field=field)

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import user modules; their @handler decorators register into this registry.

        A module that cannot be imported is one HandlerModuleError naming the setting and
        the module, not a traceback: the usual cause is a module that is not on the path.
        """
        for name in modules:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and (name + ".").startswith(exc.name + "."):
                    raise HandlerModuleError(
                        f"TASKQ_HANDLER_MODULES names {name!r}, which cannot be imported "
                        f"(no module named {exc.name!r}): it must be importable, on "
                        "PYTHONPATH or installed in this environment"
                    ) from None
                raise HandlerModuleError(
                    f"TASKQ_HANDLER_MODULES: importing {name!r} failed: {exc}"
                ) from None
            except Exception as exc:
                raise HandlerModuleError(
                    f"TASKQ_HANDLER_MODULES: importing {name!r} failed: {type(exc).__name__}: {exc}"
                ) from None


default_registry = Registry()
handler = default_registry.handler
register = default_registry.register


def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Result = payload. The smoke test of a deployment."""
    return payload


def _sleep(payload: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sleep `seconds` (default 1): a stand-in for slow work in demos and drills. Stops
    early when cancelled or past its timeout."""
    seconds = payload.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise NonRetryableError("payload.seconds must be a non-negative number")
    started = time.monotonic()
    ctx.sleep(seconds)
    return {"slept": round(time.monotonic() - started, 3)}


def _fail(payload: dict[str, Any]) -> None:
    """Always raises: `{"retryable": false}` fails at once, otherwise retries until exhausted."""
    message = str(payload.get("message", "task failed as requested"))
    if payload.get("retryable", True) is False:
        raise NonRetryableError(message)
    raise RuntimeError(message)


def register_builtins(registry: Registry) -> None:
    registry.register("echo", _echo)
    registry.register("sleep", _sleep, takes_context=True)
    registry.register("fail", _fail)


register_builtins(default_registry)
