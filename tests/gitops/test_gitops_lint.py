"""Linters for what gitops owns, and the tag-bump script the release loop runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitops.gitops_support import REPO, run, venv_tool


def shell_of(path: Path) -> str | None:
    """The interpreter a #! line names (through env), or None."""
    try:
        with path.open("rb") as f:
            first = f.readline(200).decode(errors="replace")
    except OSError:  # a socket, a dangling link
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and Path(words[0]).name == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    return Path(words[0]).name if words else None


SHELLS = {"sh", "bash", "dash", "ksh"}
# Not the repository's own files: tool caches, installs, build output (.gitignore).
UNTRACKED_DIRS = {
    *(".git", ".venv", ".tools", "node_modules", "build", "dist", "test-artifacts"),
    *("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"),
}


def shell_scripts(root: Path) -> list[Path]:
    """Every shell script under root: *.sh, and files whose #! line names a shell (the
    CI's .ci/run and .ci/in-debian have no suffix)."""
    found = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in UNTRACKED_DIRS and not d.startswith(".pgdata")]
        for name in files:
            p = Path(parent) / name
            if p.is_file() and (p.suffix == ".sh" or shell_of(p) in SHELLS):
                found.append(p)
    return sorted(found)


SCRIPTS = shell_scripts(REPO)


