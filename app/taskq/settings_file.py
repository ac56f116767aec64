"""The settings file (TASKQ_CONFIG_FILE): schedules and queue settings declared in Git.

    schedules:
      - name: nightly-report
        cron: "0 3 * * *"
        timezone: Europe/Berlin
        kind: report
        payload: {day: yesterday}
    queues:
      reports:
        paused: false
        max_running: 4                              # flow control; null removes a limit
        rate_limit: {count: 100, per_seconds: 60}

Workers load it at start and apply it, and again when it changes (worker/scheduler.py
SettingsFileWatch): schedules and queues it lists are upserted by name
(source 'file'); rows that came from the file and are no longer in it are deleted; rows
made through the API or CLI are left alone. A file that cannot be used stops the worker
with an error naming the line and the field, before it claims anything.

YAML because the file lives in a ConfigMap next to the other manifests, where YAML is
what people write; PyYAML's safe loader builds plain data only (no object tags).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskq import queue as q
from taskq import registry, schedules, sql
from taskq.models import check_queue_name
from taskq.queue import AnyConnection
from taskq.validation import problems

if TYPE_CHECKING:  # imported on first use: workers without a settings file never load it
    import yaml

_TOP = ("schedules", "queues")


class SettingsFileError(Exception):
    """The file cannot be used; the message names the file, the line and the field."""


@dataclasses.dataclass(frozen=True)
class SettingsFile:
    path: Path
    schedules: dict[str, schedules.ScheduleSpec]
    queues: dict[str, registry.QueueSettings]
    lines: dict[str, int]  # schedule name -> line of its entry (for later errors)

    def check_kinds(self, kinds: set[str]) -> None:
        """SettingsFileError for a schedule whose kind no handler serves."""
        for name, spec in self.schedules.items():
            if spec.kind not in kinds:
                raise SettingsFileError(
                    f"{self.path}: line {self.lines[name]}: schedules[{name}].kind: unknown "
                    f"kind {spec.kind!r}; known kinds: {', '.join(sorted(kinds))}"
                )


def load(path: Path) -> SettingsFile:
    """Read and validate the file; SettingsFileError says what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(f"{path}: cannot read it ({type(exc).__name__})") from None
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise SettingsFileError(f"{path}: {where}{problem}") from None
    return parse(path, data, root)


def parse(path: Path, data: Any, root: yaml.Node | None) -> SettingsFile:
    def fail(loc: tuple[Any, ...], message: str) -> SettingsFileError:
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        field = field.replace(".[", "[")
        return SettingsFileError(f"{path}: line {_line(root, loc)}: {field}: {message}")

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsFileError(f"{path}: line 1: the file must be a mapping with {_TOP}")
    for key in data:
        if key not in _TOP:
            raise fail((key,), f"unknown key; expected one of {', '.join(_TOP)}")

    specs: dict[str, schedules.ScheduleSpec] = {}
    lines: dict[str, int] = {}
    entries = data.get("schedules") or []
    if not isinstance(entries, list):
        raise fail(("schedules",), "must be a list of schedules")
    for index, entry in enumerate(entries):
        loc: tuple[Any, ...] = ("schedules", index)
        if not isinstance(entry, dict):
            raise fail(loc, "must be a mapping with name, cron or every, kind, ...")
        body = dict(entry)
        name = body.pop("name", None)
        if not isinstance(name, str):
            raise fail((*loc, "name"), "every schedule needs a name (text)")
        try:
            schedules.check_schedule_name(name)
        except ValueError as exc:
            raise fail((*loc, "name"), str(exc)) from None
        if name in specs:
            raise fail((*loc, "name"), f"schedule {name!r} is listed twice")
        try:
            specs[name] = schedules.ScheduleSpec.model_validate(body)
        except ValidationError as exc:
            first = problems(exc)[0]
            sub = tuple(int(p) if p.isdigit() else p for p in _split(first.field))
            raise fail((*loc, *sub), first.message) from None
        lines[name] = _line(root, loc)

    queues: dict[str, registry.QueueSettings] = {}
    declared = data.get("queues") or {}
    if not isinstance(declared, dict):
        raise fail(("queues",), "must be a mapping of queue name to settings")
    for name, body in declared.items():
        loc = ("queues", name)
        try:
            check_queue_name(str(name))
        except ValueError as exc:
            raise fail(loc, str(exc)) from None
        try:
            queues[str(name)] = registry.QueueSettings.model_validate(body or {})
        except ValidationError as exc:
            first = problems(exc)[0]
            raise fail((*loc, *_split(first.field)), first.message) from None
    return SettingsFile(path, specs, queues, lines)


def _split(field: str) -> list[str]:
    return [part for part in field.replace("[", ".").replace("]", "").split(".") if part]


def _line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the node at `loc` (or of its nearest existing parent)."""
    import yaml

    node = root
    line = 1 if root is None else root.start_mark.line + 1
    for depth, part in enumerate(loc, 1):
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    # The key's line for the field named last; its value to go deeper.
                    child = key if depth == len(loc) else value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part >= 0:
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


@dataclasses.dataclass(frozen=True)
class Applied:
    """What an apply changed."""

    schedules_created: list[str]
    schedules_updated: list[str]
    schedules_deleted: list[str]
    queues_deleted: list[str]


def apply(conn: AnyConnection, settings_file: SettingsFile) -> Applied:
    """Apply the file in one transaction (serialised between workers starting together)."""
    created: list[str] = []
    updated: list[str] = []
    with conn.transaction():
        q.fetch(conn, sql.LOCK_SETTINGS_APPLY, {})
        for name, spec in settings_file.schedules.items():
            if schedules.put(conn, name, spec, source="file"):
                created.append(name)
            else:
                updated.append(name)
        deleted = schedules.delete_file_schedules_except(conn, list(settings_file.schedules))
        queues_deleted = registry.apply_file_queues(conn, settings_file.queues)
    return Applied(created, updated, deleted, queues_deleted)
