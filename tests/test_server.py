"""The real thing: `taskq api` (gunicorn) and `taskq worker` processes over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, spawn_taskq, stop_process, taskq_env, wait_until

pytestmark = pytest.mark.slow


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    timeout: float = 10.0,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = dict(headers or {})
        if raw is not None:
            all_headers.setdefault("content-type", "application/json")
        if chunked:
            conn.request(method, path, body=iter([raw]), headers=all_headers, encode_chunked=True)
        else:
            conn.request(method, path, body=raw, headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def answers(port: int, path: str = "/live") -> Response | None:
    try:
        return request(port, "GET", path, timeout=2)
    except OSError:
        return None


@contextlib.contextmanager
def api_process(env: dict[str, str], log: Path, *args: str) -> Iterator[tuple[Any, int]]:
    port = free_port()
    with log.open("w") as out:
        proc = spawn_taskq(
            ["api", "--bind", f"127.0.0.1:{port}", "--workers", "1", *args],
            env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: proc.poll() is not None or answers(port),
            timeout=30,
            interval=0.1,
            what="the API to answer /live",
        )
        assert proc.poll() is None, f"the API exited:\n{log.read_text()}"
        yield proc, port
    finally:
        code = stop_process(proc)
        assert code == 0, f"the API exited with {code}:\n{log.read_text()}"


def worker_process(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return spawn_taskq(
            ["worker", "--health-port", "0"], env, stdout=out, stderr=subprocess.STDOUT
        )


def assert_json_error(resp: Response, status: int) -> dict[str, Any]:
    assert resp.status == status, resp.body
    assert resp.headers["content-type"] == "application/json"
    error: dict[str, Any] = resp.json()["error"]
    assert error["status"] == status
    assert b"Traceback" not in resp.body
    return error


def test_submit_over_http_and_a_worker_runs_it(database_url: str, tmp_path: Path) -> None:
    """The acceptance test: POST an echo task, poll it until it succeeds with its result."""
    env = taskq_env(database_url)
    worker = worker_process(env, tmp_path / "worker.log")
    try:
        with api_process(env, tmp_path / "api.log") as (_, port):
            body = {"kind": "echo", "payload": {"input": "hello"}}
            created = request(port, "POST", "/tasks", body)
            assert created.status == 201, created.body
            task = created.json()
            assert created.headers["location"].endswith(f"/tasks/{task['id']}")
            assert task["status"] == "queued"

            def finished() -> Any:
                got = request(port, "GET", f"/tasks/{task['id']}")
                assert got.status == 200, got.body
                current = got.json()
                return current if current["status"] in ("succeeded", "failed") else None

            done = wait_until(finished, timeout=20, interval=0.1, what="the task to finish")
            assert done["status"] == "succeeded", done
            assert done["result"] == {"input": "hello"}
            assert done["attempts"] == 1
            ready = request(port, "GET", "/ready")
            assert (ready.status, ready.json()["status"]) == (200, "ready")
    finally:
        code = stop_process(worker)
    assert code == 0, (tmp_path / "worker.log").read_text()


def test_http_edges_through_gunicorn(database_url: str, tmp_path: Path) -> None:
    env = taskq_env(database_url, api_max_body_bytes=2048)
    home = tmp_path / "home"
    home.mkdir()
    env["HOME"] = str(home)
    env.pop("XDG_RUNTIME_DIR", None)
    with api_process(env, tmp_path / "api.log") as (_, port):
        # Chunked bodies (no Content-Length) are read, and bounded.
        chunked = request(port, "POST", "/tasks", {"payload": {"via": "chunks"}}, chunked=True)
        assert chunked.status == 201, chunked.body
        assert chunked.json()["payload"] == {"via": "chunks"}
        big = {"payload": {"s": "x" * 4096}}
        assert_json_error(request(port, "POST", "/tasks", big, chunked=True), 413)
        assert_json_error(request(port, "POST", "/tasks", big), 413)
        assert_json_error(request(port, "POST", "/tasks", b"{nope"), 400)
        assert_json_error(
            request(port, "POST", "/tasks", b"{}", headers={"content-type": "text/plain"}), 415
        )
        assert_json_error(request(port, "GET", "/tasks/not-a-uuid"), 404)
        assert_json_error(request(port, "GET", "/nowhere"), 404)
        assert_json_error(request(port, "DELETE", "/tasks"), 405)
        keyed = [
            request(port, "POST", "/tasks", {}, headers={"Idempotency-Key": "once"})
            for _ in range(2)
        ]
        assert [r.status for r in keyed] == [201, 200]
        assert keyed[0].json()["id"] == keyed[1].json()["id"]
        page = request(port, "GET", "/tasks?limit=1")
        assert page.status == 200
        assert len(page.json()["tasks"]) == 1
        assert page.json()["next_cursor"]
    # No gunicorn control socket: one per-user path would be shared by every API process
    # on the host (and deleted by whichever stops first).
    assert list(home.iterdir()) == []


class Proxy:
    """A TCP forwarder to PostgreSQL that can be switched on late: a database that returns."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def test_api_starts_and_serves_while_the_database_is_down(
    database_url: str, tmp_path: Path
) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params: dict[str, Any] = conninfo_to_dict(database_url)
    proxy = Proxy(
        free_port(), (str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    )
    down_url = make_conninfo(**{**params, "host": "127.0.0.1", "port": str(proxy.port)})
    log = tmp_path / "api.log"
    env = taskq_env(down_url, db_pool_timeout=0.5, db_connect_timeout=1)
    try:
        with api_process(env, log) as (proc, port):
            live = request(port, "GET", "/live")
            assert (live.status, live.json()) == (200, {"status": "live"})
            ready = request(port, "GET", "/ready")
            assert ready.status == 503
            assert ready.json()["checks"] == {"database": False}
            resp = request(port, "POST", "/tasks", {"kind": "echo", "payload": {"input": "hi"}})
            error = assert_json_error(resp, 503)
            assert error["code"] == "database_unavailable"
            assert resp.headers["retry-after"].isdigit()
            assert_json_error(request(port, "GET", f"/tasks/{'0' * 32}"), 503)
            # Still the first worker process: nothing crashed or was restarted.
            assert proc.poll() is None
            assert log.read_text().count("Booting worker") == 1, log.read_text()

            # The database returns: ready again without a restart, and tasks are accepted.
            proxy.start()
            wait_until(
                lambda: request(port, "GET", "/ready").status == 200,
                timeout=20,
                interval=0.2,
                what="/ready to recover",
            )
            created = request(port, "POST", "/tasks", {"payload": {"back": True}})
            assert created.status == 201, created.body
            assert log.read_text().count("Booting worker") == 1, log.read_text()
    finally:
        proxy.close()
