"""Every overlay renders, and every object validates against a real schema.

Built-in kinds: kubernetes-validate, strict (unknown fields are errors), against
the pinned Kubernetes version. Custom resources (Argo CD, CloudNativePG and its
Barman Cloud plugin, KEDA, External Secrets, cert-manager, Gateway API,
Prometheus Operator): the CRD schemas of the exact releases the platform pins,
from npm (crd_validate.mjs). An object that neither knows is a failure, never a
warning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gitops.gitops_support import GITOPS, K8S_VERSION, RENDERS, REPO, render, run, venv_tool

CRD_GROUPS = {
    "argoproj.io",
    "keda.sh",
    "external-secrets.io",
    "postgresql.cnpg.io",
    "barmancloud.cnpg.io",
    "monitoring.coreos.com",
    "cert-manager.io",
    "gateway.networking.k8s.io",
}


def group_of(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def kubernetes_validate(objs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    """Problems kubernetes-validate reports; a WARN (e.g. unknown kind) counts."""
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    out = run([venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)])
    lines = (out.stdout + out.stderr).splitlines()
    problems = [line for line in lines if not line.startswith("INFO")]
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    if out.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {out.returncode}")
    if len(passed) != len(objs):
        problems.append(f"{len(passed)} of {len(objs)} objects reported as passed")
    return problems


def crd_validate(objs: list[dict[str, Any]], tools: Path) -> list[dict[str, Any]]:
    out = run(
        ["node", str(Path(__file__).with_name("crd_validate.mjs")), str(tools)],
        input=json.dumps(objs),
    )
    if out.returncode not in (0, 1):
        pytest.fail(f"crd_validate.mjs crashed:\n{out.stderr}")
    results: list[dict[str, Any]] = json.loads(out.stdout)
    if (out.returncode == 0) != all(r["ok"] for r in results):
        pytest.fail("crd_validate.mjs exit code disagrees with its results")
    return results


def all_renders(
    rendered: dict[str, list[dict[str, Any]]],
    bootstrap: list[dict[str, Any]],
    apps: list[dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    return {**rendered, "argocd": bootstrap, "argocd-apps": apps}


@pytest.mark.parametrize("env", RENDERS)
def test_builtin_kinds_validate_strictly(
    env: str, rendered: dict[str, Any], tmp_path: Path
) -> None:
    builtin = [o for o in rendered[env] if group_of(o) not in CRD_GROUPS]
    assert builtin, "nothing rendered"
    assert kubernetes_validate(builtin, tmp_path) == []


def test_kubernetes_validate_flags_unknown_kinds_and_fields(tmp_path: Path) -> None:
    """The wrapper above must fail on both kinds of mistake it exists to catch."""
    typo = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labelz": {}}}
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert kubernetes_validate([typo], tmp_path)
    assert any("WARN" in p for p in kubernetes_validate([unknown], tmp_path))


def broken_copies(argocd_apps: list[Any], rendered: dict[str, Any]) -> list[dict[str, Any]]:
    """Custom resources with one mistake each that a cluster would take silently or
    refuse; every one must fail validation."""

    def copy_of(objs: list[Any], kind: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(json.dumps(next(o for o in objs if o["kind"] == kind)))
        return obj

    app = copy_of(argocd_apps, "Application")
    app["spec"]["syncPolicy"]["automated"]["selfheal"] = True  # misspelt: silently ignored
    so = copy_of(rendered["prod"], "ScaledObject")
    del so["spec"]["scaleTargetRef"]
    es = copy_of(rendered["prod"], "ExternalSecret")
    es["spec"]["refreshInterval"] = 3600  # must be a duration string
    cluster = copy_of(rendered["prod"], "Cluster")
    cluster["spec"]["postgresql"]["synchronous"]["numbr"] = 1  # misspelt
    store = copy_of(rendered["prod"], "ObjectStore")
    store["spec"]["configuration"]["wal"]["maxParallell"] = 4  # misspelt
    store2 = copy_of(rendered["prod"], "ObjectStore")
    store2["spec"]["retentionPolicy"] = "30 days"  # not the plugin's pattern
    route = copy_of(rendered["prod-exposed"], "HTTPRoute")
    route["spec"]["parentRefs"][0]["sectionname"] = "https"  # misspelt
    stranger = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    return [app, so, es, cluster, store, store2, route, stranger]


@pytest.fixture(scope="module")
def crd_results(
    rendered: dict[str, Any],
    argocd_bootstrap: list[Any],
    argocd_apps: list[Any],
    gitops_tools: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(every rendered custom resource, its results, the broken copies' results): one
    run of crd_validate.mjs (one TypeScript compilation) for both tests."""
    custom = [
        o
        for objs in all_renders(rendered, argocd_bootstrap, argocd_apps).values()
        for o in objs
        if group_of(o) in CRD_GROUPS
    ]
    broken = broken_copies(argocd_apps, rendered)
    results = crd_validate(custom + broken, gitops_tools)
    # Diagnostics no object owns come last; they count against the real objects.
    ours = results[: len(custom)] + results[len(custom) + len(broken) :]
    return custom, ours, results[len(custom) : len(custom) + len(broken)]


