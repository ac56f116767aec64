"""Turn a run's raw results into figures, the issue's ratios and targets, and markdown."""

from __future__ import annotations

from typing import Any

from bench.config import DEFAULT_CONCURRENCY

MB_LIMIT = 80.0


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    drain = results.get("drain", {})
    fig["drain_jobs_per_s"] = {k: v["median"]["drain_per_s"] for k, v in drain.items()}
    fig["drain_jobs"] = {k: v["median"]["jobs"] for k, v in drain.items()}
    fig["bulk_enqueue_per_s"] = {k: v["median"]["enqueue_per_s"] for k, v in drain.items()}
    fig["worker_cpu_us_per_job"] = {
        k: v["median"]["worker_cpu_us_per_job"] for k, v in drain.items()
    }
    fig["worker_rss_mb"] = {k: max(r["maxrss_mb"] for r in v["rounds"]) for k, v in drain.items()}
    lat = results.get("latency", {})
    fig["latency_ms"] = {
        k: {p: v["median"][f"{p}_ms"] for p in ("p50", "p95", "p99")} for k, v in lat.items()
    }
    ing = results.get("ingest")
    if ing:
        m = ing["median"]
        fig["ingest"] = {
            "http_ceiling_req_per_s": m["baseline"]["requests_per_s"],
            "http_ceiling_p99_ms": m["baseline"]["p99_ms"],
            "http_ceiling_cpu_us": m["baseline"]["server_cpu_us_per_request"],
            "single_cpu_us": m["single"]["server_cpu_us_per_request"],
            "batch_cpu_us": m["batch"]["server_cpu_us_per_request"],
            "single_req_per_s": m["single"]["requests_per_s"],
            "single_p99_ms": m["single"]["p99_ms"],
            "batch_req_per_s": m["batch"]["requests_per_s"],
            "batch_tasks_per_s": m["batch"]["tasks_per_s"],
            "batch_p99_ms": m["batch"]["p99_ms"],
            "db_insert_per_s": m["db_insert"]["requests_per_s"],
            "db_insert_p99_ms": m["db_insert"]["p99_ms"],
            "errors": sum(
                r[k]["errors"] for r in ing["rounds"] for k in ("baseline", "single", "batch")
            ),
        }
        if "single_many" in m:  # results from before the design comparison have none
            fig["ingest"].update(
                {
                    "many_clients": ing["clients"] * 4,
                    "many_req_per_s": m["single_many"]["requests_per_s"],
                    "many_p99_ms": m["single_many"]["p99_ms"],
                    "many_errors": sum(r["single_many"]["errors"] for r in ing["rounds"]),
                    "many_ceiling_req_per_s": m["baseline_many"]["requests_per_s"],
                    "many_ceiling_p99_ms": m["baseline_many"]["p99_ms"],
                    "designs": {
                        d: {
                            "req_per_s": v["requests_per_s"],
                            "tasks_per_s": v["tasks_per_s"],
                            "p99_ms": v["p99_ms"],
                            "cpu_us": v["server_cpu_us_per_request"],
                            "errors": sum(r["designs"][d]["errors"] for r in ing["rounds"]),
                        }
                        for d, v in m["designs"].items()
                    },
                }
            )
        fig["api_worker_rss_mb"] = ing["api_worker_rss_mb"]
    ceil = results.get("ceiling")
    if ceil:
        fig["ceiling"] = [
            {
                "batch": c["median"]["batch"],
                "synchronous_commit": c["median"]["synchronous_commit"],
                "jobs_per_s": c["median"]["jobs_per_s"],
                "cycle_ms": c["median"]["cycle_ms"],
            }
            for c in ceil
        ]
    sc = results.get("scale")
    if sc:
        fig["scale_jobs_per_s"] = {
            k: {cond: r["jobs_per_s"] for cond, r in v.items()} for k, v in sc.items()
        }
        claims = {cond: r["claim"] for cond, r in sc.get("taskq", {}).items() if r.get("claim")}
        fig["claim"] = {
            cond: {"median_ms": c["median_ms"], "index": c["index"]} for cond, c in claims.items()
        }
        fig["scale_rows"] = next(iter(next(iter(sc.values())).values()))["rows"]

    fl = results.get("flow")
    if fl:
        fig["flow_jobs_per_s"] = {cond: r["drain_per_s"] for cond, r in fl.items()}
        fig["flow_jobs"] = next(iter(fl.values()))["jobs"]
        fig["flow_keys"] = fl.get("per_key", {}).get("keys")

    wf = results.get("workflow")
    if wf:
        fig["workflow_drain_per_s"] = {c: r["drain_per_s"] for c, r in wf["drain"].items()}
        fig["workflow_jobs"] = next(iter(wf["drain"].values()))["jobs"]
        fig["workflow_graphs"] = wf["graphs"]

    drain_t = _get(fig, "drain_jobs_per_s", "taskq")
    ceiling_headline = fig["ceiling"][0]["jobs_per_s"] if fig.get("ceiling") else None
    # The same commit mode, in claims as large as the worker's own (its concurrency).
    ceiling_same_batch = next(
        (
            c["jobs_per_s"]
            for c in fig.get("ceiling", [])[1:]
            if c["batch"] == DEFAULT_CONCURRENCY
            and c["synchronous_commit"] == fig["ceiling"][0]["synchronous_commit"]
        ),
        None,
    )
    lat_t = _get(fig, "latency_ms", "taskq")
    lat_p = _get(fig, "latency_ms", "pgqueuer")
    scale_t = _get(fig, "scale_jobs_per_s", "taskq") or {}
    ingest_f = fig.get("ingest") or {}
    ratios = {
        "drain_vs_pgqueuer": _ratio(drain_t, _get(fig, "drain_jobs_per_s", "pgqueuer")),
        "drain_vs_procrastinate": _ratio(drain_t, _get(fig, "drain_jobs_per_s", "procrastinate")),
        "drain_vs_db_ceiling": _ratio(drain_t, ceiling_headline),
        "drain_vs_db_ceiling_same_batch": _ratio(drain_t, ceiling_same_batch),
        "latency_p50_vs_pgqueuer": _ratio(_get(lat_t, "p50"), _get(lat_p, "p50")),
        "latency_p99_vs_pgqueuer": _ratio(_get(lat_t, "p99"), _get(lat_p, "p99")),
        "ingest_vs_http_ceiling": _ratio(
            ingest_f.get("single_req_per_s"), ingest_f.get("http_ceiling_req_per_s")
        ),
        "ingest_vs_db_insert": _ratio(
            ingest_f.get("single_req_per_s"), ingest_f.get("db_insert_per_s")
        ),
        "batch_vs_single": _ratio(
            ingest_f.get("batch_tasks_per_s"), ingest_f.get("single_req_per_s")
        ),
        "scale_queued_vs_empty": _ratio(scale_t.get("queued"), scale_t.get("empty")),
        "scale_finished_vs_empty": _ratio(scale_t.get("finished"), scale_t.get("empty")),
    }
    flow_f = fig.get("flow_jobs_per_s") or {}
    ratios["flow_none_vs_before"] = _ratio(flow_f.get("none"), flow_f.get("before"))
    ratios["flow_max_running_vs_none"] = _ratio(flow_f.get("max_running"), flow_f.get("none"))
    ratios["flow_per_key_vs_none"] = _ratio(flow_f.get("per_key"), flow_f.get("none"))
    wf_f = fig.get("workflow_drain_per_s") or {}
    ratios["workflow_independent_vs_before"] = _ratio(wf_f.get("independent"), wf_f.get("before"))
    return {"figures": fig, "ratios": ratios, "targets": _targets(fig, ratios)}


