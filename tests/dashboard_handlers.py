"""Handlers for the dashboard's browser test (TASKQ_HANDLER_MODULES=tests.dashboard_handlers).

`flaky` fails (non-retryably, with payload["message"]) while the file named by
TASKQ_TEST_MARKER exists, and succeeds once it is gone: the test makes a task fail,
removes the file, and retries the task from the dashboard.
"""

from __future__ import annotations

import os
from typing import Any

from taskq.errors import NonRetryableError
from taskq.handlers import handler


@handler("flaky")
def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    marker = os.environ.get("TASKQ_TEST_MARKER", "")
    if marker and os.path.exists(marker):
        raise NonRetryableError(str(payload.get("message", "failed on purpose")))
    return {"ok": True}
