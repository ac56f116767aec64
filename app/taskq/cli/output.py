"""What the CLI shows: data on stdout (JSON or a table), progress for people on stderr.

Progress is drawn only on a terminal (or when asked with --progress), on one line that
is rewritten in place, at most ten times a second, and finished with a newline; piped
output stays clean for scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


def show_progress(flag: bool | None, stream: TextIO | None = None) -> bool:
    """--progress / --no-progress, else: is the stream a terminal?"""
    if flag is not None:
        return flag
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def duration(seconds: float) -> str:
    """3.2s, 45s, 3m 12s, 2h 5m, 1d 4h."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int]) -> str:
    """A plain text table: columns sized to fit, numbers (columns in `right`) right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


class Progress:
    """A one-line progress bar on stderr: `label [#####.....] 52% 5,200/10,000 8,100/s`.

    With no total (a stream of unknown length) it shows the count and the rate.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        unit: str = "",
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        self.draw()

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-9)
        rate = f"{self.done / elapsed:,.0f}/s"
        width = shutil.get_terminal_size((80, 20)).columns
        if self.total:
            fraction = min(1.0, self.done / self.total)
            tail = f" {fraction:4.0%} {self.done:,}/{self.total:,}{self.unit} {rate}"
            room = max(10, min(40, width - len(self.label) - len(tail) - 4))
            filled = int(room * fraction)
            bar = "#" * filled + "." * (room - filled)
            text = f"{self.label} [{bar}]{tail}"
        else:
            text = f"{self.label} {self.done:,}{self.unit} {rate}"
        self.stream.write("\r" + text[: width - 1].ljust(min(width - 1, len(text))))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


class StatusLine:
    """One rewritten line on stderr that follows a task: `- running, attempt 1/5, 3.2s`."""

    SPINNER = "|/-\\"

    def __init__(self, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._tick = 0
        self._width = 0

    def show(self, task: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._tick += 1
        spin = self.SPINNER[self._tick % len(self.SPINNER)]
        elapsed = duration(time.monotonic() - self.started)
        text = (
            f"{spin} task {task['id']}: {task['status']}, attempt {task['attempts']}/"
            f"{task['max_attempts']}, waiting {elapsed}"
        )
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()

    def finish(self, task: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = (
            f"task {task['id']}: {task['status']} after {duration(time.monotonic() - self.started)}"
        )
        self.stream.write("\r" + text.ljust(self._width) + "\n")
        self.stream.flush()
