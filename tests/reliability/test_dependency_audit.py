"""scripts/audit-deps.py: known vulnerabilities fail the audit, and so does missing data.

pip-audit itself is replaced by canned reports and PyPI by a local fake, so these tests
need no network; `make audit` runs the real thing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO, free_port

pytestmark = pytest.mark.reliability
SCRIPT = REPO / "scripts" / "audit-deps.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def fake_pypi(pages: dict[str, dict[str, Any]]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.split("/")[2]
            if name not in pages:
                self.send_error(404)
                return
            body = json.dumps(pages[name]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _page(version: str, vulns: list[str] | None = None) -> dict[str, Any]:
    return {
        "info": {"version": version},
        "vulnerabilities": [{"id": v, "aliases": [], "withdrawn": None} for v in vulns or []],
    }


def _skipped(pins: dict[str, str]) -> list[dict[str, Any]]:
    """What pip-audit reports when PyPI's per-release pages are not served."""
    return [
        {"name": n, "skip_reason": f"Dependency not found on PyPI: {n} ({v})"}
        for n, v in pins.items()
    ]


def _run(
    audit: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    report: list[dict[str, Any]],
    pypi_url: str,
) -> tuple[int, str]:
    monkeypatch.setattr(audit, "pip_audit", lambda pins, ignore: report)
    monkeypatch.setenv("TASKQ_AUDIT_PYPI_URL", pypi_url)
    code = audit.main([])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_runtime_closure_is_what_ships(audit: ModuleType) -> None:
    pins = audit.runtime_closure()
    assert {"falcon", "gunicorn", "psycopg", "psycopg-pool", "pydantic"} <= pins.keys()
    assert "taskq" not in pins
    assert "pytest" not in pins  # dev tools are not in the image


def test_clean_when_every_dependency_is_vouched_for(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = audit.runtime_closure()
    with fake_pypi({n: _page(v) for n, v in pins.items()}) as url:
        code, out = _run(audit, monkeypatch, capsys, _skipped(pins), url)
    assert code == 0, out
    assert "no known vulnerabilities" in out


def test_a_known_vulnerability_fails(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = audit.runtime_closure()
    pages = {n: _page(v) for n, v in pins.items()}
    pages["falcon"] = _page(pins["falcon"], ["PYSEC-2099-1"])
    with fake_pypi(pages) as url:
        code, out = _run(audit, monkeypatch, capsys, _skipped(pins), url)
    assert code == 1
    assert "VULNERABLE: PYSEC-2099-1" in out
    report = [{"name": n, "version": v, "vulns": []} for n, v in pins.items()]
    report[0]["vulns"] = [{"id": "GHSA-xxxx-yyyy-zzzz"}]
    code, out = _run(audit, monkeypatch, capsys, report, "http://127.0.0.1:9")
    assert code == 1
    assert "GHSA-xxxx-yyyy-zzzz" in out


def test_missing_data_fails_loudly_instead_of_passing(
    audit: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = audit.runtime_closure()
    pages = {n: _page(v) for n, v in pins.items()}
    pages["gunicorn"] = _page("999.0")  # installed is not the newest: no data for it
    with fake_pypi(pages) as url:
        code, out = _run(audit, monkeypatch, capsys, _skipped(pins), url)
    assert code == 1
    assert "could not audit gunicorn" in out
    # PyPI unreachable altogether.
    code, out = _run(audit, monkeypatch, capsys, _skipped(pins), f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "UNAUDITED" in out


def test_unreachable_vulnerability_service_fails_the_real_run() -> None:
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {"PATH": "/usr/bin:/bin", "HTTPS_PROXY": proxy, "https_proxy": proxy}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**env, "TASKQ_AUDIT_PYPI_URL": proxy},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "audit FAILED" in proc.stderr
