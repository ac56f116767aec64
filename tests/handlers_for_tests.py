"""Handlers loaded by worker subprocesses in tests (TASKQ_HANDLER_MODULES).

`record` appends "task_id attempt pid" to the file named by TASKQ_TEST_RECORD, one
O_APPEND write per line, so several processes can count invocations without a race.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from taskq.handlers import TaskContext, handler


def _record(ctx: TaskContext) -> None:
    path = os.environ["TASKQ_TEST_RECORD"]
    line = f"{ctx.id} {ctx.attempt} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@handler("record", takes_context=True)
def record(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    _record(ctx)
    return payload


@handler("slow_record", takes_context=True)
def slow_record(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Record the start, then sleep: a crash mid-sleep shows up as two starts."""
    _record(ctx)
    time.sleep(float(payload.get("seconds", 1)))
    return {"done": True}


class Order(BaseModel):
    """The payload of kind `typed_order`: a typed payload the API validates at submit."""

    model_config = ConfigDict(extra="forbid")

    order_id: int
    note: str = ""


@handler("typed_order", payload=Order, max_attempts=2)
def typed_order(order: Order) -> dict[str, Any]:
    """Proves the handler receives the model instance, not the dict."""
    return {"type": type(order).__name__, "order_id": order.order_id}


@handler("nap", takes_context=True, timeout=60)
def nap(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Record the start, then sleep (SIGTERM stops it in the process pool)."""
    _record(ctx)
    time.sleep(float(payload.get("seconds", 60)))
    return {"done": True}


@handler("stubborn", takes_context=True)
def stubborn(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Ignores SIGTERM and never checks ctx: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _record(ctx)
    while True:
        time.sleep(0.05)


@handler("noop")
def noop(payload: dict[str, Any]) -> None:
    """Does nothing: the process pool's per-task overhead in benchmarks."""


@handler("sum_parents", takes_context=True)
def sum_parents(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """A workflow's fan-in: adds up `n` of every parent's result (ctx.parents holds each
    result under the parent's id and, for parents with a ref, under the ref too)."""
    _record(ctx)
    by_id = {key: value for key, value in ctx.parents.items() if len(key) == 36}
    total = sum(int(r.get("n", 0)) for r in by_id.values() if isinstance(r, dict))
    return {"n": total + int(payload.get("n", 0)), "refs": sorted(set(ctx.parents) - set(by_id))}
