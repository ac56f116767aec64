"""Fixtures of the reliability suite: a private PostgreSQL that tests may stop and start,
process collectors that always clean up, and a metrics file the docs quote.

The shared server at 127.0.0.1:5432 (`server_url`) is never stopped or reconfigured:
scenarios that take the database away run against `private_pg`, a throwaway cluster in a
temporary directory on a free port, torn down even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from taskq import migrate
from taskq.settings import load_settings

from tests.helpers import free_port, wait_until
from tests.reliability.harness import Processes, processes

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
METRICS_FILE = ARTIFACTS / "reliability.json"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability: fault-injection, load and hostile-input tests against real processes",
    )


# ----------------------------------------------------------------------------- metrics
class Metrics:
    """Numbers measured by the scenarios, merged into test-artifacts/reliability.json."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, **values: Any) -> None:
        self.data.setdefault(scenario, {}).update(values)

    def write(self) -> None:
        if not self.data:
            return
        ARTIFACTS.mkdir(exist_ok=True)
        merged: dict[str, Any] = {}
        if METRICS_FILE.exists():
            try:
                merged = json.loads(METRICS_FILE.read_text()).get("scenarios", {})
            except (ValueError, AttributeError):
                merged = {}
        merged.update(self.data)
        report = {
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count()},
            "scenarios": dict(sorted(merged.items())),
        }
        METRICS_FILE.write_text(json.dumps(report, indent=2) + "\n")


@pytest.fixture(scope="session")
def metrics() -> Iterator[Metrics]:
    collected = Metrics()
    yield collected
    collected.write()


# ----------------------------------------------------------------------------- processes
@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start `taskq api` / `taskq worker`; all of them are stopped at teardown."""
    with processes(tmp_path) as collector:
        yield collector


@pytest.fixture(scope="module")
def module_database_url(server_url: str, template_db: str) -> Iterator[str]:
    """One migrated database shared by a module's tests (for a long-lived API server)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"taskq_r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    params: dict[str, Any] = conninfo_to_dict(server_url)
    params["dbname"] = name
    yield make_conninfo(**params)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ----------------------------------------------------------------------------- private server
