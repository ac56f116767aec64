"""Prometheus metrics: what the API and the worker count, and how `/metrics` renders them.

Two sources:
- Counters, histograms and gauges kept by each process (tasks enqueued, finished,
  retried, recovered; time in queue; run time; worker slots; pool usage; HTTP requests).
- Queue gauges read from PostgreSQL when the API is scraped (`QueueCollector`): depth
  and the age of the oldest runnable task per queue, from the ready index alone
  (app/taskq/sql.py QUEUE_STATS), so a scrape costs a few thousand index entries however long
  the queue is.

Several processes (gunicorn workers): prometheus-client's multiprocess mode. `taskq api`
gives each server a fresh directory in PROMETHEUS_MULTIPROC_DIR before it forks
(`prepare_multiprocess_dir`), every process writes its values to files there, a scrape
served by any process adds them all up (skipping a file still being created), and
gunicorn's `child_exit` hook drops the live
gauges of a process that exited (app/taskq/server.py). prometheus-client decides at import
time whether it runs in that mode, so this module imports it only on first use: a
gunicorn master must not record a metric before it forks.

Nothing here labels by task id, payload or error text: label values are queue and kind
names and HTTP route templates. Any client may submit to a new queue name, so the
`queue` label is bounded too: a queue has its own label once it is known to the process
(named in TASKQ_WORKER_QUEUES, served by a worker in this process, or served by a live
worker as the database says at each /metrics scrape), and every other queue counts under
`other` (`queue_label`). One module for the one noun: the
METRICS table, the functions that record each metric and the exposition belong together.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from taskq import registry, stats, workers
from taskq.stats import STATS_CAP

if TYPE_CHECKING:  # pragma: no cover - typing only; see the module docstring
    from prometheus_client.metrics_core import Metric

    from taskq.models import Task
    from taskq.queue import Claimed

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR_PREFIX = "taskq-metrics-"

# Queue waits span milliseconds (a busy worker) to hours (a backlog, a stopped worker).
QUEUE_WAIT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400,
)  # fmt: skip
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SUBMIT_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


@dataclass(frozen=True)
class MetricInfo:
    name: str  # as exposed; counters carry _total, histograms _bucket/_sum/_count too
    type: str
    labels: tuple[str, ...]
    help: str
    where: str  # "api", "worker" or "both"


# Every metric taskq exports. The README's list, the Grafana dashboard's queries and a
# test that scrapes both processes are all checked against this table.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("taskq_tasks_enqueued_total", "counter", ("queue", "kind"),
               "Tasks inserted by this process (the API, or a worker's scheduler; idempotent "
               "repeats not counted).", "both"),
    MetricInfo("taskq_tasks_succeeded_total", "counter", ("queue", "kind"),
               "Tasks whose handler returned.", "worker"),
    MetricInfo("taskq_tasks_failed_total", "counter", ("queue", "kind"),
               "Tasks that ended failed (non-retryable error, attempts used up, or "
               "recovered from an expired lease on their last attempt).", "worker"),
    MetricInfo("taskq_tasks_retried_total", "counter", ("queue", "kind"),
               "Attempts that raised and were queued again with a backoff.", "worker"),
    MetricInfo("taskq_tasks_recovered_total", "counter", ("queue", "kind"),
               "Tasks taken back from a worker whose lease expired or whose session ended.",
               "worker"),
    MetricInfo("taskq_tasks_snoozed_total", "counter", ("queue", "kind"),
               "Attempts that raised Snooze: queued again, the attempt given back.", "worker"),
    MetricInfo("taskq_tasks_cancelled_total", "counter", ("queue", "kind"),
               "Running tasks that ended cancelled on request.", "worker"),
    MetricInfo("taskq_task_overruns_total", "counter", ("queue", "kind"),
               "Thread-pool attempts still running TASKQ_WORKER_KILL_GRACE after their "
               "timeout or cancel (the handler ignores ctx.cancelled; it keeps its slot).",
               "worker"),
    MetricInfo("taskq_worker_child_deaths_total", "counter", (),
               "Process-pool children that died on their own while running a task.",
               "worker"),
    MetricInfo("taskq_tasks_lease_lost_total", "counter", (),
               "Outcomes refused because the worker no longer held the lease.", "worker"),
    MetricInfo("taskq_task_queue_wait_seconds", "histogram", ("queue", "kind"),
               "Time from a task becoming runnable (run_at) to a worker claiming it.",
               "worker"),
    MetricInfo("taskq_task_run_seconds", "histogram", ("queue", "kind"),
               "Time the handler ran, per attempt.", "worker"),
    MetricInfo("taskq_worker_inflight_tasks", "gauge", ("queues",),
               "Tasks claimed by this worker and not yet recorded.", "worker"),
    MetricInfo("taskq_worker_slots", "gauge", ("queues",),
               "Tasks this worker runs at once (its concurrency).", "worker"),
    MetricInfo("taskq_worker_free_slots", "gauge", ("queues",),
               "Slots free for the next claim.", "worker"),
    MetricInfo("taskq_db_pool_connections", "gauge", ("pool",),
               "Open connections in the pool.", "both"),
    MetricInfo("taskq_db_pool_idle_connections", "gauge", ("pool",),
               "Open connections not lent out.", "both"),
    MetricInfo("taskq_db_pool_max_connections", "gauge", ("pool",),
               "The pool's maximum size.", "both"),
    MetricInfo("taskq_db_pool_waiting_requests", "gauge", ("pool",),
               "Requests waiting for a connection.", "both"),
    MetricInfo("taskq_http_requests_total", "counter", ("method", "route", "status"),
               "HTTP requests answered, by route template and status.", "api"),
    MetricInfo("taskq_http_request_duration_seconds", "histogram", ("method", "route"),
               "Time to answer an HTTP request.", "api"),
    MetricInfo("taskq_api_group_commit_tasks", "histogram", (),
               "Single submissions (POST /tasks) one commit of an API process wrote "
               "together (group commit).", "api"),
    MetricInfo("taskq_api_open_connections", "gauge", (),
               "Open client connections, summed over the API's processes.", "api"),
    MetricInfo("taskq_api_connections_handed_over_total", "counter", (),
               "Keep-alive connections an API process closed after a response because it "
               "held more than its least loaded sibling (the client reconnects).", "api"),
    MetricInfo("taskq_queue_depth", "gauge", ("queue",),
               f"Runnable queued tasks (run_at has come), read at scrape time; counted up "
               f"to {STATS_CAP}, so {STATS_CAP} means at least that many.", "api"),
    MetricInfo("taskq_queue_tasks", "gauge", ("queue",),
               f"Queued tasks, scheduled ones included (runnable and scheduled each "
               f"counted up to {STATS_CAP}).",
               "api"),
    MetricInfo("taskq_queue_blocked", "gauge", ("queue",),
               f"Blocked tasks (waiting for the tasks they depend on), read at scrape time; "
               f"counted up to {STATS_CAP} in all.", "api"),
    MetricInfo("taskq_queue_oldest_age_seconds", "gauge", ("queue",),
               "How long the oldest runnable task has been waiting (0 when none).", "api"),
    MetricInfo("taskq_queue_limit_held", "gauge", ("queue",),
               "Runnable tasks a flow-control limit keeps queued now (queues with limits).",
               "api"),
    MetricInfo("taskq_queue_max_running", "gauge", ("queue",),
               "Flow control: the queue's max_running (only queues that set it).", "api"),
    MetricInfo("taskq_queue_max_running_per_key", "gauge", ("queue",),
               "Flow control: the queue's max_running_per_key (only queues that set it).",
               "api"),
    MetricInfo("taskq_queue_rate_limit_count", "gauge", ("queue",),
               "Flow control: task starts allowed per rate window (only rate-limited queues).",
               "api"),
    MetricInfo("taskq_queue_rate_limit_seconds", "gauge", ("queue",),
               "Flow control: the rate window in seconds (only rate-limited queues).", "api"),
    MetricInfo("taskq_queue_stats_up", "gauge", (),
               "1 when the scrape could read the queue statistics from PostgreSQL.", "api"),
    MetricInfo("taskq_queue_paused", "gauge", ("queue",),
               "1 while the queue is paused (workers claim nothing from it), 0 when it has "
               "settings and is not; read at scrape time.", "api"),
)  # fmt: skip
_INFO = {m.name: m for m in METRICS}


def _base(name: str) -> str:
    return name.removesuffix("_total")


class _Metrics:
    """The prometheus-client objects, created on first use (see the module docstring)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str) -> Counter:
            info = _INFO[name]
            return Counter(_base(name), info.help, info.labels)

        def gauge(name: str) -> Gauge:
            info = _INFO[name]
            # livesum: a multiprocess scrape adds up the values of live processes only.
            return Gauge(name, info.help, info.labels, multiprocess_mode="livesum")

        def histogram(name: str, buckets: Sequence[float]) -> Histogram:
            info = _INFO[name]
            return Histogram(name, info.help, info.labels, buckets=buckets)

        self.enqueued = counter("taskq_tasks_enqueued_total")
        self.succeeded = counter("taskq_tasks_succeeded_total")
        self.failed = counter("taskq_tasks_failed_total")
        self.retried = counter("taskq_tasks_retried_total")
        self.recovered = counter("taskq_tasks_recovered_total")
        self.lease_lost = counter("taskq_tasks_lease_lost_total")
        self.snoozed = counter("taskq_tasks_snoozed_total")
        self.cancelled = counter("taskq_tasks_cancelled_total")
        self.overruns = counter("taskq_task_overruns_total")
        self.child_deaths = counter("taskq_worker_child_deaths_total")
        self.queue_wait = histogram("taskq_task_queue_wait_seconds", QUEUE_WAIT_BUCKETS)
        self.run_time = histogram("taskq_task_run_seconds", RUN_BUCKETS)
        self.inflight = gauge("taskq_worker_inflight_tasks")
        self.slots = gauge("taskq_worker_slots")
        self.free_slots = gauge("taskq_worker_free_slots")
        self.pool_size = gauge("taskq_db_pool_connections")
        self.pool_idle = gauge("taskq_db_pool_idle_connections")
        self.pool_max = gauge("taskq_db_pool_max_connections")
        self.pool_waiting = gauge("taskq_db_pool_waiting_requests")
        self.http_requests = counter("taskq_http_requests_total")
        self.http_duration = histogram("taskq_http_request_duration_seconds", HTTP_BUCKETS)
        self.submit_groups = histogram("taskq_api_group_commit_tasks", SUBMIT_GROUP_BUCKETS)
        self.open_connections = gauge("taskq_api_open_connections")
        self.handed_over = counter("taskq_api_connections_handed_over_total")


