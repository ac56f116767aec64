"""Facts about the machine and the software versions, recorded with every run."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import pg

PACKAGES = (
    "taskq",
    "pgqueuer",
    "procrastinate",
    "psycopg",
    "psycopg-pool",
    "asyncpg",
    "falcon",
    "gunicorn",
    "pydantic",
)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git() -> dict[str, Any]:
    """The commit measured, and whether app/ or db/ had uncommitted changes at the time."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = bool(git("status", "--porcelain", "app", "db"))
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": dirty}


def load() -> dict[str, Any]:
    """Load average and CPU pressure: other work on the machine skews every figure."""
    pressure = Path("/proc/pressure/cpu")
    some = pressure.read_text().splitlines()[0] if pressure.exists() else ""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpu_pressure": some}


def facts(server: pg.Server) -> dict[str, Any]:
    return {
        "git": _git(),
        "load_at_start": load(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": server.facts(),
        "packages": {name: _version(name) for name in PACKAGES},
        "tools": {
            "wrk": _tool_version(["wrk", "-v"]),
            "pgbench": _tool_version(["pgbench", "--version"]),
        },
    }
