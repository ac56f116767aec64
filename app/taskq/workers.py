"""The queues live workers serve, for the statistics: `/stats`, `taskq stats`, the
dashboard and the metrics mark a queue that no live worker serves (tasks sent there would
wait forever with nothing saying so).

Workers keep a presence row with their queues (app/taskq/registry.py, migration 0006);
this data-layer reader lets taskq.stats use it without importing the registry (which
imports the statistics).
"""

from __future__ import annotations

from taskq import sql
from taskq.queue import AnyConnection, fetch

# registry.PRESENCE_FRESH (tests/test_workers.py keeps the two equal).
PRESENCE_FRESH = 15.0


def served_queues(conn: AnyConnection) -> set[str]:
    """Queues that at least one live worker serves."""
    rows = fetch(conn, sql.WORKERS_PER_QUEUE, {"fresh": PRESENCE_FRESH})
    return {row["queue"] for row in rows if int(row["n"]) > 0}
