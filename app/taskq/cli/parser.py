"""Arguments: the parser of every command and the checks on their values (exit code 2)."""

from __future__ import annotations

import argparse
import math

from taskq.settings import parse_bind


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


# The word that removes a limit in `taskq queue set` (JSON null in PUT /queues/{name}).
NO_LIMIT = "none"


def _limit(value: str) -> int | None:
    """A positive integer, or `none` to remove the limit."""
    return None if value.lower() == NO_LIMIT else _positive_int(value)


def _rate(value: str) -> str | None:
    """COUNT/SECONDS (checked by the command, which names the option), or `none`."""
    return None if value.lower() == NO_LIMIT else value


def _json_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal)",
    )


def _task_options(parser: argparse.ArgumentParser) -> None:
    """The options of the tasks a submit or a schedule creates."""
    parser.add_argument("--max-attempts", type=_positive_int)
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="time limit of each attempt"
    )
    parser.add_argument(
        "--concurrency-key", help="groups tasks for the queue's max_running_per_key"
    )


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

    submit = sub.add_parser(
        "submit",
        help="enqueue a task, N copies, or every task of a JSON Lines file",
        description="Enqueue KIND (N copies with --count), or with --file every task of a "
        "JSON Lines file (one TaskSpec object per line, as POST /tasks takes; - reads "
        "stdin). Many tasks go in one transaction: all of them or none.",
    )
    submit.add_argument("kind", nargs="?", help="handler name (not with --file)")
    submit.add_argument(
        "--file", metavar="PATH", help='JSON Lines of tasks, e.g. {"kind": "echo"}; - for stdin'
    )
    submit.add_argument("--payload", default="{}", help="JSON object")
    submit.add_argument("--queue", default="default")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--delay", type=_non_negative, help="seconds from now")
    _task_options(submit)
    submit.add_argument("--idempotency-key")
    submit.add_argument(
        "--depends-on",
        action="append",
        metavar="ID",
        help="a task this one waits for (blocked until every one has succeeded); repeatable",
    )
    submit.add_argument(
        "--count", type=_positive_int, default=1, help="copies, in one bulk transaction"
    )
    _json_flag(submit, "print the result as JSON (the default for submit)")
    _progress_flag(submit)

    status = sub.add_parser(
        "status",
        help="show a task",
        description="Print a task as JSON. With --wait, follow it until it finishes (a "
        "live status line on a terminal, on stderr), then print it; exit 0 if it succeeded, "
        "1 if it failed, was cancelled or the timeout came first.",
    )
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="follow the task until it finishes")
    status.add_argument(
        "--graph",
        action="store_true",
        help="print the task's graph as an indented list instead of JSON: the tasks it "
        "waits for, then the tasks waiting for it (transitively), each with its status",
    )
    status.add_argument(
        "--timeout", type=_non_negative, default=60.0, help="seconds to wait at most"
    )
    _json_flag(status, "print the task as JSON (the default for status)")
    _progress_flag(status)

    cancel = sub.add_parser(
        "cancel",
        help="cancel a task",
        description="Cancel a queued task at once, or ask the worker running a task to "
        "stop it (the task then ends cancelled and is never retried). Prints the task as "
        "JSON: `cancel_requested_at` is set for a running one. A finished task is an "
        "error (exit 1).",
    )
    cancel.add_argument("id")
    _json_flag(cancel, "print the task as JSON (the default for cancel)")

    prune = sub.add_parser("prune", help="delete finished tasks older than the retention")
    prune.add_argument("--older-than-days", type=_non_negative, help="default TASKQ_RETENTION_DAYS")
    _json_flag(prune, 'print {"deleted": N, ...} instead of a sentence')
    _progress_flag(prune)

    stats = sub.add_parser(
        "stats",
        help="a table of queues: waiting, running, finished in the last hour",
        description="Per queue: runnable and scheduled tasks, running ones, tasks finished "
        "in the last hour, and how long the oldest runnable task has waited; then the "
        "latest failures. The same numbers as GET /stats and the dashboard.",
    )
    _json_flag(stats, "print the statistics as JSON (the shape of GET /stats)")

    schedule = sub.add_parser(
        "schedule",
        help="recurring tasks: list, set (create or replace), delete",
        description="Schedules enqueue a task per slot of a cron expression (5 fields, or "
        "6 with seconds first) or every N seconds. The same as /schedules.",
    )
    schedule_actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    schedule_list = schedule_actions.add_parser("list", help="every schedule, next and last run")
    _json_flag(schedule_list, "print the schedules as JSON (the shape of GET /schedules)")
    schedule_set = schedule_actions.add_parser("set", help="create or replace a schedule")
    schedule_set.add_argument("name")
    when = schedule_set.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='e.g. "0 3 * * *" (quote it)')
    when.add_argument("--every", type=_positive_int, metavar="SECONDS")
    schedule_set.add_argument("--timezone", default="UTC", help="IANA name (default UTC)")
    schedule_set.add_argument("--kind", required=True, help="handler name")
    schedule_set.add_argument("--payload", default="{}", help="JSON object")
    schedule_set.add_argument("--queue", default="default")
    schedule_set.add_argument("--priority", type=int, default=0)
    _task_options(schedule_set)
    schedule_set.add_argument("--disabled", action="store_true", help="store it disabled")
    schedule_delete = schedule_actions.add_parser("delete", help="delete a schedule")
    schedule_delete.add_argument("name")

    queue = sub.add_parser(
        "queue",
        help="the queue registry: list, pause, resume, show and set flow-control limits",
        description="Pausing stops every worker claiming from the queue within a second; "
        "submits are still accepted and running tasks finish. The same as /queues.",
    )
    queue_actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    queue_list = queue_actions.add_parser("list", help="queues: state, workers, counts")
    _json_flag(queue_list, "print the queues as JSON (the shape of GET /queues)")
    for action in ("pause", "resume"):
        queue_actions.add_parser(action, help=f"{action} a queue").add_argument("name")
    show = queue_actions.add_parser("show", help="print the queue's limits and their use as JSON")
    show.add_argument("name")
    limits = queue_actions.add_parser(
        "set",
        help="set limits; `none` removes one, options left out stay as they are",
        description="Limits are exact across every worker: max running tasks of the queue, "
        "max running tasks per concurrency key, and at most COUNT task starts per SECONDS. "
        "Prints the queue's limits as JSON.",
    )
    limits.add_argument("name")
    # SUPPRESS: an option left out is absent from the namespace (kept as it is), while
    # `none` is present as None (removes the limit).
    for option, kind, metavar in (
        ("--max-running", _limit, "N|none"),
        ("--max-running-per-key", _limit, "N|none"),
        ("--rate-limit", _rate, "COUNT/SECONDS|none"),
    ):
        limits.add_argument(option, type=kind, metavar=metavar, default=argparse.SUPPRESS)

    dev = sub.add_parser("dev", help="migrate, then run the API and a worker together")
    dev.add_argument(
        "--bind", type=_bind, default=None, help="API HOST:PORT (default TASKQ_API_BIND)"
    )
    dev.add_argument(
        "--queues", type=_queues, help="queues the worker serves (TASKQ_WORKER_QUEUES)"
    )
    dev.add_argument("--data-dir", default=".pgdata", help="embedded PostgreSQL data directory")
    return parser
