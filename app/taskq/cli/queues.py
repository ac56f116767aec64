"""`taskq queue show|set NAME`: a queue's flow-control limits, through the data layer
(the same as GET/PUT /queues/NAME); `taskq queue` dispatches here (cli/schedules.py)."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from taskq import db, flow
from taskq.cli.output import print_json
from taskq.cli.parser import UsageError
from taskq.models import check_queue_name
from taskq.settings import Settings
from taskq.validation import problems


def _name(value: str) -> str:
    try:
        return check_queue_name(value)
    except ValueError as exc:
        raise UsageError(f"NAME: {exc}") from None


def _show(conn: db.Connection, name: str) -> None:
    found = flow.limits(conn, queue=name)
    limits = found[0] if found else flow.no_limits(name)
    body = limits.model_dump(mode="json")
    print_json(body)


def cmd_queue_limits(args: argparse.Namespace, settings: Settings) -> int:
    name = _name(args.name)
    if args.action == "set":
        fields = ("max_running", "max_running_per_key", "rate_limit")
        given = {field: getattr(args, field) for field in fields if hasattr(args, field)}
        if not given:
            raise UsageError("give --max-running, --max-running-per-key or --rate-limit")
        if given.get("rate_limit") is not None:
            try:
                given["rate_limit"] = flow.RateLimit.parse(given["rate_limit"])
            except ValueError as exc:
                raise UsageError(f"--rate-limit: {_message(exc)}") from None
        update = flow.LimitsUpdate.model_validate(given)
        with db.connect(settings, name="cli") as conn:
            with conn.transaction():
                flow.set_limits(conn, name, update)
            _show(conn, name)
        return 0
    with db.connect(settings, name="cli") as conn:
        _show(conn, name)
    return 0


def _message(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{p.field}: {p.message}" for p in problems(exc))
    return str(exc)
