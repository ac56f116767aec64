"""The database roles the manifests create, on a real PostgreSQL.

gitops/apps/base/db/roles.sql is what CloudNativePG runs after initdb in prod
(postInitApplicationSQLRefs) and the dev StatefulSet's init script runs with psql.
Here it runs the same way (as a superuser, in the new database, after the owner
exists); the login roles are then made as CloudNativePG's managed roles make them
(LOGIN, member of a group role). Then the processes run as the manifests run them,
DATABASE_URL without a user and PGUSER set: the migrations as the owner, a worker
and the library as taskq_app, KEDA's query as taskq_keda. The runtime role must be
able to do everything taskq does and nothing of the schema; the read-only role
only its query.

Role names get a per-run suffix: roles are global to the server, which other test
runs share.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.gitops.gitops_support import REPO, run, venv_tool

ROLES_SQL = REPO / "gitops" / "apps" / "base" / "db" / "roles.sql"
GROUPS = ("taskq_owner", "taskq_runtime", "taskq_readonly")


def url_for(server_url: str, dbname: str, user: str | None = None) -> str:
    params: dict[str, Any] = conninfo_to_dict(server_url)
    params["dbname"] = dbname
    params.pop("user", None)
    if user:
        params["user"] = user
    return make_conninfo(**params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def roles(server_url: str) -> Iterator[dict[str, str]]:
    """A database with taskq's roles: {'db', 'owner', 'app', 'keda', 'runtime',
    'readonly'} -> names. Dropped afterwards, database first."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "db": f"taskq_roles_{suffix}",
        "owner": f"taskq_owner_{suffix}",
        "runtime": f"taskq_runtime_{suffix}",
        "readonly": f"taskq_readonly_{suffix}",
        "app": f"taskq_app_{suffix}",
        "keda": f"taskq_keda_{suffix}",
    }
    text = ROLES_SQL.read_text()
    for group in GROUPS:
        text = re.sub(rf"\b{group}\b", names[group.removeprefix("taskq_")], text)
    admin = psycopg.connect(server_url, autocommit=True)
    try:
        # What initdb does with `owner:` (CloudNativePG) or the init script (dev).
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(names["owner"])))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(names["db"]), sql.Identifier(names["owner"])
            )
        )
        with psycopg.connect(url_for(server_url, names["db"]), autocommit=True) as db:
            db.execute(text.encode())  # the file as it is, several statements
            for login, group in (("app", "runtime"), ("keda", "readonly")):
                db.execute(
                    sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                        sql.Identifier(names[login]), sql.Identifier(names[group])
                    )
                )
        yield names
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names["db"]))
        )
        for key in ("app", "keda", "runtime", "readonly", "owner"):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(names[key])))
        admin.close()


def taskq(server_url: str, names: dict[str, str], user: str, *args: str) -> Any:
    """`taskq ARGS` as a pod runs it: DATABASE_URL without a user, PGUSER set."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": url_for(server_url, names["db"]),
        "PGUSER": names[user],
        "TASKQ_WORKER_HEALTH_BIND": f"127.0.0.1:{free_port()}",
        "TASKQ_WORKER_CONCURRENCY": "4",
    }
    return run([venv_tool("taskq"), *args], env=env, timeout=120)


def refused(url: str, statement: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_processes_run_with_least_privilege(
    server_url: str, roles: dict[str, str], contract: dict[str, Any]
) -> None:
    out = taskq(server_url, roles, "owner", "migrate", "--wait", "10")
    assert out.returncode == 0, out.stderr
    app_url = url_for(server_url, roles["db"], roles["app"])
    keda_url = url_for(server_url, roles["db"], roles["keda"])

    # The runtime role enqueues (the library), and a worker claims, runs and
    # finishes, with LISTEN, leases and metrics, as taskq_app.
    import taskq as lib

    with psycopg.connect(app_url) as conn, conn.transaction():
        lib.enqueue(conn, "echo", {"from": "roles-test"})
    out = taskq(server_url, roles, "app", "worker", "--burst")
    assert out.returncode == 0, out.stderr
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT status FROM taskq_tasks").fetchall() == [("succeeded",)]
    out = taskq(server_url, roles, "app", "prune")
    assert out.returncode == 0, out.stderr

    # ... and changes no schema.
    for statement in (
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE taskq_tasks ADD COLUMN intruder int",
        "DROP TABLE taskq_tasks",
        "TRUNCATE taskq_tasks",
    ):
        assert refused(app_url, statement), statement

    # KEDA's role runs the contract's queue-depth query, and writes nothing.
    with psycopg.connect(keda_url) as conn:
        assert conn.execute(contract["queue_depth_query"].encode()).fetchone() == (0,)
    assert refused(keda_url, "DELETE FROM taskq_tasks")
    assert refused(keda_url, "CREATE TABLE intruder (id int)")

    # None of them is more than a plain login.
    with psycopg.connect(server_url) as admin:
        rows = admin.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = ANY(%s)",
            [[roles["owner"], roles["app"], roles["keda"]]],
        ).fetchall()
    assert len(rows) == 3
    assert all(not any(flags) for _, *flags in rows), rows


def test_runtime_role_without_the_grants_is_refused(server_url: str, roles: dict[str, str]) -> None:
    """The break-it case: taken out of its group role, taskq_app cannot even open a
    session, so the passing test above is owed to roles.sql, not to a lax server."""
    with psycopg.connect(url_for(server_url, roles["db"]), autocommit=True) as db:
        db.execute(
            sql.SQL("REVOKE {} FROM {}").format(
                sql.Identifier(roles["runtime"]), sql.Identifier(roles["app"])
            )
        )
    # Without the group, not even CONNECT (roles.sql revoked it from PUBLIC).
    with (
        pytest.raises(psycopg.OperationalError, match="permission denied"),
        psycopg.connect(url_for(server_url, roles["db"], roles["app"])) as conn,
    ):
        conn.execute("SELECT 1 FROM taskq_tasks")
