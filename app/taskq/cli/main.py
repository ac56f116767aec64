"""`taskq COMMAND`: dispatch, exit codes (0 ok, 1 failure, 2 usage or settings, 130
interrupted) and errors that say what to fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from taskq import db, embedded, logs
from taskq.cli.parser import UsageError, build_parser
from taskq.cli.schedules import cmd_queue, cmd_schedule
from taskq.cli.services import cmd_api, cmd_dev, cmd_migrate, cmd_worker
from taskq.cli.tasks import cmd_cancel, cmd_prune, cmd_stats, cmd_status, cmd_submit
from taskq.errors import DatabaseUnavailable, HandlerModuleError, SchemaOutdated, TaskqError
from taskq.settings import Settings, SettingsError, load_settings

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "api": cmd_api,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "prune": cmd_prune,
    "stats": cmd_stats,
    "queue": cmd_queue,
    "dev": cmd_dev,
    "schedule": cmd_schedule,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taskq: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    if args.command != "dev":  # dev starts the embedded server; the others find it
        settings = embedded.resolve(settings)
    try:
        return COMMANDS[args.command](args, settings)
    except (UsageError, HandlerModuleError) as exc:
        print(f"taskq: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(
            f"taskq: {exc.message} at {db.redact(settings.database_url)}\n"
            f"{_cause(exc, settings.database_url)}"
            f"  {_hint(exc)}",
            file=sys.stderr,
        )
        return 1
    except (psycopg.errors.UndefinedTable, SchemaOutdated):
        print(
            f"taskq: the database at {db.redact(settings.database_url)} has no taskq schema\n"
            "  run `taskq migrate` (or check that DATABASE_URL names the right database)",
            file=sys.stderr,
        )
        return 1
    except TaskqError as exc:
        print(f"taskq: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntaskq: interrupted", file=sys.stderr)
        return 130


# What PostgreSQL or libpq said -> what to change. Checked in order; the last is the default.
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Connection refused",),
        "nothing listens at that host and port: start PostgreSQL, or fix the host/port "
        "in DATABASE_URL",
    ),
    (
        (
            "could not translate host name",
            "failed to resolve host",
            "Name or service not known",
            "nodename nor",
        ),
        "the host name in DATABASE_URL does not resolve: fix DATABASE_URL",
    ),
    (
        ("password authentication failed", "no password supplied", "authentication failed"),
        "PostgreSQL refused the credentials: check the user in DATABASE_URL and the "
        "password (PGPASSWORD or the URL)",
    ),
    (
        ('role "',),
        "PostgreSQL has no role (user) of that name: fix the user in DATABASE_URL, or "
        "create the role (CREATE ROLE name LOGIN)",
    ),
    (
        ('database "',),
        "the database named in DATABASE_URL does not exist: create it (then `taskq "
        "migrate`) or fix the name",
    ),
    (
        ("no pg_hba.conf entry",),
        "PostgreSQL's pg_hba.conf does not let this user connect from here: check the "
        "user and database in DATABASE_URL, or pg_hba.conf",
    ),
    (
        ("timeout expired", "timed out"),
        "no answer within TASKQ_DB_CONNECT_TIMEOUT seconds: check the host and port in "
        "DATABASE_URL (a firewall?), or raise TASKQ_DB_CONNECT_TIMEOUT",
    ),
    (
        ("statement timeout", "canceling statement"),
        "a query ran longer than TASKQ_DB_STATEMENT_TIMEOUT_MS: raise it, or retry",
    ),
)
_DEFAULT_HINT = "check that PostgreSQL is running and DATABASE_URL points at it"


def _hint(exc: BaseException) -> str:
    said = str(exc.__cause__ or "")
    for needles, hint in _HINTS:
        if any(needle in said for needle in needles):
            return hint
    return _DEFAULT_HINT


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
