"""Workflows (taskq only): what dependencies cost independent tasks, and how fast graphs run.

- `independent`: the drain (N no-op tasks, one worker process, `--burst`) exactly as the
  drain workload measures it, with this tree's code: tasks without depends_on.
- `before` (only with `--workflow-baseline-src DIR`): the same drain by the worker of
  another source tree (e.g. `git archive` of the commit before workflows) on the same
  schema, so the figure of independent tasks is compared with the code that had no
  dependencies, in the same run. Rounds interleave the two.
- `chain`: `chain_n` tasks, each depending on the one before, submitted as one graph
  (refs), run by one worker. Rate = tasks / (last finish - first start); the release
  latency is each child's start minus its parent's finish (every hop waits for it).
- `fanout`: one root, `fan_n` children of it, fan-in through collectors of at most 100
  parents each (the per-task maximum) and one sink waiting for every collector. Rate =
  tasks / (sink finish - root start); release latency: the first child's start after the
  root's finish, and the sink's start after the last collector's finish.

Times are the rows' own (started_at, finished_at: the database's clock).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import pg, procs
from bench.probe import Collector
from bench.systems import Mode, Taskq
from bench.workloads import drain

FAN_IN = 100  # parents per collector (models.MAX_PARENTS)


@dataclasses.dataclass(frozen=True, slots=True)
class DrainCondition:
    condition: str
    jobs: int
    drain_per_s: float
    worker_cpu_us_per_job: float


@dataclasses.dataclass(frozen=True, slots=True)
class GraphResult:
    shape: str
    tasks: int
    submit_per_s: float  # the whole graph in one workflows.enqueue_many transaction
    tasks_per_s: float
    # chain: every hop's child start minus its parent's finish; fanout: the sink's start
    # minus the last collector's finish (a fan-in of 100 released by its last parent).
    release_p50_ms: float
    release_p99_ms: float
    release_max_ms: float
    # fanout: the first child's start minus the root's finish, which includes releasing
    # every child in the root's transaction (finished_at is that transaction's start).
    fan_out_ms: float | None


class _Baseline(Taskq):
    """taskq whose worker runs another source tree (the drain workload's System)."""

    def __init__(self, base: Taskq, src: Path) -> None:
        self.server, self.dbname, self.url = base.server, base.dbname, base.url
        self.src = src

    def worker_cmd(self, mode: Mode) -> list[str]:
        return [sys.executable, "-m", "taskq.cli", "worker", "--health-port", "0", "--burst"]

    def worker_env(self) -> dict[str, str]:
        env = super().worker_env()
        env["PYTHONPATH"] = f"{self.src / 'app'}:{env['PYTHONPATH']}"
        return env


def run_drain(
    taskq: Taskq, condition: str, n: int, col: Collector, logs: Path, baseline: Path | None
) -> DrainCondition:
    system: Taskq = _Baseline(taskq, baseline) if baseline is not None else taskq
    res = drain.run(system, n, col, logs)
    return DrainCondition(condition, res.jobs, res.drain_per_s, res.worker_cpu_us_per_job)


def _graph(shape: str, n: int) -> tuple[list[dict[str, Any]], str]:
    """Task specs (as dicts) of a graph and the ref of its last task."""
    if shape == "chain":
        specs: list[dict[str, Any]] = [{"kind": "bench", "ref": "t0"}]
        specs += [
            {"kind": "bench", "ref": f"t{i}", "depends_on": [f"t{i - 1}"]} for i in range(1, n)
        ]
        return specs, f"t{n - 1}"
    specs = [{"kind": "bench", "ref": "root"}]
    specs += [{"kind": "bench", "ref": f"c{i}", "depends_on": ["root"]} for i in range(n)]
    collectors = []
    for start in range(0, n, FAN_IN):
        ref = f"k{start // FAN_IN}"
        parents = [f"c{i}" for i in range(start, min(n, start + FAN_IN))]
        specs.append({"kind": "bench", "ref": ref, "depends_on": parents})
        collectors.append(ref)
    for start in range(0, len(collectors), FAN_IN):  # more levels only beyond 10,000
        group = collectors[start : start + FAN_IN]
        specs.append({"kind": "bench", "ref": f"s{start}", "depends_on": group})
    if len(collectors) > FAN_IN:
        raise ValueError(f"fan_n up to {FAN_IN * FAN_IN}")
    return specs, specs[-1]["ref"]


def _release_ms(url: str, shape: str) -> list[float]:
    if shape == "chain":
        rows = pg.execute(
            url,
            "SELECT extract(epoch FROM c.started_at - p.finished_at) * 1000"
            "  FROM taskq_task_deps d JOIN taskq_tasks c ON c.id = d.child_id"
            "  JOIN taskq_tasks p ON p.id = d.parent_id",
        )
        return [float(r[0]) for r in rows]
    rows = pg.execute(
        url,
        "SELECT extract(epoch FROM (SELECT started_at FROM taskq_tasks WHERE ref LIKE 's%%')"
        "         - (SELECT max(finished_at) FROM taskq_tasks WHERE ref LIKE 'k%%')) * 1000",
    )
    return [float(rows[0][0])]


def _fan_out_ms(url: str) -> float:
    rows = pg.execute(
        url,
        "SELECT extract(epoch FROM (SELECT min(c.started_at) FROM taskq_tasks c"
        "         WHERE c.ref LIKE 'c%%') - (SELECT finished_at FROM taskq_tasks"
        "         WHERE ref = 'root')) * 1000",
    )
    return float(rows[0][0])


def run_graph(taskq: Taskq, shape: str, n: int, logs: Path) -> GraphResult:
    from taskq import db, workflows
    from taskq.models import TaskSpec
    from taskq.settings import load_settings

    pg.execute(taskq.url, "TRUNCATE taskq_tasks, taskq_task_deps, taskq_batches")
    raw, last_ref = _graph(shape, n)
    specs = [TaskSpec.model_validate(s) for s in raw]
    settings = load_settings(database_url=taskq.url)
    with db.connect(settings, name="bench") as conn:
        started = time.perf_counter()
        tasks = workflows.enqueue_many(conn, specs)
        submit_s = time.perf_counter() - started
    last = tasks[-1].id
    assert tasks[-1].ref == last_ref
    taskq.analyze()
    proc = procs.start(taskq.worker_cmd("serve"), env=taskq.worker_env(), log=logs / "wf.log")
    try:
        deadline = time.monotonic() + 600
        while True:
            rows = pg.execute(taskq.url, "SELECT status FROM taskq_tasks WHERE id = %s", (last,))
            if rows and rows[0][0] == "succeeded":
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"workflow {shape}: the last task did not run; see {logs}")
            time.sleep(0.05)
    finally:
        procs.stop(proc)
    span = pg.execute(
        taskq.url,
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))"
        "  FROM taskq_tasks WHERE status = 'succeeded'",
    )[0]
    if int(span[0]) != len(specs):
        raise RuntimeError(f"workflow {shape}: {span[0]} of {len(specs)} tasks succeeded")
    release = sorted(_release_ms(taskq.url, shape))
    return GraphResult(
        shape=shape,
        tasks=len(specs),
        submit_per_s=len(specs) / submit_s,
        tasks_per_s=len(specs) / float(span[1]),
        release_p50_ms=statistics.median(release),
        release_p99_ms=release[min(len(release) - 1, int(len(release) * 0.99))],
        release_max_ms=release[-1],
        fan_out_ms=_fan_out_ms(taskq.url) if shape == "fanout" else None,
    )
