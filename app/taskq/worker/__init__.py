"""The worker package: one noun per module.

worker.py       Worker: lifecycle, signals, the claim loop
inflight.py     InFlight: slots, tasks in flight, leases to renew (owns the lock)
runner.py       Runners: threads that run one attempt each
attempt.py      one attempt: the handler, its context, the outcome, retry backoff
completer.py    Completer: batched outcome recording
maintenance.py  periodic services on their own intervals (lease heartbeat, sweep)
listener.py     LISTEN on a dedicated connection, turned into wake-ups
"""

from taskq.worker.attempt import backoff_delay
from taskq.worker.worker import Worker

__all__ = ["Worker", "backoff_delay"]
