"""Security and reliability rules over the rendered overlays and Argo CD objects."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from gitops_policies import CHECKS, Context

from tests.gitops.gitops_support import OVERLAYS, RENDERS, REPO


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("env", RENDERS)
def test_policy(
    env: str, check: str, rendered: dict[str, Any], policy_context: Callable[[str], Context]
) -> None:
    assert CHECKS[check](rendered[env], policy_context(env)) == []


def test_contract_is_parsed(contract: dict[str, Any]) -> None:
    assert contract["api_port"] == 8080
    assert contract["worker_port"] == 8081
    assert {"/live", "/ready"} <= contract["paths"]["api"]
    assert {"/live", "/ready"} <= contract["paths"]["worker"]
    assert contract["table"] in contract["queue_depth_query"]


def test_routes_are_read_from_the_apps(routes: dict[str, frozenset[str]]) -> None:
    """The probe check compares with what create_app and health_app route, not a copy."""
    assert routes["worker"] == {"/live", "/ready", "/metrics"}
    assert {"/live", "/ready", "/metrics", "/tasks", "/tasks/{task_id}"} <= routes["api"]


def test_contract_lists_exactly_the_get_routes_the_apps_serve(
    contract: dict[str, Any], routes: dict[str, frozenset[str]]
) -> None:
    def shape(paths: frozenset[str] | set[str]) -> set[str]:
        return {re.sub(r"\{[^}]*\}", "{}", p) for p in paths}  # /tasks/{id} = /tasks/{task_id}

    for comp in ("api", "worker"):
        assert shape(contract["paths"][comp]) == shape(routes[comp]), comp


# ------------------------------------------------------------------ Argo CD


def project(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "AppProject" and o["metadata"]["name"] == name)


def applications(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Application"}


def whitelist_drift(
    proj: dict[str, Any], rendered: dict[str, Any]
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(rendered kinds the project would refuse, whitelisted kinds nothing renders)."""
    allowed = {(w["group"], w["kind"]) for w in proj["namespaceResourceWhitelist"]}
    used = {
        (o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else "", o["kind"])
        for objs in rendered.values()
        for o in objs
    }
    return used - allowed, allowed - used


def test_project_whitelists_exactly_what_is_rendered(
    argocd_apps: list[Any], rendered: dict[str, Any]
) -> None:
    proj = project(argocd_apps, "taskq")["spec"]
    refused, unused = whitelist_drift(proj, rendered)
    assert refused == set(), "rendered kinds the project would refuse"
    assert unused == set(), "whitelisted kinds nothing uses (keep the project minimal)"
    # The namespaces come from the platform: nothing cluster-scoped at all.
    assert proj["clusterResourceWhitelist"] == []
    assert len(proj["sourceRepos"]) == 1
    assert "*" not in proj["sourceRepos"][0]
    assert {(d["server"], d["namespace"]) for d in proj["destinations"]} == {
        ("https://kubernetes.default.svc", "taskq-dev"),
        ("https://kubernetes.default.svc", "taskq-prod"),
    }


def test_whitelist_drift_is_caught(argocd_apps: list[Any], rendered: dict[str, Any]) -> None:
    proj = copy.deepcopy(project(argocd_apps, "taskq")["spec"])
    with_class = {
        **rendered,
        "extra": [{"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass"}],
    }
    assert whitelist_drift(proj, with_class)[0] == {("networking.k8s.io", "IngressClass")}
    proj["namespaceResourceWhitelist"].append({"group": "batch", "kind": "CronJobX"})
    assert whitelist_drift(proj, rendered)[1] == {("batch", "CronJobX")}


def test_bootstrap_project_manages_only_argocd_objects(argocd_apps: list[Any]) -> None:
    proj = project(argocd_apps, "taskq-bootstrap")["spec"]
    assert proj["clusterResourceWhitelist"] == []
    assert {w["kind"] for w in proj["namespaceResourceWhitelist"]} == {"Application", "AppProject"}
    assert [d["namespace"] for d in proj["destinations"]] == ["argocd"]
    assert proj["sourceRepos"] == project(argocd_apps, "taskq")["spec"]["sourceRepos"]


