"""Metrics: what the worker and the API count, queue statistics from the ready index,
and correct totals across gunicorn worker processes (multiprocess mode)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from taskq import metrics, queue, registry, stats
from taskq.settings import Settings

from tests.helpers import wait_until
from tests.worker_helpers import fresh_registry, running_worker

REPO = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape_text(port: int, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (http to localhost)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def scrape(port: int, path: str = "/metrics", headers: dict[str, str] | None = None) -> Samples:
    return parse(scrape_text(port, path, headers))


def families(text: str) -> set[str]:
    """Metric names as METRICS spells them (counters with _total), samples or not."""
    out = set()
    for family in text_string_to_metric_families(text):
        out.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def exported(kind: str) -> set[str]:
    """The names METRICS says the API or the worker exports."""
    return {info.name for info in metrics.METRICS if info.where in (kind, "both")}


# ---------------------------------------------------------------- worker


def test_worker_counts_outcomes_by_queue_and_kind(
    make_settings: Any, conn: psycopg.Connection[Any]
) -> None:
    settings: Settings = make_settings()
    with running_worker(settings, fresh_registry(), queues=["mq"], concurrency=4) as worker:
        before = scrape(worker.health.port)
        for _ in range(3):
            queue.enqueue(conn, "echo", {"n": 1}, queue="mq")
        queue.enqueue(conn, "fail", {"retryable": False}, queue="mq")
        queue.enqueue(conn, "fail", {}, queue="mq", max_attempts=2)  # one retry, then failed
        wait_until(
            lambda: value(scrape(worker.health.port), "taskq_tasks_failed_total", queue="mq",
                          kind="fail") - value(before, "taskq_tasks_failed_total", queue="mq",
                                               kind="fail") >= 2,
            what="two failures counted",
        )  # fmt: skip
        text = scrape_text(worker.health.port)
        after = parse(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("taskq_tasks_succeeded_total", queue="mq", kind="echo") == 3
    assert delta("taskq_tasks_failed_total", queue="mq", kind="fail") == 2
    assert delta("taskq_tasks_retried_total", queue="mq", kind="fail") == 1
    assert delta("taskq_tasks_succeeded_total", queue="mq", kind="fail") == 0
    # One time-in-queue and one run-time observation per attempt.
    assert delta("taskq_task_queue_wait_seconds_count", queue="mq", kind="echo") == 3
    assert delta("taskq_task_queue_wait_seconds_count", queue="mq", kind="fail") == 3
    assert delta("taskq_task_run_seconds_count", queue="mq", kind="fail") == 3
    assert delta("taskq_task_run_seconds_bucket", queue="mq", kind="echo", le="+Inf") == 3
    assert value(after, "taskq_worker_slots", queues="mq") == 4
    assert value(after, "taskq_db_pool_max_connections", pool="worker") >= 1
    assert exported("worker") <= families(text)


def test_in_flight_and_free_slots(make_settings: Any, conn: psycopg.Connection[Any]) -> None:
    settings: Settings = make_settings()
    with running_worker(settings, fresh_registry(), queues=["slots"], concurrency=3) as worker:
        for _ in range(2):
            queue.enqueue(conn, "sleep", {"seconds": 2}, queue="slots")

        def busy() -> bool:
            s = scrape(worker.health.port)
            return (
                value(s, "taskq_worker_inflight_tasks", queues="slots") == 2
                and value(s, "taskq_worker_free_slots", queues="slots") == 1
            )

        wait_until(busy, what="two tasks in flight, one slot free")
        wait_until(
            lambda: (
                value(scrape(worker.health.port), "taskq_worker_free_slots", queues="slots") == 3
            ),
            what="slots free again",
        )


def test_recovered_tasks_are_counted(make_settings: Any, conn: psycopg.Connection[Any]) -> None:
    settings: Settings = make_settings()
    ghost = queue.enqueue(conn, "echo", {}, queue="lost")
    last = queue.enqueue(conn, "echo", {}, queue="lost", max_attempts=1)
    conn.execute(
        "UPDATE taskq_tasks SET status = 'running', attempts = 1, worker_id = 'gone',"
        " lease_expires_at = now() - interval '1 minute' WHERE id = ANY(%s)",
        ([ghost.id, last.id],),
    )
    with running_worker(settings, fresh_registry(), queues=["lost"]) as worker:
        before = scrape(worker.health.port)  # the first sweep waits up to recover_interval
        wait_until(lambda: queue.get(conn, ghost.id).status == "succeeded", what="recovered")
        wait_until(lambda: queue.get(conn, last.id).status == "failed", what="failed")
        after = scrape(worker.health.port)
    recovered = value(after, "taskq_tasks_recovered_total", queue="lost", kind="echo") - value(
        before, "taskq_tasks_recovered_total", queue="lost", kind="echo"
    )
    failed = value(after, "taskq_tasks_failed_total", queue="lost", kind="echo") - value(
        before, "taskq_tasks_failed_total", queue="lost", kind="echo"
    )
    assert recovered == 2
    assert failed == 1


# ---------------------------------------------------------------- queue statistics


def _insert(conn: psycopg.Connection[Any], sql: str, *params: Any) -> None:
    conn.execute(sql, params)


def test_queue_stats_counts_runnable_and_finds_the_oldest(conn: psycopg.Connection[Any]) -> None:
    # queue a: 4 runnable over two priorities, 2 scheduled later; b: 1 runnable; c: later only
    _insert(
        conn,
        "INSERT INTO taskq_tasks (queue, kind, priority, run_at)"
        " SELECT 'a', 'echo', p, now() - s * interval '1 minute'"
        " FROM (VALUES (0, 1), (0, 2), (5, 3), (5, 10)) AS v(p, s)",
    )
    _insert(
        conn,
        "INSERT INTO taskq_tasks (queue, kind, priority, run_at) VALUES"
        " ('a', 'echo', 9, now() + interval '1 hour'), ('a', 'echo', 0, now() + interval '1 day'),"
        " ('b', 'echo', 0, now() - interval '5 seconds'),"
        " ('c', 'echo', 0, now() + interval '1 hour')",
    )
    # Finished and running rows are not queued.
    _insert(
        conn,
        "INSERT INTO taskq_tasks (queue, kind, status, finished_at, run_at) VALUES"
        " ('a', 'echo', 'succeeded', now(), now() - interval '1 day')",
    )
    oldest_a = conn.execute(
        "SELECT id FROM taskq_tasks WHERE queue = 'a' AND status = 'queued' ORDER BY run_at LIMIT 1"
    ).fetchone()["id"]
    rows = {r["queue"]: r for r in stats.queue_stats(conn)}
    assert sorted(rows) == ["a", "b", "c"]
    assert (rows["a"]["runnable"], rows["a"]["queued"]) == (4, 6)
    assert rows["a"]["oldest_id"] == oldest_a
    assert 590 < rows["a"]["oldest_age_seconds"] < 700
    assert (rows["b"]["runnable"], rows["b"]["queued"]) == (1, 1)
    assert (rows["c"]["runnable"], rows["c"]["queued"]) == (0, 1)
    assert rows["c"]["oldest_id"] is None
    assert rows["c"]["oldest_age_seconds"] == 0
    capped = {r["queue"]: r for r in stats.queue_stats(conn, cap=3)}
    assert (capped["a"]["runnable"], capped["a"]["scheduled"], capped["a"]["queued"]) == (3, 2, 5)


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_queue_stats_reads_only_the_ready_index_and_a_bounded_number_of_entries(
    conn: psycopg.Connection[Any],
) -> None:
    """60,000 queued and 20,000 finished rows: the statistics query touches the table
    only through index scans of the ready index, and reads at most ~cap entries per
    queue for each count (a million queued rows cost the same)."""
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, priority, run_at)"
        " SELECT 'q' || (i % 3), 'echo', i % 4, now() - (i % 1000) * interval '1 second'"
        " + CASE WHEN i % 10 = 0 THEN interval '1 day' ELSE interval '0' END"
        " FROM generate_series(1, 60000) i"
    )
    conn.execute(
        "INSERT INTO taskq_tasks (queue, kind, status, finished_at)"
        " SELECT 'q' || (i % 3), 'echo', 'succeeded', now() FROM generate_series(1, 20000) i"
    )
    conn.execute("VACUUM ANALYZE taskq_tasks")
    from taskq import sql

    cap = 500
    with conn.transaction():
        conn.execute(sql.STATS_SESSION, {"timeout_ms": "5000"})
        (row,) = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql.QUEUE_STATS, {"cap": cap, "max_groups": 1000}
        ).fetchall()
    plan = next(iter(row.values()))[0]["Plan"]
    scans = [n for n in _plan_nodes(plan) if n.get("Relation Name") == "taskq_tasks"]
    assert scans
    for node in scans:
        assert node["Node Type"] in ("Index Only Scan", "Index Scan"), node["Node Type"]
        assert node["Index Name"] == "taskq_tasks_ready_idx"
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    groups = 3 * 4
    assert read <= 2 * 3 * cap + 4 * groups, read
    found = stats.queue_stats(conn, cap=cap)
    assert [(r["queue"], r["runnable"], r["scheduled"]) for r in found] == [
        ("q0", cap, cap),
        ("q1", cap, cap),
        ("q2", cap, cap),
    ]


# ---------------------------------------------------------------- the metric table


def test_metric_names_follow_prometheus_conventions() -> None:
    seen = set()
    for info in metrics.METRICS:
        assert info.name.startswith("taskq_")
        assert info.name not in seen
        seen.add(info.name)
        assert (info.type == "counter") == info.name.endswith("_total"), info.name
        assert info.where in ("api", "worker", "both")
        if info.type == "histogram":  # durations in seconds, sizes in tasks
            assert info.name.endswith(("_seconds", "_tasks")), info.name
    assert json.dumps([m.name for m in metrics.METRICS])


# ---------------------------------------------------------------- API, in process


def test_api_metrics_in_process(make_settings: Any, conn: psycopg.Connection[Any]) -> None:
    import falcon.testing
    from taskq import db
    from taskq.api import Deps, create_app

    settings: Settings = make_settings()
    pool = db.create_pool(settings, name="test")
    try:
        client = falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )
        registry.worker_seen(conn, "metrics-test-worker", ["inproc"])  # a live worker serves it
        before = parse(client.simulate_get("/metrics").text)  # the scrape learns that
        task = client.simulate_post(
            "/tasks", json={"kind": "echo", "queue": "inproc"}, headers={"X-Request-ID": "m1"}
        ).json
        client.simulate_get(f"/tasks/{task['id']}")
        conn.execute(
            "UPDATE taskq_tasks SET run_at = now() - interval '90 seconds' WHERE id = %s",
            (task["id"],),
        )
        result = client.simulate_get("/metrics")
        assert result.headers["content-type"].startswith("text/plain")
        text = result.text
    finally:
        pool.close()
    after = parse(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("taskq_tasks_enqueued_total", queue="inproc", kind="echo") == 1
    assert delta("taskq_http_requests_total", method="POST", route="/tasks", status="201") == 1
    # Route templates, never raw paths (bounded label values).
    assert delta("taskq_http_requests_total", method="GET", route="/tasks/{task_id}",
                 status="200") == 1  # fmt: skip
    assert value(after, "taskq_queue_depth", queue="inproc") == 1
    assert value(after, "taskq_queue_tasks", queue="inproc") == 1
    assert 89 < value(after, "taskq_queue_oldest_age_seconds", queue="inproc") < 200
    assert value(after, "taskq_queue_stats_up") == 1
    assert value(after, "taskq_db_pool_max_connections", pool="api") >= settings.db_pool_max
    assert exported("api") <= families(text)


def test_queue_labels_are_capped_to_known_queues(
    make_settings: Any, conn: psycopg.Connection[Any]
) -> None:
    """A client submitting to ever new queue names creates no new series: unknown queues
    count under `other`; configured and served queues keep their own label."""
    import falcon.testing
    from taskq import db
    from taskq.api import Deps, create_app

    settings: Settings = make_settings(worker_queues=["configured_q"])
    pool = db.create_pool(settings, name="test")
    try:
        client = falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )
        registry.worker_seen(conn, "cap-test-worker", ["served_q"])
        before = parse(client.simulate_get("/metrics").text)
        names = [f"flood_{uuid.uuid4().hex[:8]}" for _ in range(30)]
        for name in [*names, "configured_q", "served_q"]:
            assert client.simulate_post("/tasks", json={"queue": name}).status_code == 201
        text = client.simulate_get("/metrics").text
    finally:
        pool.close()
    after = parse(text)
    assert not any(name in text for name in names)
    enqueued = "taskq_tasks_enqueued_total"
    assert (
        value(after, enqueued, queue="other", kind="echo")
        - value(before, enqueued, queue="other", kind="echo")
        == 30
    )
    assert value(after, enqueued, queue="configured_q", kind="echo") >= 1
    assert value(after, enqueued, queue="served_q", kind="echo") >= 1
    assert value(after, "taskq_queue_depth", queue="other") >= 30  # the depth gauges too
    assert value(after, "taskq_queue_depth", queue="served_q") >= 1


# ---------------------------------------------------------------- gunicorn, several processes


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def test_totals_add_up_across_gunicorn_worker_processes(database_url: str) -> None:
    """`taskq api --workers 2`: every scrape, whichever process answers it, reports the
    sum over both; a killed worker's counts survive and its live gauges go away."""
    import http.client
    import os
    import signal
    import tempfile

    from tests.helpers import free_port, spawn_taskq, stop_process, taskq_env

    # A directory left by a dead server, with a counter file that must not be counted.
    ghost = spawn_taskq(["--help"], os.environ.copy(), stdout=subprocess.DEVNULL)
    ghost.wait(10)
    stale = Path(tempfile.gettempdir()) / f"taskq-metrics-{ghost.pid}"
    stale.mkdir(exist_ok=True)
    (stale / "counter_1.db").write_bytes(b"\0" * 64)

    port = free_port()
    env = taskq_env(database_url, db_pool_max=3, worker_queues="default,mp")  # known queues
    api = spawn_taskq(["api", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env,
                      stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: _answers(port), timeout=20, what="the API to answer")
        wait_until(lambda: len(_children(api.pid)) == 2, what="two gunicorn workers")
        mine = Path(tempfile.gettempdir()) / f"taskq-metrics-{api.pid}"
        assert mine.is_dir()
        assert not stale.exists(), "a dead server's metrics directory was left in place"
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/tasks", body='{"queue": "mp"}',
                         headers={"content-type": "application/json"})  # fmt: skip
            assert conn.getresponse().status == 201
            conn.close()

        def consistent(expected_pool_max: float) -> bool:
            for _ in range(8):  # several scrapes: the kernel hands them to either process
                s = scrape(port)
                assert value(s, "taskq_tasks_enqueued_total", queue="mp", kind="echo") == 20
                assert value(s, "taskq_http_requests_total", method="POST", route="/tasks",
                             status="201") == 20  # fmt: skip
                if value(s, "taskq_db_pool_max_connections", pool="api") != expected_pool_max:
                    return False
            return True

        # Each process reports its pool once it has loaded the app: 2 x 3 across both.
        wait_until(lambda: consistent(2 * 3), timeout=20, what="pool gauges of both processes")
        victim = min(_children(api.pid))
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(_children(api.pid)) == 2 and victim not in _children(api.pid),
            timeout=20,
            what="gunicorn to replace the killed worker",
        )
        # Counters of the dead process stay; its live gauges are gone (mark_process_dead),
        # the new process's are there: still 2 x 3, never 3 x 3.
        wait_until(lambda: consistent(2 * 3), timeout=20, what="gauges of the live processes")
    finally:
        assert stop_process(api) == 0
    assert not mine.exists(), "the metrics directory outlived the server"


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# ---------------------------------------------------------------- gitops: scraping and Grafana

