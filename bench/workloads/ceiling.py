"""Database ceiling: pgbench running taskq's claim-then-finish cycle in batches.

No Python anywhere: the most any worker can get from this PostgreSQL with taskq's SQL.
Each pgbench transaction claims up to `batch` tasks and records them all as succeeded,
exactly as the worker's claim loop and completer do (two autocommit statements). The
table is refilled with exactly clients x transactions x batch queued tasks every round.
Variants with synchronous_commit=off show how much of the cycle is the WAL flush at each
of its two commits.
"""

from __future__ import annotations

import dataclasses
import math

from bench import pgbench
from bench.systems import Taskq


@dataclasses.dataclass(frozen=True, slots=True)
class CeilingResult:
    batch: int
    synchronous_commit: bool
    clients: int
    jobs: int
    jobs_per_s: float
    cycle_ms: float


def run(
    system: Taskq, n: int, batch: int, clients: int, synchronous_commit: bool = True
) -> CeilingResult:
    per_client = math.ceil(n / (clients * batch))
    jobs = per_client * clients * batch
    system.reset()
    system.fill(queued=jobs, finished=0)
    system.analyze(vacuum=True)
    result = pgbench.run(
        system.url,
        pgbench.claim_finish_script(batch),
        clients=clients,
        transactions=per_client,
        options="" if synchronous_commit else "-c synchronous_commit=off",
    )
    done = system.done_count()
    if done != jobs:
        raise RuntimeError(f"ceiling: {done} of {jobs} tasks finished by pgbench")
    return CeilingResult(
        batch=batch,
        synchronous_commit=synchronous_commit,
        clients=clients,
        jobs=jobs,
        jobs_per_s=result.tps * batch,
        cycle_ms=result.mean_ms,
    )