_metrics: _Metrics | None = None
_create_lock = threading.Lock()
# (metric, label values) -> child: skips prometheus-client's label checks and lock on the
# hot paths (a claim, a finish, a request); label values are bounded names.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _m() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _create_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def started() -> bool:
    """Whether any metric exists in this process yet (a gunicorn master must say no)."""
    return _metrics is not None


# ------------------------------------------------------------------ bounded queue labels

OTHER_QUEUE = "other"
# Known queues per process, at most: a safety net should workers serve very many queues.
MAX_QUEUE_LABELS = 500
_known_queues: set[str] = set()


def know_queues(names: Iterable[str]) -> None:
    """Give these queues labels of their own (configured or served by a live worker)."""
    for name in names:
        if len(_known_queues) >= MAX_QUEUE_LABELS:
            return
        _known_queues.add(name)


def queue_label(name: str) -> str:
    """The `queue` label value of a queue: its name when known, else "other"."""
    return name if name in _known_queues else OTHER_QUEUE


# ------------------------------------------------------------------ task events


def tasks_enqueued(tasks: Iterable[Task]) -> None:
    """Count tasks just inserted. Counted at the INSERT: the API commits at once (a batch
    is one transaction that fails as a whole only if its commit does)."""
    m = _m()
    for task in tasks:
        if task.created:
            _child(m.enqueued, queue_label(task.queue), task.kind).inc()


