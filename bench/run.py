"""The benchmark run: every workload, every system, one PostgreSQL, one process tree.

Order matters on a 2-core machine: nothing overlaps. Each workload starts its own
processes and stops them (process group and all) before the next begins; the databases
are dropped at the end whatever happens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import chart, config, machine, pg, report
from bench.config import DEFAULT_CONCURRENCY, Config, parse_args
from bench.probe import Collector, collector
from bench.systems import ALL, System, Taskq
from bench.workloads import ceiling, drain, flow, ingest, latency, pools, scale, workflow


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)


def _median(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of numeric fields across rounds (other fields from round 1)."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        values = [r[key] for r in rows]
        if all(v == value for v in values):
            out[key] = value  # constant across rounds (sizes, settings): keep it as is
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(float(r[key]) for r in rows)
        else:
            out[key] = value
    return out


def _rounds(
    n: int, fn: Callable[[], Any], say: Progress, label: str, fmt: Callable[[Any], str]
) -> dict[str, Any]:
    results = []
    for i in range(n):
        res = fn()
        say(f"{label} round {i + 1}/{n}: {fmt(res)}")
        results.append(dataclasses.asdict(res))
    return {"rounds": results, "median": _median(results)}


def run_drain(cfg: Config, systems: list[System], col: Collector, say: Progress) -> Any:
    out: dict[str, Any] = {s.name: [] for s in systems}
    # Rounds interleave the systems, so a slow phase of the machine hits all of them.
    for i in range(cfg.rounds):
        for s in systems:
            res = drain.run(s, cfg.drain_size(s.name), col, cfg.out / "logs.tmp")
            say(
                f"drain {s.name} round {i + 1}/{cfg.rounds}: {res.drain_per_s:,.0f} jobs/s "
                f"({res.jobs:,} jobs; bulk enqueue {res.enqueue_per_s:,.0f}/s; "
                f"peak RSS {res.maxrss_mb:.0f} MB)"
            )
            out[s.name].append(dataclasses.asdict(res))
    return {name: {"rounds": rows, "median": _median(rows)} for name, rows in out.items()}


def run_latency(cfg: Config, systems: list[System], col: Collector, say: Progress) -> Any:
    out = {}
    for s in systems:
        out[s.name] = _rounds(
            cfg.latency_rounds,
            lambda s=s: latency.run(  # type: ignore[misc]
                s, cfg.latency_n, col, cfg.out / "logs.tmp", cfg.latency_gap_s
            ),
            say,
            f"pickup latency {s.name}",
            lambda r: f"p50 {r.p50_ms:.2f} ms, p95 {r.p95_ms:.2f} ms, p99 {r.p99_ms:.2f} ms",
        )
    return out


def run_ingest(cfg: Config, taskq: Taskq, say: Progress) -> Any:
    say(
        f"API ingest: {cfg.rounds} round(s) x (baseline, POST /tasks, POST /tasks/batch, "
        f"pgbench INSERT, POST /tasks at 4x the clients, the sync and gthread designs), "
        f"{cfg.ingest_seconds:g}s each at {cfg.ingest_clients} clients"
    )
    res = ingest.run(
        taskq,
        rounds=cfg.rounds,
        clients=cfg.ingest_clients,
        seconds=cfg.ingest_seconds,
        batch_size=cfg.batch_size,
        logs=cfg.out / "logs.tmp",
    )
    rounds = [dataclasses.asdict(r) for r in res.rounds]
    for i, r in enumerate(res.rounds):
        say(
            f"ingest round {i + 1}: baseline {r.baseline.requests_per_s:,.0f} req/s, "
            f"taskq {r.single.requests_per_s:,.0f} req/s (p99 {r.single.p99_ms:.1f} ms), "
            f"batch {r.batch.tasks_per_s:,.0f} tasks/s, pgbench INSERT "
            f"{r.db_insert.requests_per_s:,.0f}/s; at {cfg.ingest_clients * 4} clients "
            f"{r.single_many.requests_per_s:,.0f} req/s (p99 {r.single_many.p99_ms:.1f} ms, "
            f"{r.single_many.errors} errors); "
            + ", ".join(
                f"{d} {h.tasks_per_s:,.0f} tasks/s (p99 {h.p99_ms:.1f} ms)"
                for d, h in r.designs.items()
            )
        )
    median: dict[str, Any] = {
        key: _median([row[key] for row in rounds])
        for key in ("baseline", "single", "batch", "db_insert", "single_many", "baseline_many")
    }
    median["designs"] = {
        d: _median([row["designs"][d] for row in rounds]) for d in rounds[0]["designs"]
    }
    return {
        "rounds": rounds,
        "median": median,
        "api_worker_rss_mb": res.api_worker_rss_mb,
        "baseline_worker_rss_mb": res.baseline_worker_rss_mb,
        "batch_size": cfg.batch_size,
        "clients": cfg.ingest_clients,
        "seconds": cfg.ingest_seconds,
    }


def worker_commit_mode() -> bool:
    """Whether taskq's worker waits for WAL flushes on its own commits (its settings)."""
    from taskq.settings import load_settings

    return bool(getattr(load_settings(), "worker_synchronous_commit", True))


