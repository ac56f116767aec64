"""Commands that work with tasks: submit, status, cancel, prune, stats.

Data goes to stdout (JSON, or a table for `stats`); progress for people goes to stderr,
only on a terminal unless --progress says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from taskq import db, workflows
from taskq import queue as q
from taskq.cli.output import Progress, StatusLine, duration, print_json, show_progress, table
from taskq.cli.parser import UsageError
from taskq.errors import InvalidInput, UnknownKind
from taskq.handlers import Registry, default_registry
from taskq.models import TaskSpec, parse_task_id
from taskq.settings import Settings
from taskq.validation import problems

# Tasks per INSERT statement when submitting many (all in one transaction).
SUBMIT_CHUNK = 1000


# ------------------------------------------------------------------ submit


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    default_registry.load_modules(settings.handler_modules)
    if args.file is not None:
        if args.kind is not None:
            raise UsageError("give either KIND or --file, not both")
        if args.count != 1 or args.idempotency_key is not None:
            raise UsageError("--count and --idempotency-key do not go with --file")
        return _submit_file(args, settings)
    if args.kind is None:
        raise UsageError("give a KIND to submit (or --file with tasks)")
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from None
    if args.count > 1 and args.idempotency_key is not None:
        raise UsageError("--idempotency-key names one task; it cannot go with --count")
    try:
        spec = TaskSpec.model_validate(
            {
                "kind": args.kind,
                "payload": payload,
                "queue": args.queue,
                "priority": args.priority,
                "delay": args.delay,
                "max_attempts": args.max_attempts,
                "idempotency_key": args.idempotency_key,
                "timeout_seconds": args.timeout,
                "concurrency_key": args.concurrency_key,
                "depends_on": args.depends_on,
            }
        )
    except ValidationError as exc:
        raise UsageError(_describe(exc)) from None
    _check_kind(spec.kind, "KIND")
    try:
        spec = _registry(settings).prepare(spec, field="--payload")
    except InvalidInput as exc:
        raise UsageError(exc.message) from None
    started = time.perf_counter()
    progress = Progress(
        "submitting", args.count, enabled=args.count > 1 and show_progress(args.progress)
    )
    with db.connect(settings, name="cli") as conn, conn.transaction():
        db.transaction_settings(conn, settings)
        if args.count == 1:
            task = workflows.enqueue(conn, spec, default_max_attempts=settings.default_max_attempts)
            print_json(task.to_json())
            return 0
        submitted = 0
        while submitted < args.count:
            n = min(SUBMIT_CHUNK * 5, args.count - submitted)
            q.enqueue_many(conn, [spec] * n, default_max_attempts=settings.default_max_attempts)
            submitted += n
            progress.advance(n)
    progress.finish()
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "submitted": submitted,
                "seconds": round(elapsed, 3),
                "per_second": round(submitted / elapsed),
            }
        )
    )
    return 0


def _submit_file(args: argparse.Namespace, settings: Settings) -> int:
    source = "stdin" if args.file == "-" else args.file
    total = None
    if args.file != "-":
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"--file {args.file}: no such file")
        if show_progress(args.progress):
            with path.open("rb") as counting:
                total = sum(1 for line in counting if line.strip())
    progress = Progress("submitting", total, enabled=show_progress(args.progress), unit=" tasks")
    started = time.perf_counter()
    submitted = created = 0
    with contextlib.ExitStack() as stack:
        stream: IO[str] = (
            sys.stdin
            if args.file == "-"
            else stack.enter_context(Path(args.file).open(encoding="utf-8"))
        )
        stack.callback(progress.finish)
        conn = stack.enter_context(db.connect(settings, name="cli"))
        with conn.transaction():
            db.transaction_settings(conn, settings)
            specs = _read_specs(stream, source, _registry(settings))
            for chunk in _graph_chunks(specs, SUBMIT_CHUNK):
                tasks = workflows.enqueue_many(
                    conn, chunk, default_max_attempts=settings.default_max_attempts
                )
                submitted += len(tasks)
                created += sum(1 for t in tasks if t.created)
                progress.advance(len(tasks))
    if submitted == 0:
        raise UsageError(f"{source} holds no task (one JSON object per line)")
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "submitted": submitted,
                "created": created,
                "existing": submitted - created,
                "seconds": round(elapsed, 3),
                "per_second": round(submitted / elapsed),
            }
        )
    )
    return 0


def _check_kind(kind: str, name: str) -> None:
    """Refuse a kind without a handler, as the API does (cmd_submit has loaded
    TASKQ_HANDLER_MODULES, as the API loads them)."""
    try:
        default_registry.check(kind)
    except UnknownKind as exc:
        raise UsageError(f"{name}: {exc.message}") from None


def _registry(settings: Settings) -> Registry:
    """The handler modules' kinds, so typed payloads are checked before anything is sent
    (kinds this process does not know are passed through unchecked)."""
    default_registry.load_modules(settings.handler_modules)
    return default_registry


def _graph_chunks(specs: Iterable[TaskSpec], size: int) -> Iterator[list[TaskSpec]]:
    """Chunks of `size`, except that a file using refs or depends_on is one chunk: a ref
    names an earlier line of the file, so the whole graph goes in one call."""
    specs = iter(specs)
    for chunk in _chunks(specs, size):
        if any(s.ref is not None or s.depends_on for s in chunk):
            yield [*chunk, *specs]
            return
        yield chunk


def _read_specs(lines: Iterable[str], source: str, registry: Registry) -> Iterator[TaskSpec]:
    """Validate each non-blank line as a TaskSpec (and its kind's payload model); the first
    bad line stops everything (the caller's transaction then rolls back: a file goes in
    whole or not at all)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spec = TaskSpec.model_validate_json(line)
        except ValidationError as exc:
            raise UsageError(f"{source}:{number}: {_describe_line(exc)}") from None
        _check_kind(spec.kind, f"{source}:{number}: kind")
        try:
            yield registry.prepare(spec)
        except InvalidInput as exc:
            raise UsageError(f"{source}:{number}: {exc.message}") from None


def _chunks(specs: Iterable[TaskSpec], size: int) -> Iterator[list[TaskSpec]]:
    chunk: list[TaskSpec] = []
    for spec in specs:
        chunk.append(spec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_OPTION = {
    "kind": "KIND",
    "payload": "--payload",
    "max_attempts": "--max-attempts",
    "timeout_seconds": "--timeout",
}


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors in command-line words: one line per offending option."""
    lines = []
    for problem in problems(exc):
        field = problem.field.split(".", 1)[0].split("[", 1)[0]
        name = _OPTION.get(field) or (f"--{field.replace('_', '-')}" if field else "arguments")
        lines.append(f"{name}: {problem.message}")
    return "; ".join(lines)


def _describe_line(exc: ValidationError) -> str:
    """The first problem of a JSON Lines entry, named by field."""
    first = problems(exc)[0]
    if first.malformed:
        return "not a JSON object: " + first.message
    return f"{first.field or 'line'}: {first.message}"


# ------------------------------------------------------------------ status


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    task_id = parse_task_id(args.id)
    if task_id is None:
        raise UsageError(f"{args.id!r} is not a task id")
    deadline = time.monotonic() + args.timeout
    line = StatusLine(enabled=args.wait and show_progress(args.progress))
    with db.connect(settings, name="cli") as conn:
        task = q.get(conn, task_id)
        while args.wait and not task.finished and time.monotonic() < deadline:
            line.show(task.to_json())
            time.sleep(0.2)
            task = q.get(conn, task_id)
    line.finish(task.to_json())
    if args.graph:
        with db.connect(settings, name="cli") as conn:
            print("\n".join(_graph_lines(conn, task_id)))
    else:
        print_json(task.to_json())
    # A script waiting for a task wants to know whether it worked: only success is 0.
    return 0 if task.status == "succeeded" or not args.wait else 1


GRAPH_MAX = 500  # tasks `taskq status --graph` lists at most


def _graph_lines(conn: Any, task_id: uuid.UUID) -> list[str]:
    """The task, the tasks it waits for, and the tasks waiting for it (transitively,
    breadth first, up to GRAPH_MAX), as an indented list."""

    def label(node: dict[str, Any]) -> str:
        ref = f" ({node['ref']})" if node.get("ref") else ""
        return f"{node['id']}{ref} {node['kind'] or '?'} {node['status']}"

    top = workflows.describe(conn, task_id)
    lines = [label(top)]
    if top["parents"]:
        lines.append("  waits for:")
        lines.extend(f"    {label(p)}" for p in top["parents"])
    if top["dependents"]:
        lines.append("  waited for by:")
        seen = {str(task_id)}

        def walk(children: list[dict[str, Any]], depth: int) -> None:
            for child in children:
                if len(seen) >= GRAPH_MAX:
                    lines.append("    " * depth + "...")
                    return
                again = child["id"] in seen
                seen.add(child["id"])
                lines.append("    " * depth + label(child) + (" (above)" if again else ""))
                if not again:
                    below = workflows.describe(conn, uuid.UUID(child["id"]))["dependents"]
                    walk(below, depth + 1)

        walk(top["dependents"], 1)
    return lines


# ------------------------------------------------------------------ cancel


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel a task: a queued one at once, a running one on request (its worker stops
    it). Prints the task; a finished task is an error (exit 1)."""
    task_id = parse_task_id(args.id)
    if task_id is None:
        raise UsageError(f"{args.id!r} is not a task id")
    with db.connect(settings, name="cli") as conn:
        task = workflows.cancel(conn, task_id)
    print_json(task.to_json())
    return 0


# ------------------------------------------------------------------ prune


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    days = settings.retention_days if args.older_than_days is None else args.older_than_days
    older_than = days * 86_400
    with db.connect(settings, name="prune") as conn:
        progress = Progress("pruning", None, enabled=show_progress(args.progress), unit=" tasks")
        if progress.enabled:
            progress.total = q.count_prunable(conn, older_than_seconds=older_than)
        deleted = q.prune(conn, older_than_seconds=older_than, on_batch=progress.advance)
        progress.finish()
    if args.json:
        print(json.dumps({"deleted": deleted, "older_than_days": days}))
    else:
        print(f"deleted {deleted} finished task(s) older than {days:g} day(s)")
    return 0


# ------------------------------------------------------------------ stats


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from taskq import stats

    with db.connect(settings, name="cli") as conn:
        collected = stats.collect(conn)
    if args.json:
        print_json(stats.to_json(collected))
        return 0
    cap = collected.cap

    def n(value: int, capped: bool = False) -> str:
        """Queued counts stop at the cap: show those as at least."""
        return f">={value:,}" if capped and value >= cap else f"{value:,}"

    rows = [
        [
            s.queue,
            n(s.runnable, capped=True),
            n(s.scheduled, capped=True),
            n(s.running),
            n(s.blocked),
            n(s.held, capped=True),
            n(s.succeeded),
            n(s.failed),
            n(s.cancelled),
            duration(s.oldest_runnable_age_seconds) if s.runnable else "-",
        ]
        for s in collected.queues
    ]
    t = collected.totals
    if len(rows) > 1:
        rows.append(
            [
                "(all)",
                n(t.runnable, capped=collected.capped),
                n(t.scheduled, capped=collected.capped),
                n(t.running),
                n(t.blocked),
                n(t.held, capped=collected.capped),
                n(t.succeeded),
                n(t.failed),
                n(t.cancelled),
                "",
            ]
        )
    headers = [
        "queue", "runnable", "scheduled", "running", "blocked", "held by limit",
        "succeeded 1h", "failed 1h", "cancelled 1h", "oldest waiting",
    ]  # fmt: skip
    if rows:
        print(table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 9}))
    else:
        print("no tasks")
    limited = [
        s for s in collected.queues if s.max_running or s.max_running_per_key or s.rate_limit
    ]
    if limited:
        print("\nLimits:")
        for s in limited:
            parts = []
            if s.max_running is not None:
                parts.append(f"max running {s.max_running}")
            if s.max_running_per_key is not None:
                parts.append(f"max running per key {s.max_running_per_key}")
            if s.rate_limit is not None:
                parts.append(f"{s.rate_limit.count} starts per {s.rate_limit.per_seconds:g}s")
            print(f"  {s.queue}: {', '.join(parts)}")
    unserved = [s.queue for s in collected.queues if not s.served and s.queued]
    if unserved:
        print(
            f"\nNo live worker serves {', '.join(unserved)}: those tasks wait until one does "
            f"(taskq worker --queues {','.join(unserved)})."
        )
    finished = t.succeeded + t.failed + t.cancelled
    series = collected.throughput
    print(f"\n{finished:,} finished in the last hour ({t.failed:,} failed).")
    window_start = collected.generated_at.timestamp() - series.window_seconds
    if series.complete_since.timestamp() > window_start + 1:
        since = series.complete_since.astimezone().strftime("%H:%M:%S")
        print(f"(Counted from the newest finished tasks only: complete since {since}.)")
    oldest = collected.oldest_runnable
    if oldest is not None:
        print(f"Oldest waiting: {oldest.id} in {oldest.queue}, {duration(oldest.age_seconds)}.")
    if collected.recent_failures:
        print("\nRecent failures:")
        for f in collected.recent_failures[:5]:
            when = f.finished_at.strftime("%H:%M:%S") if f.finished_at else "?"
            error = (f.last_error or "").splitlines()[0][:100] if f.last_error else ""
            print(f"  {when}  {f.id}  {f.queue}/{f.kind}  {error}")
    return 0
