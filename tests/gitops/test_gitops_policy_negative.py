"""Each policy check fails when the rule it guards is broken.

A check that returns [] for everything would pass test_gitops_policy.py too;
these tests break one rule at a time in a copy of the render and expect the
matching check to complain.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from gitops_policies import CHECKS, Context, config_map, find, pod_template, selector_matches

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
    obj = config_map(objs)
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


def drop(objs: Objs, kind: str, name: str) -> None:
    assert find(objs, kind, name) is not None
    objs[:] = [o for o in objs if not (o["kind"] == kind and o["metadata"]["name"] == name)]


def annotations(objs: Objs, kind: str, name: str) -> dict[str, str]:
    obj = find(objs, kind, name)
    assert obj is not None
    return obj["metadata"]["annotations"]


# name: (check, env, mutation, a fragment of the violation the check must report)
MUTATIONS: dict[str, tuple[str, str, Callable[[Objs], object], str]] = {
    "writable root fs": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api")["securityContext"].pop(
            "readOnlyRootFilesystem"
        ),
        "readOnlyRootFilesystem must be true",
    ),
    "capability kept": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "CronJob", "taskq-prune")["securityContext"][
            "capabilities"
        ].update(drop=["NET_RAW"]),
        "capabilities must drop ALL",
    ),
    "root pod": (
        "pod_security",
        "dev",
        lambda o: spec_of(o, "StatefulSet", "taskq-postgresql")["template"]["spec"][
            "securityContext"
        ].update(runAsNonRoot=False),
        "pod runAsNonRoot must be true",
    ),
    "no /tmp": (
        "pod_security",
        "dev",
        lambda o: first_container(o, "Job", "taskq-migrate").pop("volumeMounts"),
        "needs a writable /tmp volume",
    ),
    "no limits": (
        "resources",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["resources"].pop("limits"),
        "no limits.cpu",
    ),
    "latest": (
        "images",
        "dev",
        lambda o: first_container(o, "StatefulSet", "taskq-postgresql").update(
            image="postgres:latest"
        ),
        "must be pinned to a tag other than latest",
    ),
    "token mounted": (
        "service_accounts",
        "dev",
        lambda o: spec_of(o, "Deployment", "taskq-api")["template"]["spec"].update(
            automountServiceAccountToken=True
        ),
        "pod automountServiceAccountToken must be false",
    ),
    "password in url": (
        "secrets",
        "dev",
        lambda o: cm(o).update(DATABASE_URL="postgresql://taskq:pw@db/taskq"),
        "DATABASE_URL in the ConfigMap carries a password",
    ),
    "literal password": (
        "secrets",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["env"].append(
            {"name": "PGPASSWORD2", "value": "hunter2"}
        ),
        "PGPASSWORD2 has a literal value",
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
        "prod must not carry Secrets in Git",
    ),
    "migrate before db": (
        "sync_waves",
        "dev",
        lambda o: set_wave(o, "StatefulSet", "taskq-postgresql", "-1"),
        "must be before migrations",
    ),
    "api before migrate": (
        "sync_waves",
        "prod",
        lambda o: set_wave(o, "Deployment", "taskq-api", "-1"),
        "must be before Deployment/taskq-api",
    ),
    "presync hook": (
        "migrate_hook",
        "dev",
        lambda o: find(o, "Job", "taskq-migrate")["metadata"]["annotations"].update(  # type: ignore[index]
            {"argocd.argoproj.io/hook": "PreSync"}
        ),
        "must be an Argo CD Sync hook",
    ),
    "hook ttl": (
        "migrate_hook",
        "prod",
        lambda o: spec_of(o, "Job", "taskq-migrate").update(ttlSecondsAfterFinished=60),
        "must not set ttlSecondsAfterFinished",
    ),
    "readiness on /live": (
        "probes",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api")["readinessProbe"]["httpGet"].update(
            path="/live"
        ),
        "readinessProbe path /live != /ready",
    ),
    "worker probe port": (
        "probes",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-worker")["livenessProbe"][
            "httpGet"
        ].update(port=8080),
        "livenessProbe port 8080 != bound port 8081",
    ),
    "bind port drift": (
        "probes",
        "dev",
        lambda o: cm(o).update(TASKQ_API_BIND="0.0.0.0:9000"),
        "ConfigMap binds port 9000, contract says 8080",
    ),
    "maxUnavailable": (
        "api",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-api")["strategy"]["rollingUpdate"].update(
            maxUnavailable=1
        ),
        "must roll with maxUnavailable 0",
    ),
    "no preStop": (
        "api",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-api").pop("lifecycle"),
        "needs a preStop delay",
    ),
    "one api in prod": (
        "api",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-api").update(replicas=1),
        "api replicas 1 != 2",
    ),
    "short grace": (
        "worker",
        "dev",
        lambda o: cm(o).update(TASKQ_SHUTDOWN_TIMEOUT="45"),
        "must exceed TASKQ_SHUTDOWN_TIMEOUT",
    ),
    "replicas in git": (
        "worker",
        "prod",
        lambda o: spec_of(o, "Deployment", "taskq-worker").update(replicas=3),
        "must be left to KEDA",
    ),
    "hardcoded concurrency": (
        "worker",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-worker").update(
            args=["worker", "--concurrency", "4"]
        ),
        "concurrency must come from the ConfigMap",
    ),
    "pdb selects nothing": (
        "pdbs",
        "dev",
        lambda o: spec_of(o, "PodDisruptionBudget", "taskq-worker")["selector"][
            "matchLabels"
        ].update({"app.kubernetes.io/component": "wrk"}),
        "PodDisruptionBudget/taskq-worker selects no pods",
    ),
    "service selects nothing": (
        "services",
        "prod",
        lambda o: spec_of(o, "Service", "taskq-api")["selector"].update(
            {"app.kubernetes.io/component": "apl"}
        ),
        "Service/taskq-api selects no pods",
    ),
    "service wrong port": (
        "services",
        "dev",
        lambda o: spec_of(o, "Service", "taskq-postgresql")["ports"][0].update(targetPort=5433),
        "targetPort 5433 is no container port",
    ),
    "no default deny": (
        "network_policies",
        "dev",
        lambda o: drop_np(o, "taskq-default-deny"),
        "no default-deny NetworkPolicy",
    ),
    "prune cut off": (
        "network_policies",
        "dev",
        lambda o: spec_of(o, "NetworkPolicy", "taskq-postgresql-ingress")["ingress"][0]["from"][0][
            "podSelector"
        ]["matchExpressions"][1].update(values=["api", "worker", "migrate"]),
        "must admit exactly",
    ),
    "db open to all": (
        "network_policies",
        "prod",
        lambda o: spec_of(o, "NetworkPolicy", "taskq-postgresql-ingress")["ingress"][0].pop("from"),
        "*anyone*",
    ),
    "no dns": (
        "network_policies",
        "prod",
        lambda o: drop_np(o, "taskq-allow-dns"),
        "resolve DNS",
    ),
    "keda query drift": (
        "keda",
        "prod",
        lambda o: spec_of(o, "ScaledObject", "taskq-worker")["triggers"][0]["metadata"].update(
            query="SELECT count(*) FROM taskq_tasks"
        ),
        "differs from the contract's queue-depth query",
    ),
    "keda wrong host": (
        "keda",
        "prod",
        lambda o: spec_of(o, "ScaledObject", "taskq-worker")["triggers"][0]["metadata"].update(
            host="taskq-postgresql"
        ),
        "is not the database Service's full name",
    ),
    "missing label": (
        "labels",
        "prod",
        lambda o: find(o, "Service", "taskq-api")["metadata"]["labels"].pop(  # type: ignore[index]
            "app.kubernetes.io/part-of"
        ),
        "missing labels ['app.kubernetes.io/part-of']",
    ),
    "no pg_isready": (
        "postgresql",
        "dev",
        lambda o: first_container(o, "StatefulSet", "taskq-postgresql").pop("readinessProbe"),
        "readinessProbe must exec pg_isready",
    ),
    "wrong namespace": (
        "namespace",
        "prod",
        lambda o: config_map(o)["metadata"].update(namespace="default"),  # type: ignore[index]
        "namespace 'default'",
    ),
    "prune command": (
        "cronjob",
        "dev",
        lambda o: first_container(o, "CronJob", "taskq-prune").update(args=["worker"]),
        "must run `taskq prune`",
    ),
    # ---- the migrations hook: every setting docs/deploy.md relies on
    "hook deleted only on success": (
        "migrate_hook",
        "dev",
        lambda o: annotations(o, "Job", "taskq-migrate").update(
            {"argocd.argoproj.io/hook-delete-policy": "HookSucceeded"}
        ),
        "hook-delete-policy BeforeHookCreation",
    ),
    "generated hook name": (
        "migrate_hook",
        "prod",
        lambda o: find(o, "Job", "taskq-migrate")["metadata"].update(  # type: ignore[index]
            generateName="taskq-migrate-"
        ),
        "must have a fixed name",
    ),
    "no backoffLimit": (
        "migrate_hook",
        "dev",
        lambda o: spec_of(o, "Job", "taskq-migrate").pop("backoffLimit"),
        "positive backoffLimit",
    ),
    "no deadline": (
        "migrate_hook",
        "prod",
        lambda o: spec_of(o, "Job", "taskq-migrate").pop("activeDeadlineSeconds"),
        "needs activeDeadlineSeconds",
    ),
    "migrate without --wait": (
        "migrate_hook",
        "dev",
        lambda o: first_container(o, "Job", "taskq-migrate").update(args=["migrate"]),
        "must run `taskq migrate --wait N`",
    ),
    "hook in the Sync waves": (
        "migrate_hook",
        "dev",
        lambda o: set_wave(o, "Job", "taskq-migrate", "0"),
        "needs a negative sync-wave",
    ),
    "a second hook": (
        "migrate_hook",
        "prod",
        lambda o: annotations(o, "CronJob", "taskq-prune").update(
            {"argocd.argoproj.io/hook": "PostSync"}
        ),
        "CronJob/taskq-prune: unexpected hook PostSync",
    ),
    "secret after the database": (
        "sync_waves",
        "prod",
        lambda o: set_wave(o, "ExternalSecret", "taskq-db-app", "-2"),
        "must sync before Cluster/taskq-db",
    ),
    # ---- PostgreSQL's storage and identity
    "claims deleted with the StatefulSet": (
        "postgresql",
        "dev",
        lambda o: spec_of(o, "StatefulSet", "taskq-postgresql")[
            "persistentVolumeClaimRetentionPolicy"
        ].update(whenDeleted="Delete"),
        "claims must be retained",
    ),
    "no volumeClaimTemplate": (
        "postgresql",
        "dev",
        lambda o: spec_of(o, "StatefulSet", "taskq-postgresql").pop("volumeClaimTemplates"),
        "needs a volumeClaimTemplate",
    ),
    "governing Service not headless": (
        "postgresql",
        "dev",
        lambda o: spec_of(o, "Service", "taskq-postgresql-headless").pop("clusterIP"),
        "serviceName must name a headless Service",
    ),
    # ---- probes
    "no startupProbe": (
        "probes",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-api").pop("startupProbe"),
        "api: startupProbe must be an httpGet probe",
    ),
    "probe on a path nothing serves": (
        "probes",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-worker")["startupProbe"][
            "httpGet"
        ].update(path="/healthz"),
        "startupProbe path /healthz is not a GET route the worker serves",
    ),
    # ---- the API's rollout and the disruption budgets
    "grace below preStop + graceful timeout": (
        "api",
        "dev",
        # 10 s preStop + gunicorn's 20 s: 30 s leaves no time for the workers to exit.
        lambda o: spec_of(o, "Deployment", "taskq-api")["template"]["spec"].update(
            terminationGracePeriodSeconds=30
        ),
        "gunicorn's graceful_timeout",
    ),
    "no API PodDisruptionBudget": (
        "pdbs",
        "prod",
        lambda o: drop(o, "PodDisruptionBudget", "taskq-api"),
        "no PodDisruptionBudget selects the api pods",
    ),
    # ---- ServiceAccounts
    "ServiceAccount mounts its token": (
        "service_accounts",
        "prod",
        lambda o: find(o, "ServiceAccount", "taskq-worker").update(  # type: ignore[union-attr]
            automountServiceAccountToken=True
        ),
        "ServiceAccount/taskq-worker: automountServiceAccountToken must be false",
    ),
    "Secret owned by its ExternalSecret": (
        "secrets",
        "prod",
        lambda o: spec_of(o, "ExternalSecret", "taskq-db-app")["target"].update(
            creationPolicy="Owner"
        ),
        "must not own the Secret",
    ),
    # ---- KEDA's credentials
    "no TriggerAuthentication": (
        "keda",
        "prod",
        lambda o: drop(o, "TriggerAuthentication", "taskq-postgresql"),
        "must authenticate through a TriggerAuthentication of ours",
    ),
    "TriggerAuthentication without the password": (
        "keda",
        "prod",
        lambda o: spec_of(o, "TriggerAuthentication", "taskq-postgresql")["secretTargetRef"].pop(),
        "must take userName and password from the Secret",
    ),
    "TriggerAuthentication reads a missing key": (
        "secrets",
        "prod",
        lambda o: spec_of(o, "TriggerAuthentication", "taskq-postgresql")["secretTargetRef"][
            1
        ].update(key="pgpassword"),
        "refers to taskq-db-keda/pgpassword, which nothing provides",
    ),
    # ---- prod's CloudNativePG Cluster
    "one instance": (
        "postgresql",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db").update(instances=1),
        "needs 3 instances",
    ),
    "asynchronous replication": (
        "postgresql",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db")["postgresql"]["synchronous"].update(number=0),
        "needs at least one synchronous standby",
    ),
    "replication may degrade to async": (
        "postgresql",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db")["postgresql"]["synchronous"].update(
            dataDurability="preferred"
        ),
        "dataDurability must be required",
    ),
    "no WAL archive": (
        "postgresql",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db").pop("plugins"),
        "WAL must be archived by the Barman Cloud plugin",
    ),
    "no scheduled backup": (
        "postgresql",
        "prod",
        lambda o: drop(o, "ScheduledBackup", "taskq-db"),
        "no ScheduledBackup",
    ),
    "app on a replica": (
        "postgresql",
        "prod",
        lambda o: cm(o).update(DATABASE_URL="postgresql://taskq-db-ro:5432/taskq"),
        "is not the Cluster's read-write Service taskq-db-rw",
    ),
    "claim template without kind": (
        "postgresql",
        "dev",
        lambda o: spec_of(o, "StatefulSet", "taskq-postgresql")["volumeClaimTemplates"][0].pop(
            "kind"
        ),
        "must state apiVersion v1 and kind PersistentVolumeClaim",
    ),
    "prod image by tag": (
        "images",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-api").update(
            image="ghcr.io/example/taskq:0.1.0"
        ),
        "prod runs images by digest",
    ),
    # ---- least privilege
    "api logs in as the owner": (
        "least_privilege",
        "prod",
        lambda o: first_container(o, "Deployment", "taskq-api")["env"][0]["valueFrom"][
            "secretKeyRef"
        ].update(name="taskq-db-owner"),
        "PGUSER must come from secretKeyRef taskq-db-app/username",
    ),
    "worker reads the superuser password": (
        "least_privilege",
        "dev",
        lambda o: first_container(o, "Deployment", "taskq-worker")["env"][1]["valueFrom"][
            "secretKeyRef"
        ].update(name="taskq-db-superuser"),
        "reads the superuser Secret taskq-db-superuser",
    ),
    "user in the URL": (
        "least_privilege",
        "dev",
        lambda o: cm(o).update(DATABASE_URL="postgresql://postgres@taskq-postgresql:5432/taskq"),
        "DATABASE_URL names user postgres",
    ),
    "superuser access on": (
        "least_privilege",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db").update(enableSuperuserAccess=True),
        "enableSuperuserAccess must be false",
    ),
    "runtime role is a superuser": (
        "least_privilege",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db")["managed"]["roles"][0].update(superuser=True),
        "managed role taskq_app has superuser",
    ),
    "KEDA logs in as the runtime role": (
        "least_privilege",
        "prod",
        lambda o: [
            r.update(name="taskq-db-app")
            for r in spec_of(o, "TriggerAuthentication", "taskq-postgresql")["secretTargetRef"]
        ],
        "KEDA must log in as the read-only role",
    ),
    # ---- External Secrets Operator's defaults
    "remoteRef without conversionStrategy": (
        "external_secrets",
        "prod",
        lambda o: spec_of(o, "ExternalSecret", "taskq-db-app")["data"][0]["remoteRef"].pop(
            "conversionStrategy"
        ),
        "spec.data[0].remoteRef.conversionStrategy must be written out",
    ),
    "template without mergePolicy": (
        "external_secrets",
        "prod",
        lambda o: spec_of(o, "ExternalSecret", "taskq-db-owner")["target"]["template"].pop(
            "mergePolicy"
        ),
        "spec.target.template.mergePolicy must be written out",
    ),
    # ---- prod's data survives prunes and deletions
    "prunable Cluster": (
        "data_protection",
        "prod",
        lambda o: annotations(o, "Cluster", "taskq-db").pop("argocd.argoproj.io/sync-options"),
        "Cluster/taskq-db: a prod data object needs Prune=false,Delete=false",
    ),
    "object store deleted with the Application": (
        "data_protection",
        "prod",
        lambda o: annotations(o, "ObjectStore", "taskq-backups").update(
            {"argocd.argoproj.io/sync-options": "Prune=false"}
        ),
        "ObjectStore/taskq-backups: a prod data object needs",
    ),
    # ---- settings roll the pods
    "ConfigMap without a hash": (
        "config_rollout",
        "dev",
        lambda o: config_map(o)["metadata"].update(name="taskq-config"),  # type: ignore[index]
        "has no content hash",
    ),
    # ---- connections
    "KEDA scales past the connection budget": (
        "connection_budget",
        "prod",
        lambda o: spec_of(o, "ScaledObject", "taskq-worker").update(maxReplicaCount=40),
        "connections at its peak",
    ),
    "runtime role limited below its peak": (
        "connection_budget",
        "prod",
        lambda o: spec_of(o, "Cluster", "taskq-db")["managed"]["roles"][0].update(
            connectionLimit=50
        ),
        "its connectionLimit is 50",
    ),
    # ---- KEDA's objects in order
    "TriggerAuthentication after the ScaledObject": (
        "sync_waves",
        "prod",
        lambda o: set_wave(o, "TriggerAuthentication", "taskq-postgresql", "1"),
        "must sync before ScaledObject/taskq-worker",
    ),
    # ---- the optional exposure component
    "front door without a certificate": (
        "exposure",
        "prod-exposed",
        lambda o: drop(o, "Certificate", "taskq-api"),
        "has no Certificate",
    ),
    "exposed API open to every pod": (
        "exposure",
        "prod-exposed",
        lambda o: spec_of(o, "NetworkPolicy", "taskq-api-ingress")["ingress"][0].pop("from"),
        "must admit only its front doors",
    ),
    "Gateway may not read the certificate": (
        "exposure",
        "prod-exposed",
        lambda o: drop(o, "ReferenceGrant", "taskq-gateway-tls"),
        "no ReferenceGrant",
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_check_fails_on_broken_render(
    name: str, rendered: dict[str, Any], policy_context: Callable[[str], Context]
) -> None:
    check, env, mutate, expected = MUTATIONS[name]
    objs = copy.deepcopy(rendered[env])
    ctx = policy_context(env)
    assert CHECKS[check](objs, ctx) == [], "precondition: the real render passes"
    mutate(objs)
    errors = CHECKS[check](objs, ctx)
    assert any(expected in e for e in errors), errors


def test_every_check_has_a_negative_case() -> None:
    assert {c for c, _, _, _ in MUTATIONS.values()} == set(CHECKS)


@pytest.mark.parametrize("component", ["api", "worker"])
def test_probe_on_a_route_the_app_stopped_serving(
    component: str, rendered: dict[str, Any], policy_context: Callable[[str], Context]
) -> None:
    """The manifests stay the same, the app drops /live: the probe check must notice,
    even though docs/contract.md still lists the path."""
    ctx = policy_context("dev")
    without_live = {**ctx.routes, component: ctx.routes[component] - {"/live"}}
    errors = CHECKS["probes"](rendered["dev"], dataclasses.replace(ctx, routes=without_live))
    assert f"{component}: livenessProbe path /live is not a GET route the {component} serves" in (
        " ".join(errors)
    ), errors


def test_grace_period_follows_gunicorn_graceful_timeout(
    rendered: dict[str, Any], policy_context: Callable[[str], Context]
) -> None:
    """A longer graceful_timeout in app/taskq/server.py fails the unchanged manifests."""
    ctx = dataclasses.replace(policy_context("prod"), api_graceful_timeout=40)
    assert any("graceful_timeout 40s" in e for e in CHECKS["api"](rendered["prod"], ctx))


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
