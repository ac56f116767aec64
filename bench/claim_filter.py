"""What CLAIM's paused-queue filter costs: the claim with and without it, interleaved.

    python -m bench.claim_filter [--url postgresql://root@127.0.0.1:5432/taskq_claim_filter]

Creates (or empties) the database's taskq tables with 20,000 queued tasks in one queue,
then runs both versions of the statement `--runs` times each, alternating, each under
EXPLAIN ANALYZE in a transaction that is rolled back (the rows stay queued). Prints the
median time of the plan node that yields the queue names to probe (the unnest, or the
anti-join with taskq_queues) and of the whole statement (bench/PROFILE-NOTES.md 0.4).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import psycopg
from taskq import migrate, sql
from taskq.settings import load_settings

FILTER = "     WHERE NOT EXISTS (SELECT 1 FROM taskq_queues p WHERE p.name = q.name AND p.paused)\n"


def _probe_source(plan: dict[str, Any]) -> dict[str, Any]:
    """The outer side of the nested loop that runs the per-queue probe."""
    stack = [plan]
    while stack:
        node = stack.pop()
        children = node.get("Plans", [])
        if node.get("Node Type") == "Nested Loop" and any(
            c.get("Node Type") == "Subquery Scan" for c in children
        ):
            return dict(children[0])
        stack.extend(children)
    raise AssertionError("no per-queue probe in the plan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://root@127.0.0.1:5432/taskq_claim_filter")
    parser.add_argument("--runs", type=int, default=600)
    args = parser.parse_args()
    admin = args.url.rsplit("/", 1)[0] + "/postgres"
    name = args.url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    migrate.apply(load_settings(database_url=args.url))
    new = sql.CLAIM
    old = new.replace(FILTER, "")
    assert old != new, "CLAIM has no paused-queue filter"
    params = {"queues": ["default"], "limit": 64, "worker_id": "bench", "lease": 30.0}
    times: dict[str, tuple[list[float], list[float]]] = {"without": ([], []), "with": ([], [])}
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute("TRUNCATE taskq_tasks")
        conn.execute("DELETE FROM taskq_queues")
        conn.execute("INSERT INTO taskq_tasks (kind) SELECT 'echo' FROM generate_series(1, 20000)")
        conn.execute("ANALYZE taskq_tasks")
        for _ in range(args.runs):
            for label, query in (("without", old), ("with", new)):
                conn.execute("BEGIN")
                row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()
                conn.execute("ROLLBACK")
                assert row is not None
                doc = row[0][0]
                times[label][0].append(_probe_source(doc["Plan"])["Actual Total Time"] * 1000)
                times[label][1].append(doc["Execution Time"] * 1000)
    for label, (node, total) in times.items():
        print(
            f"{label:>7} the filter: queue-list node median {statistics.median(node):.1f} us, "
            f"statement median {statistics.median(total):.0f} us"
        )


if __name__ == "__main__":
    main()