def observe_many(child: Any, values: Sequence[float]) -> None:
    """`child.observe(v)` for every value, as one update per touched bucket.

    A worker observes thousands of values a second, mostly into the same few buckets;
    prometheus-client's observe takes a lock and walks the bucket list for each one.
    Falls back to plain observe if the histogram's layout is not the one relied on here
    (the test suite checks that both give the same exposition).
    """
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            child.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        index = bisect.bisect_left(bounds, value)  # first bound >= value, as observe()
        counts[index] = counts.get(index, 0) + 1
    total.inc(sum(values))
    for index, n in counts.items():
        buckets[index].inc(n)


def _grouped(items: Iterable[tuple[tuple[str, ...], float]]) -> dict[tuple[str, ...], list[float]]:
    groups: dict[tuple[str, ...], list[float]] = {}
    for labels, value in items:
        groups.setdefault(labels, []).append(value)
    return groups


def tasks_claimed(tasks: Iterable[Claimed]) -> None:
    """Observe how long each claimed task waited after becoming runnable."""
    m = _m()
    for labels, waits in _grouped(
        ((queue_label(t.queue), t.kind), t.waited) for t in tasks
    ).items():
        observe_many(_child(m.queue_wait, *labels), waits)


def tasks_ran(runs: Iterable[tuple[str, str, float]]) -> None:
    """Observe handler run times: (queue, kind, seconds) per finished attempt."""
    m = _m()
    for labels, seconds in _grouped(((queue_label(q), k), s) for q, k, s in runs).items():
        observe_many(_child(m.run_time, *labels), seconds)


