"""Profile taskq where the benchmark shows it short of its targets (`make bench-profile`).

Four views, written to bench/results/profile.tmp/ (profile.md plus py-spy's raw stacks):
- the worker's Python CPU during a drain (py-spy, samples of the thread holding the GIL),
  grouped by what the innermost recognisable frame is doing;
- the worker's claim/finish rhythm: an in-process Worker with taskq.queue.claim and finish
  wrapped to record batch sizes and durations;
- the API's gunicorn workers during POST /tasks under wrk (py-spy, all workers);
- EXPLAIN (ANALYZE, BUFFERS) of the CLAIM and FINISH statements.
The interpretation lives in bench/PROFILE-NOTES.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from taskq import queue as q
from taskq import sql

from bench import pg, procs
from bench.config import RESULTS
from bench.pg import tool
from bench.systems import BIN, Taskq
from bench.workloads.ingest import TASK_BODY

OUT = RESULTS / "profile.tmp"

# Categories for GIL samples: the innermost frame matching one of these names decides.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("start-up imports", ("_find_and_load",)),
    ("metrics (prometheus_client)", ("app/taskq/metrics.py", "prometheus_client")),
    ("per-task log context", ("task_context (app/taskq/logs.py",)),
    ("query parameter adaptation", ("PostgresQuery.convert", "PostgresQuery.dump")),
    (
        "row decoding (fetchall, dict_row, Task.from_row)",
        ("fetchall", "Task.from_row", "dict_row", "BaseCursor.description", "Column.__init__"),
    ),
    ("waiting on PostgreSQL", ("Connection.wait",)),
    ("pool checkout/return", ("ConnectionPool.", "pooled (app/taskq/db.py")),
    ("JSON encode / response", ("dumps (json", "Task.to_json", "render_body", "JSONEncoder")),
    (
        "thread hand-offs",
        ("Condition.", "Event.", "SimpleQueue", "_run_loop (app/", "_complete_loop (app/"),
    ),
    ("gunicorn HTTP", ("gunicorn/http", "gunicorn/util", "socket.accept")),
    ("falcon", ("falcon/",)),
    ("request validation (pydantic)", ("model_validate_json",)),
]


def categorize(raw: Path) -> list[tuple[str, float]]:
    """Share of samples per category from a py-spy raw (collapsed stacks) file."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        total += int(n)
        hit = "start-up imports" if any("_find_and_load" in f for f in frames) else None
        for frame in reversed(frames):
            if hit:
                break
            hit = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
        counts[hit or "other"] += int(n)
    return [(name, n / max(1, total)) for name, n in counts.most_common()]


def _table(rows: list[tuple[str, float]]) -> str:
    return "| share | where |\n| ---: | --- |\n" + "\n".join(
        f"| {share:.0%} | {name} |" for name, share in rows
    )


def _pyspy(*args: str) -> list[str]:
    return [str(BIN / "py-spy"), "record", "--gil", "--nonblocking", "--format", "raw", *args]


def profile_drain(system: Taskq, n: int) -> str:
    system.reset()
    system.bulk_enqueue(n)
    system.analyze()
    raw = OUT / "drain-gil.raw"
    cmd = _pyspy("--rate", "500", "-o", str(raw), "--", *system.worker_cmd("drain"))
    started = time.monotonic()
    with procs.running(cmd, env=system.worker_env(), log=OUT / "drain.log") as proc:
        done = procs.wait_exit(proc, timeout=600)
    elapsed = time.monotonic() - started
    return (
        f"### Worker CPU during a drain ({n:,} tasks, {elapsed:.1f} s under py-spy, "
        f"{done.cpu_s / n * 1e6:.0f} us CPU per task)\n\n{_table(categorize(raw))}\n"
    )


