"""Pools: taskq's drain of no-op tasks with the thread pool and with the process pool.

The same backlog, the same worker command (`taskq worker --burst`), only
TASKQ_WORKER_POOL (and, for the process pool, its number of children) differs. Rate =
N / (exit of the worker process - start of the first handler), as in the drain workload;
how long the worker took from its start to the first handler (the process pool spawns
its children then) is reported beside it. CPU is the worker's and its children's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench import procs
from bench.probe import Collector, now_ns
from bench.systems import Taskq


@dataclasses.dataclass(frozen=True, slots=True)
class PoolResult:
    pool: str
    slots: int  # threads, or children
    prefetch: int  # process pool: tasks claimed beyond its children
    jobs: int
    drain_per_s: float
    startup_ms: float  # from the worker's start to its first handler
    maxrss_mb: float  # the worker process alone (children not included)
    cpu_us_per_job: float  # worker and children, start-up included


def run(
    system: Taskq, pool: str, slots: int, n: int, col: Collector, logs: Path, prefetch: int = 0
) -> PoolResult:
    system.reset()
    system.bulk_enqueue(n)
    system.analyze()
    col.drain_pending()
    env = {
        **system.worker_env(),
        **col.env(total=n),
        "TASKQ_WORKER_POOL": pool,
        "TASKQ_WORKER_PROCESSES": str(slots),
        "TASKQ_WORKER_PREFETCH": str(prefetch),
    }
    cmd = system.worker_cmd("drain")
    if pool == "thread":
        cmd = [*cmd, "--concurrency", str(slots)]
    started = now_ns()
    proc = procs.start(cmd, env=env, log=logs / f"pools-{pool}-{slots}-{prefetch}.log")
    rss = procs.PeakRss(proc.pid)
    try:
        # Every child counts its own handlers from 1: the first "count 1" is the first
        # handler of the worker, whichever child ran it.
        first = col.wait_for("count", 1, timeout=120)
        done = procs.wait_exit(proc, timeout=900)
    finally:
        peak_mb = rss.stop()
        procs.stop(proc)
    if done.returncode != 0:
        raise RuntimeError(f"taskq ({pool} pool) exited with {done.returncode}; see {logs}")
    finished = system.done_count()
    if finished != n:
        raise RuntimeError(f"taskq ({pool} pool): {finished} of {n} tasks recorded as done")
    return PoolResult(
        pool=pool,
        slots=slots,
        prefetch=prefetch,
        jobs=n,
        drain_per_s=n / ((done.stamp_ns - first.stamp_ns) / 1e9),
        startup_ms=(first.stamp_ns - started) / 1e6,
        maxrss_mb=peak_mb,
        cpu_us_per_job=done.cpu_s / n * 1e6,
    )
