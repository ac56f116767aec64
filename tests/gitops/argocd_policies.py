"""Policy checks over the Argo CD objects (gitops/argocd): what reaches prod and when,
what survives a deletion, and which Argo CD features the objects rely on.

Like gitops_policies, each check returns violations as strings, so
test_gitops_argocd.py can run it on the real render and on a broken copy.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from gitops_policies import Obj, sync_options

SHA = re.compile(r"[0-9a-f]{40}")
DIGEST = re.compile(r"[^=@]+=[^=@]+@sha256:[0-9a-f]{64}")
FINALIZER = "resources-finalizer.argocd.argoproj.io"
# The upstream release each npm schema package (tests/gitops/npm/package.json)
# was generated from: the platform must run exactly these, or the CRD
# validation in test_gitops_render.py checks against the wrong schema.
PLATFORM_VERSIONS = {
    "platform-argocd": "v3.3.9",
    "platform-cert-manager": "v1.20.2",
    "platform-cloudnative-pg": "1.29.0",
    "platform-barman-cloud": "v0.12.0",
    "platform-keda": "v2.19.0",
    "platform-external-secrets": "v0.16.2",
}
APP_VERSION = "taskq.example.com/app-version"


def apps(objs: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Application"}


def projects(objs: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "AppProject"}


def check_prod_pinned(objs: list[Obj], rendered: dict[str, list[Obj]]) -> list[str]:
    """prod reads its manifests at a commit and runs an image by digest, both set by a
    promotion; dev follows main."""
    errors = []
    prod, dev = apps(objs).get("taskq-prod"), apps(objs).get("taskq-dev")
    if prod is None or dev is None:
        return ["taskq-prod or taskq-dev Application missing"]
    source = prod["spec"]["source"]
    if not SHA.fullmatch(str(source.get("targetRevision", ""))):
        errors.append(
            f"taskq-prod tracks {source.get('targetRevision')!r}: prod must be pinned to a "
            "commit SHA, never a branch or tag"
        )
    images = source.get("kustomize", {}).get("images", [])
    if not images or not all(DIGEST.fullmatch(i) for i in images):
        errors.append(f"taskq-prod must run its image by digest, has {images}")
    if dev["spec"]["source"].get("targetRevision") != "main":
        errors.append("taskq-dev must follow main")
    return errors


def check_survives_deletion(objs: list[Obj], rendered: dict[str, list[Obj]]) -> list[str]:
    """Removing a file from Git, or deleting the root Application, must not delete prod,
    the projects or the platform: the root neither prunes nor deletes them, and they
    carry no resources finalizer that would cascade (projects keep theirs: it only
    blocks deleting a project in use)."""
    errors = []
    keep = [a for n, a in apps(objs).items() if n == "taskq-prod" or n.startswith("platform-")]
    keep += list(projects(objs).values())
    for o in keep:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if not {"Prune=false", "Delete=false"} <= sync_options(o):
            errors.append(f"{name}: needs Prune=false,Delete=false (the root would delete it)")
        if o["kind"] == "Application" and FINALIZER in o["metadata"].get("finalizers", []):
            errors.append(f"{name}: the resources finalizer would cascade its deletion")
    return errors


def check_projects(objs: list[Obj], rendered: dict[str, list[Obj]]) -> list[str]:
    """The taskq project needs no cluster-scoped kind (so no `name` in
    clusterResourceWhitelist, a 3.3-only field), and its orphaned-resources warning
    ignores the Secrets External Secrets Operator leaves behind on purpose."""
    errors = []
    proj = projects(objs).get("taskq")
    if proj is None:
        return ["AppProject taskq missing"]
    spec = proj["spec"]
    if spec.get("clusterResourceWhitelist"):
        errors.append("AppProject taskq: clusterResourceWhitelist must be empty")
    for p in projects(objs).values():
        for entry in p["spec"].get("clusterResourceWhitelist", []):
            if "name" in entry:
                errors.append(
                    f"AppProject {p['metadata']['name']}: clusterResourceWhitelist[].name "
                    "needs Argo CD >= 3.3 and is dropped silently before"
                )
    ignore = spec.get("orphanedResources", {}).get("ignore", [])
    for objs_ in rendered.values():
        for es in (o for o in objs_ if o["kind"] == "ExternalSecret"):
            target = es["spec"]["target"]["name"]
            if not any(
                i.get("kind") == "Secret" and fnmatch.fnmatchcase(target, i.get("name", "*"))
                for i in ignore
            ):
                errors.append(f"AppProject taskq: orphaned Secret {target} (ESO-owned) not ignored")
    return errors


def check_platform(objs: list[Obj], rendered: dict[str, list[Obj]]) -> list[str]:
    """Every operator pinned to the release whose CRD schemas the tests validate with,
    installed before the environments (sync waves), Argo CD at >= 3.3."""
    errors = []
    all_apps = apps(objs)
    envs = [a for n, a in all_apps.items() if n.startswith("taskq-")]
    for name, version in PLATFORM_VERSIONS.items():
        app = all_apps.get(name)
        if app is None:
            errors.append(f"Application {name} missing")
            continue
        got = app["metadata"].get("annotations", {}).get(APP_VERSION)
        if got != version:
            errors.append(f"{name} runs {got}, the schemas are of {version}")
        rev = str(app["spec"]["source"].get("targetRevision", ""))
        if not re.fullmatch(r"v?\d+\.\d+\.\d+", rev):
            errors.append(f"{name}: targetRevision {rev!r} is not a pinned version")
        for env in envs:
            if not _wave(app) < _wave(env):
                errors.append(f"{name} must sync before {env['metadata']['name']}")
    argocd = all_apps.get("platform-argocd")
    if argocd is not None:
        major, minor, _ = (
            int(x) for x in argocd["spec"]["source"]["targetRevision"][1:].split(".")
        )
        if (major, minor) < (3, 3):
            errors.append("Argo CD must be >= 3.3")
    return errors


def _wave(obj: Obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


ARGO_CHECKS: dict[str, Callable[[list[Obj], dict[str, list[Any]]], list[str]]] = {
    f.__name__.removeprefix("check_"): f
    for f in (check_prod_pinned, check_survives_deletion, check_projects, check_platform)
}
