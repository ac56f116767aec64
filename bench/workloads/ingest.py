"""API ingest: POST /tasks and POST /tasks/batch under gunicorn, from wrk, for a fixed time.

Three figures per round, all at the same client concurrency:
- the HTTP ceiling of the stack before ASGI (bench/http_baseline.py: 4 sync gunicorn
  workers, no database),
- taskq's API (`taskq api`, default settings), single and batch,
- pgbench running the API's INSERT_TASK statement, in the API's session mode (no NOTIFY
  from the trigger): the database's ceiling for ingest.

wrk runs with one thread: the load generator, the servers and PostgreSQL share 2 cores,
and one epoll thread keeps 16 connections busy at a fraction of one core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import pgbench, procs
from bench.http_baseline import SYNC_WORKERS
from bench.pg import tool
from bench.systems import BIN, Taskq

# Server designs measured beside `taskq api` (app/taskq/server.py, bench/api_design.py).
OTHER_DESIGNS = ("sync", "gthread")
LUA = Path(__file__).resolve().parent.parent / "wrk" / "post.lua"
TASK_BODY = {"kind": "echo", "payload": {"input": "hello"}}


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResult:
    requests_per_s: float
    tasks_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us_per_request: float  # CPU of the gunicorn workers (or 0 for pgbench)


@dataclasses.dataclass(frozen=True, slots=True)
class IngestRound:
    baseline: HttpResult
    single: HttpResult
    batch: HttpResult
    db_insert: HttpResult  # pgbench: transactions/s as requests/s
    # `taskq api` at 4x the clients (no error, p99 bound), and the ceiling there too.
    single_many: HttpResult
    baseline_many: HttpResult
    # POST /tasks (and the batch endpoint) on the other server designs, same clients:
    # "sync" is the design before group commit, "gthread" group commit on threads.
    designs: dict[str, HttpResult]


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    rounds: list[IngestRound]
    api_worker_rss_mb: float
    baseline_worker_rss_mb: float


def _wrk(
    url: str, body: Path, clients: int, seconds: float, tasks_per_request: int, server: int
) -> HttpResult:
    cmd = [tool("wrk"), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "-s", str(LUA), url]
    workers = procs.children(server)
    cpu_before = sum(procs.cpu_seconds(pid) for pid in workers)
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={"BENCH_BODY_FILE": str(body), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    cpu = sum(procs.cpu_seconds(pid) for pid in workers) - cpu_before
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    rate = data["requests"] / (data["duration_us"] / 1e6)
    errors = int(data["errors"]) + int(data["non_2xx"])
    return HttpResult(
        requests_per_s=rate,
        tasks_per_s=rate * tasks_per_request,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        server_cpu_us_per_request=cpu / max(1, data["requests"]) * 1e6,
    )


def _worker_rss_mb(master_pid: int) -> float:
    return max((procs.peak_rss_kb(pid) for pid in procs.children(master_pid)), default=0) / 1024


def run(
    system: Taskq, *, rounds: int, clients: int, seconds: float, batch_size: int, logs: Path
) -> IngestResult:
    env = system.worker_env()
    base_port, api_port = procs.free_port(), procs.free_port()
    baseline_url = f"http://127.0.0.1:{base_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    baseline_cmd = [sys.executable, "-m", "bench.http_baseline", "--bind", baseline_url[7:]]
    api_cmd = [str(BIN / "taskq"), "api", "--bind", api_url[7:]]
    design_urls = {d: f"http://127.0.0.1:{procs.free_port()}" for d in OTHER_DESIGNS}
    out: list[IngestRound] = []
    # Both servers stay up for the whole workload (idle, they cost only memory) so every
    # round runs all four measurements back to back: a burst of other activity on the
    # machine then lands on one round of each, not on all rounds of one.
    with (
        tempfile.TemporaryDirectory(prefix="taskq-wrk-") as tmp,
        procs.running(baseline_cmd, env=env, log=logs / "ingest-baseline.log") as baseline,
        procs.running(api_cmd, env=env, log=logs / "ingest-taskq.log") as api,
        contextlib.ExitStack() as stack,
    ):
        design_servers = {
            d: stack.enter_context(
                procs.running(
                    [sys.executable, "-m", "bench.api_design", "--design", d, "--bind", u[7:]],
                    # The process count these designs were measured with when they were
                    # the API's (sync: the stack before ASGI).
                    env={**env, "TASKQ_API_WORKERS": str(SYNC_WORKERS)},
                    log=logs / f"ingest-{d}.log",
                )
            )
            for d, u in design_urls.items()
        }
        single_body = Path(tmp) / "single.json"
        single_body.write_text(json.dumps(TASK_BODY))
        batch_body = Path(tmp) / "batch.json"
        batch_body.write_text(json.dumps({"tasks": [TASK_BODY] * batch_size}))
        procs.wait_until(lambda: procs.http_ok(f"{baseline_url}/live"), 30, "the baseline")
        procs.wait_until(lambda: procs.http_ok(f"{api_url}/ready"), 30, "taskq api")
        for d, u in design_urls.items():
            procs.wait_until(lambda u=u: procs.http_ok(f"{u}/ready"), 30, f"taskq api ({d})")
        for _ in range(rounds):
            ceiling = _wrk(f"{baseline_url}/tasks", single_body, clients, seconds, 1, baseline.pid)
            system.reset()
            single = _wrk(f"{api_url}/tasks", single_body, clients, seconds, 1, api.pid)
            system.reset()
            url = f"{api_url}/tasks/batch"
            batch = _wrk(url, batch_body, clients, seconds, batch_size, api.pid)
            system.reset()
            # In the API's own session mode: its inserts leave waking the workers to
            # app/taskq/notifier.py, so the trigger does not notify (db/migrations/0004).
            res = pgbench.run(
                system.url,
                pgbench.insert_script(),
                clients=clients,
                seconds=seconds,
                options="-c taskq.notify=off",
            )
            insert = HttpResult(res.tps, res.tps, 0.0, res.p99_ms, 0, 0.0)
            many = _wrk(f"{api_url}/tasks", single_body, clients * 4, seconds, 1, api.pid)
            system.reset()
            ceiling_many = _wrk(
                f"{baseline_url}/tasks", single_body, clients * 4, seconds, 1, baseline.pid
            )
            designs: dict[str, HttpResult] = {}
            for d, u in design_urls.items():
                server = design_servers[d].pid
                designs[d] = _wrk(f"{u}/tasks", single_body, clients, seconds, 1, server)
                system.reset()
                designs[f"{d} batch"] = _wrk(
                    f"{u}/tasks/batch", batch_body, clients, seconds, batch_size, server
                )
                system.reset()
            out.append(IngestRound(ceiling, single, batch, insert, many, ceiling_many, designs))
        api_rss = _worker_rss_mb(api.pid)
        baseline_rss = _worker_rss_mb(baseline.pid)
    system.reset()
    return IngestResult(rounds=out, api_worker_rss_mb=api_rss, baseline_worker_rss_mb=baseline_rss)
