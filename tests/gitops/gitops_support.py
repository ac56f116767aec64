"""Helpers shared by the GitOps tests: paths, the pinned Kubernetes version, tools.

A module of its own (not conftest.py) so test modules can import it by a unique name:
several test folders have a conftest.py, and `from conftest import ...` would pick
whichever was imported first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "gitops"
OVERLAYS = ("dev", "prod")
# Kustomizations rendered and checked like the overlays: optional components
# shown in use (gitops/apps/examples/<name>), each with the overlay it extends.
EXAMPLES = {"prod-exposed": "prod"}
RENDERS = (*OVERLAYS, *EXAMPLES)
# The oldest Kubernetes minor the manifests must work on (kind-demo.sh and
# docs/deploy.md use the same); the API's preStop `sleep` handler needs >= 1.30.
K8S_VERSION = "1.34.0"


def venv_tool(name: str) -> str:
    """A console script installed next to the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed in {path.parent}: it comes with the pip dev dependencies"
        )
    return str(path)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def render(path: str | Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` a directory; fail the test with kustomize's message."""
    out = run([venv_tool("kubectl"), "kustomize", str(REPO / path)])
    if out.returncode != 0:
        pytest.fail(f"kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with_images(path: str | Path, images: list[str]) -> list[dict[str, Any]]:
    """Render a directory the way Argo CD does for an Application with
    `spec.source.kustomize.images`: `kustomize edit set image` on the directory, i.e.
    an images: entry on top of it. Done in a throwaway kustomization that includes
    the directory, so the repository is never edited."""
    entries = []
    for image in images:
        name, _, ref = image.partition("=")
        if "@" in ref:
            new_name, _, digest = ref.partition("@")
            entries.append({"name": name, "newName": new_name, "digest": digest})
        else:
            new_name, _, tag = ref.rpartition(":")
            entries.append({"name": name, "newName": new_name, "newTag": tag})
    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(REPO / path, tmp)
        kfile = {"resources": [rel], "images": entries}
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(kfile))
        return render(tmp)


def parse_contract(text: str) -> dict[str, Any]:
    """The facts of docs/contract.md the manifests depend on."""
    query = re.search(r"Queue depth[^`]*`([^`]+)`", text)
    # A bullet and its indented continuation lines.
    api = re.search(r"^- API on (\d+): (.*\n(?:  .*\n)*)", text, re.MULTILINE)
    worker = re.search(r"^- Worker on (\d+): (.*\n(?:  .*\n)*)", text, re.MULTILINE)
    api_health = re.search(r"^- API probes on (\d+): ", text, re.MULTILINE)
    table = re.search(r"^- Table `(\w+)`", text, re.MULTILINE)
    if not (query and api and worker and table and api_health):
        pytest.fail("docs/contract.md no longer states the queue-depth query, ports or table")

    def get_paths(line: str) -> set[str]:
        return set(re.findall(r"`GET (/[^` ]*)`", line))

    return {
        "queue_depth_query": query.group(1),
        "api_port": int(api.group(1)),
        "api_health_port": int(api_health.group(1)),
        "worker_port": int(worker.group(1)),
        "paths": {"api": get_paths(api.group(2)), "worker": get_paths(worker.group(2))},
        "table": table.group(1),
    }


# ------------------------------------------------- facts read from the application


class _NoPool:
    """Stands in for the API's connection pool: building the app and listing its routes
    opens no connection (and a scrape-time `get_stats()` on this object simply fails)."""


def get_routes(app: Any) -> frozenset[str]:
    """The paths a Falcon app answers GET on (falcon.inspect; internal responders, such as
    the 405 for an unrouted method, do not count)."""
    from falcon import inspect
    from taskq.api.observability import public_template

    return frozenset(
        public_template(route.path)
        for route in inspect.inspect_routes(app)
        if any(m.method == "GET" and not m.internal for m in route.methods)
    )


def served_routes() -> dict[str, frozenset[str]]:
    """GET paths of the API's Falcon app (`taskq.api.create_app`) and of the worker's health
    app (`taskq.health.health_app`, which the worker serves on TASKQ_WORKER_HEALTH_BIND)."""
    from taskq.api import Deps, create_app
    from taskq.health import health_app
    from taskq.settings import Settings

    api = create_app(Settings(), Deps(pool=_NoPool()))
    worker = health_app(lambda: {})
    return {"api": get_routes(api), "worker": get_routes(worker)}


def gunicorn_graceful_timeout() -> float:
    """graceful_timeout as app/taskq/server.py configures gunicorn: read from the config object
    its GunicornServer builds. The metrics directory it would prepare is left alone (that
    step belongs to a real server start and changes the environment)."""
    from taskq import metrics, server
    from taskq.settings import Settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "prepare_multiprocess_dir", lambda: "/nonexistent")
        srv = server.GunicornServer(Settings(), bind="127.0.0.1:0", workers=1)
    return float(srv.cfg.graceful_timeout)
