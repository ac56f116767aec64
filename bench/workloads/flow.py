"""Flow control's cost: the drain (N no-op tasks, one worker process, `--burst`) of one
queue under each condition, measured exactly like the drain workload.

- `none`: no limits (no registry row): the plain claim, the figure every other
  condition is compared with;
- `max_running`: max_running = the worker's concurrency (the limited claim, never
  binding on one worker, so the figure is the price of the claim turn and the wake-ups);
- `per_key`: max_running_per_key = 1 over `keys` distinct concurrency keys, tasks spread
  round-robin over the keys (the key walk of the limited claim);
- `before` (only with `--flow-baseline-src DIR`): the `none` drain by the worker of
  another source tree (e.g. the commit before flow control), with the indexes of before
  flow control (no keyed ready index; the lease sweep's index of running tasks instead
  of today's one of queue, key and lease), so the plain claim's cost is compared with
  the code and schema that had no flow control at all.

Tasks are inserted with one SQL statement per round (taskq_tasks columns as `taskq
submit` writes them, plus the key), so the bulk insert is not what is measured.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from bench import pg
from bench.config import DEFAULT_CONCURRENCY
from bench.probe import Collector
from bench.systems import Mode, Taskq
from bench.workloads import drain

CONDITIONS = ("none", "max_running", "per_key")
# The indexes flow control changed (migrations 0007 and 0014): today's, which `before`
# drops, and the one before them, which only `before` has.
INDEXES = {
    "taskq_tasks_running_lease_idx": "ON taskq_tasks (queue, concurrency_key, lease_expires_at)"
    " WHERE status = 'running'",
    "taskq_tasks_ready_key_idx": "ON taskq_tasks"
    " (queue, concurrency_key, priority DESC, run_at, id)"
    " WHERE status = 'queued' AND concurrency_key IS NOT NULL",
}
BEFORE_INDEXES = {
    "taskq_tasks_lease_idx": "ON taskq_tasks (lease_expires_at) WHERE status = 'running'",
}


@dataclasses.dataclass(frozen=True, slots=True)
class FlowResult:
    condition: str
    jobs: int
    keys: int
    drain_per_s: float
    worker_cpu_us_per_job: float


class _Condition(Taskq):
    """taskq with one queue set up for a condition (the drain workload's System)."""

    def __init__(self, base: Taskq, condition: str, keys: int, baseline: Path | None) -> None:
        self.server, self.dbname, self.url = base.server, base.dbname, base.url
        self.condition = condition
        self.keys = keys
        self.baseline = baseline

    def reset(self) -> None:
        pg.execute(self.url, "TRUNCATE taskq_tasks, taskq_queues, taskq_queue_flow")
        # `before` runs with the indexes of before flow control too, so it is the code
        # and the schema before it.
        drop, create = (INDEXES, BEFORE_INDEXES) if self.baseline else (BEFORE_INDEXES, INDEXES)
        for name in drop:
            pg.execute(self.url, f"DROP INDEX IF EXISTS {name}")
        for name, definition in create.items():
            pg.execute(self.url, f"CREATE INDEX IF NOT EXISTS {name} {definition}")
        column = {"max_running": "max_running", "per_key": "max_running_per_key"}
        if self.condition in column:
            value = DEFAULT_CONCURRENCY if self.condition == "max_running" else 1
            pg.execute(
                self.url,
                f"INSERT INTO taskq_queues (name, {column[self.condition]}) VALUES ('default', %s)",
                (value,),
            )

    def bulk_enqueue(self, n: int) -> float:
        keyed = self.condition == "per_key"
        pg.execute(
            self.url,
            "INSERT INTO taskq_tasks (id, queue, kind, payload, concurrency_key)"
            " SELECT taskq_uuid_v7(), 'default', 'bench', '{}',"
            " CASE WHEN %s THEN 'key-' || (i %% %s) END FROM generate_series(1, %s) AS i",
            (keyed, self.keys, n),
        )
        return 0.0

    def worker_cmd(self, mode: Mode) -> list[str]:
        if self.baseline is None:
            return super().worker_cmd(mode)
        return [sys.executable, "-m", "taskq.cli", "worker", "--health-port", "0", "--burst"]

    def worker_env(self) -> dict[str, str]:
        env = super().worker_env()
        if self.baseline is not None:
            env["PYTHONPATH"] = f"{self.baseline / 'app'}:{env['PYTHONPATH']}"
        return env


def run(
    taskq: Taskq,
    condition: str,
    n: int,
    keys: int,
    col: Collector,
    logs: Path,
    baseline: Path | None = None,
) -> FlowResult:
    system = _Condition(taskq, "none" if condition == "before" else condition, keys, baseline)
    res = drain.run(system, n, col, logs)
    return FlowResult(
        condition=condition,
        jobs=res.jobs,
        keys=keys if condition == "per_key" else 0,
        drain_per_s=res.drain_per_s,
        worker_cpu_us_per_job=res.worker_cpu_us_per_job,
    )