GRAFANA = REPO / "gitops" / "grafana" / "taskq-dashboard.json"
_METRIC = re.compile(r"\btaskq_[a-z0-9_]+")


def grafana_problems(doc: dict[str, Any]) -> list[str]:
    """Why a Grafana dashboard does not fit taskq's metrics (empty: it does)."""
    known = {info.name for info in metrics.METRICS}
    histograms = {info.name for info in metrics.METRICS if info.type == "histogram"}
    problems = []
    used: set[str] = set()
    if not doc.get("uid") or not doc.get("title"):
        problems.append("dashboard needs a uid and a title")
    variables = {v["name"] for v in doc.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problems.append("no datasource variable: the dashboard would be tied to one Prometheus")
    for panel in doc.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{title}: datasource is not ${{datasource}}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{title}: no query")
        for target in targets:
            names = set(_METRIC.findall(target.get("expr", "")))
            if not names:
                problems.append(f"{title}: query names no taskq metric: {target.get('expr')}")
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name in known or (base in histograms and base != name):
                    used.add(base if base in histograms else name)
                else:
                    problems.append(f"{title}: {name} is not a metric taskq exports")
    for name in sorted(known - used):
        problems.append(f"no panel shows {name}")
    return problems


def test_a_scrape_skips_a_metrics_file_a_process_is_creating(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A gunicorn worker that starts (or replaces a dead one) creates its metrics file
    empty and sizes it a moment later; a scrape in that moment answers with the other
    processes' values instead of failing."""
    import os
    import sys

    code = (
        "from prometheus_client import Counter;"
        " Counter('taskq_probe', 'a counter', ['queue']).labels('mp').inc(3)"
    )
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    (tmp_path / "counter_999999.db").touch()  # a process creating its file right now
    (tmp_path / "gauge_livesum_999998.db").touch()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    body, _ = metrics.exposition()
    assert value(parse(body.decode()), "taskq_probe_total", queue="mp") == 3


def test_grafana_dashboard_queries_only_metrics_taskq_exports() -> None:
    doc = json.loads(GRAFANA.read_text())
    assert grafana_problems(doc) == []


def test_grafana_check_catches_a_misspelt_metric() -> None:
    doc = json.loads(GRAFANA.read_text())
    doc["panels"][0]["targets"][0]["expr"] = "sum(taskq_queue_dept)"
    doc["panels"].append({"title": "empty", "datasource": {"uid": "prom"}, "targets": []})
    problems = grafana_problems(doc)
    assert any("taskq_queue_dept is not a metric" in p for p in problems)
    assert any(p.startswith("empty: datasource") for p in problems)
    assert any(p == "empty: no query" for p in problems)


def test_pods_are_annotated_for_scraping_on_their_metrics_ports() -> None:
    import yaml

    base = REPO / "gitops" / "apps" / "base"
    # The ConfigMap is generated from config.env (KEY=VALUE lines, # comments).
    lines = (base / "config.env").read_text().splitlines()
    config = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    binds = {"api": config["TASKQ_API_BIND"], "worker": config["TASKQ_WORKER_HEALTH_BIND"]}
    for component, bind in binds.items():
        deployment = yaml.safe_load((base / f"{component}-deployment.yaml").read_text())
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        port = int(annotations["prometheus.io/port"])
        assert port == int(bind.rsplit(":", 1)[1]), component
        ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]]
        assert port in ports, component
    policy = yaml.safe_load((base / "networkpolicy-metrics-ingress.yaml").read_text())
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [int(binds["worker"].rsplit(":", 1)[1])]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    kustomization = (base / "kustomization.yaml").read_text()
    assert "networkpolicy-metrics-ingress.yaml" in kustomization


def test_every_metric_is_listed_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [info.name for info in metrics.METRICS if f"`{info.name}`" not in readme]
    assert missing == []


def test_observe_many_matches_observe_value_by_value() -> None:
    """The batched histogram update relies on prometheus-client's layout; it must give
    exactly what observing each value does, edges of buckets included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = [0.0, 0.001, 0.0010001, 0.004, 0.005, 0.3, 0.3, 7.0, 900.0, 10_000.0]

    def exposition(batched: bool) -> str:
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ["queue"], buckets=metrics.RUN_BUCKETS, registry=registry)
        child = histogram.labels("q")
        if batched:
            metrics.observe_many(child, values)
        else:
            for value in values:
                child.observe(value)
        lines = generate_latest(registry).decode().splitlines()
        return "\n".join(line for line in lines if "_created" not in line)

    assert exposition(batched=True) == exposition(batched=False)

    class Plain:  # a histogram child of another layout: plain observe() is used
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    metrics.observe_many(plain, values)
    assert plain.seen == values