def test_hadolint_dockerfile() -> None:
    out = run([venv_tool("hadolint"), str(REPO / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_is_not_silent(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    assert run([venv_tool("hadolint"), str(bad)]).returncode != 0


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    out = run([venv_tool("shellcheck"), "--severity=style", "--external-sources", str(script)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_scripts_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {
        "bump-image.sh",
        "promote.sh",
        "bump-base-image.sh",
        "lock.sh",
        "podman-setup.sh",
        "build-base-image.sh",
        "kind-demo.sh",
        "init-roles.sh",
    } <= names
    # Found by their #! line: shellchecked although they have no .sh suffix.
    assert {".ci/run", ".ci/in-debian"} <= {str(p.relative_to(REPO)) for p in SCRIPTS}


def test_yamllint() -> None:
    targets = [str(REPO / "gitops")]
    if (REPO / ".github").exists():
        targets.append(str(REPO / ".github"))
    out = run([venv_tool("yamllint"), "--strict", "-c", str(REPO / ".yamllint"), *targets])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_contract() -> None:
    """The image facts the manifests rely on (docs/contract.md, gitops/apps)."""
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:" in text, "base pinned by digest"
    assert 'ENTRYPOINT ["taskq"]' in text
    assert "USER 10001:10001" in text
    assert "TASKQ_API_BIND=0.0.0.0:8080" in text
    assert "TASKQ_WORKER_HEALTH_BIND=0.0.0.0:8081" in text
    assert text.count("FROM ") == 2, "builder + runtime stages"
    final_stage = text.rsplit("FROM ", 1)[1]
    assert "COPY --from=build /opt/taskq /opt/taskq" in final_stage
    # The final stage may remove things (the base image's pip), never install any.
    assert final_stage_installs(text) == [], "no installs in the final stage"


INSTALLS = re.compile(
    r"\b(?:pip3?|apt-get|apt|apk|dnf|yum)(?:\s+-\S+)*\s+install\b"
    r"|-m\s+ensurepip\b|\bdpkg\s+(?:-i|--install)\b"
)


def final_stage_installs(dockerfile: str) -> list[str]:
    """RUN instructions of the last stage that install packages."""
    final_stage = dockerfile.rsplit("FROM ", 1)[1]
    # One string per instruction: continuation lines joined, comment lines dropped.
    instructions = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", final_stage).splitlines()
    return [i for i in instructions if i.startswith("RUN ") and INSTALLS.search(i)]


def test_final_stage_installs_are_found_across_continuation_lines() -> None:
    text = "FROM a AS build\nFROM b\nRUN set -eu \\\n    # tools\n && apt-get -y install curl\n"
    assert len(final_stage_installs(text)) == 1
    assert final_stage_installs("FROM b\nRUN /opt/v/bin/python -m pip install x\n")
    assert not final_stage_installs("FROM b\nRUN rm -rf /usr/local/bin/pip /usr/lib/pip-x\n")


def overlay_image(root: Path, env: str) -> str:
    out = run([venv_tool("kubectl"), "kustomize", str(root / "gitops/apps/overlays" / env)])
    assert out.returncode == 0, out.stderr
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == "taskq-api":
            return str(doc["spec"]["template"]["spec"]["containers"][0]["image"])
    raise AssertionError("no api Deployment")


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "gitops", tmp_path / "gitops")
    return tmp_path


DIGEST = "sha256:" + "ab" * 32


def bump(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(
        ["bash", str(REPO / "scripts/bump-image.sh"), *args],
        env={"GITOPS_ROOT": str(root), "PATH": "/usr/bin:/bin", **env},
    )


def test_bump_image_writes_dev_digest_and_leaves_prod(repo_copy: Path) -> None:
    prod_app = (repo_copy / "gitops/argocd/apps/application-taskq-prod.yaml").read_text()
    out = bump(repo_copy, "dev", DIGEST)
    assert out.returncode == 0, out.stderr
    assert overlay_image(repo_copy, "dev") == f"ghcr.io/example/taskq@{DIGEST}"
    kfile = (repo_copy / "gitops/apps/overlays/dev/kustomization.yaml").read_text()
    assert "# DEV ONLY" in kfile, "comments survive the edit"
    assert "newTag" not in kfile
    assert (repo_copy / "gitops/argocd/apps/application-taskq-prod.yaml").read_text() == prod_app
    # A tag replaces the digest again; an all-digit tag must stay a string (quoted),
    # or kustomize renders 1234567.0.
    assert bump(repo_copy, "dev", "1234567").returncode == 0
    assert overlay_image(repo_copy, "dev") == "ghcr.io/example/taskq:1234567"
    assert "digest:" not in (repo_copy / "gitops/apps/overlays/dev/kustomization.yaml").read_text()


def test_bump_image_can_rename(repo_copy: Path) -> None:
    out = bump(repo_copy, "dev", DIGEST, TASKQ_IMAGE="registry.example.org/team/taskq")
    assert out.returncode == 0, out.stderr
    assert overlay_image(repo_copy, "dev") == f"registry.example.org/team/taskq@{DIGEST}"


@pytest.mark.parametrize(
    ("env", "ref"),
    [("dev", "latest"), ("dev", "bad tag"), ("dev", "sha256:abc"), ("qa", "abc"), ("prod", DIGEST)],
)
def test_bump_image_refuses(env: str, ref: str, repo_copy: Path) -> None:
    before = (repo_copy / "gitops/apps/overlays/dev/kustomization.yaml").read_text()
    out = bump(repo_copy, env, ref)
    assert out.returncode == 2
    assert (repo_copy / "gitops/apps/overlays/dev/kustomization.yaml").read_text() == before
    if env == "prod":
        assert "scripts/promote.sh" in out.stderr


def promote(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(
        ["bash", str(REPO / "scripts/promote.sh"), *args],
        env={"GITOPS_ROOT": str(root), "PATH": "/usr/bin:/bin", **env},
    )


def prod_application(root: Path) -> dict[str, Any]:
    text = (root / "gitops/argocd/apps/application-taskq-prod.yaml").read_text()
    return dict(yaml.safe_load(text))


def test_promote_pins_commit_and_digest_together(repo_copy: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    before = (repo_copy / "gitops/apps/overlays/prod/kustomization.yaml").read_text()
    out = promote(repo_copy, commit, DIGEST)
    assert out.returncode == 0, out.stderr
    source = prod_application(repo_copy)["spec"]["source"]
    assert source["targetRevision"] == commit
    assert source["kustomize"]["images"] == [f"taskq=ghcr.io/example/taskq@{DIGEST}"]
    # The overlay itself is untouched: prod reads it at the pinned commit.
    assert (repo_copy / "gitops/apps/overlays/prod/kustomization.yaml").read_text() == before
    text = (repo_copy / "gitops/argocd/apps/application-taskq-prod.yaml").read_text()
    assert "never a branch" in text, "comments survive the edit"
    out = promote(repo_copy, commit, DIGEST, TASKQ_IMAGE="registry.example.org/t/taskq")
    assert out.returncode == 0, out.stderr
    images = prod_application(repo_copy)["spec"]["source"]["kustomize"]["images"]
    assert images == [f"taskq=registry.example.org/t/taskq@{DIGEST}"]


@pytest.mark.parametrize(
    ("commit", "digest"),
    [
        ("main", DIGEST),
        ("0123456", DIGEST),
        ("0123456789abcdef0123456789abcdef01234567", "sha256:abc"),
        ("0123456789abcdef0123456789abcdef01234567", "v1.2.3"),
    ],
)
def test_promote_refuses_moving_or_partial_refs(commit: str, digest: str, repo_copy: Path) -> None:
    before = (repo_copy / "gitops/argocd/apps/application-taskq-prod.yaml").read_text()
    assert promote(repo_copy, commit, digest).returncode == 2
    assert (repo_copy / "gitops/argocd/apps/application-taskq-prod.yaml").read_text() == before


def test_kind_demo_targets_the_validated_kubernetes_version() -> None:
    """The demo cluster runs the Kubernetes minor the manifests are validated against."""
    from tests.gitops.gitops_support import K8S_VERSION

    text = (REPO / "scripts" / "kind-demo.sh").read_text()
    minor = ".".join(K8S_VERSION.split(".")[:2])
    assert f"kindest/node:v{minor}." in text
    # Images in the demo are pinned too.
    assert ":latest" not in text
    # Argo CD installed by hand is the release the platform then manages.
    app = yaml.safe_load(
        (REPO / "gitops/argocd/platform/application-platform-argocd.yaml").read_text()
    )
    assert (
        f'ARGOCD_VERSION="${{ARGOCD_VERSION:-{app["spec"]["source"]["targetRevision"]}}}"' in text
    )


def test_bump_base_image_moves_the_digest_only(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((REPO / "Dockerfile").read_text())
    out = run(
        ["bash", str(REPO / "scripts/bump-base-image.sh"), DIGEST],
        env={"DOCKERFILE": str(dockerfile), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    text = dockerfile.read_text()
    assert f"ARG BASE_IMAGE=python:3.11-slim-bookworm@{DIGEST}\n" in text
    before = (REPO / "Dockerfile").read_text().splitlines()
    changed = [a for a, b in zip(before, text.splitlines(), strict=True) if a != b]
    assert [c.split("@")[0] for c in changed] == ["ARG BASE_IMAGE=python:3.11-slim-bookworm"]
    bad = run(
        ["bash", str(REPO / "scripts/bump-base-image.sh"), "latest"],
        env={"DOCKERFILE": str(dockerfile), "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 2
    assert dockerfile.read_text() == text
