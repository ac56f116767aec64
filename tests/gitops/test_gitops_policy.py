"""Security and reliability rules over the rendered overlays and Argo CD objects."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from gitops_policies import CHECKS, Context

from tests.gitops.gitops_support import OVERLAYS, REPO


def context(env: str, contract: dict[str, Any]) -> Context:
    return Context(env=env, namespace=f"taskq-{env}", contract=contract)


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("env", OVERLAYS)
def test_policy(env: str, check: str, rendered: dict[str, Any], contract: dict[str, Any]) -> None:
    assert CHECKS[check](rendered[env], context(env, contract)) == []


def test_contract_is_parsed(contract: dict[str, Any]) -> None:
    assert contract["api_port"] == 8080
    assert contract["worker_port"] == 8081
    assert {"/live", "/ready"} <= contract["paths"]["api"]
    assert {"/live", "/ready"} <= contract["paths"]["worker"]
    assert contract["table"] in contract["queue_depth_query"]


# ------------------------------------------------------------------ Argo CD


def project(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "AppProject" and o["metadata"]["name"] == name)


def applications(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Application"}


def test_project_whitelists_exactly_what_is_rendered(
    argocd_apps: list[Any], rendered: dict[str, Any]
) -> None:
    proj = project(argocd_apps, "taskq")["spec"]
    allowed = {(w["group"], w["kind"]) for w in proj["namespaceResourceWhitelist"]}
    used = {
        (o["apiVersion"].split("/")[0] if "/" in o["apiVersion"] else "", o["kind"])
        for objs in rendered.values()
        for o in objs
    }
    assert used - allowed == set(), "rendered kinds the project would refuse"
    assert allowed - used == set(), "whitelisted kinds nothing uses (keep the project minimal)"
    assert all(
        w["kind"] == "Namespace" and w["group"] == "" for w in proj["clusterResourceWhitelist"]
    )
    assert {w.get("name") for w in proj["clusterResourceWhitelist"]} == {"taskq-dev", "taskq-prod"}
    assert len(proj["sourceRepos"]) == 1
    assert "*" not in proj["sourceRepos"][0]
    assert {(d["server"], d["namespace"]) for d in proj["destinations"]} == {
        ("https://kubernetes.default.svc", "taskq-dev"),
        ("https://kubernetes.default.svc", "taskq-prod"),
    }


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
    assert "CreateNamespace=true" in sync["syncOptions"]
    assert (
        sync["managedNamespaceMetadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )
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
    assert set(children) == {f"taskq-{env}" for env in OVERLAYS}
    assert {a["spec"]["source"]["repoURL"] for a in children.values()} == {
        root["source"]["repoURL"]
    }


def test_overlays_do_not_share_namespaces_or_instance() -> None:
    namespaces = {
        yaml.safe_load((REPO / f"gitops/apps/overlays/{env}/kustomization.yaml").read_text())[
            "namespace"
        ]
        for env in OVERLAYS
    }
    assert len(namespaces) == len(OVERLAYS)
