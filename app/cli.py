"""The `taskq` command line: api, worker, migrate, submit, status, prune, dev."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import ValidationError

from app import db, logs, migrate
from app import queue as q
from app.errors import DatabaseUnavailable, TaskqError
from app.models import TaskSpec, parse_task_id
from app.settings import Settings, SettingsError, load_settings, parse_bind

log = logging.getLogger("taskq")


class UsageError(Exception):
    """The command line asks for something impossible (exit code 2)."""


def _queues(value: str) -> list[str]:
    queues = [part.strip() for part in value.split(",") if part.strip()]
    if not queues:
        raise argparse.ArgumentTypeError("give at least one queue name")
    return queues


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _port(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535)")
    return int(value)


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {value}")
    return number


def _bind(value: str) -> str:
    try:
        parse_bind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskq", description="A task queue on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = sub.add_parser("api", help="serve the REST API with gunicorn")
    api.add_argument(
        "--bind", type=_bind, help="HOST:PORT (default TASKQ_API_BIND, 127.0.0.1:8080)"
    )
    api.add_argument(
        "--workers", type=_positive_int, help="gunicorn worker processes (TASKQ_API_WORKERS)"
    )

    worker = sub.add_parser("worker", help="run tasks")
    worker.add_argument("--queues", type=_queues, help="comma-separated (TASKQ_WORKER_QUEUES)")
    worker.add_argument(
        "--concurrency", type=_positive_int, help="parallel tasks (TASKQ_WORKER_CONCURRENCY)"
    )
    worker.add_argument("--burst", action="store_true", help="exit 0 once nothing is runnable")
    worker.add_argument("--health-port", type=_port, help="override the port of the health server")

    mig = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    mig.add_argument(
        "--wait",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying this long while the database is unreachable",
    )
    mig.add_argument(
        "--rollback", type=_positive_int, metavar="N", help="roll back the N latest instead"
    )

    submit = sub.add_parser("submit", help="enqueue a task (or N copies in one transaction)")
    submit.add_argument("kind")
    submit.add_argument("--payload", default="{}", help="JSON object")
    submit.add_argument("--queue", default="default")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--delay", type=_non_negative, help="seconds from now")
    submit.add_argument("--max-attempts", type=_positive_int)
    submit.add_argument("--idempotency-key")
    submit.add_argument(
        "--count", type=_positive_int, default=1, help="copies, in one bulk transaction"
    )

    status = sub.add_parser("status", help="show a task")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="poll until the task finishes")
    status.add_argument(
        "--timeout", type=_non_negative, default=60.0, help="seconds to wait at most"
    )

    prune = sub.add_parser("prune", help="delete finished tasks older than the retention")
    prune.add_argument("--older-than-days", type=_non_negative, help="default TASKQ_RETENTION_DAYS")

    dev = sub.add_parser("dev", help="migrate, then run the API and a worker together")
    dev.add_argument(
        "--bind", type=_bind, default=None, help="API HOST:PORT (default TASKQ_API_BIND)"
    )
    dev.add_argument("--data-dir", default=".pgdata", help="embedded PostgreSQL data directory")
    return parser


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from app.server import serve

    serve(settings, bind=args.bind, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.handlers import default_registry
    from app.worker import Worker

    default_registry.load_modules(settings.handler_modules)
    worker = Worker(
        settings,
        queues=args.queues,
        concurrency=args.concurrency,
        burst=args.burst,
        health_port=args.health_port,
    )
    return worker.run()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.rollback:
        done = migrate.rollback(settings, count=args.rollback)
        print(f"rolled back: {', '.join(done) or 'nothing'}")
    else:
        done = migrate.apply(settings, wait=args.wait)
        print(f"applied: {', '.join(done)}" if done else "schema is up to date")
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
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
            }
        )
    except ValidationError as exc:
        raise UsageError(_describe(exc)) from None
    started = time.perf_counter()
    with db.connect(settings, name="cli") as conn, conn.transaction():
        if args.count == 1:
            task = q.enqueue(conn, spec, default_max_attempts=settings.default_max_attempts)
            print(json.dumps(task.to_json(), indent=2))
            return 0
        tasks = q.enqueue_many(
            conn, [spec] * args.count, default_max_attempts=settings.default_max_attempts
        )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "submitted": len(tasks),
                "seconds": round(elapsed, 3),
                "per_second": round(len(tasks) / elapsed),
            }
        )
    )
    return 0


_OPTION = {"kind": "KIND", "payload": "--payload", "max_attempts": "--max-attempts"}


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors in command-line words: one line per offending option."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        name = _OPTION.get(field) or (f"--{field.replace('_', '-')}" if field else "arguments")
        lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    task_id = parse_task_id(args.id)
    if task_id is None:
        raise UsageError(f"{args.id!r} is not a task id")
    deadline = time.monotonic() + args.timeout
    with db.connect(settings, name="cli") as conn:
        task = q.get(conn, task_id)
        while args.wait and not task.finished and time.monotonic() < deadline:
            time.sleep(0.2)
            task = q.get(conn, task_id)
    print(json.dumps(task.to_json(), indent=2))
    return 0 if task.finished or not args.wait else 1


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    days = settings.retention_days if args.older_than_days is None else args.older_than_days
    with db.connect(settings, name="prune") as conn:
        deleted = q.prune(conn, older_than_seconds=days * 86_400)
    print(f"deleted {deleted} finished task(s) older than {days:g} day(s)")
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    env = dict(os.environ)
    server = None
    if not os.environ.get("DATABASE_URL"):
        from app import embedded

        try:
            server, env["DATABASE_URL"] = embedded.start(Path(args.data_dir).resolve())
        except embedded.EmbeddedError as exc:
            print(f"taskq: {exc}", file=sys.stderr)
            return 1
    try:
        if server is not None:
            settings = load_settings(database_url=env["DATABASE_URL"])
        migrate.apply(settings, wait=30)
        return _run_dev_children(args.bind or settings.api_bind, env, settings)
    finally:
        if server is not None:
            server.cleanup()


def _run_dev_children(bind: str, env: dict[str, str], settings: Settings) -> int:
    """Run the API and a worker until Ctrl-C (or SIGTERM), then stop both and wait."""
    stopping = False
    children: dict[str, subprocess.Popen[bytes]] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: tell the children to hurry (both quit at once)
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    base = [sys.executable, "-m", "app.cli"]
    # Own sessions: a terminal's Ctrl-C reaches only this process, which stops the
    # children in order (the worker drains, gunicorn finishes its requests).
    commands = {
        "api": [*base, "api", "--bind", bind, "--workers", "2"],
        "worker": [*base, "worker"],
    }
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, env=env, start_new_session=True)
        print(
            f"\ntaskq is running: API on http://{bind}, worker on {settings.worker_health_bind}\n"
            f"  curl -s -XPOST {bind}/tasks -H 'content-type: application/json' "
            f"""-d '{{"kind":"echo","payload":{{"input":"hello"}}}}'\n"""
            f"  curl -s {bind}/tasks/<id>\nCtrl-C stops everything.\n",
            flush=True,
        )
        while not stopping and all(child.poll() is None for child in children.values()):
            time.sleep(0.1)
        for name, child in children.items():
            if child.poll() is not None and not stopping:
                print(f"taskq: the {name} exited with {child.returncode}", file=sys.stderr)
    finally:
        _stop_children(list(children.values()), settings.shutdown_timeout + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1


def _stop_children(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # The whole process group: gunicorn's own workers must not outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    for child in children:
        # Anything a child left behind in its process group (it led the group).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "api": cmd_api,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "submit": cmd_submit,
    "status": cmd_status,
    "prune": cmd_prune,
    "dev": cmd_dev,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taskq: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    try:
        return COMMANDS[args.command](args, settings)
    except UsageError as exc:
        print(f"taskq: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(
            f"taskq: {exc.message} at {db.redact(settings.database_url)}\n"
            f"{_cause(exc, settings.database_url)}"
            "  check that PostgreSQL is running and DATABASE_URL points at it",
            file=sys.stderr,
        )
        return 1
    except TaskqError as exc:
        print(f"taskq: {exc.message}", file=sys.stderr)
        return 1


def _cause(exc: BaseException, database_url: str) -> str:
    """The driver's own words (e.g. "Connection refused"), as an indented line or nothing.

    libpq does not quote passwords in its messages; mask it anyway should one ever appear.
    """
    cause = exc.__cause__
    if not isinstance(cause, psycopg.Error):
        return ""
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    try:
        password = conninfo_to_dict(database_url).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return f"  {text}\n"


if __name__ == "__main__":
    sys.exit(main())
