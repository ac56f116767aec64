"""/stats (the dashboard's data), the /dashboard page, and the dashboard in a real browser:
Debian's Chromium driven by Playwright against `taskq api` and `taskq worker` processes."""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import psycopg
import pytest
from taskq import db, stats
from taskq.api import Deps, create_app, dashboard
from taskq.api import stats as stats_resource
from taskq.settings import Settings

from tests.helpers import (
    free_port,
    skip_unless_ci,
    spawn_taskq,
    stop_process,
    taskq_env,
    wait_until,
)
from tests.worker_helpers import fresh_registry

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "payload-secret-5521"


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    pools: list[Any] = []

    def make(**overrides: Any) -> falcon.testing.TestClient:
        settings = make_settings(**overrides)
        pool = db.create_pool(settings, name="test")
        pools.append(pool)
        return falcon.testing.TestClient(
            create_app(settings, Deps(pool=pool, registry=fresh_registry()))
        )

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def client(make_client: Callable[..., Any]) -> falcon.testing.TestClient:
    return make_client()


def _seed(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Two queues with every status; one finish too old for the hour's window."""
    sql = """
    INSERT INTO taskq_tasks (queue, kind, payload, status, run_at, attempts, worker_id,
                             lease_expires_at, finished_at, last_error, result)
    SELECT v.queue, v.kind, %(p)s, v.status, now() + v.run_in * interval '1 second',
           v.attempts, v.worker, now() + v.lease_in * interval '1 second',
           now() - v.finished_ago * interval '1 second', v.error,
           CASE WHEN v.status = 'succeeded' THEN %(p)s::jsonb END
      FROM (VALUES
        (1, 'web', 'echo', 'queued', -120, 0, NULL, NULL, NULL, NULL),
        (2, 'web', 'echo', 'queued', -30, 0, NULL, NULL, NULL, NULL),
        (3, 'web', 'echo', 'queued', 3600, 0, NULL, NULL, NULL, NULL),
        (4, 'web', 'echo', 'running', 0, 1, 'w1', 60, NULL, NULL),
        (5, 'web', 'echo', 'succeeded', 0, 1, 'w1', NULL, 180, NULL),
        (6, 'web', 'echo', 'succeeded', 0, 1, 'w1', NULL, 60, NULL),
        (7, 'web', 'echo', 'succeeded', 0, 1, 'w1', NULL, 7200, NULL),
        (8, 'mail', 'send', 'failed', 0, 3, 'w1', NULL, 300, %(e1)s),
        (9, 'mail', 'send', 'failed', 0, 1, 'w1', NULL, 60, %(e2)s),
        (10, 'mail', 'send', 'cancelled', 0, 0, NULL, NULL, 600, NULL)
      ) AS v(n, queue, kind, status, run_in, attempts, worker, lease_in, finished_ago, error)
     ORDER BY v.n
    RETURNING id, status, run_at
    """
    rows = conn.execute(
        sql,
        {
            "p": json.dumps({"secret": SECRET}),
            "e1": "RuntimeError: smtp timeout",
            "e2": "x" * 2000,
        },
    ).fetchall()
    return {"oldest": rows[0]["id"], "rows": rows}


# ---------------------------------------------------------------- /stats


def test_stats_counts_queues_statuses_and_the_last_hour(
    client: falcon.testing.TestClient, conn: psycopg.Connection[Any]
) -> None:
    seeded = _seed(conn)
    result = client.simulate_get("/stats")
    assert result.status_code == 200
    body = result.json
    assert SECRET not in result.text  # no payloads, no results
    assert body["totals"] == {
        "runnable": 2,
        "scheduled": 1,
        "queued": 3,
        "running": 1,
        "blocked": 0,
        "held": 0,
        "succeeded": 2,  # the one from two hours ago is outside the window
        "failed": 2,
        "cancelled": 1,
    }
    queues = {q["queue"]: q for q in body["queues"]}
    assert sorted(queues) == ["mail", "web"]
    assert (queues["web"]["runnable"], queues["web"]["queued"], queues["web"]["running"]) == (
        2,
        3,
        1,
    )
    assert 110 < queues["web"]["oldest_runnable_age_seconds"] < 200
    assert (queues["mail"]["failed"], queues["mail"]["cancelled"]) == (2, 1)
    assert body["oldest_runnable"]["id"] == str(seeded["oldest"])
    assert body["capped"] is False
    points = body["throughput"]["points"]
    assert len(points) == 60
    assert sum(p["succeeded"] for p in points) == 2
    assert sum(p["failed"] for p in points) == 2
    assert points == sorted(points, key=lambda p: p["t"])
    failures = body["recent_failures"]
    assert [len(f["last_error"]) for f in failures] == [stats.ERROR_PREVIEW, 26]
    assert failures[1]["last_error"] == "RuntimeError: smtp timeout"
    assert body["generated_at"].endswith("Z")


def test_stats_are_cached_briefly(
    client: falcon.testing.TestClient, conn: psycopg.Connection[Any]
) -> None:
    first = client.simulate_get("/stats").json
    conn.execute("INSERT INTO taskq_tasks (kind) VALUES ('echo')")
    assert client.simulate_get("/stats").json == first
    wait_until(
        lambda: client.simulate_get("/stats").json["totals"]["runnable"] == 1,
        timeout=stats_resource.CACHE_SECONDS + 5,
        what="the cache to expire",
    )


def test_the_throughput_series_reads_a_bounded_number_of_rows(
    client: falcon.testing.TestClient,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn.execute(
        "INSERT INTO taskq_tasks (kind, status, finished_at)"
        " SELECT 'echo', 'succeeded', now() - i * interval '1 minute'"
        " FROM generate_series(1, 20) i"
    )
    monkeypatch.setattr(stats, "FINISHED_BUDGET", 5)
    body = client.simulate_get("/stats").json
    assert sum(p["succeeded"] for p in body["throughput"]["points"]) == 5
    # The series says from when it is complete: the fifth-newest finish, ~5 minutes ago.
    window_start = body["throughput"]["points"][0]["t"]
    assert body["throughput"]["complete_since"] > window_start


def test_recent_failures_read_the_failed_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO taskq_tasks (kind, status, finished_at)"
        " SELECT 'echo', 'succeeded', now() FROM generate_series(1, 20000)"
    )
    conn.execute("ANALYZE taskq_tasks")
    from taskq import sql

    plan = json.dumps(
        conn.execute("EXPLAIN (FORMAT JSON) " + sql.RECENT_FAILURES, {"limit": 10}).fetchall()
    )
    assert "taskq_tasks_failed_idx" in plan
    assert "Seq Scan" not in plan


# ---------------------------------------------------------------- the page


def test_dashboard_page_has_a_strict_content_security_policy(
    client: falcon.testing.TestClient,
) -> None:
    result = client.simulate_get("/dashboard")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/html")
    policy = result.headers["content-security-policy"]
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    page, expected = dashboard.load_page()
    assert result.content == page
    assert policy == expected
    scripts = re.findall(r"'sha256-[^']+'", policy)
    assert len(scripts) == 2  # one script, one style block: both pinned by hash
    assert "innerHTML" not in result.text  # data reaches the page only as text nodes
    assert 'src="http' not in result.text  # nothing loaded from elsewhere


def test_the_page_ships_inside_the_package() -> None:
    """The wheel holds the taskq package whole (pyproject: packages = ["app/taskq"]); the
    page is read with importlib.resources, so it is found wherever taskq is installed."""
    from importlib import resources

    assert resources.files("taskq.api").joinpath("static", "dashboard.html").is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'packages = ["app/taskq"]' in pyproject
    ignored = (REPO / ".dockerignore").read_text() + (REPO / ".gitignore").read_text()
    assert "static" not in ignored
    assert "*.html" not in ignored


# ---------------------------------------------------------------- in a real browser


def _http(port: int, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"} if data else {},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (localhost)
        return json.loads(resp.read())


def _answers(port: int) -> bool:
    try:
        _http(port, "GET", "/live")
    except OSError:
        return False
    return True


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        skip_unless_ci(
            "Debian's chromium is not installed (apt-get install chromium; .ci/run does it "
            "from .ci/apt-packages.txt)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def running_taskq(database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`taskq api` and `taskq worker` processes with the flaky test handler."""
    marker = tmp_path / "fail-while-present"
    marker.touch()
    env = taskq_env(
        database_url, handler_modules="tests.dashboard_handlers", test_marker=str(marker)
    )
    port = free_port()
    logs = tmp_path / "logs.txt"
    with logs.open("w") as out:
        api = spawn_taskq(["api", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, stderr=out)
        worker = spawn_taskq(
            ["worker", "--queues", "default,emails", "--concurrency", "4"], env, stderr=out
        )
        try:
            wait_until(lambda: _answers(port), timeout=20, what="the API to answer")
            yield {"port": port, "marker": marker, "logs": logs}
        finally:
            assert stop_process(worker) == 0
            assert stop_process(api) == 0


def _history(database_url: str) -> tuple[int, int]:
    """An hour of finished tasks in the queue "reports" (served by no worker here), and
    three runnable ones waiting there. Returns (succeeded, failed) within the hour."""
    succeeded = failed = 0
    rows = []
    for minute in range(2, 58):
        ok = 3 + minute * 7 % 11
        bad = 1 if minute % 13 == 0 else 0
        succeeded, failed = succeeded + ok, failed + bad
        rows += [(minute, "succeeded", None)] * ok
        rows += [(minute, "failed", "TimeoutError: the renderer did not answer in 30 s")] * bad
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO taskq_tasks (queue, kind, status, attempts, started_at, finished_at,"
            " last_error) VALUES ('reports', 'render', %s, 1, now() - %s * interval '1 minute',"
            " now() - %s * interval '1 minute', %s)",
            [(status, m, m, error) for m, status, error in rows],
        )
        conn.execute(
            "INSERT INTO taskq_tasks (queue, kind, run_at) SELECT 'reports', 'render',"
            " now() - i * interval '40 seconds' FROM generate_series(1, 3) i"
        )
    return succeeded, failed


def test_the_dashboard_in_a_browser(
    browser: Any, running_taskq: dict[str, Any], database_url: str
) -> None:
    from playwright.sync_api import expect

    port, marker = running_taskq["port"], running_taskq["marker"]
    past_ok, past_failed = _history(database_url)
    echoes = [_http(port, "POST", "/tasks", {"payload": {"n": i}}) for i in range(6)]
    echoes += [_http(port, "POST", "/tasks", {"queue": "emails"}) for _ in range(2)]
    declined = {"message": "card declined: insufficient funds"}
    flaky = _http(port, "POST", "/tasks", {"kind": "flaky", "payload": declined})
    later = _http(port, "POST", "/tasks", {"kind": "sleep", "queue": "emails", "delay": 3600})

    def status(task: dict[str, Any]) -> str:
        return str(_http(port, "GET", f"/tasks/{task['id']}")["status"])

    wait_until(lambda: all(status(t) == "succeeded" for t in echoes), what="echo tasks done")
    wait_until(lambda: status(flaky) == "failed", what="the flaky task to fail")

    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    page.evaluate("window.__sameDocument = true")
    timeout = 15_000

    # What a person sees: counts by queue and status, the failure's error, the chart.
    card = page.locator('[data-card="succeeded"] .value')
    expect(card).to_have_text(str(8 + past_ok), timeout=timeout)
    expect(page.locator('[data-card="failed"] .value')).to_have_text(str(1 + past_failed))
    expect(page.locator('[data-card="scheduled"] .value')).to_have_text("1")
    expect(page.locator('[data-card="runnable"] .value')).to_have_text("3")
    expect(page.locator('tr[data-queue="reports"] td').nth(1)).to_have_text("3")  # runnable
    expect(page.locator("#oldest")).to_contain_text("in reports, waiting 2m")
    expect(page.locator('tr[data-queue="emails"]')).to_contain_text("emails")
    expect(page.locator('tr[data-queue="emails"] td').nth(2)).to_have_text("1")  # scheduled
    expect(page.locator('tr[data-queue="default"] td').nth(6)).to_have_text("6")  # succeeded
    expect(page.locator("#failures")).to_contain_text("card declined: insufficient funds")
    expect(page.locator("#chart-caption")).to_contain_text(
        f"{9 + past_ok + past_failed} finished in the last hour ({1 + past_failed} failed)"
    )
    assert page.locator("#chart svg rect").count() >= 56  # a bar per minute with work
    expect(page.locator("#failure-line")).to_have_count(1)  # failures on their own axis
    # No worker serves "reports" here: the page says so; the worker's queues are served.
    expect(page.locator('tr[data-queue="reports"]')).to_contain_text("no worker")
    expect(page.locator('tr[data-queue="default"]')).not_to_contain_text("no worker")
    # Authentication is off: nothing asks for a token.
    expect(page.get_by_role("button", name="API token")).to_be_hidden()

    # The task list: filters by queue and kind, and pages.
    page.locator("#queue-filter").select_option("emails")
    # The filtered list replaces the whole list (a refresh already in flight may answer
    # after the filter changed; the page drops that older answer).
    queue_cells = page.locator("#tasks tr td:nth-child(3)")
    expect(queue_cells.filter(has_not_text="emails")).to_have_count(0, timeout=timeout)
    expect(queue_cells.first).to_have_text("emails", timeout=timeout)
    queues = queue_cells.all_inner_texts()
    assert set(queues) == {"emails"}, queues
    page.locator("#queue-filter").select_option("")
    page.locator("#kind-filter").fill("render")
    page.locator("#kind-filter").press("Enter")
    kind_cells = page.locator("#tasks tr td:nth-child(4)")
    expect(kind_cells.filter(has_not_text="render")).to_have_count(0, timeout=timeout)
    expect(kind_cells.first).to_have_text("render", timeout=timeout)
    expect(page.locator("#tasks tr")).to_have_count(15)
    assert set(page.locator("#tasks tr td:nth-child(4)").all_inner_texts()) == {"render"}
    first_page = page.locator("#tasks tr td:nth-child(1)").all_inner_texts()
    expect(page.get_by_role("button", name="← Newer")).to_be_disabled()
    page.get_by_role("button", name="Older →").click()
    expect(page.locator("#page-number")).to_have_text("page 2", timeout=timeout)
    expect(page.locator("#tasks tr td:nth-child(1)").first).not_to_have_text(first_page[0])
    second_page = page.locator("#tasks tr td:nth-child(1)").all_inner_texts()
    assert not set(first_page) & set(second_page)
    page.get_by_role("button", name="← Newer").click()
    expect(page.locator("#tasks tr td:nth-child(1)").first).to_have_text(first_page[0])
    page.locator("#kind-filter").fill("")
    page.locator("#kind-filter").press("Enter")

    # A task's detail, from the failure list.
    page.get_by_text("card declined: insufficient funds").first.click()
    expect(page.locator('[data-field="status"]')).to_have_text("failed", timeout=timeout)
    expect(page.locator('[data-field="error"]')).to_contain_text("card declined")
    expect(page.get_by_role("button", name="Retry")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Retry the failed task (its cause fixed) and watch it succeed, without a reload.
    marker.unlink()
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#notice")).to_have_text("Queued again.")
    expect(page.locator('[data-field="status"]')).to_have_text("succeeded", timeout=timeout)
    assert status(flaky) == "succeeded"

    # Cancel the scheduled task, found by its id.
    page.locator("#task-id").fill(later["id"])
    page.get_by_role("button", name="Show").click()
    expect(page.locator('[data-field="status"]')).to_have_text("queued", timeout=timeout)
    expect(page.get_by_role("button", name="Retry")).to_be_disabled()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator('[data-field="status"]')).to_have_text("cancelled", timeout=timeout)
    expect(page.locator("#notice")).to_have_text("Cancelled.")
    assert status(later) == "cancelled"

    # New work shows up by itself: the page refreshes without reloading.
    _http(port, "POST", "/tasks", {})
    expect(card).to_have_text(str(10 + past_ok), timeout=timeout)  # + retried task + this one
    expect(page.locator('[data-card="cancelled"] .value')).to_have_text("1", timeout=timeout)
    assert page.evaluate("window.__sameDocument") is True
    assert problems == []
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    # The processes logged in text with request ids, and never a payload.
    text = running_taskq["logs"].read_text()
    assert "request_id=" in text
    assert "insufficient funds" not in text


def test_flow_control_in_the_dashboard(
    browser: Any, running_taskq: dict[str, Any], database_url: str
) -> None:
    """Set a queue's limits from the page, see tasks held back by them, edit and remove
    them; a refused value is shown with the field the API names."""
    from playwright.sync_api import expect

    port = running_taskq["port"]
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    timeout = 15_000

    page.locator("#limit-queue").fill("emails")
    page.locator("#limit-max-running").fill("1")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#limits-notice")).to_have_text(
        "Saved: emails: max 1 running.", timeout=timeout
    )
    assert _http(port, "GET", "/queues/emails")["max_running"] == 1

    tasks = [
        _http(
            port, "POST", "/tasks", {"kind": "sleep", "queue": "emails", "payload": {"seconds": 30}}
        )
        for _ in range(3)
    ]
    row = page.locator('tr[data-queue="emails"]')
    expect(row.locator('[data-field="held"]')).to_have_text("2", timeout=timeout)
    expect(row.locator("td").nth(3)).to_have_text("1")  # running
    expect(row.locator('[data-field="limits"]')).to_contain_text("max 1 running")
    expect(page.locator('[data-card="held-by-limit"] .value')).to_have_text("2")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-flow-control.png"), full_page=True)

    # Edit: the form is filled from the row; add a rate limit and a per-key limit.
    row.get_by_role("button", name="edit").click()
    expect(page.locator("#limit-max-running")).to_have_value("1")
    page.locator("#limit-per-key").fill("1")
    page.locator("#limit-rate-count").fill("10")
    page.locator("#limit-rate-seconds").fill("60")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#limits-notice")).to_have_text(
        "Saved: emails: max 1 running · 1 per key · 10 per 60s.", timeout=timeout
    )
    expect(row.locator('[data-field="limits"]')).to_contain_text("10 per 60s", timeout=timeout)

    # A rate limit without its window: the API's 422 names the field.
    page.locator("#limit-rate-seconds").fill("")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#limits-notice")).to_contain_text("rate_limit.per_seconds")
    assert _http(port, "GET", "/queues/emails")["rate_limit"] == {"count": 10, "per_seconds": 60.0}

    # Remove every limit: the held tasks start.
    for field in ("#limit-max-running", "#limit-per-key", "#limit-rate-count"):
        page.locator(field).fill("")
    page.get_by_role("button", name="Save limits").click()
    expect(page.locator("#limits-notice")).to_have_text("Saved: emails: none.", timeout=timeout)
    expect(row.locator('[data-field="held"]')).to_have_text("0", timeout=timeout)
    wait_until(
        lambda: all(_http(port, "GET", f"/tasks/{t['id']}")["status"] == "running" for t in tasks),
        what="the held tasks to start once the limit is gone",
    )
    assert problems == []


def test_task_ids_in_the_page_are_text_not_markup(
    browser: Any, running_taskq: dict[str, Any]
) -> None:
    """An error message full of markup is shown as text: no element, no script."""
    port, _ = running_taskq["port"], running_taskq["marker"]
    nasty = '<img src=x onerror="window.__pwned=1"><b id="injected">bold</b>'
    task = _http(port, "POST", "/tasks", {"kind": "flaky", "payload": {"message": nasty}})
    wait_until(
        lambda: _http(port, "GET", f"/tasks/{task['id']}")["status"] == "failed",
        what="the task to fail",
    )
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    expect(page.locator("#failures")).to_contain_text("onerror", timeout=15_000)
    assert page.locator("#injected").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert str(uuid.UUID(task["id"])) == task["id"]
    assert os.environ.get("TASKQ_TEST_MARKER") is None  # the marker lives in the processes


def test_the_dashboard_behind_bearer_tokens(
    browser: Any, database_url: str, tmp_path: Path
) -> None:
    """With tokens on, the page loads, asks for a token, keeps it for the tab and sends it
    with every request; a wrong token is refused and said so."""
    from playwright.sync_api import expect

    token = "dashboard-test-token-0123456789"
    env = taskq_env(database_url, api_tokens=token)
    port = free_port()
    api = spawn_taskq(["api", "--bind", f"127.0.0.1:{port}", "--workers", "1"], env)
    try:
        wait_until(lambda: _answers(port), timeout=20, what="the API to answer")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/tasks",
            data=b'{"queue": "secured"}',
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (localhost)
            assert resp.status == 201
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        form = page.locator("#token-form")
        expect(form).to_be_visible(timeout=15_000)
        expect(page.get_by_role("button", name="API token")).to_be_visible()
        expect(page.locator("#totals")).to_be_empty()
        page.get_by_label("Token", exact=True).fill("not-the-token-at-all-000")
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#token-why")).to_contain_text("not accepted", timeout=15_000)
        page.get_by_label("Token", exact=True).fill(token)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator('tr[data-queue="secured"]')).to_be_visible(timeout=15_000)
        expect(form).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('taskq.token')") == token
        page.reload()  # same tab: the token is still there, no prompt
        expect(page.locator('tr[data-queue="secured"]')).to_be_visible(timeout=15_000)
        expect(form).to_be_hidden()
    finally:
        assert stop_process(api) == 0


def test_the_schedules_panel_and_pausing_queues_in_a_browser(
    browser: Any, running_taskq: dict[str, Any]
) -> None:
    """The schedules panel shows next and last runs and the last task's status, and
    enables/disables; each queue's button pauses and resumes it."""
    from playwright.sync_api import expect

    port = running_taskq["port"]
    _http(port, "PUT", "/schedules/tick", {"every": 1, "kind": "echo"})
    _http(port, "PUT", "/schedules/nightly", {"cron": "0 3 * * *", "kind": "echo",
                                             "timezone": "Europe/Berlin",
                                             "concurrency_key": "tenant-9"})  # fmt: skip
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    timeout = 20_000

    tick = page.locator('[data-schedule="tick"]')
    expect(tick).to_contain_text("every 1s", timeout=timeout)
    expect(tick.locator('[data-field="last-status"]')).to_contain_text("succeeded", timeout=timeout)
    nightly = page.locator('[data-schedule="nightly"]')
    expect(nightly).to_contain_text("0 3 * * * (Europe/Berlin)")
    expect(nightly.locator('[data-field="queue"]')).to_have_text("default · key tenant-9")
    nightly.locator('button[data-action="disable"]').click()
    expect(nightly.locator('[data-field="next"]')).to_have_text("disabled", timeout=timeout)
    assert _http(port, "GET", "/schedules/nightly")["enabled"] is False
    nightly.locator('button[data-action="enable"]').click()
    expect(nightly.locator('button[data-action="disable"]')).to_be_visible(timeout=timeout)
    assert _http(port, "GET", "/schedules/nightly")["enabled"] is True

    # The worker serves "emails": the queue is listed although it has no task.
    emails = page.locator('[data-queue-state="emails"]')
    expect(emails).to_contain_text("active", timeout=timeout)
    emails.locator('button[data-action="pause"]').click()
    expect(emails).to_contain_text("paused", timeout=timeout)
    states = {q["name"]: q["paused"] for q in _http(port, "GET", "/queues")["queues"]}
    assert states["emails"] is True
    held = _http(port, "POST", "/tasks", {"queue": "emails"})  # accepted while paused
    emails.locator('button[data-action="resume"]').click()
    expect(emails).to_contain_text("active", timeout=timeout)
    wait_until(
        lambda: _http(port, "GET", f"/tasks/{held['id']}")["status"] == "succeeded",
        what="the held task to run after resume",
    )


def test_cancel_a_running_task_from_the_dashboard(
    browser: Any, running_taskq: dict[str, Any]
) -> None:
    """The Cancel button works on a running task: the request is shown at once, and the
    worker stops the task, which then shows cancelled without a reload."""
    from playwright.sync_api import expect

    port = running_taskq["port"]
    task = _http(port, "POST", "/tasks", {"kind": "sleep", "payload": {"seconds": 120}})
    wait_until(
        lambda: _http(port, "GET", f"/tasks/{task['id']}")["status"] == "running",
        what="the task to run",
    )
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    timeout = 15_000
    page.locator("#task-id").fill(task["id"])
    page.get_by_role("button", name="Show").click()
    expect(page.locator('[data-field="status"]')).to_have_text("running", timeout=timeout)
    expect(page.get_by_role("button", name="Retry")).to_be_disabled()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#notice")).to_have_text("Cancel requested: the worker is stopping it.")
    expect(page.locator('[data-field="status"]')).to_have_text("cancelled", timeout=timeout)
    expect(page.locator('[data-field="error"]')).to_have_text("cancelled while running")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    done = _http(port, "GET", f"/tasks/{task['id']}")
    assert (done["status"], done["attempts"]) == ("cancelled", 1)
    assert problems == []


def _label_fits(page: Any, label: str) -> dict[str, float]:
    """The rendered box of an axis label and of its SVG, in CSS pixels."""
    boxes: dict[str, float] = page.evaluate(
        """(id) => {
            const label = document.getElementById(id).getBoundingClientRect();
            const chart = document.querySelector("#chart svg").getBoundingClientRect();
            return {left: label.left, right: label.right, top: label.top,
                    bottom: label.bottom, svgLeft: chart.left, svgRight: chart.right,
                    svgTop: chart.top, svgBottom: chart.bottom};
        }""",
        label,
    )
    return boxes


def test_the_chart_axes_fit_large_numbers_and_show_few_failures(
    browser: Any, running_taskq: dict[str, Any], database_url: str
) -> None:
    """20,204 tasks in one minute: the left axis label is drawn whole inside the chart (it
    used to lose its first digit), and 3 failures stay visible on their own axis."""
    from playwright.sync_api import expect

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO taskq_tasks (queue, kind, status, attempts, started_at, finished_at)"
            " SELECT 'bulk', 'render', 'succeeded', 1, now() - interval '5 minutes',"
            " now() - interval '5 minutes' FROM generate_series(1, 20204)"
        )
        conn.execute(
            "INSERT INTO taskq_tasks (queue, kind, status, attempts, started_at, finished_at,"
            " last_error) SELECT 'bulk', 'render', 'failed', 1, now() - interval '9 minutes',"
            " now() - interval '9 minutes', 'boom' FROM generate_series(1, 3)"
        )
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.goto(f"http://127.0.0.1:{running_taskq['port']}/dashboard")
    expect(page.locator("#axis-left")).to_have_text("20,204", timeout=15_000)
    expect(page.locator("#axis-right")).to_have_text("3")
    for label in ("axis-left", "axis-right"):
        box = _label_fits(page, label)
        assert box["left"] >= box["svgLeft"], (label, box)
        assert box["right"] <= box["svgRight"], (label, box)
        assert box["top"] >= box["svgTop"], (label, box)
        assert box["bottom"] <= box["svgBottom"], (label, box)
    # The failure line reaches the top of its axis at the failing minute: visible, where
    # a stacked bar of 3 next to 20,204 would be a fraction of a pixel.
    line = page.locator("#failure-line")
    expect(line).to_have_count(1)
    ys = [float(p.split(",")[1]) for p in line.get_attribute("points").split()]
    assert max(ys) - min(ys) > 100  # viewBox units: nearly the chart's height
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#chart").screenshot(path=str(ARTIFACTS / "dashboard-chart.png"))
    assert (ARTIFACTS / "dashboard-chart.png").stat().st_size > 2_000


