"""Handlers for the reliability suite's worker processes (TASKQ_HANDLER_MODULES)."""

from __future__ import annotations

import os
import time
from typing import Any

from taskq.handlers import TaskContext, handler

from tests.handlers_for_tests import record


@handler("owner_sleep", takes_context=True)
def owner_sleep(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Record the start, sleep, and return who ran it: the result names its writer."""
    record({}, ctx)
    time.sleep(float(payload.get("seconds", 1)))
    return {"pid": os.getpid(), "attempt": ctx.attempt}
