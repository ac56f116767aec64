"""The benchmark harness (bench/): its pure parts, and one tiny end-to-end run.

No assertion here depends on how fast anything is: the run checks that every workload
produced figures and that the report holds together, not what the figures are.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from taskq import sql

from bench import pgbench, report
from bench.workloads.latency import percentile

REPO = Path(__file__).resolve().parents[2]


def test_substitute_keeps_statement_and_replaces_every_parameter() -> None:
    script = pgbench.claim_finish_script(16)
    assert "%(" not in script
    assert "LIMIT 16" in script
    # The statement bodies are app/taskq/sql.py's, verbatim apart from the parameters.
    assert "FOR UPDATE SKIP LOCKED" in script
    assert sql.FINISH.split("UPDATE taskq_tasks t", 1)[1].split("%(")[0].strip() in script
    assert "\\gset" in script


def test_insert_script_is_one_statement() -> None:
    script = pgbench.insert_script()
    assert script.count(";") == 1
    assert script.startswith("INSERT INTO taskq_tasks")


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def _synthetic() -> dict[str, Any]:
    def drain(rate: float) -> dict[str, Any]:
        row = {
            "jobs": 100,
            "enqueue_per_s": 1000.0,
            "drain_per_s": rate,
            "tail_ms": 1.0,
            "maxrss_mb": 50.0,
            "worker_cpu_us_per_job": 100.0,
        }
        return {"rounds": [row], "median": row}

    def http(rate: float, tasks: float) -> dict[str, Any]:
        return {
            "requests_per_s": rate,
            "tasks_per_s": tasks,
            "p50_ms": 1.0,
            "p99_ms": 5.0,
            "errors": 0,
            "server_cpu_us_per_request": 10.0,
        }

    ingest_round = {
        "baseline": http(1000, 1000),
        "single": http(800, 800),
        "batch": http(100, 10_000),
        "db_insert": http(900, 900),
        "single_many": http(900, 900),
        "baseline_many": http(1100, 1100),
        "designs": {"sync": http(300, 300), "sync batch": http(80, 8_000)},
    }
    ceiling_row = {"batch": 100, "synchronous_commit": True, "jobs_per_s": 4000.0, "cycle_ms": 1.0}
    lat = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    return {
        "drain": {"taskq": drain(3000.0), "pgqueuer": drain(1000.0)},
        "latency": {"taskq": {"median": lat}, "pgqueuer": {"median": lat}},
        "ingest": {
            "rounds": [ingest_round],
            "median": ingest_round,
            "api_worker_rss_mb": 40.0,
            "clients": 16,
        },
        "ceiling": [{"median": ceiling_row}],
        "scale": {
            "taskq": {
                c: {"rows": 10, "jobs_per_s": 3000.0, "claim": None}
                for c in ("empty", "queued", "finished")
            }
        },
    }


def test_summary_ratios_and_targets() -> None:
    summary = report.summarize(_synthetic())
    ratios = summary["ratios"]
    assert ratios["drain_vs_pgqueuer"] == pytest.approx(3.0)
    assert ratios["drain_vs_db_ceiling"] == pytest.approx(0.75)
    assert ratios["ingest_vs_http_ceiling"] == pytest.approx(0.8)
    assert ratios["batch_vs_single"] == pytest.approx(12.5)
    met = {t["target"]: t["met"] for t in summary["targets"]}
    assert met["Drain ≥ 2x pgqueuer"] is True
    assert met["Pickup p50 better than pgqueuer"] is False  # equal is not better
    assert met["Ingest errors at 64 clients = 0"] is True
    assert met["Ingest p99 ≤ 50 ms at 64 clients"] is True
    assert met["Batch endpoint not slower than on sync workers (≥ 90%: noise)"] is True


def _missing_tools() -> list[str]:
    missing = [t for t in ("wrk", "pgbench") if shutil.which(t) is None]
    modules = ("pgqueuer", "procrastinate", "matplotlib")
    missing += [m for m in modules if importlib.util.find_spec(m) is None]
    return missing


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_produces_every_table(server_url: str, tmp_path: Path) -> None:
    if missing := _missing_tools():
        pytest.skip(f"bench extras not installed ({', '.join(missing)}): run `make bench-deps`")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--admin-url",
            server_url,
            "--db-prefix",
            "bench_smoke_",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((tmp_path / "smoke.json").read_text())
    for workload in ("drain", "latency", "ingest", "ceiling", "scale", "pools", "flow"):
        assert workload in data
    assert set(data["pools"]) == {"thread-64", "process-2", "process-2+62"}
    assert set(data["drain"]) == {"taskq", "pgqueuer", "procrastinate"}
    assert set(data["flow"]) == {"none", "max_running", "per_key"}
    assert (tmp_path / "smoke.png").stat().st_size > 0
    markdown = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in markdown
    assert "thread pool vs process pool" in markdown
    assert data["summary"]["figures"]["ingest"]["errors"] == 0
