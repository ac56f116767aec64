"""Scale: throughput while draining with a big backlog or a big history, against an empty
table, and (taskq) the claim statement's plan and execution time in each state.

Conditions, each on a freshly filled and vacuumed table:
- empty:    the timed tasks only (plus a margin so the worker never runs dry),
- queued:   `rows` extra queued tasks ahead of them (the queue stays `rows` deep),
- finished: `rows` succeeded tasks retained (pgqueuer keeps finished jobs in its log).
A serving worker (not burst: the backlog must stay) is timed from the first to the n-th
handler start, then stopped. The same timing is used for all three conditions, so the
ratio to `empty` is what the issue's target asks for.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

import psycopg
from taskq import sql

from bench import pg, procs
from bench.config import DEFAULT_CONCURRENCY
from bench.probe import Collector
from bench.systems import System, Taskq

CONDITIONS = ("empty", "queued", "finished")
MARGIN = 2_000
CLAIM_SAMPLES = 15
CLAIM_LIMIT = DEFAULT_CONCURRENCY  # what an idle worker claims at once


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimProbe:
    median_ms: float
    index: str | None  # the index the claim's inner scan used; None = not an index scan
    plan: str


@dataclasses.dataclass(frozen=True, slots=True)
class ScaleResult:
    condition: str
    rows: int
    jobs: int
    jobs_per_s: float
    claim: ClaimProbe | None


def claim_probe(url: str) -> ClaimProbe:
    """EXPLAIN ANALYZE the real CLAIM in its generic plan (the one the worker runs), each
    in a transaction rolled back afterwards."""
    params: dict[str, Any] = {
        "queues": ["default"],
        "limit": CLAIM_LIMIT,
        "worker_id": "bench-explain",
        "lease": 30,
    }
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(CLAIM_SAMPLES):
            [doc] = pg.explain_generic(conn, sql.CLAIM, params, "ANALYZE, BUFFERS, FORMAT JSON")
            times.append(float(doc[0]["Execution Time"]))
        plan = [str(line) for line in pg.explain_generic(conn, sql.CLAIM, params)]
    text = "\n".join(plan)
    # The ready probe: the first scan of a taskq_tasks index (the registry's probes of
    # taskq_queues come first in the plan, the pkey join later).
    index = next(
        (
            name
            for line in plan
            if "Index Scan using" in line
            and (name := line.split(" using ")[1].split()[0]).startswith("taskq_tasks_")
        ),
        None,
    )
    return ClaimProbe(statistics.median(times), index, text)


def run(
    system: System, condition: str, rows: int, n: int, col: Collector, logs: Path
) -> ScaleResult:
    system.reset()
    backlog = rows if condition == "queued" else 0
    history = rows if condition == "finished" else 0
    # History first, then the backlog, then the timed tasks: a FIFO queue reaches the
    # timed tasks only after the backlog, so the worker drains backlog rows while timed;
    # every row is the same no-op task, so which ones it runs does not matter.
    system.fill(queued=0, finished=history)
    system.fill(queued=backlog + n + MARGIN, finished=0)
    system.analyze(vacuum=True)
    claim = claim_probe(system.url) if isinstance(system, Taskq) else None
    col.drain_pending()
    env = {**system.worker_env(), **col.env(total=n)}
    log = logs / f"scale-{system.name}-{condition}.log"
    with procs.running(system.worker_cmd("serve"), env=env, log=log):
        first = col.wait_for("count", 1, timeout=120)
        last = col.wait_for("count", n, timeout=600)
    seconds = (last.stamp_ns - first.stamp_ns) / 1e9
    return ScaleResult(condition, rows, n, (n - 1) / seconds, claim)
