"""app/taskq/health.py: the worker's probe server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from taskq.health import HealthServer, health_app


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_live_and_ready_report_the_checks() -> None:
    checks = {"database": True, "listener": True}
    server = HealthServer(health_app(lambda: dict(checks)), "127.0.0.1", 0)
    server.start()
    try:
        assert _get(server.port, "/live")[0] == 200
        assert _get(server.port, "/ready") == (
            200,
            {"status": "ready", "checks": {"database": True, "listener": True}},
        )
        checks["listener"] = False
        status, body = _get(server.port, "/ready")
        assert (status, body["status"]) == (503, "not ready")
        assert body["checks"] == {"database": True, "listener": False}
    finally:
        server.stop()


def test_stop_is_immediate_and_frees_the_port() -> None:
    """A stopping worker (burst mode, SIGTERM) must not wait for the server's next poll."""
    server = HealthServer(health_app(lambda: {}), "127.0.0.1", 0)
    server.start()
    assert _get(server.port, "/live")[0] == 200
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.2  # serve_forever polls every 0.5 s
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/live", timeout=1)


def test_head_live_answers_200() -> None:
    server = HealthServer(health_app(lambda: {}), "127.0.0.1", 0)
    server.start()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}/live", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 (our server)
            assert resp.status == 200
            assert resp.read() == b""
    finally:
        server.stop()