def profile_rhythm(system: Taskq, n: int, concurrency: int) -> str:
    """Batch sizes and durations of every claim and finish in an in-process drain."""
    import os

    from taskq.settings import load_settings
    from taskq.worker import Worker

    system.reset()
    system.bulk_enqueue(n)
    system.analyze()
    calls: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)

    def wrap(name: str, size: Callable[[Any, tuple[Any, ...]], int]) -> Callable[..., Any]:
        original = getattr(q, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = original(*args, **kwargs)
            calls[name].append((size(result, args), time.perf_counter() - started))
            return result

        return timed

    saved = {name: getattr(q, name) for name in ("claim", "finish")}
    os.environ.update(system.worker_env())
    import bench.taskq_handlers  # noqa: F401  (registers the `bench` kind)

    try:
        q.claim = wrap("claim", lambda r, a: len(r))
        q.finish = wrap("finish", lambda r, a: len(a[1]))
        settings = load_settings(database_url=system.url, log_level="WARNING")
        worker = Worker(settings, burst=True, concurrency=concurrency, health_port=0)
        started = time.perf_counter()
        worker.run()
        elapsed = time.perf_counter() - started
    finally:
        for name, fn in saved.items():
            setattr(q, name, fn)
    lines = [
        f"### Claim/finish rhythm (concurrency {concurrency}, {n:,} tasks, "
        f"{n / elapsed:,.0f} jobs/s in-process)\n",
        "| statement | calls | mean batch | median ms | mean ms | total s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in calls.items():
        ms = [d * 1000 for _, d in rows]
        lines.append(
            f"| {name} | {len(rows):,} | {statistics.fmean(b for b, _ in rows):.1f} | "
            f"{statistics.median(ms):.2f} | {statistics.fmean(ms):.2f} | {sum(ms) / 1000:.2f} |"
        )
    lines.append(f"\nWall time of the drain: {elapsed:.2f} s.\n")
    return "\n".join(lines)


def profile_api(system: Taskq, seconds: int) -> str:
    system.reset()
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    raw = OUT / "api-gil.raw"
    cmd = [str(BIN / "taskq"), "api", "--bind", f"127.0.0.1:{port}"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        procs.running(cmd, env=system.worker_env(), log=OUT / "api.log") as api,
    ):
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps(TASK_BODY))
        procs.wait_until(lambda: procs.http_ok(f"{url}/ready"), 30, "taskq api")
        lua = Path(__file__).parent / "wrk" / "post.lua"
        load = subprocess.Popen(
            [tool("wrk"), "-t1", "-c16", f"-d{seconds + 2}s", "-s", str(lua), f"{url}/tasks"],
            env={"BENCH_BODY_FILE": str(body), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)
            spy = _pyspy("--subprocesses", "--rate", "500", "--duration", str(seconds))
            subprocess.run(
                [*spy, "-o", str(raw), "--pid", str(api.pid)], check=True, capture_output=True
            )
        finally:
            load.wait(timeout=seconds + 30)
    title = "### API workers during POST /tasks (wrk, 16 connections)"
    return f"{title}\n\n{_table(categorize(raw))}\n"


def explain(system: Taskq, rows: int) -> str:
    system.reset()
    system.fill(queued=rows, finished=0)
    system.analyze(vacuum=True)
    out = [f"### EXPLAIN (ANALYZE, BUFFERS) with {rows:,} queued tasks\n"]
    with psycopg.connect(system.url) as conn:
        for limit in (16, 100):
            params = {"queues": ["default"], "limit": limit, "worker_id": "x", "lease": 30}
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql.CLAIM, params).fetchall()
            out += [f"CLAIM, limit {limit}:\n", "```", *(r[0] for r in plan), "```\n"]
            claimed = q.claim(conn, queues=["default"], limit=limit, worker_id="x", lease=30)
            outcomes = [q.Finish(t.lease, "succeeded", result_json="null") for t in claimed]
            finish = {"outcomes": q.outcomes_json(outcomes), "worker_id": "x"}
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql.FINISH, finish).fetchall()
            out += [f"FINISH of those {len(claimed)}:\n", "```", *(r[0] for r in plan), "```\n"]
            conn.rollback()
    return "\n".join(out)


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[Taskq]:
    system = Taskq(pg.Server(admin_url), "bench_profile_")
    system.setup()
    try:
        yield system
    finally:
        system.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--admin-url", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--drain-n", type=int, default=40_000)
    parser.add_argument("--api-seconds", type=int, default=8)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    sections = []
    with database(args.admin_url) as system:
        steps: tuple[tuple[str, Callable[[], str]], ...] = (
            ("worker CPU", lambda: profile_drain(system, args.drain_n)),
            ("claim/finish rhythm, concurrency 16", lambda: profile_rhythm(system, 20_000, 16)),
            ("claim/finish rhythm, concurrency 32", lambda: profile_rhythm(system, 20_000, 32)),
            ("claim/finish rhythm, concurrency 64", lambda: profile_rhythm(system, 20_000, 64)),
            ("API workers", lambda: profile_api(system, args.api_seconds)),
            ("EXPLAIN", lambda: explain(system, 60_000)),
        )
        for label, step in steps:
            print(f"profiling: {label}", flush=True)
            sections.append(step())
    report = "# taskq profile\n\n" + "\n".join(sections)
    (OUT / "profile.md").write_text(report)
    print(report)
    print(f"written to {OUT / 'profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
