"""The kind check of `taskq.enqueue` and `taskq.enqueue_many`: exactly as the API checks a
submission.

A kind is known when a handler for it is registered in this process: by importing the
module that declares it, or by naming that module in TASKQ_HANDLER_MODULES (imported on
the first call, as the API and the worker import it). A task of an unknown kind would wait
for a handler no worker has; it is refused here with the API's words instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from taskq.handlers import default_registry
from taskq.models import TaskSpec

_loaded = threading.Event()
_load_lock = threading.Lock()


def _load_handler_modules() -> None:
    if _loaded.is_set():
        return
    with _load_lock:
        if not _loaded.is_set():
            raw = os.environ.get("TASKQ_HANDLER_MODULES", "")
            default_registry.load_modules(m.strip() for m in raw.split(",") if m.strip())
            _loaded.set()


def check_kinds(specs: Sequence[TaskSpec], *, batch: bool = False) -> None:
    """Raise UnknownKind (an InvalidInput) for the first kind without a handler."""
    _load_handler_modules()
    for index, spec in enumerate(specs):
        default_registry.check(spec.kind, field=f"tasks[{index}].kind" if batch else "kind")