def run_ceiling(cfg: Config, taskq: Taskq, say: Progress) -> Any:
    # The headline is the first batch size with the commit mode taskq's worker uses, so
    # the ceiling is "the same statements, the same commits, no Python"; it gets every
    # round. The variants (other batch sizes, the other commit mode) get one round each.
    sync = worker_commit_mode()
    variants = [(b, sync) for b in cfg.ceiling_batches] + [(cfg.ceiling_batches[0], not sync)]
    out = []
    for index, (batch, sync) in enumerate(variants):
        label = f"ceiling batch {batch}{'' if sync else ' synchronous_commit=off'}"
        out.append(
            _rounds(
                cfg.rounds if index == 0 else 1,
                lambda b=batch, y=sync: ceiling.run(  # type: ignore[misc]
                    taskq, cfg.ceiling_n, b, cfg.ceiling_clients, y
                ),
                say,
                label,
                lambda r: f"{r.jobs_per_s:,.0f} jobs/s (cycle {r.cycle_ms:.1f} ms)",
            )
        )
    return out


def run_pools(cfg: Config, taskq: Taskq, col: Collector, say: Progress) -> Any:
    """taskq's thread pool (default concurrency) vs its process pool, rounds interleaved."""
    # The process pool with no prefetch (a claim takes one task per free child) and with
    # enough prefetch to claim as many tasks at once as the thread pool does.
    variants = [("thread", DEFAULT_CONCURRENCY, 0)]
    for p in cfg.pools_processes:
        variants += [("process", p, 0), ("process", p, max(0, DEFAULT_CONCURRENCY - p))]
    rows: dict[str, list[dict[str, Any]]] = {}
    for i in range(cfg.rounds):
        for pool, slots, prefetch in variants:
            res = pools.run(
                taskq, pool, slots, cfg.pools_n, col, cfg.out / "logs.tmp", prefetch=prefetch
            )
            say(
                f"pools {pool} x{slots} prefetch {prefetch} round {i + 1}/{cfg.rounds}: "
                f"{res.drain_per_s:,.0f} jobs/s (first handler after {res.startup_ms:,.0f} ms, "
                f"{res.cpu_us_per_job:,.0f} us CPU/job)"
            )
            key = f"{pool}-{slots}" + (f"+{prefetch}" if prefetch else "")
            rows.setdefault(key, []).append(dataclasses.asdict(res))
    return {key: {"rounds": r, "median": _median(r)} for key, r in rows.items()}


def run_scale(cfg: Config, systems: list[System], col: Collector, say: Progress) -> Any:
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    # Rounds interleave conditions and systems, like the drain rounds.
    for i in range(cfg.scale_rounds):
        for condition in scale.CONDITIONS:
            for s in systems:
                res = scale.run(
                    s, condition, cfg.scale_rows, cfg.scale_size(s.name), col, cfg.out / "logs.tmp"
                )
                extra = ""
                if res.claim is not None:
                    extra = f"; claim {res.claim.median_ms:.2f} ms on {res.claim.index}"
                say(
                    f"scale {s.name} {condition} ({cfg.scale_rows:,} rows) round {i + 1}/"
                    f"{cfg.scale_rounds}: {res.jobs_per_s:,.0f} jobs/s{extra}"
                )
                rows.setdefault((s.name, condition), []).append(dataclasses.asdict(res))
    out: dict[str, Any] = {s.name: {} for s in systems}
    for (name, condition), results in rows.items():
        # Median rate; the claim probe (plan and timing) of the first round.
        out[name][condition] = {
            **_median(results),
            "rounds_jobs_per_s": [r["jobs_per_s"] for r in results],
        }
    return out


def run_flow(cfg: Config, taskq: Taskq, col: Collector, say: Progress) -> Any:
    conditions = list(flow.CONDITIONS)
    if cfg.flow_baseline_src is not None:
        conditions.insert(0, "before")
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    # Rounds interleave the conditions, so a slow phase of the machine hits all of them.
    for i in range(cfg.rounds):
        for condition in conditions:
            res = flow.run(
                taskq,
                condition,
                cfg.flow_n,
                cfg.flow_keys,
                col,
                cfg.out / "logs.tmp",
                cfg.flow_baseline_src if condition == "before" else None,
            )
            say(
                f"flow {condition} round {i + 1}/{cfg.rounds}: {res.drain_per_s:,.0f} jobs/s "
                f"({res.jobs:,} jobs)"
            )
            rows[condition].append(dataclasses.asdict(res))
    return {
        c: {**_median(r), "rounds_jobs_per_s": [x["drain_per_s"] for x in r]}
        for c, r in rows.items()
    }