def tasks_finished(applied: Iterable[dict[str, Any]], lost: int = 0) -> None:
    """Count recorded outcomes: rows of app/taskq/sql.py FINISH (status, queue, kind)."""
    m = _m()
    by_status = {
        "succeeded": m.succeeded,
        "failed": m.failed,
        "queued": m.retried,
        "snoozed": m.snoozed,
        "cancelled": m.cancelled,
    }
    counts: dict[tuple[str, str, str], int] = {}
    for row in applied:
        status = "snoozed" if row.get("snoozed") else row["status"]
        key = (status, queue_label(row["queue"]), row["kind"])
        counts[key] = counts.get(key, 0) + 1
    for (status, queue, kind), n in counts.items():
        counter = by_status.get(status)
        if counter is not None:
            _child(counter, queue, kind).inc(n)
    if lost:
        m.lease_lost.inc(lost)


def task_overran(queue: str, kind: str) -> None:
    """A thread-pool handler kept running past its stop's grace."""
    _child(_m().overruns, queue, kind).inc()


def child_died() -> None:
    """A process-pool child died on its own while running a task."""
    _m().child_deaths.inc()


def tasks_recovered(rows: Iterable[dict[str, Any]]) -> None:
    """Count tasks recovered from expired leases (rows of RECOVER_EXPIRED)."""
    m = _m()
    for row in rows:
        label = queue_label(row["queue"])
        _child(m.recovered, label, row["kind"]).inc()
        if row["status"] == "failed":
            _child(m.failed, label, row["kind"]).inc()


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    m = _m()
    _child(m.http_requests, method, route, str(status)).inc()
    _child(m.http_duration, method, route).observe(seconds)


def submit_group(size: int) -> None:
    """One group commit of the API wrote `size` single submissions."""
    _m().submit_groups.observe(size)


def api_connections(open_now: int) -> None:
    """This API process holds `open_now` client connections."""
    _m().open_connections.set(open_now)


def connection_handed_over() -> None:
    """This API process closes a keep-alive connection so that a sibling takes it."""
    _m().handed_over.inc()


# ------------------------------------------------------------------ process state


class _Pool(Protocol):
    def get_stats(self) -> dict[str, int]: ...


class _Worker(Protocol):
    queues: list[str]

    def snapshot(self) -> Any: ...  # .slots, .in_flight, .free


_pools: dict[str, weakref.WeakSet[Any]] = {}
_workers: weakref.WeakSet[Any] = weakref.WeakSet()
_state_lock = threading.Lock()
_last_refresh = 0.0


def track_pool(pool: _Pool, name: str) -> None:
    """Report this connection pool's usage under pool=`name` (summed per name)."""
    with _state_lock:
        _pools.setdefault(name, weakref.WeakSet()).add(pool)
    refresh()


