"""The worker package: one noun per module.

worker.py       Worker: lifecycle, signals, the claim loop
inflight.py     InFlight: slots, tasks in flight, leases to renew (owns the lock)
runner.py       Runners: threads that run one attempt each (thread or process pool)
attempt.py      one attempt: the handler, its context, the outcome, retry backoff
control.py      stopping attempts: timeouts, cancels, escalation after the grace
children.py     the process pool's children, seen from the worker
child.py        a process-pool child's own loop (`python -m taskq.worker.child`)
completer.py    Completer: batched outcome recording
maintenance.py  periodic services on their own intervals (lease heartbeat, sweep)
listener.py     LISTEN on a dedicated connection, turned into wake-ups and cancels

The names below are imported on first use, so a process-pool child, which imports
taskq.worker.child, does not load the worker's threads, pools and health server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.worker.attempt import backoff_delay
    from taskq.worker.worker import Worker

__all__ = ["Worker", "backoff_delay"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from taskq.worker.worker import Worker

        return Worker
    if name == "backoff_delay":
        from taskq.worker.attempt import backoff_delay

        return backoff_delay
    raise AttributeError(name)
