"""Payloads, tokens and passwords never reach a log line or an error message.

The API and a worker run with a recognisable secret in a task payload, in the bearer
token and in the database password, at DEBUG level; the test provokes every path that
logs or answers an error (bad tokens, malformed requests and headers, failing handlers,
an unreachable database, invalid settings) and then greps everything captured.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers import REPO, free_port, wait_until
from tests.reliability.conftest import Metrics
from tests.reliability.harness import Processes, Response, request

pytestmark = pytest.mark.reliability

PAYLOAD_SECRET = "payload-secret-7f3a9c51"
TOKEN = "token-secret-41d8e2b7c6a0"
DB_PASSWORD = "dbpass-secret-93b1f0e2"
SECRETS = (PAYLOAD_SECRET, TOKEN, DB_PASSWORD)


def _with_password(url: str, **changes: Any) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params.update(password=DB_PASSWORD, **changes)  # trust auth: accepted and ignored
    return make_conninfo(**params)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _text(resp: Response) -> str:
    return json.dumps(resp.headers) + resp.body.decode("utf-8", "replace")


def test_secrets_never_reach_logs_or_errors(
    database_url: str, procs: Processes, tmp_path: Path, metrics: Metrics
) -> None:
    env = procs.env(_with_password(database_url), log_level="DEBUG", api_tokens=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _api, port = procs.api(env, workers=1)
    _worker, _ = procs.worker(env, "--concurrency", "2")
    exposed: list[str] = []  # everything a client or operator could read, except task data

    def call(method: str, path: str, body: Any = None, **kw: Any) -> Response:
        resp = request(port, method, path, body, **kw)
        if resp.status >= 400:
            exposed.append(_text(resp))
        return resp

    ok = call("POST", "/tasks", {"kind": "echo", "payload": {"s": PAYLOAD_SECRET}}, headers=auth)
    assert ok.status == 201
    failing = call(
        "POST",
        "/tasks",
        {"kind": "fail", "payload": {"message": PAYLOAD_SECRET}, "max_attempts": 2},
        headers=auth,
    )
    assert failing.status == 201
    doomed = call(
        "POST",
        "/tasks",
        {"kind": "fail", "payload": {"message": PAYLOAD_SECRET, "retryable": False}},
        headers=auth,
    )
    for created in (ok, failing, doomed):
        task_id = created.json()["id"]
        wait_until(
            lambda t=task_id: (
                call("GET", f"/tasks/{t}", headers=auth).json()["status"]  # type: ignore[misc]
                in ("succeeded", "failed")
            ),
            timeout=15,
            what="the task to finish",
        )

    assert call("POST", "/tasks", {"payload": {"s": PAYLOAD_SECRET}}).status == 401
    wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    assert call("POST", "/tasks", {"kind": "echo"}, headers=wrong).status == 401
    assert call("GET", "/tasks", headers={"Authorization": f"Basic {TOKEN}"}).status == 401
    assert call("GET", "/tasks", headers={"Authorization": f"Bearer {TOKEN} {TOKEN}"}).status == 401
    bad_bodies: list[bytes] = [
        b'{"payload": {"s": "' + PAYLOAD_SECRET.encode(),  # truncated
        json.dumps({"payload": {"s": PAYLOAD_SECRET + "\u0000"}}).encode(),
        json.dumps({"priority": PAYLOAD_SECRET}).encode(),
        json.dumps({"payload": PAYLOAD_SECRET}).encode(),
        json.dumps({"run_at": PAYLOAD_SECRET}).encode(),
        json.dumps({"idempotency_key": PAYLOAD_SECRET + "\u0007"}).encode(),
        json.dumps({"tasks": [{"payload": {"s": PAYLOAD_SECRET}, "delay": -1}]}).encode(),
        b'{"payload": {"s": "' + PAYLOAD_SECRET.encode() + b'\xff"}}',
    ]
    for body in bad_bodies:
        for path in ("/tasks", "/tasks/batch"):
            assert call("POST", path, body, headers=auth).status in (400, 422)
    assert call("POST", "/tasks", PAYLOAD_SECRET, headers=auth, content_type="text/x").status == 415
    for raw in (
        b"GET /tasks HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + TOKEN.encode() + b"\r\n\r\n",
        b"GET /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\x01\r\n\r\n",
        b"GET /" + TOKEN.encode() + b" HTTP/1.1 extra\r\n\r\n",
        b"GET /tasks HTTP/1.1\r\nHost: x\r\nX-Long: " + TOKEN.encode() * 800 + b"\r\n\r\n",
    ):
        exposed.append(_raw(port, raw).decode("latin-1"))

    # The database goes away (a wrong port): connection errors are logged and answered.
    down_env = procs.env(
        _with_password(database_url, port=str(free_port())), log_level="DEBUG", api_tokens=TOKEN
    )
    _down_api, down_port = procs.api(down_env, workers=1, name="api-db-down")
    procs.worker(down_env, "--concurrency", "1", name="worker-db-down", wait_ready=False)
    refused = request(down_port, "POST", "/tasks", {"kind": "echo"}, headers=auth)
    assert refused.status == 503
    exposed.append(_text(refused))
    exposed.append(_text(request(down_port, "GET", "/ready")))
    wait_until(lambda: "cannot claim" in procs.logs(), timeout=15, what="worker db errors")

    # Invalid settings: the start-up error names the variable, never the value.
    bad_env = {**env, "DATABASE_URL": f"postgresql://root:{DB_PASSWORD}@127.0.0.1:notaport/x"}
    started = subprocess.run(
        [sys.executable, "-m", "taskq.cli", "worker"],
        env=bad_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    short_token = subprocess.run(
        [sys.executable, "-m", "taskq.cli", "api"],
        env={**env, "TASKQ_API_TOKENS": TOKEN[:10]},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short_token.returncode == 2
    exposed += [started.stdout + started.stderr, short_token.stdout + short_token.stderr]

    procs.stop_all()
    logs = procs.logs()
    assert "lease" in logs or "worker" in logs  # the logs really were captured
    leaks = [
        f"{where}: ...{text[max(0, at - 120) : at + 40]!r}"
        for secret in SECRETS
        for where, text in [("logs", logs), *(("response", t) for t in exposed)]
        if (at := text.find(secret[:12])) >= 0
    ]
    assert not leaks, f"secrets leaked: {leaks[:5]}"
    metrics.record(
        "log_hygiene",
        log_level="DEBUG",
        log_bytes=len(logs),
        error_responses_checked=len(exposed),
        secrets_found=0,
    )