def watch_worker(worker: _Worker) -> None:
    """Report a worker's slots, in-flight tasks and free slots, from its `snapshot()` at
    scrape time."""
    with _state_lock:
        _workers.add(worker)
    know_queues(worker.queues)
    refresh()


def refresh(min_interval: float = 0.0) -> None:
    """Copy pool and worker state into gauges (at most once per `min_interval` seconds)."""
    global _last_refresh
    now = time.monotonic()
    if min_interval and now - _last_refresh < min_interval:
        return
    _last_refresh = now
    m = _m()
    with _state_lock:
        pools = {name: list(members) for name, members in _pools.items()}
        workers = list(_workers)
    for name, members in pools.items():
        totals = {"pool_size": 0, "pool_available": 0, "pool_max": 0, "requests_waiting": 0}
        for pool in members:
            with contextlib.suppress(Exception):  # a closed pool has nothing to report
                stats = pool.get_stats()
                for key in totals:
                    totals[key] += int(stats.get(key, 0))
        m.pool_size.labels(name).set(totals["pool_size"])
        m.pool_idle.labels(name).set(totals["pool_available"])
        m.pool_max.labels(name).set(totals["pool_max"])
        m.pool_waiting.labels(name).set(totals["requests_waiting"])
    by_queues: dict[str, list[int]] = {}
    for worker in workers:
        key = ",".join(worker.queues)
        snap = worker.snapshot()
        summed = by_queues.setdefault(key, [0, 0, 0])
        summed[0] += snap.slots
        summed[1] += snap.in_flight
        summed[2] += snap.free
    for key, (slots, inflight, free) in by_queues.items():
        m.slots.labels(key).set(slots)
        m.inflight.labels(key).set(inflight)
        m.free_slots.labels(key).set(free)


# ------------------------------------------------------------------ scrape-time queue stats


