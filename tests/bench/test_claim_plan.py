"""The scale target's plan check: with a big backlog and a big history at once, the claim
reads the ready index (queued rows only) rather than scanning or sorting the table.

tests/test_queue.py checks a table dominated by finished rows; this adds a deep backlog,
where a planner could prefer a sequential scan and a sort. The same check runs in every
benchmark run (bench/workloads/scale.py); no timing is involved.
"""

from __future__ import annotations

from typing import Any

import psycopg
from taskq import sql

from bench import pg

ROWS = 50_000


PARAMS = {"queues": ["default"], "limit": 16, "worker_id": "plan-check", "lease": 30}


def _plans(conn: psycopg.Connection[Any]) -> list[str]:
    """The custom plan (planned for these values) and the generic one (what a worker runs
    once psycopg has prepared the statement)."""
    custom = conn.execute("EXPLAIN " + sql.CLAIM, PARAMS).fetchall()
    generic = pg.explain_generic(conn, sql.CLAIM, PARAMS)
    return ["\n".join(str(row[0]) for row in custom), "\n".join(generic)]


def test_claim_uses_ready_index_with_backlog_and_history(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO taskq_tasks (queue, kind, payload, status, attempts, result, "
            "started_at, finished_at) SELECT 'default', 'echo', '{}', 'succeeded', 1, 'null', "
            "now(), now() FROM generate_series(1, %s)",
            (ROWS,),
        )
        conn.execute(
            "INSERT INTO taskq_tasks (queue, kind, payload) "
            "SELECT 'default', 'echo', '{}' FROM generate_series(1, %s)",
            (ROWS,),
        )
        conn.execute("VACUUM ANALYZE taskq_tasks")
        plans = _plans(conn)
    for plan in plans:
        assert "Index Scan using taskq_tasks_ready_idx" in plan, plan
        assert "Seq Scan on taskq_tasks" not in plan, plan
