"""The `taskq` command line: api, worker, migrate, submit, status, prune, dev."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from app import db, logs, migrate
from app import queue as q
from app.errors import DatabaseUnavailable, TaskqError
from app.models import TaskSpec, parse_task_id
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("taskq")


def _queues(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskq", description="A task queue on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = sub.add_parser("api", help="serve the REST API with gunicorn")
    api.add_argument("--bind", help="HOST:PORT (default TASKQ_API_BIND, 127.0.0.1:8080)")
    api.add_argument("--workers", type=int, help="gunicorn worker processes (TASKQ_API_WORKERS)")

    worker = sub.add_parser("worker", help="run tasks")
    worker.add_argument("--queues", type=_queues, help="comma-separated (TASKQ_WORKER_QUEUES)")
    worker.add_argument("--concurrency", type=int, help="parallel tasks (TASKQ_WORKER_CONCURRENCY)")
    worker.add_argument("--burst", action="store_true", help="exit 0 once nothing is runnable")
    worker.add_argument("--health-port", type=int, help="override the port of the health server")

    mig = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    mig.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying this long while the database is unreachable",
    )
    mig.add_argument("--rollback", type=int, metavar="N", help="roll back the N latest instead")

    submit = sub.add_parser("submit", help="enqueue a task (or N copies in one transaction)")
    submit.add_argument("kind")
    submit.add_argument("--payload", default="{}", help="JSON object")
    submit.add_argument("--queue", default="default")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--delay", type=float, help="seconds from now")
    submit.add_argument("--max-attempts", type=int)
    submit.add_argument("--idempotency-key")
    submit.add_argument("--count", type=int, default=1, help="copies, in one bulk transaction")

    status = sub.add_parser("status", help="show a task")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="poll until the task finishes")
    status.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most")

    prune = sub.add_parser("prune", help="delete finished tasks older than the retention")
    prune.add_argument("--older-than-days", type=float, help="default TASKQ_RETENTION_DAYS")

    dev = sub.add_parser("dev", help="migrate, then run the API and a worker together")
    dev.add_argument("--bind", default=None, help="API HOST:PORT (default TASKQ_API_BIND)")
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
        raise SystemExit(f"taskq: --payload is not valid JSON: {exc}") from None
    if args.count < 1:
        raise SystemExit("taskq: --count must be at least 1")
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


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    task_id = parse_task_id(args.id)
    if task_id is None:
        raise SystemExit(f"taskq: {args.id!r} is not a task id")
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

        server, env["DATABASE_URL"] = embedded.start(Path(args.data_dir).resolve())
        settings = load_settings(database_url=env["DATABASE_URL"])
    migrate.apply(settings, wait=30)
    bind = args.bind or settings.api_bind
    base = [sys.executable, "-m", "app.cli"]
    children = [
        subprocess.Popen(
            [*base, "api", "--bind", bind, "--workers", "2"], env=env, start_new_session=True
        ),
        subprocess.Popen([*base, "worker"], env=env, start_new_session=True),
    ]
    print(
        f"\ntaskq is running: API on http://{bind}, worker on {settings.worker_health_bind}\n"
        f"  curl -s -XPOST {bind}/tasks -H 'content-type: application/json' "
        f"""-d '{{"kind":"echo","payload":{{"input":"hello"}}}}'\n"""
        f"  curl -s {bind}/tasks/<id>\nCtrl-C stops everything.\n",
        flush=True,
    )
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=settings.shutdown_timeout + 5)
        except subprocess.TimeoutExpired:
            child.kill()
    if server is not None:
        server.cleanup()
    return 0 if stopping else 1


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
    except DatabaseUnavailable as exc:
        print(
            f"taskq: {exc.message} at {db.redact(settings.database_url)}\n"
            "  check that PostgreSQL is running and DATABASE_URL points at it",
            file=sys.stderr,
        )
        return 1
    except TaskqError as exc:
        print(f"taskq: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic validation of submit arguments
        print(f"taskq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