def _target(name: str, value: float | None, ok: bool | None, shown: str) -> dict[str, Any]:
    return {"target": name, "value": value, "shown": shown, "met": ok}


def _targets(fig: dict[str, Any], r: dict[str, float | None]) -> list[dict[str, Any]]:
    out = []

    def at_least(name: str, value: float | None, limit: float, fmt: str) -> None:
        ok = None if value is None else value >= limit
        out.append(_target(name, value, ok, "n/a" if value is None else fmt.format(value)))

    def at_most(name: str, value: float | None, limit: float, fmt: str) -> None:
        ok = None if value is None else value <= limit
        out.append(_target(name, value, ok, "n/a" if value is None else fmt.format(value)))

    at_least("Drain ≥ 2x pgqueuer", r["drain_vs_pgqueuer"], 2.0, "{:.2f}x")
    at_least("Drain ≥ 50% of the database ceiling", r["drain_vs_db_ceiling"], 0.5, "{:.0%}")
    lat = _get(fig, "latency_ms", "taskq") or {}
    at_most("Pickup p50 ≤ 2 ms", lat.get("p50"), 2.0, "{:.2f} ms")
    at_most("Pickup p99 ≤ 10 ms", lat.get("p99"), 10.0, "{:.2f} ms")
    at_most("Pickup p50 better than pgqueuer", r["latency_p50_vs_pgqueuer"], 0.999, "{:.2f}x")
    at_most("Pickup p99 better than pgqueuer", r["latency_p99_vs_pgqueuer"], 0.999, "{:.2f}x")
    at_least(
        "Ingest ≥ 70% of the same-stack HTTP ceiling", r["ingest_vs_http_ceiling"], 0.7, "{:.0%}"
    )
    at_most(
        "Ingest p99 ≤ 15 ms at 16 clients",
        _get(fig, "ingest", "single_p99_ms"),
        15.0,
        "{:.1f} ms",
    )
    many = fig.get("ingest") or {}
    if many.get("many_clients"):
        at_most(
            f"Ingest errors at {many['many_clients']} clients = 0",
            float(many["many_errors"]),
            0.0,
            "{:.0f}",
        )
        at_most(
            f"Ingest p99 ≤ 50 ms at {many['many_clients']} clients",
            many.get("many_p99_ms"),
            50.0,
            "{:.1f} ms",
        )
        before = (many.get("designs") or {}).get("sync batch")
        if before:
            at_least(
                "Batch endpoint not slower than on sync workers (≥ 90%: noise)",
                _ratio(many.get("batch_tasks_per_s"), before["tasks_per_s"]),
                0.9,
                "{:.0%}",
            )
    at_least("Batch endpoint ≥ 10x single-request task rate", r["batch_vs_single"], 10, "{:.1f}x")
    at_least(
        "Scale: drain with queued backlog ≥ 80% of empty", r["scale_queued_vs_empty"], 0.8, "{:.0%}"
    )
    at_least(
        "Scale: drain with finished history ≥ 80% of empty",
        r["scale_finished_vs_empty"],
        0.8,
        "{:.0%}",
    )
    claims = fig.get("claim") or {}
    if claims:
        on_index = all(c["index"] == "taskq_tasks_ready_idx" for c in claims.values())
        out.append(
            _target(
                "Claim on the ready index at scale",
                None,
                on_index,
                ", ".join(f"{k}: {v['index']}" for k, v in claims.items()),
            )
        )
    if r.get("workflow_independent_vs_before") is not None:
        at_least(
            "Workflows: independent tasks ≥ 95% of the code before workflows",
            r["workflow_independent_vs_before"],
            0.95,
            "{:.0%}",
        )
    if r.get("flow_none_vs_before") is not None:
        at_least(
            "Flow: no limits ≥ 95% of the code before flow control",
            r["flow_none_vs_before"],
            0.95,
            "{:.0%}",
        )
    at_least(
        "Flow: max_running = concurrency ≥ 80% of no limits",
        r.get("flow_max_running_vs_none"),
        0.8,
        "{:.0%}",
    )
    at_least(
        f"Flow: max_running_per_key over {fig.get('flow_keys') or 0:,} keys ≥ 70% of no limits",
        r.get("flow_per_key_vs_none"),
        0.7,
        "{:.0%}",
    )
    at_most("Worker RSS ≤ 80 MB", _get(fig, "worker_rss_mb", "taskq"), MB_LIMIT, "{:.0f} MB")
    at_most("API worker RSS ≤ 80 MB", fig.get("api_worker_rss_mb"), MB_LIMIT, "{:.0f} MB")
    return out


