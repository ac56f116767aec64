"""Drain throughput: N no-op tasks inserted in bulk, then one worker process drains them.

Rate = N / (exit of the worker process - start of the first handler). The worker exits
only after every outcome is recorded, so the figure includes the final writes; start-up
(imports, connecting) is excluded because the clock starts at the first handler. The
bulk insert's own rate is recorded too, and so is the worker's peak RSS (VmHWM).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench import procs
from bench.probe import Collector
from bench.systems import System


@dataclasses.dataclass(frozen=True, slots=True)
class DrainResult:
    jobs: int
    enqueue_per_s: float
    drain_per_s: float
    tail_ms: float  # from the last handler start to the process exit
    maxrss_mb: float
    worker_cpu_us_per_job: float  # CPU the worker process spent per task, start-up included


def run(system: System, n: int, col: Collector, logs: Path) -> DrainResult:
    system.reset()
    enqueue_rate = system.bulk_enqueue(n)
    system.analyze()
    col.drain_pending()
    env = {**system.worker_env(), **col.env(total=n)}
    proc = procs.start(system.worker_cmd("drain"), env=env, log=logs / f"drain-{system.name}.log")
    rss = procs.PeakRss(proc.pid)
    try:
        first = col.wait_for("count", 1, timeout=60)
        last = col.wait_for("count", n, timeout=600)
        done = procs.wait_exit(proc, timeout=120)
    finally:
        peak_mb = rss.stop()
        procs.stop(proc)
    if done.returncode != 0:
        raise RuntimeError(f"{system.name} worker exited with {done.returncode}; see {logs}")
    finished = system.done_count()
    if finished != n:
        raise RuntimeError(f"{system.name}: {finished} of {n} tasks recorded as done")
    seconds = (done.stamp_ns - first.stamp_ns) / 1e9
    return DrainResult(
        jobs=n,
        enqueue_per_s=enqueue_rate,
        drain_per_s=n / seconds,
        tail_ms=(done.stamp_ns - last.stamp_ns) / 1e6,
        maxrss_mb=peak_mb,
        worker_cpu_us_per_job=done.cpu_s / n * 1e6,
    )
