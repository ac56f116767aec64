"""Commands for schedules and queues: `taskq schedule list|set|delete`,
`taskq queue list|pause|resume`. They talk to the database like the other commands."""

from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from taskq import db, registry, schedules
from taskq.cli.output import print_json, table
from taskq.cli.parser import UsageError
from taskq.cli.queues import cmd_queue_limits
from taskq.handlers import default_registry
from taskq.settings import Settings
from taskq.validation import problems


def cmd_schedule(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings, name="cli") as conn:
        if args.action == "list":
            found = schedules.list_all(conn)
            if args.json:
                print_json([s.to_json() for s in found])
                return 0
            rows = [
                [
                    s.name,
                    s.spec.cron or f"every {s.spec.every}s",
                    s.spec.timezone,
                    s.spec.kind,
                    s.spec.queue,
                    "yes" if s.spec.enabled else "no",
                    _short(s.to_json()["next_run_at"]),
                    _short(s.to_json()["last_run_at"]),
                    s.last_task_status or "-",
                    s.source,
                ]
                for s in found
            ]
            headers = ["name", "when", "timezone", "kind", "queue", "enabled", "next run"]
            headers += ["last run", "last task", "source"]
            print(table(headers, rows, right=set()))
            return 0
        if args.action == "delete":
            schedules.delete(conn, args.name)
            print(f"deleted schedule {args.name}")
            return 0
        spec = _spec(args, settings)
        try:
            schedules.check_schedule_name(args.name)
        except ValueError as exc:
            raise UsageError(f"NAME: {exc}") from None
        schedules.put(conn, args.name, spec, source="api")
        out = schedules.get(conn, args.name).to_json()
    print_json(out)
    return 0


def _spec(args: argparse.Namespace, settings: Settings) -> schedules.ScheduleSpec:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc}") from None
    try:
        spec = schedules.ScheduleSpec.model_validate(
            {
                "cron": args.cron,
                "every": args.every,
                "timezone": args.timezone,
                "kind": args.kind,
                "payload": payload,
                "queue": args.queue,
                "priority": args.priority,
                "max_attempts": args.max_attempts,
                "timeout_seconds": args.timeout,
                "concurrency_key": args.concurrency_key,
                "enabled": not args.disabled,
            }
        )
    except ValidationError as exc:
        first = problems(exc)[0]
        raise UsageError(f"--{first.field.replace('_', '-')}: {first.message}") from None
    if settings.handler_modules:  # the kinds are known only with the handler modules
        default_registry.load_modules(settings.handler_modules)
        if spec.kind not in default_registry:
            known = ", ".join(default_registry.kinds())
            raise UsageError(f"--kind: unknown kind {spec.kind!r}; known kinds: {known}")
    return spec


def _short(value: str | None) -> str:
    return "-" if value is None else value.replace("T", " ").removesuffix("Z")


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    if args.action in ("show", "set"):
        return cmd_queue_limits(args, settings)
    with db.connect(settings, name="cli") as conn:
        if args.action == "list":
            entries = registry.list_queues(conn)
            if args.json:
                print_json([registry.entry_json(e) for e in entries])
                return 0
            keys = list(registry.COUNTED)
            rows = [
                [e.name, "paused" if e.paused else "active", e.workers]
                + [e.counts[k] for k in keys]
                for e in entries
            ]
            right = set(range(2, 3 + len(keys)))
            print(table(["queue", "state", "workers", *keys], rows, right=right))
            return 0
        try:
            state = registry.set_paused(conn, args.name, args.action == "pause")
        except ValueError as exc:
            raise UsageError(f"NAME: {exc}") from None
    print_json(state.to_json())
    return 0
