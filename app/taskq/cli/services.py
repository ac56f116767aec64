"""The long-running commands: api, worker, migrate, and dev (all three at once)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from taskq import migrate
from taskq.cli.parser import UsageError
from taskq.settings import Settings, load_settings


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from taskq.server import serve

    serve(settings, bind=args.bind, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from taskq.handlers import default_registry
    from taskq.health import BindError
    from taskq.settings_file import SettingsFileError
    from taskq.worker import Worker

    default_registry.load_modules(settings.handler_modules)
    try:
        worker = Worker(
            settings,
            queues=args.queues,
            concurrency=args.concurrency,
            burst=args.burst,
            health_port=args.health_port,
        )
    except SettingsFileError as exc:  # TASKQ_CONFIG_FILE: line and field named
        raise UsageError(f"TASKQ_CONFIG_FILE: {exc}") from None
    try:
        return worker.run()
    except BindError as exc:  # the health server could not bind its address
        where = settings.worker_health_bind
        if args.health_port is not None:
            where = f"{where.rsplit(':', 1)[0]}:{args.health_port}"
        raise UsageError(
            f"the health server cannot listen on {where}: {exc.strerror or exc}\n"
            "  another worker on this host? give each one its own TASKQ_WORKER_HEALTH_BIND "
            "(port 0 picks a free one)"
        ) from None


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.rollback:
        done = migrate.rollback(settings, count=args.rollback)
        print(f"rolled back: {', '.join(done) or 'nothing'}")
    else:
        done = migrate.apply(settings, wait=args.wait)
        print(f"applied: {', '.join(done)}" if done else "schema is up to date")
    return 0


def names_a_database(settings: Settings) -> bool:
    """Whether DATABASE_URL (or its alias TASKQ_DATABASE_URL) was set to a database, as
    opposed to the built-in default that `taskq dev` replaces with an embedded server."""
    return "database_url" in settings.model_fields_set and bool(settings.database_url)


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    if settings.config_file is not None:  # the worker applies it; refuse a bad one now
        from taskq.settings_file import SettingsFileError, load

        try:
            load(settings.config_file)
        except SettingsFileError as exc:
            print(f"taskq: TASKQ_CONFIG_FILE: {exc}", file=sys.stderr)
            return 2
    env = dict(os.environ)
    server = None
    if not names_a_database(settings):
        from taskq import embedded

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
    base = [sys.executable, "-m", "taskq.cli"]
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
            f"  curl -s {bind}/tasks/<id>\n"
            f"Dashboard: http://{bind}/dashboard   Metrics: http://{bind}/metrics\n"
            + (
                f"Settings file: {settings.config_file} (schedules and queue settings)\n"
                if settings.config_file
                else ""
            )
            + "Ctrl-C stops everything.\n",
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