@pytest.mark.parametrize("env", OVERLAYS)
def test_environment_application(
    env: str, argocd_apps: list[Any], rendered: dict[str, Any]
) -> None:
    app = applications(argocd_apps)[f"taskq-{env}"]["spec"]
    proj = project(argocd_apps, app["project"])["spec"]
    assert app["source"]["repoURL"] in proj["sourceRepos"]
    assert app["source"]["path"] == f"gitops/apps/overlays/{env}"
    assert (REPO / app["source"]["path"] / "kustomization.yaml").exists()
    dest = app["destination"]
    assert {"server": dest["server"], "namespace": dest["namespace"]} in proj["destinations"]
    assert {o["metadata"].get("namespace") for o in rendered[env]} == {dest["namespace"]}
    sync = app["syncPolicy"]
    assert sync["automated"]["prune"] is True
    assert sync["automated"]["selfHeal"] is True
    # The platform makes the namespace, with the restricted Pod Security labels.
    assert "CreateNamespace=true" not in sync["syncOptions"]
    assert "managedNamespaceMetadata" not in sync
    ns = yaml.safe_load(
        (REPO / f"gitops/platform/namespaces/namespace-{dest['namespace']}.yaml").read_text()
    )
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert sync["retry"]["limit"] > 0
    assert sync["retry"]["backoff"]["factor"] >= 2
    ignored = [
        (d["kind"], d.get("name"), d.get("jsonPointers")) for d in app.get("ignoreDifferences", [])
    ]
    scaled = [o for o in rendered[env] if o["kind"] == "ScaledObject"]
    # Where an autoscaler owns replicas, Argo CD must ignore them; nowhere else.
    expected = [
        ("Deployment", so["spec"]["scaleTargetRef"]["name"], ["/spec/replicas"]) for so in scaled
    ]
    assert ignored == expected
    if expected:
        assert "RespectIgnoreDifferences=true" in sync["syncOptions"]


def test_root_application_is_app_of_apps(
    argocd_bootstrap: list[Any], argocd_apps: list[Any]
) -> None:
    root = applications(argocd_bootstrap)["taskq-root"]["spec"]
    assert root["project"] == "taskq-bootstrap"
    assert root["source"]["path"] == "gitops/argocd/apps"
    assert root["destination"]["namespace"] == "argocd"
    assert root["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    children = applications(argocd_apps)
    envs = {n: a for n, a in children.items() if n.startswith("taskq-")}
    assert set(envs) == {f"taskq-{env}" for env in OVERLAYS}
    assert {n for n in children if not n.startswith("taskq-")} == {
        "platform-namespaces",
        "platform-argocd",
        "platform-cert-manager",
        "platform-cloudnative-pg",
        "platform-barman-cloud",
        "platform-keda",
        "platform-external-secrets",
    }
    ours = [
        a
        for a in children.values()
        if a["spec"].get("source", {}).get("path", "").startswith("gitops/")
    ]
    assert {a["spec"]["source"]["repoURL"] for a in ours} == {root["source"]["repoURL"]}
    assert len(ours) == 3


def test_dev_application_applied_by_hand_is_the_one_the_root_makes(
    argocd_apps: list[Any],
) -> None:
    """docs/deploy.md, "Dev only": the dev Application file with the repository URL put
    in by sed, applied without the root Application, is what the root would sync."""
    text = (REPO / "gitops/argocd/apps/application-taskq-dev.yaml").read_text()
    placeholder = "REPLACED-FROM-APPPROJECT-TASKQ"
    assert placeholder in text
    url = project(argocd_apps, "taskq")["spec"]["sourceRepos"][0]
    assert yaml.safe_load(text.replace(placeholder, url)) == applications(argocd_apps)["taskq-dev"]
    deploy = (REPO / "docs/deploy.md").read_text()
    assert f"s#{placeholder}#" in deploy
    assert "kubectl apply -k gitops/argocd/projects" in deploy


def test_worker_sizing_comment_names_the_configured_concurrency(rendered: dict[str, Any]) -> None:
    """The worker's resources are explained for a number of handler threads; that number
    is the ConfigMap's, not the one of an earlier default."""
    text = (REPO / "gitops/apps/base/worker-deployment.yaml").read_text()
    stated = re.findall(r"TASKQ_WORKER_CONCURRENCY \((\d+)", text)
    configured = {
        o["data"]["TASKQ_WORKER_CONCURRENCY"]
        for objs in rendered.values()
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("taskq-config-")
    }
    assert stated, "the resources comment names the concurrency it was sized for"
    assert set(stated) == configured


def test_overlays_do_not_share_namespaces_or_instance() -> None:
    namespaces = {
        yaml.safe_load((REPO / f"gitops/apps/overlays/{env}/kustomization.yaml").read_text())[
            "namespace"
        ]
        for env in OVERLAYS
    }
    assert len(namespaces) == len(OVERLAYS)