def _pg_bin_dir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    import pgserver  # type: ignore[import-untyped,unused-ignore]

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _unprivileged_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root: use the postgres (or nobody) account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    reason = "running as root with no unprivileged account for a private PostgreSQL"
    if os.environ.get("CI"):
        # In CI a skipped database-fault scenario would pass unnoticed: fail instead.
        pytest.fail(f"{reason} (CI is set: add a postgres or nobody account)")
    pytest.skip(reason)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, owned by this test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sock = base / "sock"
        self.log = base / "postgres.log"
        self.port = free_port()
        self.bin = _pg_bin_dir()
        self.user = _unprivileged_user()
        self.starts = 0

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        subprocess.run(
            cmd,
            check=check,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.base,
            **kwargs,
        )

    def init(self) -> None:
        self.sock.mkdir()
        if self.user is not None:
            for path in (self.base, self.sock):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "root", "--auth=trust", "-E", "UTF8", "-N")

    def start(self, *settings: str) -> None:
        """Start (again); `settings` are extra `name=value` server settings."""
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        ) + "".join(f" -c {setting}" for setting in settings)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def kill(self) -> None:
        """Last resort in teardown: SIGKILL the postmaster named in postmaster.pid."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def url(self, dbname: str = "taskq", **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://root@127.0.0.1:{self.port}/{dbname}?connect_timeout=2{extra}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres"), autocommit=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL with a migrated `taskq` database, running; stopped at teardown."""
    base = Path(tempfile.mkdtemp(prefix="taskq-rel-pg-"))
    server = Node(base)  # a Node: tests may also freeze it
    try:
        server.init()
        server.start()
        with server.admin() as admin:
            admin.execute("CREATE DATABASE taskq")
        migrate.apply(load_settings(database_url=server.url()))
        yield server
    finally:
        if server.running():
            try:
                server.stop("immediate")
            except (subprocess.SubprocessError, OSError):
                server.kill()
        wait_until(lambda: not server.running(), timeout=10, what="private PostgreSQL to stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def api_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, Processes]]:
    """A real `taskq api` (gunicorn, two processes) on the module's database, no worker."""
    with processes(tmp_path_factory.mktemp("api")) as collector:
        _, port = collector.api(collector.env(module_database_url), workers=2)
        yield port, collector


# ----------------------------------------------------------------------------- replication
def _children(pid: int) -> list[int]:
    """Every descendant process of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Node(PrivatePostgres):
    """A PostgreSQL server of a replicated pair; it can be frozen (every process SIGSTOPped,
    its sockets left open) as well as stopped."""

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def processes(self) -> list[int]:
        pid = self.postmaster_pid()
        return [pid, *_children(pid)]

    def signal_all(self, signum: int) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


class ReplicatedPostgres:
    """A primary and a streaming standby (initdb, then pg_basebackup -R), each on a free
    port in a temporary directory; `synchronous`: the standby is the synchronous one."""

    def __init__(self, base: Path, *, synchronous: bool) -> None:
        base.mkdir(parents=True, exist_ok=True)
        (base / "primary").mkdir()
        (base / "standby").mkdir()
        self.primary = Node(base / "primary")
        self.standby = Node(base / "standby")
        self.synchronous = synchronous
        self.frozen = False
        user = self.primary.user
        if user is not None:
            for path in (base, base / "primary", base / "standby"):
                os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        self.primary.init()
        self.primary.start("wal_level=replica", "max_wal_senders=5", "synchronous_commit=on")
        with self.primary.admin() as admin:
            admin.execute("CREATE DATABASE taskq")
        migrate.apply(load_settings(database_url=self.primary.url()))
        self.standby.sock.mkdir()
        if self.standby.user is not None:
            os.chown(self.standby.sock, self.standby.user.pw_uid, self.standby.user.pw_gid)
        self.standby._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "root",
            "-D", str(self.standby.data), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        self.standby.start("hot_standby=on", "synchronous_commit=on")
        want = "sync" if self.synchronous else "async"
        with self.primary.admin() as admin:
            if self.synchronous:  # only now: until the standby streams, commits would wait
                admin.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                admin.execute("SELECT pg_reload_conf()")
            wait_until(
                lambda: (
                    admin.execute(
                        "SELECT count(*) FROM pg_stat_replication"
                        " WHERE state = 'streaming' AND sync_state = %s",
                        (want,),
                    ).fetchone()[0]  # type: ignore[index]
                    == 1
                ),
                timeout=30,
                what="the standby to stream",
            )

    def url(self, **params: str) -> str:
        """The multi-host URL: whichever of the two accepts writes."""
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return (
            f"postgresql://root@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/taskq?connect_timeout=2&target_session_attrs=read-write{extra}"
        )

    def kill_primary(self) -> None:
        """The primary's host is lost: every process dies at once (SIGKILL)."""
        self.primary.signal_all(signal.SIGKILL)

    def freeze_primary(self) -> None:
        """The primary hangs: every process stopped, sockets open, TCP still acknowledged."""
        self.primary.signal_all(signal.SIGSTOP)
        self.frozen = True

    def promote(self) -> None:
        self.standby._run("pg_ctl", "-D", str(self.standby.data), "-w", "promote")

    def teardown(self) -> None:
        for node in (self.primary, self.standby):
            if node.running():
                with contextlib.suppress(Exception):
                    if node is self.primary and self.frozen:
                        node.signal_all(signal.SIGCONT)
                    node.stop("immediate")
            if node.running():
                with contextlib.suppress(Exception):
                    node.signal_all(signal.SIGKILL)
                (node.data / "postmaster.pid").unlink(missing_ok=True)


@pytest.fixture
def replicated_pg() -> Iterator[Any]:
    """A factory: `replicated_pg(synchronous=True)` starts a primary and a standby; both are
    stopped and deleted at teardown, frozen or not."""
    made: list[ReplicatedPostgres] = []
    bases: list[Path] = []

    def make(*, synchronous: bool = True) -> ReplicatedPostgres:
        base = Path(tempfile.mkdtemp(prefix="taskq-rel-repl-"))
        bases.append(base)
        pair = ReplicatedPostgres(base, synchronous=synchronous)
        made.append(pair)
        pair.start()
        return pair

    try:
        yield make
    finally:
        for pair in made:
            pair.teardown()
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- PgBouncer
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    """Debian's PgBouncer in front of the test's database, in the given pool mode."""

    def __init__(self, base: Path, database_url: str, mode: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        target = conninfo_to_dict(database_url)
        self.base = base
        self.port = free_port()
        self.dbname = str(target["dbname"])
        self.user = _unprivileged_user()
        users = base / "users.txt"
        users.write_text('"root" ""\n')
        self.log = base / "pgbouncer.log"
        self.config = base / "pgbouncer.ini"
        self.config.write_text(
            "[databases]\n"
            f"taskq = host={target.get('host', '127.0.0.1')} port={target.get('port', 5432)}"
            f" dbname={self.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {4 if mode == 'transaction' else 60}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.log}\npidfile = {base / 'pgbouncer.pid'}\n"
        )
        if self.user is not None:
            for path in (base, users, self.config):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,
        )
        wait_until(self._answers, timeout=15, what="PgBouncer to accept connections")

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            assert self.proc.poll() is None, self.log.read_text() if self.log.exists() else ""
            return False

    def url(self) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/taskq?connect_timeout=2"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pgbouncer(database_url: str) -> Iterator[Any]:
    """A factory: `pgbouncer("transaction")` starts PgBouncer in front of the test's own
    database (`database_url`); its clients name the database `taskq`."""
    started: list[PgBouncer] = []
    base = Path(tempfile.mkdtemp(prefix="taskq-rel-bouncer-"))
    base.chmod(0o755)  # PgBouncer runs as the server's (unprivileged) user

    def make(mode: str) -> PgBouncer:
        if not Path(PGBOUNCER).exists():
            if os.environ.get("CI"):
                pytest.fail("pgbouncer is not installed (CI is set)")
            pytest.skip("pgbouncer is not installed")
        sub = base / f"{mode}-{len(started)}"
        sub.mkdir()
        bouncer = PgBouncer(sub, database_url, mode)
        started.append(bouncer)
        return bouncer

    try:
        yield make
    finally:
        for bouncer in started:
            bouncer.stop()
        shutil.rmtree(base, ignore_errors=True)
