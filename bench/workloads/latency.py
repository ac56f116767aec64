"""Pickup latency: an idle worker; tasks submitted one at a time, each after the previous
has started; time from the enqueue's commit to the handler starting.

Between samples the harness pauses `gap` seconds so the worker has recorded the previous
task and gone back to waiting: every sample then measures an idle worker's wake-up path
(notification, claim, dispatch), not a race with its own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from bench import procs
from bench.probe import Collector
from bench.systems import System

WARMUP = 20


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyResult:
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a real sample)."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def run(system: System, n: int, col: Collector, logs: Path, gap: float) -> LatencyResult:
    system.reset()
    system.analyze()
    col.drain_pending()
    env = {**system.worker_env(), **col.env()}
    samples: list[float] = []
    with (
        procs.running(system.worker_cmd("serve"), env=env, log=logs / f"latency-{system.name}.log"),
        system.latency_client() as enqueue,
    ):
        # Warm-up doubles as the readiness check: the worker is listening once it answers.
        for seq in range(-WARMUP, 0):
            enqueue(seq)
            col.wait_for("seq", seq, timeout=60 if seq == -WARMUP else 30)
            time.sleep(gap)
        for seq in range(n):
            committed = enqueue(seq)
            started = col.wait_for("seq", seq, timeout=30)
            samples.append((started.stamp_ns - committed) / 1e6)
            time.sleep(gap)
    return LatencyResult(
        samples=n,
        p50_ms=percentile(samples, 50),
        p95_ms=percentile(samples, 95),
        p99_ms=percentile(samples, 99),
        max_ms=max(samples),
        mean_ms=statistics.fmean(samples),
    )