class QueueCollector:
    """Queue depth and oldest runnable age per queue, read from PostgreSQL per scrape."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from taskq.db import pooled
        from taskq.errors import TaskqError

        up = GaugeMetricFamily("taskq_queue_stats_up", _INFO["taskq_queue_stats_up"].help)
        try:
            with pooled(self._pool) as conn:
                rows = stats.depths(conn)
                blocked = stats.blocked_counts(conn, cap=stats.STATS_CAP)
                paused = registry.paused_queues(conn)
                know_queues(workers.served_queues(conn))
        except TaskqError as exc:
            log.warning("queue statistics unavailable for /metrics: %s", exc.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        families = {
            "runnable": GaugeMetricFamily(
                "taskq_queue_depth", _INFO["taskq_queue_depth"].help, labels=["queue"]
            ),
            "queued": GaugeMetricFamily(
                "taskq_queue_tasks", _INFO["taskq_queue_tasks"].help, labels=["queue"]
            ),
            "oldest_age_seconds": GaugeMetricFamily(
                "taskq_queue_oldest_age_seconds",
                _INFO["taskq_queue_oldest_age_seconds"].help,
                labels=["queue"],
            ),
        }
        # Unknown queues add up under "other" (the oldest age: the largest of them).
        merged: dict[str, dict[str, float]] = {}
        for row in rows:
            into = merged.setdefault(queue_label(row["queue"]), dict.fromkeys(families, 0.0))
            into["runnable"] += float(row["runnable"])
            into["queued"] += float(row["queued"])
            into["oldest_age_seconds"] = max(
                into["oldest_age_seconds"], float(row["oldest_age_seconds"])
            )
        for label, values in merged.items():
            for column, family in families.items():
                family.add_metric([label], values[column])
        blocked_family = GaugeMetricFamily(
            "taskq_queue_blocked", _INFO["taskq_queue_blocked"].help, labels=["queue"]
        )
        blocked_merged: dict[str, float] = {}
        for name, count in blocked.items():
            label = queue_label(name)
            blocked_merged[label] = blocked_merged.get(label, 0.0) + count
        for label, total in blocked_merged.items():
            blocked_family.add_metric([label], total)
        paused_family = GaugeMetricFamily(
            "taskq_queue_paused", _INFO["taskq_queue_paused"].help, labels=["queue"]
        )
        for name, is_paused in paused.items():
            paused_family.add_metric([name], 1.0 if is_paused else 0.0)
        yield up
        yield from families.values()
        yield blocked_family
        yield paused_family
        yield from self._limits(rows)

    def _limits(self, rows: list[dict[str, Any]]) -> Iterator[Metric]:
        """Flow control per limited queue: held-back tasks and the limits as gauges."""
        from prometheus_client.core import GaugeMetricFamily

        from taskq import flow
        from taskq.db import pooled
        from taskq.errors import TaskqError

        try:
            with pooled(self._pool) as conn:
                runnable = {r["queue"]: int(r["runnable"]) for r in rows}
                limits = flow.limits(conn, runnable=runnable, only_limited=True)
        except TaskqError as exc:
            log.warning("flow-control limits unavailable for /metrics: %s", exc.message)
            return
        names = (
            "taskq_queue_limit_held",
            "taskq_queue_max_running",
            "taskq_queue_max_running_per_key",
            "taskq_queue_rate_limit_count",
            "taskq_queue_rate_limit_seconds",
        )
        families = {n: GaugeMetricFamily(n, _INFO[n].help, labels=["queue"]) for n in names}
        for lim in limits:
            rate = lim.rate_limit
            for name, number in (
                ("taskq_queue_limit_held", lim.held),
                ("taskq_queue_max_running", lim.max_running),
                ("taskq_queue_max_running_per_key", lim.max_running_per_key),
                ("taskq_queue_rate_limit_count", None if rate is None else rate.count),
                ("taskq_queue_rate_limit_seconds", None if rate is None else rate.per_seconds),
            ):
                if number is not None:
                    families[name].add_metric([lim.queue], float(number))
        yield from families.values()


# ------------------------------------------------------------------ exposition


class _Chain:
    def __init__(self, sources: Sequence[Any]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


class _ProcessFiles:
    """Every process's values in the multiprocess directory, merged as prometheus-client's
    MultiProcessCollector merges them, but without a file that a process (a gunicorn
    worker just forked, or replacing one that died) is creating at this very moment: it
    exists empty until prometheus-client sizes it, and reading it then fails the scrape.
    Files only grow while the server runs, so one that has its header stays readable."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _has_header(f)]
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        yield from merged


def _has_header(path: str) -> bool:
    """The file has prometheus-client's 8-byte header (its used size and padding)."""
    try:
        return os.path.getsize(path) >= 8
    except OSError:  # removed since the glob: a dead process's live gauges
        return False


def exposition(collectors: Sequence[Any] = ()) -> tuple[bytes, str]:
    """The Prometheus text format for this process (or all of them, in multiprocess
    mode) plus `collectors`, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
    from prometheus_client import generate_latest as _generate

    refresh()
    path = os.environ.get(MULTIPROC_ENV)
    sources: list[Any] = [_ProcessFiles(path)] if path else [REGISTRY]
    return _generate(_Chain([*sources, *collectors])), CONTENT_TYPE_LATEST


# ------------------------------------------------------------------ multiprocess set-up


def prepare_multiprocess_dir() -> str:
    """Give this server (a gunicorn master, before it forks) an empty metrics directory.

    PROMETHEUS_MULTIPROC_DIR when the environment sets it, else a directory of our own
    under the temporary directory, named after this process. Files left by an earlier
    run (a crashed server, a restarted container keeping its /tmp) are removed first: a
    counter from a dead run would otherwise be added to this one. Directories of other
    taskq servers that are no longer running are removed too.
    """
    if started():
        raise RuntimeError("metrics were recorded before the multiprocess directory was set")
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        return path
    base = tempfile.gettempdir()
    for stale in glob.glob(os.path.join(base, _DIR_PREFIX + "*")):
        pid = stale.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = os.path.join(base, f"{_DIR_PREFIX}{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    """At server exit: remove the directory if it is ours (named by prepare_…)."""
    if os.path.basename(path).startswith(_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """gunicorn child_exit: drop the live gauges of a worker process that is gone."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