def test_custom_resources_validate_against_crd_schemas(
    crd_results: tuple[list[Any], list[Any], list[Any]],
) -> None:
    custom, results, _ = crd_results
    kinds = {o["kind"] for o in custom}
    assert {
        "Application",
        "AppProject",
        "ScaledObject",
        "TriggerAuthentication",
        "ExternalSecret",
        "Cluster",
        "ScheduledBackup",
        "ObjectStore",
        "PodMonitor",
        "Certificate",
        "HTTPRoute",
        "ReferenceGrant",
    } <= kinds
    assert [r for r in results if not r["ok"]] == []


def test_crd_validation_rejects_broken_resources(
    crd_results: tuple[list[Any], list[Any], list[Any]],
) -> None:
    _, _, broken = crd_results
    assert [r["ok"] for r in broken] == [False] * 8, broken


@pytest.mark.parametrize("env", RENDERS)
def test_every_object_has_a_schema(env: str, rendered: dict[str, Any]) -> None:
    """Only built-in kinds (kubernetes-validate) and known CRD groups are rendered."""
    strangers = [
        o["kind"]
        for o in rendered[env]
        if "." in group_of(o)
        and group_of(o) not in CRD_GROUPS
        and not group_of(o).endswith(".k8s.io")
    ]
    assert strangers == []


def test_one_resource_per_file_and_resources_only() -> None:
    for kfile in sorted(GITOPS.rglob("kustomization.yaml")):
        k = yaml.safe_load(kfile.read_text())
        deprecated = {
            "bases",
            "patchesStrategicMerge",
            "patchesJson6902",
            "commonLabels",
            "vars",
        } & set(k)
        assert not deprecated, f"{kfile}: deprecated fields {deprecated}"
        listed = set(k.get("resources", [])) | {
            p["path"] for p in k.get("patches", []) if "path" in p
        }
        siblings = {p.name for p in kfile.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert siblings <= listed, f"{kfile}: files not in resources: {siblings - listed}"
    for yfile in sorted(GITOPS.rglob("*.yaml")):
        if yfile.name != "kustomization.yaml":
            docs = [d for d in yaml.safe_load_all(yfile.read_text()) if d]
            assert len(docs) == 1, f"{yfile}: {len(docs)} resources in one file"


def test_repository_url_is_written_once(
    argocd_bootstrap: list[Any], argocd_apps: list[Any]
) -> None:
    literal = re.compile(r"https://[^\s\"']+\.git\b")
    holders = sorted(
        str(p.relative_to(REPO)) for p in GITOPS.rglob("*.yaml") if literal.search(p.read_text())
    )
    assert holders == ["gitops/argocd/projects/appproject-taskq.yaml"]
    for obj in argocd_bootstrap + argocd_apps:
        assert "REPLACED" not in json.dumps(obj), (
            f"{obj['kind']}/{obj['metadata']['name']} kept a placeholder"
        )


def test_platform_namespaces_validate_and_cover_every_destination(
    argocd_apps: list[Any], tmp_path: Path
) -> None:
    """The namespaces the platform makes are valid Namespaces, with Pod Security labels,
    and every Application's destination is one of them (or Argo CD's own)."""
    namespaces = render("gitops/platform/namespaces")
    assert kubernetes_validate(namespaces, tmp_path) == []
    names = {n["metadata"]["name"] for n in namespaces}
    for ns in namespaces:
        assert "pod-security.kubernetes.io/enforce" in ns["metadata"]["labels"]
    destinations = {
        a["spec"]["destination"]["namespace"] for a in argocd_apps if a["kind"] == "Application"
    }
    assert destinations - {"argocd"} <= names
