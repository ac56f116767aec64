"""Each policy check fails when the rule it guards is broken.

A check that returns [] for everything would pass test_gitops_policy.py too;
these tests break one rule at a time in a copy of the render and expect the
matching check to complain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from gitops_policies import CHECKS, Context, find, pod_template, selector_matches

Objs = list[dict[str, Any]]


def first_container(objs: Objs, kind: str, name: str) -> dict[str, Any]:
    obj = find(objs, kind, name)
    assert obj is not None
    return pod_template(obj)["spec"]["containers"][0]


def spec_of(objs: Objs, kind: str, name: str) -> dict[str, Any]:
    obj = find(objs, kind, name)
    assert obj is not None
    return obj["spec"]


def cm(objs: Objs) -> dict[str, str]:
    obj = find(objs, "ConfigMap", "taskq-config")
    assert obj is not None
    return obj["data"]


def drop_np(objs: Objs, name: str) -> None:
    objs[:] = [
        o for o in objs if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name)
    ]


def set_wave(objs: Objs, kind: str, name: str, wave: str) -> None:
    obj = find(objs, kind, name)
    assert obj is not None
    obj["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = wave


MUTATIONS: dict[str, tuple[str, str, Callable[[Objs], None]]] = {
    # name: (check, env, mutation)
    "writable root fs": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api")["securityContext"].pop(
            "readOnlyRootFilesystem"
        ),
    ),
    "capability kept": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "CronJob", "taskq-prune")["securityContext"][
            "capabilities"
        ].update(drop=["NET_RAW"]),
    ),
    "root pod": (
        "pod_security",
        "prod",
        lambda o: spec_of(o, "StatefulSet", "taskq-postgresql")["template"]["spec"][
            "securityContext"
        ].update(runAsNonRoot=False),
    ),
    "no /tmp": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "Job", "taskq-migrate").pop("volumeMounts"),
    ),
    "no limits": (
        "resources",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["resources"].pop("limits"),
    ),
    "latest": (
        "images",
        "dev",
        lambda o: first_container(o, "StatefulSet", "taskq-postgresql").update(
            image="postgres:latest"
        ),
    ),
    "token mounted": (
        "service_accounts",
        "dev",
        lambda o: spec_of(o, "Deployment", "taskq-api")["template"]["spec"].update(
            automountServiceAccountToken=True
        ),
    ),
    "password in url": (
        "secrets",
        "dev",
        lambda o: cm(o).update(DATABASE_URL="postgresql://taskq:pw@db/taskq"),
    ),
    "literal password": (
        "secrets",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["env"].append(
            {"name": "PGPASSWORD2", "value": "hunter2"}
        ),
    ),
    "secret in prod": (
        "secrets",
        "prod",
        lambda o: o.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "taskq-db", "namespace": "taskq-prod"},
                "data": {"password": "eA=="},
            }
        ),
    ),
    "migrate before db": (
        "sync_waves",
        "dev",
        lambda o: set_wave(o, "StatefulSet", "taskq-postgresql", "-1"),
    ),
    "api before migrate": (
        "sync_waves",
        "prod",
        lambda o: set_wave(o, "Deployment", "taskq-api", "-1"),
    ),
    "presync hook": (
        "migrate_hook",
        "dev",
        lambda o: find(o, "Job", "taskq-migrate")["metadata"]["annotations"].update(  # type: ignore[index]
            {"argocd.argoproj.io/hook": "PreSync"}
        ),
    ),
    "hook ttl": (
        "migrate_hook",
        "prod",
        lambda o: spec_of(o, "Job", "taskq-migrate").update(ttlSecondsAfterFinished=60),
    ),
    "readiness on /live": (
        "probes",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api")["readinessProbe"]["httpGet"].update(
            path="/live"
        ),
    ),
    "worker probe port": (
        "probes",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["livenessProbe"][
            "httpGet"
        ].update(port=8080),
    ),
    "bind port drift": ("probes", "dev", lambda o: cm(o).update(TASKQ_API_BIND="0.0.0.0:9000")),
    "maxUnavailable": (
        "api",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-api")["strategy"]["rollingUpdate"].update(
            maxUnavailable=1
        ),
    ),
    "no preStop": (
        "api",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api").pop("lifecycle"),
    ),
    "one api in prod": (
        "api",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-api").update(replicas=1),
    ),
    "short grace": ("worker", "dev", lambda o: cm(o).update(TASKQ_SHUTDOWN_TIMEOUT="45")),
    "replicas in git": (
        "worker",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-worker").update(replicas=3),
    ),
    "hardcoded concurrency": (
        "worker",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-worker").update(
            args=["worker", "--concurrency", "4"]
        ),
    ),
    "pdb selects nothing": (
        "pdbs",
        "dev",
        lambda o: spec_of(o, "PodDisruptionBudget", "taskq-worker")["selector"][
            "matchLabels"
        ].update({"app.kubernetes.io/component": "wrk"}),
    ),
    "service selects nothing": (
        "services",
        "prod",
        lambda o: spec_of(o, "Service", "taskq-api")["selector"].update(
            {"app.kubernetes.io/component": "apl"}
        ),
    ),
    "service wrong port": (
        "services",
        "dev",
        lambda o: spec_of(o, "Service", "taskq-postgresql")["ports"][0].update(targetPort=5433),
    ),
    "no default deny": ("network_policies", "dev", lambda o: drop_np(o, "taskq-default-deny")),
    "prune cut off": (
        "network_policies",
        "dev",
        lambda o: spec_of(o, "NetworkPolicy", "taskq-postgresql-ingress")["ingress"][0]["from"][0][
            "podSelector"
        ]["matchExpressions"][1].update(values=["api", "worker", "migrate"]),
    ),
    "db open to all": (
        "network_policies",
        "prod",
        lambda o: spec_of(o, "NetworkPolicy", "taskq-postgresql-ingress")["ingress"][0].pop("from"),
    ),
    "no dns": ("network_policies", "prod", lambda o: drop_np(o, "taskq-allow-dns")),
    "keda query drift": (
        "keda",
        "prod",
        lambda o: spec_of(o, "ScaledObject", "taskq-worker")["triggers"][0]["metadata"].update(
            query="SELECT count(*) FROM taskq_tasks"
        ),
    ),
    "keda wrong host": (
        "keda",
        "prod",
        lambda o: spec_of(o, "ScaledObject", "taskq-worker")["triggers"][0]["metadata"].update(
            host="taskq-postgresql"
        ),
    ),
    "missing label": (
        "labels",
        "prod",
        lambda o: find(o, "Service", "taskq-api")["metadata"]["labels"].pop(  # type: ignore[index]
            "app.kubernetes.io/part-of"
        ),
    ),
    "no pg_isready": (
        "postgresql",
        "dev",
        lambda o: first_container(o, "StatefulSet", "taskq-postgresql").pop("readinessProbe"),
    ),
    "wrong namespace": (
        "namespace",
        "prod",
        lambda o: find(o, "ConfigMap", "taskq-config")["metadata"].update(namespace="default"),  # type: ignore[index]
    ),
    "prune command": (
        "cronjob",
        "dev",
        lambda o: first_container(o, "CronJob", "taskq-prune").update(args=["worker"]),
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_check_fails_on_broken_render(
    name: str, rendered: dict[str, Any], contract: dict[str, Any]
) -> None:
    check, env, mutate = MUTATIONS[name]
    objs = copy.deepcopy(rendered[env])
    ctx = Context(env=env, namespace=f"taskq-{env}", contract=contract)
    assert CHECKS[check](objs, ctx) == [], "precondition: the real render passes"
    mutate(objs)
    assert CHECKS[check](objs, ctx) != []


def test_every_check_has_a_negative_case() -> None:
    assert {c for c, _, _ in MUTATIONS.values()} == set(CHECKS)


def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    assert selector_matches(
        {"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}, labels
    )
    assert not selector_matches(
        {"matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["2"]}]}, labels
    )
    assert not selector_matches({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)
    assert selector_matches({}, labels)
    assert not selector_matches(None, labels)