def run_workflow(cfg: Config, taskq: Taskq, col: Collector, say: Progress) -> Any:
    conditions = ["independent"]
    if cfg.workflow_baseline_src is not None:
        conditions.insert(0, "before")
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in conditions}
    graphs: dict[str, list[dict[str, Any]]] = {"chain": [], "fanout": []}
    logs = cfg.out / "logs.tmp"
    # Rounds interleave the conditions, so a slow phase of the machine hits all of them.
    for i in range(cfg.rounds):
        for condition in conditions:
            baseline = cfg.workflow_baseline_src if condition == "before" else None
            res = workflow.run_drain(taskq, condition, cfg.workflow_n, col, logs, baseline)
            say(
                f"workflow drain {condition} round {i + 1}/{cfg.rounds}: "
                f"{res.drain_per_s:,.0f} jobs/s ({res.jobs:,} jobs)"
            )
            rows[condition].append(dataclasses.asdict(res))
        for shape, n in (("chain", cfg.chain_n), ("fanout", cfg.fan_n)):
            g = workflow.run_graph(taskq, shape, n, logs)
            say(
                f"workflow {shape} round {i + 1}/{cfg.rounds}: {g.tasks_per_s:,.0f} tasks/s "
                f"({g.tasks:,} tasks; release p50 {g.release_p50_ms:.1f} ms, "
                f"p99 {g.release_p99_ms:.1f} ms; fan-out {g.fan_out_ms or 0:.1f} ms; "
                f"submit {g.submit_per_s:,.0f}/s)"
            )
            graphs[shape].append(dataclasses.asdict(g))
    return {
        "drain": {
            c: {**_median(r), "rounds_jobs_per_s": [x["drain_per_s"] for x in r]}
            for c, r in rows.items()
        },
        "graphs": {shape: _median(r) for shape, r in graphs.items()},
    }


QUIET_LOAD = 0.7


def wait_quiet(limit_s: float, say: Progress) -> None:
    deadline = time.monotonic() + limit_s
    while (load := os.getloadavg()[0]) >= QUIET_LOAD and time.monotonic() < deadline:
        say(f"load average {load:.2f}: waiting for the machine to be idle")
        time.sleep(15)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    say = Progress()
    if cfg.wait_quiet_s > 0:
        wait_quiet(cfg.wait_quiet_s, say)
    measured_from = time.monotonic()  # the run's duration leaves the quiet wait out
    server = pg.Server(cfg.admin_url)
    cfg.out.mkdir(parents=True, exist_ok=True)
    systems = [cls(server, cfg.db_prefix) for cls in ALL if cls.name in cfg.systems]
    taskq = next((s for s in systems if isinstance(s, Taskq)), None)
    results: dict[str, Any] = {
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
        },
        "machine": machine.facts(server),
    }
    say(
        f"{results['machine']['cores']} cores, PostgreSQL "
        f"{results['machine']['postgres']['version']}; systems {', '.join(cfg.systems)}; "
        f"workloads {', '.join(cfg.workloads)}"
    )
    try:
        for s in systems:
            s.setup()
        say("databases created and schemas installed")
        with collector() as col:
            steps: dict[str, Callable[[], Any]] = {
                "drain": lambda: run_drain(cfg, systems, col, say),
                "latency": lambda: run_latency(cfg, systems, col, say),
                "scale": lambda: run_scale(cfg, systems, col, say),
            }
            if taskq is not None:
                steps["ingest"] = lambda: run_ingest(cfg, taskq, say)
                steps["ceiling"] = lambda: run_ceiling(cfg, taskq, say)
                steps["pools"] = lambda: run_pools(cfg, taskq, col, say)
                steps["flow"] = lambda: run_flow(cfg, taskq, col, say)
                steps["workflow"] = lambda: run_workflow(cfg, taskq, col, say)
            results["load"] = {}
            for name in config.WORKLOADS:
                if name in cfg.workloads and name in steps:
                    before = machine.load()["loadavg"][0]
                    results[name] = steps[name]()
                    # The 1-minute load average around each workload: a value well above
                    # what the benchmark itself adds (about 1-2) means other work ran.
                    results["load"][name] = [before, machine.load()["loadavg"][0]]
    finally:
        for s in systems:
            s.teardown()
    results["duration_s"] = round(time.monotonic() - measured_from, 1)
    results["machine"]["load_at_end"] = machine.load()
    results["summary"] = report.summarize(results)
    stem = cfg.out / cfg.name
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    png = stem.with_suffix(".png")
    chart.draw(results, png)
    stem.with_suffix(".md").write_text(report.markdown(results, png.name))
    say(f"done in {results['duration_s']:.0f}s: {stem}.md, .json, .png")
    print(report.markdown(results, png.name, headline_only=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
