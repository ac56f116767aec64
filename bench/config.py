"""Run settings: sizes, rounds and durations, all overridable from the command line.

Defaults keep `make bench` within a few minutes on a 2-core machine; the figures quoted in
docs/benchmarks.md for the 1,000,000-row scale case come from `--scale-rows 1000000`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from taskq.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("drain", "latency", "ingest", "ceiling", "scale", "pools", "flow", "workflow")
SYSTEMS = ("taskq", "pgqueuer", "procrastinate")
# taskq's default worker concurrency: the most tasks one of its claims takes.
DEFAULT_CONCURRENCY: int = Settings.model_fields["worker_concurrency"].default


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    admin_url: str = "postgresql://root@127.0.0.1:5432/postgres"
    # Databases are <prefix><system>, created and dropped by the run.
    db_prefix: str = "bench_"
    systems: tuple[str, ...] = SYSTEMS
    workloads: tuple[str, ...] = WORKLOADS
    rounds: int = 3
    # Drain: tasks per round; procrastinate drains ~30x slower than the others, so it gets
    # fewer tasks to keep the run short (its rate is reported per task, as for the rest).
    drain_n: int = 20_000
    drain_n_procrastinate: int = 2_000
    # Pickup latency: sequential samples, and the pause after each handler start.
    latency_n: int = 1_000
    latency_rounds: int = 1
    latency_gap_s: float = 0.005
    # API ingest: seconds per wrk/pgbench run, concurrent clients, tasks per batch request.
    ingest_seconds: float = 5.0
    ingest_clients: int = 16
    batch_size: int = 100
    # Database ceiling: jobs per pgbench run, clients, and the claim batch sizes measured.
    ceiling_n: int = 60_000
    ceiling_clients: int = 2
    # 100 is the headline; the second is taskq's default concurrency (its largest claim).
    ceiling_batches: tuple[int, ...] = (100, DEFAULT_CONCURRENCY)
    # Scale: rows of backlog / history, and tasks timed per condition.
    scale_rows: int = 200_000
    scale_n: int = 10_000
    scale_n_procrastinate: int = 1_000
    scale_rounds: int = 2
    # Pools: no-op tasks per round for taskq's thread pool and process pool, and the
    # process pool's sizes measured (children).
    pools_n: int = 10_000
    pools_processes: tuple[int, ...] = (2, 4)
    # Flow control (taskq only): tasks per drain, distinct keys of the per-key condition,
    # and optionally another source tree whose worker drains the `before` condition.
    flow_n: int = 20_000
    flow_keys: int = 1_000
    flow_baseline_src: Path | None = None
    # Workflows (taskq only): tasks per independent drain, the chain's length, the
    # fan-out's width, and optionally another source tree whose worker drains `before`.
    workflow_n: int = 20_000
    chain_n: int = 1_000
    fan_n: int = 10_000
    workflow_baseline_src: Path | None = None
    out: Path = RESULTS
    # Before starting, wait up to this long for the 1-minute load average to fall below
    # QUIET_LOAD (other work on a 2-core machine skews every figure).
    wait_quiet_s: float = 0.0
    # Output files are <out>/<name>.json, .md and .png.
    name: str = "latest"

    def drain_size(self, system: str) -> int:
        return self.drain_n_procrastinate if system == "procrastinate" else self.drain_n

    def scale_size(self, system: str) -> int:
        return self.scale_n_procrastinate if system == "procrastinate" else self.scale_n


def _csv(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in items if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)}; known: {allowed}")
        return items

    return parse


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m bench", description="taskq vs pgqueuer vs procrastinate, one run."
    )
    p.add_argument("--admin-url", default=d.admin_url, help="a superuser connection")
    p.add_argument("--db-prefix", default=d.db_prefix)
    p.add_argument("--systems", type=_csv(SYSTEMS), default=d.systems)
    p.add_argument("--workloads", type=_csv(WORKLOADS), default=d.workloads)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--drain-n", type=int, default=d.drain_n)
    p.add_argument("--drain-n-procrastinate", type=int, default=d.drain_n_procrastinate)
    p.add_argument("--latency-n", type=int, default=d.latency_n)
    p.add_argument("--latency-rounds", type=int, default=d.latency_rounds)
    p.add_argument("--latency-gap", type=float, default=d.latency_gap_s, dest="latency_gap_s")
    p.add_argument("--ingest-seconds", type=float, default=d.ingest_seconds)
    p.add_argument("--ingest-clients", type=int, default=d.ingest_clients)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--ceiling-n", type=int, default=d.ceiling_n)
    p.add_argument("--ceiling-clients", type=int, default=d.ceiling_clients)
    p.add_argument("--ceiling-batches", type=_ints, default=d.ceiling_batches)
    p.add_argument("--scale-rows", type=int, default=d.scale_rows)
    p.add_argument("--scale-n", type=int, default=d.scale_n)
    p.add_argument("--scale-n-procrastinate", type=int, default=d.scale_n_procrastinate)
    p.add_argument("--scale-rounds", type=int, default=d.scale_rounds)
    p.add_argument("--pools-n", type=int, default=d.pools_n)
    p.add_argument("--pools-processes", type=_ints, default=d.pools_processes)
    p.add_argument("--flow-n", type=int, default=d.flow_n)
    p.add_argument("--flow-keys", type=int, default=d.flow_keys)
    p.add_argument(
        "--flow-baseline-src",
        type=Path,
        default=d.flow_baseline_src,
        metavar="DIR",
        help="a source tree (e.g. `git archive` of an older commit) whose worker drains "
        "the flow workload's `before` condition",
    )
    p.add_argument("--workflow-n", type=int, default=d.workflow_n)
    p.add_argument("--chain-n", type=int, default=d.chain_n)
    p.add_argument("--fan-n", type=int, default=d.fan_n)
    p.add_argument(
        "--workflow-baseline-src",
        type=Path,
        default=d.workflow_baseline_src,
        metavar="DIR",
        help="a source tree (e.g. `git archive` of the commit before workflows) whose "
        "worker drains the workflow workload's `before` condition",
    )
    p.add_argument("--out", type=Path, default=d.out, help="results directory")
    p.add_argument("--name", default=d.name, help="file stem of the results")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=d.wait_quiet_s,
        dest="wait_quiet_s",
        metavar="SECONDS",
        help="wait up to this long for the machine to be idle before starting",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one round: checks that the harness runs (tests use it)",
    )
    ns = p.parse_args(argv)
    quick = ns.__dict__.pop("quick")
    cfg = Config(**vars(ns))
    if quick:
        cfg = dataclasses.replace(
            cfg,
            rounds=1,
            drain_n=300,
            drain_n_procrastinate=100,
            latency_n=20,
            ingest_seconds=1.0,
            ceiling_n=2_000,
            scale_rows=2_000,
            scale_n=300,
            scale_n_procrastinate=100,
            scale_rounds=1,
            pools_n=200,
            pools_processes=(2,),
            flow_n=300,
            flow_keys=20,
            workflow_n=300,
            chain_n=20,
            fan_n=300,
        )
    return cfg
