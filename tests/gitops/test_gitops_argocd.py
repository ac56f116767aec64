"""Argo CD rules (argocd_policies.py) on the real objects, and each on a broken copy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from argocd_policies import ARGO_CHECKS, apps, projects

Objs = list[dict[str, Any]]


def app(objs: Objs, name: str) -> dict[str, Any]:
    return apps(objs)[name]


@pytest.mark.parametrize("check", sorted(ARGO_CHECKS))
def test_argo_policy(check: str, argocd_apps: Objs, rendered: dict[str, Any]) -> None:
    assert ARGO_CHECKS[check](argocd_apps, rendered) == []


MUTATIONS: dict[str, tuple[str, Callable[[Objs], object], str]] = {
    "prod tracks main": (
        "prod_pinned",
        lambda o: app(o, "taskq-prod")["spec"]["source"].update(targetRevision="main"),
        "prod must be pinned to a commit SHA",
    ),
    "prod tracks a tag": (
        "prod_pinned",
        lambda o: app(o, "taskq-prod")["spec"]["source"].update(targetRevision="v1.2.3"),
        "never a branch or tag",
    ),
    "prod image by tag": (
        "prod_pinned",
        lambda o: app(o, "taskq-prod")["spec"]["source"]["kustomize"].update(
            images=["taskq=ghcr.io/example/taskq:0.1.0"]
        ),
        "must run its image by digest",
    ),
    "root prunes prod": (
        "survives_deletion",
        lambda o: app(o, "taskq-prod")["metadata"]["annotations"].pop(
            "argocd.argoproj.io/sync-options"
        ),
        "Application/taskq-prod: needs Prune=false,Delete=false",
    ),
    "prod deletion cascades": (
        "survives_deletion",
        lambda o: app(o, "taskq-prod")["metadata"].update(
            finalizers=["resources-finalizer.argocd.argoproj.io"]
        ),
        "the resources finalizer would cascade",
    ),
    "root prunes a project": (
        "survives_deletion",
        lambda o: projects(o)["taskq"]["metadata"]["annotations"].pop(
            "argocd.argoproj.io/sync-options"
        ),
        "AppProject/taskq: needs Prune=false,Delete=false",
    ),
    "operator pruned with the root": (
        "survives_deletion",
        lambda o: app(o, "platform-cloudnative-pg")["metadata"]["annotations"].update(
            {"argocd.argoproj.io/sync-options": "Prune=false"}
        ),
        "Application/platform-cloudnative-pg: needs Prune=false,Delete=false",
    ),
    "namespace by name (3.3 only)": (
        "projects",
        lambda o: projects(o)["taskq"]["spec"].update(
            clusterResourceWhitelist=[{"group": "", "kind": "Namespace", "name": "taskq-dev"}]
        ),
        "needs Argo CD >= 3.3",
    ),
    "ESO Secret flagged as orphaned": (
        "projects",
        lambda o: projects(o)["taskq"]["spec"]["orphanedResources"].update(ignore=[]),
        "orphaned Secret taskq-db-app (ESO-owned) not ignored",
    ),
    "operator newer than its schemas": (
        "platform",
        lambda o: app(o, "platform-keda")["metadata"]["annotations"].update(
            {"taskq.example.com/app-version": "v2.20.0"}
        ),
        "platform-keda runs v2.20.0, the schemas are of v2.19.0",
    ),
    "chart follows a branch": (
        "platform",
        lambda o: app(o, "platform-external-secrets")["spec"]["source"].update(
            targetRevision="main"
        ),
        "is not a pinned version",
    ),
    "operator after the apps": (
        "platform",
        lambda o: app(o, "platform-cloudnative-pg")["metadata"]["annotations"].update(
            {"argocd.argoproj.io/sync-wave": "1"}
        ),
        "platform-cloudnative-pg must sync before taskq-prod",
    ),
    "Argo CD older than 3.3": (
        "platform",
        lambda o: app(o, "platform-argocd")["spec"]["source"].update(targetRevision="v3.2.4"),
        "Argo CD must be >= 3.3",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_argo_check_fails_on_broken_objects(
    name: str, argocd_apps: Objs, rendered: dict[str, Any]
) -> None:
    check, mutate, expected = MUTATIONS[name]
    objs = copy.deepcopy(argocd_apps)
    assert ARGO_CHECKS[check](objs, rendered) == [], "precondition: the real objects pass"
    mutate(objs)
    errors = ARGO_CHECKS[check](objs, rendered)
    assert any(expected in e for e in errors), errors


def test_every_argo_check_has_a_negative_case() -> None:
    assert {c for c, _, _ in MUTATIONS.values()} == set(ARGO_CHECKS)
