"""pgbench scripts built from taskq's own statements in app/taskq/sql.py, and pgbench runs.

The statements are taken verbatim from app/taskq/sql.py at run time; only their bound
parameters (%(name)s) are replaced by pgbench variables or constants, so the ceiling moves
whenever the SQL does. pgbench runs in prepared mode (-M prepared): psycopg prepares a
statement server-side after it has run five times, so a long-running worker executes its
claim and finish as prepared statements too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from taskq import sql

from bench.pg import tool
from bench.workloads.latency import percentile

_PARAM = re.compile(r"%\((\w+)\)s")


def substitute(statement: str, values: Mapping[str, str]) -> str:
    """The statement with each %(name)s replaced by values[name], and %% unescaped."""
    text = _PARAM.sub(lambda m: values[m.group(1)], statement)
    return text.replace("%%", "%").strip()


def insert_script() -> str:
    """One INSERT_TASK per transaction: the statement behind POST /tasks."""
    return (
        substitute(
            sql.INSERT_TASK,
            {
                "queue": "'default'",
                "kind": "'echo'",
                "payload": """'{"input": "hello"}'::jsonb""",
                "priority": "0",
                "run_at": "NULL",
                "delay": "0",
                "max_attempts": "5",
                "idempotency_key": "NULL",
                "timeout": "NULL",
                "concurrency_key": "NULL",
            },
        )
        + ";\n"
    )


def claim_finish_script(batch: int) -> str:
    """CLAIM up to `batch` tasks, then FINISH them all as succeeded: a worker's cycle."""
    claim = substitute(
        sql.CLAIM,
        {"queues": "'{default}'", "limit": str(batch), "worker_id": "'pgbench'", "lease": "30"},
    )
    # `plain`: the worker's path for tasks without dependents (all of these).
    finish = substitute(
        sql.FINISH, {"outcomes": ":outcomes", "worker_id": "'pgbench'", "plain": "true"}
    )
    # pgbench cannot carry a result set into the next statement, so the claimed tasks
    # travel to FINISH as its JSON parameter through a \gset variable (a bound parameter
    # in prepared mode): CLAIM's final SELECT, over its `claimed` CTE, is replaced by one
    # that builds FINISH's [id, attempt, outcome, result, error, delay] rows.
    head, _, tail = claim.rpartition("\nSELECT ")
    if not head or "FROM claimed" not in tail:
        raise ValueError("sql.CLAIM no longer ends with a SELECT over its claimed CTE")
    return (
        f"{head}\n"
        "SELECT coalesce(jsonb_agg(jsonb_build_array(id, attempts, 'succeeded', 'null'::jsonb,\n"
        "                                            NULL, 0)), '[]')::text AS outcomes\n"
        "  FROM claimed\n\\gset\n"
        f"{finish};\n"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class PgbenchResult:
    tps: float
    transactions: int
    mean_ms: float
    p99_ms: float


def run(
    url: str,
    script: str,
    *,
    clients: int,
    seconds: float | None = None,
    transactions: int | None = None,
    options: str = "",
    defines: Mapping[str, str] | None = None,
) -> PgbenchResult:
    """Run `script` with pgbench; per-transaction latencies come from its -l log."""
    with tempfile.TemporaryDirectory(prefix="taskq-pgbench-") as tmp:
        script_path = Path(tmp) / "script.sql"
        script_path.write_text(script)
        cmd = [
            tool("pgbench"),
            "-n",  # no vacuum of pgbench's own tables (there are none)
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "1",  # one client thread: the load generator shares the 2 cores
            "-f",
            str(script_path),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
        ]
        cmd += ["-T", str(int(seconds))] if seconds else ["-t", str(transactions)]
        for name, value in (defines or {}).items():
            cmd += ["-D", f"{name}={value}"]  # initial values of script variables
        # PGOPTIONS sets session settings (e.g. synchronous_commit) for every client.
        env = {**os.environ, "PGOPTIONS": options}
        out = subprocess.run([*cmd, url], capture_output=True, text=True, cwd=tmp, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-2000:]}")
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
        if tps is None:
            raise RuntimeError(f"cannot read pgbench output:\n{out.stdout}")
        latencies: list[float] = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                latencies.append(int(line.split()[2]) / 1000)
    return PgbenchResult(
        tps=float(tps.group(1)),
        transactions=len(latencies),
        mean_ms=sum(latencies) / max(1, len(latencies)),
        p99_ms=percentile(latencies, 99) if latencies else 0.0,
    )