def test_blocked_tasks_and_a_tasks_graph_in_the_dashboard(
    browser: Any, running_taskq: dict[str, Any]
) -> None:
    """A task waiting for another: the queue row and the totals count it blocked; its
    page lists its parent with the parent's state, the parent's page lists it; links
    move between them; once the parent succeeds the child runs and both show it."""
    from playwright.sync_api import expect

    port = running_taskq["port"]
    graph = _http(
        port,
        "POST",
        "/tasks/batch",
        {
            "tasks": [
                {"kind": "sleep", "ref": "slow", "payload": {"seconds": 4}},
                {"kind": "echo", "ref": "after", "depends_on": ["slow"]},
            ]
        },
    )
    parent, child = graph["tasks"]
    assert child["status"] == "blocked"
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    timeout = 15_000
    row = page.locator('tr[data-queue="default"]')
    expect(row.locator('[data-field="blocked"]')).to_have_text("1", timeout=timeout)
    expect(page.locator('[data-card="blocked"] .value')).to_have_text("1")
    page.locator("#task-id").fill(child["id"])
    page.get_by_role("button", name="Show").click()
    expect(page.locator('[data-field="status"]')).to_have_text("blocked", timeout=timeout)
    parents = page.locator('[data-field="waits for"] li')
    expect(parents).to_have_count(1)
    expect(parents.first).to_contain_text(parent["id"])
    expect(parents.first).to_contain_text("running", timeout=timeout)
    expect(parents.first).to_contain_text("(slow)")
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-graph.png"), full_page=True)
    parents.first.get_by_role("link").click()
    expect(page.locator("#task-id")).to_have_value(parent["id"])
    children = page.locator('[data-field="waited for by"] li')
    expect(children).to_have_count(1, timeout=timeout)
    expect(children.first).to_contain_text(child["id"])
    expect(children.first).to_contain_text("(after)")
    # The parent succeeds; the child runs at once (the page refreshes on its own).
    expect(page.locator('[data-field="status"]')).to_have_text("succeeded", timeout=timeout)
    expect(children.first).to_contain_text("succeeded", timeout=timeout)
    expect(row.locator('[data-field="blocked"]')).to_have_text("0", timeout=timeout)
    assert problems == []
