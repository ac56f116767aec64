"""Running a Worker inside the test process, on a thread, with a deadline to stop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from taskq.handlers import Registry, register_builtins
from taskq.settings import Settings
from taskq.worker import Worker


def fresh_registry() -> Registry:
    registry = Registry()
    register_builtins(registry)
    return registry


@contextlib.contextmanager
def running_worker(
    settings: Settings, registry: Registry | None = None, **kw: Any
) -> Iterator[Worker]:
    worker = Worker(settings, registry=registry or fresh_registry(), health_port=0, **kw)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(settings.shutdown_timeout + 10)
        assert not thread.is_alive(), "worker did not stop within its shutdown timeout"
        assert result == [0]
