"""The benchmark's task kind for taskq, loaded by the worker via TASKQ_HANDLER_MODULES.

`bench` does nothing but report its start to the benchmark process (bench/probe.py) and
return None, like the no-op handlers registered for pgqueuer and procrastinate.
"""

from __future__ import annotations

from typing import Any

from taskq.handlers import handler

from bench.probe import Probe

KIND = "bench"
_probe = Probe.from_env()


@handler(KIND)
def bench(payload: dict[str, Any]) -> None:
    if _probe is not None:
        _probe.started(payload)
