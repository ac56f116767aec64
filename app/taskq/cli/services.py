"""The long-running commands: api, worker, migrate, and dev (all three at once)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

from taskq import db, migrate
from taskq.cli.parser import UsageError
from taskq.embedded import names_a_database
from taskq.settings import Settings, load_settings, parse_bind


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from taskq.handlers import default_registry
    from taskq.server import serve

    # Before gunicorn forks: an unimportable module is one line here, not a traceback
    # from every worker process.
    default_registry.load_modules(settings.handler_modules)
    bind = args.bind or settings.api_bind
    check_api_bind(bind)
    serve(settings, bind=bind, workers=args.workers)
    return 0


def check_api_bind(bind: str) -> None:
    """A taken API address is one line naming the setting, not gunicorn's five retries."""
    from taskq.health import BindError, check_bind

    try:
        check_bind(*parse_bind(bind))
    except BindError as exc:
        raise UsageError(
            f"the API cannot listen on {bind}: {exc.strerror or exc}; choose another "
            "address with TASKQ_API_BIND or --bind"
        ) from None


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


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    if settings.config_file is not None:  # the worker applies it; refuse a bad one now
        from taskq.settings_file import SettingsFileError, load

        try:
            load(settings.config_file)
        except SettingsFileError as exc:
            print(f"taskq: TASKQ_CONFIG_FILE: {exc}", file=sys.stderr)
            return 2
    from taskq.handlers import default_registry
    from taskq.health import BindError, check_bind

    # Everything that would make a child fail at once is checked before anything starts
    # (and before anything claims to be running): handler modules, both addresses.
    default_registry.load_modules(settings.handler_modules)
    bind = args.bind or settings.api_bind
    check_api_bind(bind)
    try:
        check_bind(*parse_bind(settings.worker_health_bind))
    except BindError as exc:
        raise UsageError(
            f"the worker's health server cannot listen on {settings.worker_health_bind}: "
            f"{exc.strerror or exc}; choose another address with TASKQ_WORKER_HEALTH_BIND"
        ) from None
    queues = args.queues or settings.worker_queues
    env = dict(os.environ)
    server = None
    data_dir = Path(args.data_dir).resolve()
    if not names_a_database(settings):
        from taskq import embedded

        try:
            server, env["DATABASE_URL"] = embedded.start(data_dir)
        except embedded.EmbeddedError as exc:
            print(f"taskq: {exc}", file=sys.stderr)
            return 1
    try:
        if server is not None:
            settings = load_settings(database_url=env["DATABASE_URL"])
        migrate.apply(settings, wait=30)
        found_here = server is not None and data_dir == (Path.cwd() / ".pgdata").resolve()
        return _run_dev_children(
            bind, queues, env, settings, embedded_url=server is not None, found_here=found_here
        )
    finally:
        if server is not None:
            from taskq import embedded

            embedded.stop(server, data_dir)


def _banner(
    bind: str, queues: list[str], settings: Settings, *, embedded_url: bool, found_here: bool
) -> str:
    """What a user needs on the first screen: where things are, and how to stop."""
    url = f"http://{bind}"
    lines = [
        "",
        f"taskq is running: API {url}  dashboard {url}/dashboard  metrics {url}/metrics",
        f"  worker serving queue(s) {', '.join(queues)} (others: taskq dev --queues a,b); "
        f"health on {settings.worker_health_bind}",
    ]
    if embedded_url:
        where = "in this directory find it, elsewhere" if found_here else "need"
        lines.append(f"  embedded PostgreSQL; `taskq` commands and taskq.database_url() {where}:")
        lines.append(f"  export DATABASE_URL='{settings.database_url}'")
    else:
        lines.append(f"  database {db.redact(settings.database_url)}")
    if settings.config_file:
        lines.append(f"  settings file {settings.config_file} (schedules and queue settings)")
    lines += [
        f"  curl -s -XPOST {bind}/tasks -H 'content-type: application/json' "
        """-d '{"kind":"echo","payload":{"input":"hello"}}'""",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _wait_for_api(
    bind: str, children: Iterable[subprocess.Popen[bytes]], stopping: Callable[[], bool]
) -> bool:
    """Wait until GET /live answers (True), or a child exits or Ctrl-C comes (False)."""
    host, port = parse_bind(bind)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stopping():
        if any(child.poll() is not None for child in children):
            return False
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                sock.sendall(b"GET /live HTTP/1.0\r\nHost: taskq\r\n\r\n")
                if sock.recv(64).split(b" ")[1:2] == [b"200"]:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return not stopping()


def _run_dev_children(
    bind: str,
    queues: list[str],
    env: dict[str, str],
    settings: Settings,
    *,
    embedded_url: bool,
    found_here: bool,
) -> int:
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
        "worker": [*base, "worker", "--queues", ",".join(queues)],
    }
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, env=env, start_new_session=True)
        # The banner comes last on the first screen, once the API answers.
        if _wait_for_api(bind, children.values(), lambda: stopping):
            banner = _banner(
                bind, queues, settings, embedded_url=embedded_url, found_here=found_here
            )
            print(banner, flush=True)
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
