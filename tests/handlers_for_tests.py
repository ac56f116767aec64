"""Handlers loaded by worker subprocesses in tests (TASKQ_HANDLER_MODULES).

`record` appends "task_id attempt pid" to the file named by TASKQ_TEST_RECORD, one
O_APPEND write per line, so several processes can count invocations without a race.
"""

from __future__ import annotations

import os
import time
from typing import Any

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