# ----------------------------------------------------------------------------- markdown
def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def markdown(results: dict[str, Any], png: str, *, headline_only: bool = False) -> str:
    s = results["summary"]
    f = s["figures"]
    m = results["machine"]
    pgf = m["postgres"]
    lines: list[str] = []
    add = lines.append
    if not headline_only:
        settings = ", ".join(f"{k}={v}" for k, v in pgf["settings"].items())
        add("# taskq benchmark results\n")
        add(
            f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}, Python {m['python']}. PostgreSQL {pgf['version']} on loopback "
            f"({settings}). Packages: "
            + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
            + f". Tools: {m['tools']['wrk']}; {m['tools']['pgbench']}. "
            f"Run took {results['duration_s']:.0f} s; medians of "
            f"{results['config']['rounds']} rounds unless noted.\n"
        )
        git = m.get("git", {})
        add(
            f"Measured: commit {git.get('commit', '?')}"
            f"{' with uncommitted changes in app/ or db/' if git.get('dirty') else ''}. "
            f"Load average at start {m['load_at_start']['loadavg']}, at end "
            f"{m.get('load_at_end', {}).get('loadavg', '?')} (anything else running on the "
            "machine skews every figure; ratios within one run are the comparable ones).\n"
        )
        if results.get("load"):
            add(
                "1-minute load average before/after each workload: "
                + ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in results["load"].items())
                + ".\n"
            )
        add(f"![benchmark chart]({png})\n")

    systems = [k for k in ("taskq", "pgqueuer", "procrastinate") if k in f["drain_jobs_per_s"]]
    if systems:
        add("## Drain and pickup latency\n")
        add(
            "| system | drain jobs/s | jobs drained | bulk enqueue/s | pickup p50 ms | "
            "p95 ms | p99 ms | worker CPU us/job | worker peak RSS MB |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in systems:
            lat = f["latency_ms"].get(k, {})
            add(
                f"| {k} | {_n(f['drain_jobs_per_s'].get(k))} | {_n(f['drain_jobs'].get(k))} | "
                f"{_n(f['bulk_enqueue_per_s'].get(k))} | {_n(lat.get('p50'), 2)} | "
                f"{_n(lat.get('p95'), 2)} | {_n(lat.get('p99'), 2)} | "
                f"{_n(f['worker_cpu_us_per_job'].get(k))} | "
                f"{_n(f['worker_rss_mb'].get(k))} |"
            )
        add("")
    if f.get("ceiling"):
        add("## Database ceiling (pgbench, taskq's CLAIM + FINISH, no Python)\n")
        add(
            "The first row uses the commit mode of taskq's worker sessions and is the "
            "ceiling the drain is compared with.\n"
        )
        add("| claim batch | synchronous_commit | jobs/s | cycle ms |")
        add("| ---: | --- | ---: | ---: |")
        for c in f["ceiling"]:
            sync = "on" if c["synchronous_commit"] else "off"
            add(f"| {c['batch']} | {sync} | {_n(c['jobs_per_s'])} | {_n(c['cycle_ms'], 2)} |")
        add("")
    ing = f.get("ingest")
    if ing:
        add(
            f"## API ingest ({results['ingest']['clients']} clients, "
            f"{results['ingest']['seconds']:g} s per run)\n"
        )
        add("| what | req/s | tasks/s | p99 ms | server CPU us/request |")
        add("| --- | ---: | ---: | ---: | ---: |")
        add(
            f"| HTTP ceiling (same stack, no database) | {_n(ing['http_ceiling_req_per_s'])} | "
            f"- | {_n(ing['http_ceiling_p99_ms'], 1)} | {_n(ing['http_ceiling_cpu_us'])} |"
        )
        add(
            f"| taskq POST /tasks | {_n(ing['single_req_per_s'])} | "
            f"{_n(ing['single_req_per_s'])} | {_n(ing['single_p99_ms'], 1)} | "
            f"{_n(ing['single_cpu_us'])} |"
        )
        add(
            f"| taskq POST /tasks/batch ({results['ingest']['batch_size']} per request) | "
            f"{_n(ing['batch_req_per_s'])} | {_n(ing['batch_tasks_per_s'])} | "
            f"{_n(ing['batch_p99_ms'], 1)} | {_n(ing['batch_cpu_us'])} |"
        )
        add(
            f"| pgbench INSERT_TASK (database ceiling) | {_n(ing['db_insert_per_s'])} | "
            f"{_n(ing['db_insert_per_s'])} | {_n(ing['db_insert_p99_ms'], 1)} | - |"
        )
        if ing.get("many_clients"):
            add(
                f"| HTTP ceiling at {ing['many_clients']} clients | "
                f"{_n(ing['many_ceiling_req_per_s'])} | - | "
                f"{_n(ing['many_ceiling_p99_ms'], 1)} | - |"
            )
            add(
                f"| taskq POST /tasks at {ing['many_clients']} clients "
                f"({ing['many_errors']} errors) | {_n(ing['many_req_per_s'])} | "
                f"{_n(ing['many_req_per_s'])} | {_n(ing['many_p99_ms'], 1)} | - |"
            )
        for d, v in (ing.get("designs") or {}).items():
            add(
                f"| {d} design: POST /tasks{'/batch' if 'batch' in d else ''} | "
                f"{_n(v['req_per_s'])} | {_n(v['tasks_per_s'])} | {_n(v['p99_ms'], 1)} | "
                f"{_n(v['cpu_us'])} |"
            )
        add("")
    if f.get("scale_jobs_per_s"):
        add(f"## Scale ({f['scale_rows']:,} rows of backlog or history)\n")
        add("| system | empty jobs/s | queued backlog jobs/s | finished history jobs/s |")
        add("| --- | ---: | ---: | ---: |")
        for k, v in f["scale_jobs_per_s"].items():
            add(f"| {k} | {_n(v.get('empty'))} | {_n(v.get('queued'))} | {_n(v.get('finished'))} |")
        if f.get("claim"):
            add("")
            add(
                f"taskq claim (LIMIT {DEFAULT_CONCURRENCY}), EXPLAIN ANALYZE median: "
                + "; ".join(
                    f"{k} {v['median_ms']:.2f} ms on {v['index']}" for k, v in f["claim"].items()
                )
            )
        add("")
    if results.get("pools"):
        add(
            f"## taskq thread pool vs process pool ({results['config']['pools_n']:,} no-op tasks)\n"
        )
        add(
            "The same backlog and worker command; only TASKQ_WORKER_POOL (and the number of "
            "children) differs. CPU includes the children.\n"
        )
        add(
            "| pool | threads or children | prefetch | drain jobs/s | first handler after ms "
            "| CPU us/job | parent RSS MB |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in (v["median"] for v in results["pools"].values()):
            add(
                f"| {row['pool']} | {row['slots']} | {row['prefetch']} | "
                f"{_n(row['drain_per_s'])} | "
                f"{_n(row['startup_ms'])} | {_n(row['cpu_us_per_job'])} | {_n(row['maxrss_mb'])} |"
            )
    if f.get("flow_jobs_per_s"):
        add(f"## Flow control (one worker, {f['flow_jobs']:,} no-op tasks per drain)\n")
        add("| condition | drain jobs/s | vs no limits |")
        add("| --- | ---: | ---: |")
        words = {
            "before": "no limits, the code before flow control",
            "none": "no limits",
            "max_running": f"max_running = {DEFAULT_CONCURRENCY} (the worker's concurrency)",
            "per_key": f"max_running_per_key = 1, {f.get('flow_keys') or 0:,} keys",
        }
        none = f["flow_jobs_per_s"].get("none")
        for cond, rate in f["flow_jobs_per_s"].items():
            add(f"| {words.get(cond, cond)} | {_n(rate)} | {_n(_ratio(rate, none), 2)} |")
        add("")
    if f.get("workflow_drain_per_s"):
        add(f"## Workflows (one worker; {f['workflow_jobs']:,} no-op tasks per drain)\n")
        add("| condition | drain jobs/s | vs before |")
        add("| --- | ---: | ---: |")
        words = {
            "before": "independent tasks, the code before workflows",
            "independent": "independent tasks (no depends_on)",
        }
        before = f["workflow_drain_per_s"].get("before")
        for cond, rate in f["workflow_drain_per_s"].items():
            add(f"| {words.get(cond, cond)} | {_n(rate)} | {_n(_ratio(rate, before), 2)} |")
        add("")
        add(
            "| graph | tasks | tasks/s | submit tasks/s | release p50 ms | p99 ms | max ms "
            "| root to first child ms |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for shape, g in f["workflow_graphs"].items():
            add(
                f"| {shape} | {_n(g['tasks'])} | {_n(g['tasks_per_s'])} | "
                f"{_n(g['submit_per_s'])} | {_n(g['release_p50_ms'], 1)} | "
                f"{_n(g['release_p99_ms'], 1)} | {_n(g['release_max_ms'], 1)} | "
                f"{_n(g.get('fan_out_ms'), 1)} |"
            )
        add("")
    add("## Targets (ratios from this run)\n")
    add("| target | this run | status |")
    add("| --- | ---: | --- |")
    for t in s["targets"]:
        add(f"| {t['target']} | {t['shown']} | {_mark(t['met'])} |")
    add("")
    if not headline_only:
        add("## Ratios\n")
        add("| ratio | value |")
        add("| --- | ---: |")
        for k, v in s["ratios"].items():
            add(f"| {k} | {_n(v, 2)} |")
        add("")
    return "\n".join(lines)
