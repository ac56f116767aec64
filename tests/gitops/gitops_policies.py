"""Policy checks over rendered Kubernetes objects.

Each check takes the rendered objects of one overlay (plus context) and returns a
list of violations as strings; an empty list means the rule holds. Keeping the
checks as plain functions lets test_policy.py run them on the real render and
test_policy_negative.py prove each one fails on a deliberately broken copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Obj = dict[str, Any]

POD_OWNER_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet")
APP_COMPONENTS = ("api", "worker", "migrate", "prune")
DB_CLIENTS = frozenset(APP_COMPONENTS)
REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
)
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
# The processes' database roles (gitops/apps/base/db/roles.sql): the Secret each
# process reads its login from. The owner runs the migrations and nothing else.
ROLE_SECRETS = {
    "api": "taskq-db-app",
    "worker": "taskq-db-app",
    "prune": "taskq-db-app",
    "migrate": "taskq-db-owner",
}
# Secrets that hold a superuser's password; no taskq workload may read them.
SUPERUSER_SECRETS = {"taskq-db-superuser", "taskq-db-superuser-secret"}
# What the pinned External Secrets Operator (v0.16.2, the platform's chart
# and the npm schema package) fills in on a live ExternalSecret when the
# manifest leaves it out: kubebuilder defaults in
# apis/externalsecrets/v1/externalsecret_types.go of that release. A manifest
# that omits any of them differs from the live object after every sync.
ESO_DEFAULTS: dict[str, tuple[str, ...]] = {
    "spec": ("refreshInterval", "target"),
    "spec.target": ("creationPolicy", "deletionPolicy"),
    "spec.target.template": ("engineVersion", "mergePolicy"),
    "spec.data[].remoteRef": ("conversionStrategy", "decodingStrategy", "metadataPolicy"),
    "spec.dataFrom[].extract": ("conversionStrategy", "decodingStrategy", "metadataPolicy"),
    "spec.dataFrom[].find": ("conversionStrategy", "decodingStrategy"),
}
# Objects whose deletion destroys or strands prod's data: Argo CD must neither
# prune them nor delete them with the Application.
DATA_KINDS = {"Cluster", "ObjectStore", "StatefulSet", "PersistentVolumeClaim"}
# Connections one process of each kind opens at most (app/taskq): an API process
# has its pool plus the notifier's dedicated connection; a worker has the claim
# and completion connections, a pool of 3 and the LISTEN connection.
API_EXTRA_CONNECTIONS = 1
WORKER_CONNECTIONS = 2 + 3 + 1


@dataclass(frozen=True)
class Context:
    env: str  # dev | prod
    namespace: str  # taskq-dev | taskq-prod
    contract: dict[str, Any]  # parsed docs/contract.md (see gitops_support.parse_contract)
    # What the code serves and how it stops, read from the application itself
    # (gitops_support.served_routes and gunicorn_graceful_timeout):
    routes: Mapping[str, frozenset[str]]  # component (api, worker) -> paths answering GET
    api_graceful_timeout: float  # gunicorn's graceful_timeout in app/taskq/server.py, s


# ---------------------------------------------------------------- helpers


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def by_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def find(objs: Iterable[Obj], kind: str, name: str) -> Obj | None:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def pod_template(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def workloads(objs: Iterable[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(owner, pod template) for every object that makes pods."""
    for o in objs:
        if o["kind"] in POD_OWNER_KINDS:
            yield o, pod_template(o)


def containers(pod_spec: Obj) -> list[Obj]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def component(obj: Obj) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def workload_by_component(objs: Iterable[Obj], comp: str) -> Obj | None:
    for owner, tmpl in workloads(objs):
        if tmpl["metadata"].get("labels", {}).get("app.kubernetes.io/component") == comp:
            return owner
    return None


def wave(obj: Obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def config_map(objs: Iterable[Obj]) -> Obj | None:
    """The settings ConfigMap: taskq-config-<content hash> (configMapGenerator)."""
    for o in objs:
        if o["kind"] == "ConfigMap" and re.fullmatch(r"taskq-config(-\w+)?", o["metadata"]["name"]):
            return o
    return None


def config_data(objs: Iterable[Obj]) -> dict[str, str]:
    cm = config_map(objs)
    return dict(cm.get("data", {})) if cm else {}


def db_cluster(objs: Iterable[Obj]) -> Obj | None:
    """prod's CloudNativePG Cluster (None in dev)."""
    clusters = by_kind(objs, "Cluster")
    return clusters[0] if clusters else None


def db_object(objs: Iterable[Obj]) -> Obj | None:
    """What runs PostgreSQL: the Cluster (prod) or the StatefulSet (dev)."""
    return db_cluster(objs) or find(objs, "StatefulSet", "taskq-postgresql")


def db_pod_labels(objs: Iterable[Obj]) -> dict[str, str] | None:
    """Labels of the database pods: the StatefulSet's template, or what the
    CloudNativePG operator puts on a Cluster's instances (inheritedMetadata plus
    its own cnpg.io labels)."""
    cluster = db_cluster(objs)
    if cluster is not None:
        labels = dict(cluster["spec"].get("inheritedMetadata", {}).get("labels", {}))
        labels |= {"cnpg.io/cluster": cluster["metadata"]["name"], "cnpg.io/podRole": "instance"}
        return labels
    sts = find(objs, "StatefulSet", "taskq-postgresql")
    return dict(pod_template(sts)["metadata"]["labels"]) if sts else None


def db_service_host(objs: Iterable[Obj]) -> str | None:
    """The Service name the applications must connect to."""
    cluster = db_cluster(objs)
    if cluster is not None:
        return f"{cluster['metadata']['name']}-rw"  # the operator's read-write Service
    return "taskq-postgresql" if find(objs, "Service", "taskq-postgresql") else None


def sync_options(obj: Obj) -> set[str]:
    text = obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-options", "")
    return {o.strip() for o in text.split(",") if o.strip()}


def bind_port(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1])


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels + matchExpressions)."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(objs: Iterable[Obj]) -> list[tuple[Obj, dict[str, str]]]:
    return [(o, t["metadata"].get("labels", {})) for o, t in workloads(objs)]


def resolve_port(container: Obj, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def image_tag(image: str) -> str | None:
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# ---------------------------------------------------------------- checks


def check_labels(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    for o in objs:
        labels = o["metadata"].get("labels", {})
        missing = [k for k in REQUIRED_LABELS if k not in labels]
        if missing:
            errors.append(f"{name_of(o)}: missing labels {missing}")
        elif (
            labels["app.kubernetes.io/name"] != "taskq"
            or labels["app.kubernetes.io/part-of"] != "taskq"
        ):
            errors.append(f"{name_of(o)}: name/part-of labels must be taskq")
        elif labels["app.kubernetes.io/instance"] != f"taskq-{ctx.env}":
            errors.append(f"{name_of(o)}: instance label must be taskq-{ctx.env}")
    for owner, tmpl in workloads(objs):
        labels = tmpl["metadata"].get("labels", {})
        missing = [k for k in REQUIRED_LABELS if k not in labels]
        if missing:
            errors.append(f"{name_of(owner)}: pod template missing labels {missing}")
        if labels.get("app.kubernetes.io/component") != component(owner):
            errors.append(f"{name_of(owner)}: pod template component differs from its owner's")
    return errors


def check_namespace(objs: list[Obj], ctx: Context) -> list[str]:
    return [
        f"{name_of(o)}: namespace {o['metadata'].get('namespace')!r} != {ctx.namespace!r}"
        for o in objs
        if o["kind"] not in CLUSTER_SCOPED_KINDS and o["metadata"].get("namespace") != ctx.namespace
    ]


def check_pod_security(objs: list[Obj], ctx: Context) -> list[str]:
    """The restricted Pod Security Standard, plus read-only root filesystems."""
    errors = []
    for owner, tmpl in workloads(objs):
        spec = tmpl["spec"]
        who = name_of(owner)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{who}: pod runAsNonRoot must be true")
        if psc.get("runAsUser", 1) == 0:
            errors.append(f"{who}: pod runAsUser 0")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{who}: pod seccompProfile must be RuntimeDefault")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                errors.append(f"{who}: {flag} is forbidden")
        for vol in spec.get("volumes", []):
            kinds = set(vol) - {"name"}
            if not kinds <= RESTRICTED_VOLUME_TYPES:
                errors.append(f"{who}: volume {vol['name']} of type {sorted(kinds)} not allowed")
        for c in containers(spec):
            csc = c.get("securityContext", {})
            cwho = f"{who} container {c['name']}"
            if csc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cwho}: allowPrivilegeEscalation must be false")
            if csc.get("privileged"):
                errors.append(f"{cwho}: privileged")
            if csc.get("capabilities", {}).get("drop") != ["ALL"]:
                errors.append(f"{cwho}: capabilities must drop ALL")
            if csc.get("capabilities", {}).get("add"):
                errors.append(f"{cwho}: adds capabilities")
            if csc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cwho}: readOnlyRootFilesystem must be true")
            if csc.get("runAsUser", 1) == 0:
                errors.append(f"{cwho}: runAsUser 0")
            if csc.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
                errors.append(f"{cwho}: container seccompProfile overrides RuntimeDefault")
            volumes = {v["name"] for v in spec.get("volumes", [])}
            volumes |= {
                t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])
            }
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                if m["name"] not in volumes:
                    errors.append(
                        f"{cwho}: mount {m['mountPath']} names unknown volume {m['name']}"
                    )
            if "/tmp" not in mounts or mounts["/tmp"].get("readOnly"):
                errors.append(f"{cwho}: needs a writable /tmp volume under a read-only root")
    return errors


def check_postgresql(objs: list[Obj], ctx: Context) -> list[str]:
    """dev: the StatefulSet keeps its data and reports readiness honestly. prod: a
    CloudNativePG Cluster that survives losing its primary without losing an
    acknowledged commit, archives WAL and takes backups."""
    if ctx.env == "prod":
        return _check_cluster(objs)
    errors = []
    sts = find(objs, "StatefulSet", "taskq-postgresql")
    if sts is None:
        return ["StatefulSet/taskq-postgresql missing"]
    spec = sts["spec"]
    headless = find(objs, "Service", spec.get("serviceName", ""))
    if headless is None or headless["spec"].get("clusterIP") != "None":
        errors.append("postgresql: serviceName must name a headless Service")
    if not spec.get("volumeClaimTemplates"):
        errors.append("postgresql: needs a volumeClaimTemplate (data must outlive the pod)")
    for t in spec.get("volumeClaimTemplates", []):
        # The API server fills these in; left out, Argo CD shows a diff forever.
        if t.get("apiVersion") != "v1" or t.get("kind") != "PersistentVolumeClaim":
            errors.append(
                f"postgresql: volumeClaimTemplate {t['metadata']['name']} must state "
                "apiVersion v1 and kind PersistentVolumeClaim"
            )
    c = spec["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = c.get(probe, {}).get("exec", {}).get("command", [])
        if not cmd or cmd[0] != "pg_isready":
            errors.append(f"postgresql: {probe} must exec pg_isready")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    data_mount = mounts.get("/var/lib/postgresql/data")
    if data_mount not in {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}:
        errors.append("postgresql: data directory must be on the claim template's volume")
    if "/var/run/postgresql" not in mounts:
        errors.append("postgresql: /var/run/postgresql must be a writable volume")
    if "/docker-entrypoint-initdb.d" not in mounts:
        errors.append("postgresql: the roles init script must be mounted (init-roles.sh)")
    env = {e["name"]: e for e in c.get("env", [])}
    if "secretKeyRef" not in env.get("POSTGRES_PASSWORD", {}).get("valueFrom", {}):
        errors.append("postgresql: POSTGRES_PASSWORD must come from a Secret")
    pgdata = env.get("PGDATA", {}).get("value", "")
    if not pgdata.startswith("/var/lib/postgresql/data/"):
        errors.append("postgresql: PGDATA must be a subdirectory of the volume (lost+found)")
    if spec.get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted") != "Retain":
        errors.append("postgresql: claims must be retained when the StatefulSet is deleted")
    return errors


def _check_cluster(objs: list[Obj]) -> list[str]:
    cluster = db_cluster(objs)
    if cluster is None:
        return ["prod: no CloudNativePG Cluster"]
    errors = []
    name = cluster["metadata"]["name"]
    spec = cluster["spec"]
    if spec.get("instances", 1) < 3:
        errors.append(f"Cluster {name}: needs 3 instances (a primary and two standbys)")
    sync = spec.get("postgresql", {}).get("synchronous", {})
    # One synchronous standby at least: a commit the API acknowledged is on two
    # nodes, so a failover loses nothing. "required": never silently async.
    if sync.get("number", 0) < 1 or sync.get("method") not in ("any", "first"):
        errors.append(f"Cluster {name}: needs at least one synchronous standby")
    if sync.get("dataDurability", "required") != "required":
        errors.append(f"Cluster {name}: synchronous dataDurability must be required")
    if spec.get("affinity", {}).get("podAntiAffinityType") != "required":
        errors.append(f"Cluster {name}: instances must be on different nodes (required)")
    archivers = [p for p in spec.get("plugins", []) if p.get("isWALArchiver")]
    if len(archivers) != 1 or archivers[0]["name"] != "barman-cloud.cloudnative-pg.io":
        errors.append(f"Cluster {name}: WAL must be archived by the Barman Cloud plugin")
    else:
        store = archivers[0].get("parameters", {}).get("barmanObjectName", "")
        if find(objs, "ObjectStore", store) is None:
            errors.append(f"Cluster {name}: archives to ObjectStore {store!r}, which is missing")
    scheduled = [
        b
        for b in by_kind(objs, "ScheduledBackup")
        if b["spec"].get("cluster", {}).get("name") == name
        and b["spec"].get("method") == "plugin"
        and b["spec"].get("pluginConfiguration", {}).get("name") == "barman-cloud.cloudnative-pg.io"
    ]
    if not scheduled:
        errors.append(f"Cluster {name}: no ScheduledBackup through the Barman Cloud plugin")
    monitors = [
        m
        for m in by_kind(objs, "PodMonitor")
        if m["spec"].get("selector", {}).get("matchLabels", {}).get("cnpg.io/cluster") == name
    ]
    if not monitors:
        errors.append(f"Cluster {name}: no PodMonitor scrapes its instances")
    url = urlsplit(config_data(objs).get("DATABASE_URL", ""))
    if url.hostname != f"{name}-rw":
        errors.append(
            f"DATABASE_URL host {url.hostname} is not the Cluster's read-write Service {name}-rw"
        )
    return errors


def check_resources(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    for owner, tmpl in workloads(objs):
        for c in containers(tmpl["spec"]):
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    if key not in res.get(section, {}):
                        errors.append(f"{name_of(owner)} container {c['name']}: no {section}.{key}")
    return errors


def check_images(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    for owner, tmpl in workloads(objs):
        for c in containers(tmpl["spec"]):
            image = c["image"]
            tag = image_tag(image)
            if not tag or tag == "latest":
                errors.append(
                    f"{name_of(owner)}: image {image} must be pinned to a tag other than latest"
                )
            if component(owner) in APP_COMPONENTS and not image.startswith("ghcr.io/"):
                errors.append(f"{name_of(owner)}: app image {image} was not set by the overlay")
            if component(owner) in APP_COMPONENTS and ctx.env == "prod" and "@sha256:" not in image:
                errors.append(f"{name_of(owner)}: prod runs images by digest, not {image}")
            if component(owner) == "postgresql" and not re.search(r":\d+\.\d+", image):
                errors.append(f"postgresql image {image} must pin a minor release")
    for cluster in by_kind(objs, "Cluster"):
        image = cluster["spec"].get("imageName", "")
        if not re.search(r":\d+\.\d+", image):
            errors.append(f"Cluster image {image!r} must pin a minor release")
    app_images = {
        c["image"]
        for o, t in workloads(objs)
        if component(o) in APP_COMPONENTS
        for c in containers(t["spec"])
    }
    if len(app_images) != 1:
        errors.append(
            f"api, worker, migrate and prune must run one image, found {sorted(app_images)}"
        )
    return errors


def check_service_accounts(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    sas = {o["metadata"]["name"]: o for o in by_kind(objs, "ServiceAccount")}
    for sa in sas.values():
        if sa.get("automountServiceAccountToken") is not False:
            errors.append(f"{name_of(sa)}: automountServiceAccountToken must be false")
    for owner, tmpl in workloads(objs):
        spec = tmpl["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            errors.append(f"{name_of(owner)}: pod automountServiceAccountToken must be false")
        if spec.get("serviceAccountName") not in sas:
            errors.append(f"{name_of(owner)}: serviceAccountName must name one of ours")
    return errors


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def _provided_keys(objs: list[Obj]) -> dict[str, set[str]]:
    """Secret name -> the keys it will have: Secrets in the render, and the Secrets
    ExternalSecrets write (their template's keys when it has a template, whose
    default mergePolicy Replace keeps only those)."""
    provided: dict[str, set[str]] = {
        s["metadata"]["name"]: set(s.get("data", {})) | set(s.get("stringData", {}))
        for s in by_kind(objs, "Secret")
    }
    for es in by_kind(objs, "ExternalSecret"):
        target = es["spec"]["target"]
        template = target.get("template", {})
        keys = set(template.get("data", {})) or {d["secretKey"] for d in es["spec"].get("data", [])}
        provided.setdefault(target["name"], set()).update(keys)
    return provided


def check_secrets(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    secrets = {o["metadata"]["name"]: o for o in by_kind(objs, "Secret")}
    externals = {o["spec"]["target"]["name"]: o for o in by_kind(objs, "ExternalSecret")}
    needed = set(ROLE_SECRETS.values())
    if ctx.env == "prod":
        if secrets:
            errors.append(f"prod must not carry Secrets in Git: {sorted(secrets)}")
        for name in sorted(needed - set(externals)):
            errors.append(f"prod: an ExternalSecret must produce {name}")
        for name, es in sorted(externals.items()):
            if es["spec"]["target"].get("creationPolicy") != "Orphan":
                # Owner (the default) makes the Secret a child of the ExternalSecret:
                # deleting that would take the database's credentials with it, while
                # the volumes stay.
                errors.append(f"prod: ExternalSecret {name} must not own the Secret (Orphan)")
    else:
        for name in sorted(needed - set(secrets) - set(externals)):
            errors.append(f"{ctx.env}: no Secret {name}")
    provided = _provided_keys(objs)
    url = config_data(objs).get("DATABASE_URL", "")
    if urlsplit(url).password:
        errors.append("DATABASE_URL in the ConfigMap carries a password")
    for owner, tmpl in workloads(objs):
        for c in containers(tmpl["spec"]):
            for e in c.get("env", []):
                if re.search(r"PASS|SECRET|TOKEN", e["name"]) and "value" in e:
                    errors.append(f"{name_of(owner)}: {e['name']} has a literal value")
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in provided.get(ref["name"], set()):
                    errors.append(
                        f"{name_of(owner)}: {e['name']} refers to "
                        f"{ref['name']}/{ref['key']}, which nothing provides"
                    )
    for ta in by_kind(objs, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            if ref["key"] not in provided.get(ref["name"], set()):
                errors.append(
                    f"{name_of(ta)}: refers to {ref['name']}/{ref['key']}, which nothing provides"
                )
    return errors


def check_least_privilege(objs: list[Obj], ctx: Context) -> list[str]:
    """No workload logs into PostgreSQL as a superuser: each process reads the login
    of its own role (owner for migrations, taskq_app for the rest, taskq_keda for
    KEDA), the URL names no user, no superuser Secret is mounted, and the roles
    CloudNativePG manages are no superusers."""
    errors = []
    url = urlsplit(config_data(objs).get("DATABASE_URL", ""))
    if url.username:
        errors.append(f"DATABASE_URL names user {url.username}: PGUSER must come from a Secret")
    for owner, tmpl in workloads(objs):
        comp = component(owner)
        for c in containers(tmpl["spec"]):
            env = _env(c)
            for e in env.values():
                ref = e.get("valueFrom", {}).get("secretKeyRef") or {}
                if ref.get("name") in SUPERUSER_SECRETS and comp != "postgresql":
                    errors.append(f"{name_of(owner)}: reads the superuser Secret {ref['name']}")
            if comp not in ROLE_SECRETS:
                continue
            want = ROLE_SECRETS[comp]
            for var, key in (("PGUSER", "username"), ("PGPASSWORD", "password")):
                ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
                if ref != {"name": want, "key": key}:
                    errors.append(
                        f"{name_of(owner)}: {var} must come from secretKeyRef {want}/{key}, "
                        f"not {ref}"
                    )
    cluster = db_cluster(objs)
    if cluster is not None:
        spec = cluster["spec"]
        if spec.get("enableSuperuserAccess", False) is not False:
            errors.append("Cluster: enableSuperuserAccess must be false")
        initdb = spec.get("bootstrap", {}).get("initdb", {})
        if (
            initdb.get("owner") != "taskq_owner"
            or initdb.get("secret", {}).get("name") != (ROLE_SECRETS["migrate"])
        ):
            errors.append("Cluster: the database owner must be taskq_owner from taskq-db-owner")
        roles = {r["name"]: r for r in spec.get("managed", {}).get("roles", [])}
        expected = {
            "taskq_app": ("taskq-db-app", "taskq_runtime"),
            "taskq_keda": ("taskq-db-keda", "taskq_readonly"),
        }
        for name, (secret, group) in expected.items():
            role = roles.get(name)
            if role is None:
                errors.append(f"Cluster: managed role {name} missing")
                continue
            for flag in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
                if role.get(flag, False) is not False:
                    errors.append(f"Cluster: managed role {name} has {flag}")
            if role.get("inRoles") != [group]:
                errors.append(f"Cluster: managed role {name} must be a member of {group} only")
            if role.get("passwordSecret", {}).get("name") != secret:
                errors.append(f"Cluster: managed role {name} must take its password from {secret}")
        for ta in by_kind(objs, "TriggerAuthentication"):
            names = {r["name"] for r in ta["spec"].get("secretTargetRef", [])}
            if names != {"taskq-db-keda"}:
                errors.append(
                    f"{name_of(ta)}: KEDA must log in as the read-only role "
                    f"(taskq-db-keda), reads {sorted(names)}"
                )
    return errors


def check_sync_waves(objs: list[Obj], ctx: Context) -> list[str]:
    """Secrets and configuration -> the database -> the migrations hook -> the apps."""
    errors = []
    migrate = find(objs, "Job", "taskq-migrate")
    db = db_object(objs)
    if migrate is None or db is None:
        return ["migrate Job or the database (StatefulSet or Cluster) missing"]
    db_name = name_of(db)
    secret_like = [
        o
        for o in objs
        if o["kind"] in ("Secret", "ExternalSecret", "ObjectStore")
        or (o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("taskq-db-"))
    ]
    if not secret_like:
        errors.append("no Secret/ExternalSecret for the database")
    for s in secret_like:
        if not wave(s) < wave(db):
            errors.append(
                f"{name_of(s)} (wave {wave(s)}) must sync before {db_name} (wave {wave(db)})"
            )
    if not wave(db) < wave(migrate):
        errors.append(
            f"{db_name} (wave {wave(db)}) must be before migrations (wave {wave(migrate)})"
        )
    for kind, name in (
        ("Deployment", "taskq-api"),
        ("Deployment", "taskq-worker"),
        ("CronJob", "taskq-prune"),
    ):
        o = find(objs, kind, name)
        if o is None:
            errors.append(f"{kind}/{name} missing")
        elif not wave(migrate) < wave(o):
            errors.append(
                f"migrations (wave {wave(migrate)}) must be before {kind}/{name} (wave {wave(o)})"
            )
    # What the migrations pod needs must exist before it runs.
    needs = [o for o in (config_map(objs),) if o is not None]
    needs += [o for o in objs if o["kind"] in ("ServiceAccount", "NetworkPolicy")]
    needs += [o for o in objs if o["kind"] == "Service" and component(o) == "postgresql"]
    for o in needs:
        if not wave(o) < wave(migrate):
            errors.append(
                f"{name_of(o)} (wave {wave(o)}) must exist before migrations (wave {wave(migrate)})"
            )
    # KEDA refuses a ScaledObject whose TriggerAuthentication does not exist yet.
    auths = {t["metadata"]["name"]: t for t in by_kind(objs, "TriggerAuthentication")}
    for so in by_kind(objs, "ScaledObject"):
        for trig in so["spec"].get("triggers", []):
            ta = auths.get(trig.get("authenticationRef", {}).get("name", ""))
            if ta is not None and not wave(ta) < wave(so):
                errors.append(
                    f"{name_of(ta)} (wave {wave(ta)}) must sync before {name_of(so)} "
                    f"(wave {wave(so)})"
                )
    return errors


def check_migrate_hook(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    job = find(objs, "Job", "taskq-migrate")
    if job is None:
        return ["Job/taskq-migrate missing"]
    ann = job["metadata"].get("annotations", {})
    if ann.get("argocd.argoproj.io/hook") != "Sync":
        errors.append(
            "migrate Job must be an Argo CD Sync hook (PreSync runs before the database exists)"
        )
    if ann.get("argocd.argoproj.io/hook-delete-policy") != "BeforeHookCreation":
        errors.append("migrate Job needs hook-delete-policy BeforeHookCreation")
    if wave(job) >= 0:
        errors.append("migrate Job needs a negative sync-wave")
    if "generateName" in job["metadata"]:
        errors.append("migrate Job must have a fixed name")
    spec = job["spec"]
    if not isinstance(spec.get("backoffLimit"), int) or spec["backoffLimit"] < 1:
        errors.append("migrate Job needs a positive backoffLimit")
    if not isinstance(spec.get("activeDeadlineSeconds"), int):
        errors.append("migrate Job needs activeDeadlineSeconds")
    if "ttlSecondsAfterFinished" in spec:
        errors.append("hook Jobs must not set ttlSecondsAfterFinished")
    c = spec["template"]["spec"]["containers"][0]
    args = list(c.get("command", [])) + list(c.get("args", []))
    if args[:1] != ["migrate"] or "--wait" not in args:
        errors.append(f"migrate Job must run `taskq migrate --wait N`, runs {args}")
    for o in objs:
        hook = o["metadata"].get("annotations", {}).get("argocd.argoproj.io/hook")
        if hook and o is not job:
            errors.append(f"{name_of(o)}: unexpected hook {hook}")
    return errors


def _probe_target(c: Obj, probe: str) -> tuple[str | None, int | None]:
    http = c.get(probe, {}).get("httpGet")
    if not http:
        return None, None
    return http.get("path"), resolve_port(c, http["port"])


def check_probes(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    data = config_data(objs)
    contract = ctx.contract
    # The API's probes go to its health port, answered apart from the request workers.
    api_bound = bind_port(data.get("TASKQ_API_BIND", ":0"))
    if api_bound != contract["api_port"]:
        errors.append(
            f"api: ConfigMap binds port {api_bound}, contract says {contract['api_port']}"
        )
    expected = {
        "api": (
            bind_port(data.get("TASKQ_API_HEALTH_BIND", ":0")),
            contract["api_health_port"],
        ),
        "worker": (bind_port(data.get("TASKQ_WORKER_HEALTH_BIND", ":0")), contract["worker_port"]),
    }
    for comp, (bound, documented) in expected.items():
        dep = workload_by_component(objs, comp)
        if dep is None:
            errors.append(f"no {comp} workload")
            continue
        if bound != documented:
            errors.append(f"{comp}: ConfigMap binds port {bound}, contract says {documented}")
        c = pod_template(dep)["spec"]["containers"][0]
        for probe, path in (
            ("readinessProbe", "/ready"),
            ("livenessProbe", "/live"),
            ("startupProbe", None),
        ):
            got_path, got_port = _probe_target(c, probe)
            if got_path is None:
                errors.append(f"{comp}: {probe} must be an httpGet probe")
                continue
            if path is not None and got_path != path:
                errors.append(f"{comp}: {probe} path {got_path} != {path}")
            if got_path not in contract["paths"][comp]:
                errors.append(
                    f"{comp}: {probe} path {got_path} is not an endpoint of the {comp} (contract)"
                )
            if got_path not in ctx.routes.get(comp, frozenset()):
                errors.append(
                    f"{comp}: {probe} path {got_path} is not a GET route the {comp} serves "
                    f"(the app serves {sorted(ctx.routes.get(comp, ()))})"
                )
            if got_port != bound:
                errors.append(f"{comp}: {probe} port {got_port} != bound port {bound}")
        if not any(int(p["containerPort"]) == bound for p in c.get("ports", [])):
            errors.append(f"{comp}: no containerPort {bound}")
    return errors


def check_api(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    dep = find(objs, "Deployment", "taskq-api")
    if dep is None:
        return ["Deployment/taskq-api missing"]
    spec = dep["spec"]
    want = 2 if ctx.env == "prod" else 1
    if spec.get("replicas") != want:
        errors.append(f"api replicas {spec.get('replicas')} != {want} in {ctx.env}")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    if spec.get("strategy", {}).get("type") != "RollingUpdate" or ru.get("maxUnavailable") != 0:
        errors.append("api must roll with maxUnavailable 0")
    pod = spec["template"]["spec"]
    pre = pod["containers"][0].get("lifecycle", {}).get("preStop", {})
    delay = pre.get("sleep", {}).get("seconds")
    if delay is None and pre.get("exec", {}).get("command", [""])[0] in ("sleep", "/bin/sleep"):
        delay = int(pre["exec"]["command"][-1])
    if not delay:
        errors.append("api needs a preStop delay so endpoints drain before shutdown")
    else:
        # The kubelet counts the grace period from the start of preStop; gunicorn gets
        # SIGTERM after it and gives its workers graceful_timeout to finish requests.
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= delay + ctx.api_graceful_timeout:
            errors.append(
                f"api terminationGracePeriodSeconds {grace} must exceed the preStop delay "
                f"{delay}s + gunicorn's graceful_timeout {ctx.api_graceful_timeout:g}s"
            )
    return errors


def check_worker(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    dep = find(objs, "Deployment", "taskq-worker")
    if dep is None:
        return ["Deployment/taskq-worker missing"]
    data = config_data(objs)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    timeout = int(data.get("TASKQ_SHUTDOWN_TIMEOUT", "25"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    # The contract: the worker exits within TASKQ_SHUTDOWN_TIMEOUT plus ~2 s.
    if grace <= timeout + 2:
        errors.append(
            f"worker grace period {grace}s must exceed TASKQ_SHUTDOWN_TIMEOUT {timeout}s + 2s"
        )
    if "TASKQ_WORKER_CONCURRENCY" not in data:
        errors.append("TASKQ_WORKER_CONCURRENCY must be set in the ConfigMap")
    cm = config_map(objs)
    from_cm = cm is not None and any(
        ref.get("configMapRef", {}).get("name") == cm["metadata"]["name"]
        for ref in c.get("envFrom", [])
    )
    if not from_cm:
        errors.append("worker must read the ConfigMap (envFrom taskq-config)")
    args = list(c.get("command", [])) + list(c.get("args", []))
    if args[:1] != ["worker"] or "--concurrency" in args or "TASKQ_WORKER_CONCURRENCY" in _env(c):
        errors.append(f"worker concurrency must come from the ConfigMap, args {args}")
    scaled = [
        so
        for so in by_kind(objs, "ScaledObject")
        if so["spec"]["scaleTargetRef"]["name"] == "taskq-worker"
    ]
    if ctx.env == "prod":
        if "replicas" in dep["spec"]:
            errors.append("prod worker replicas must be left to KEDA (no spec.replicas)")
        if not scaled:
            errors.append("prod worker needs a ScaledObject")
    return errors


def check_pdbs(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    pods = pod_labels(objs)
    for comp in ("api", "worker"):
        matching = [
            p
            for p in by_kind(objs, "PodDisruptionBudget")
            if any(
                selector_matches(p["spec"].get("selector"), lbl) and component(o) == comp
                for o, lbl in pods
            )
        ]
        if not matching:
            errors.append(f"no PodDisruptionBudget selects the {comp} pods")
    for p in by_kind(objs, "PodDisruptionBudget"):
        if not any(selector_matches(p["spec"].get("selector"), lbl) for _, lbl in pods):
            errors.append(f"{name_of(p)} selects no pods")
    return errors


def check_services(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    pods = pod_labels(objs)
    for svc in by_kind(objs, "Service"):
        sel = svc["spec"].get("selector")
        selected = [o for o, lbl in pods if sel and selector_matches({"matchLabels": sel}, lbl)]
        if not selected:
            errors.append(f"{name_of(svc)} selects no pods")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for o in selected:
                cs = pod_template(o)["spec"]["containers"]
                if not any(
                    resolve_port(c, target) is not None
                    and any(
                        int(p["containerPort"]) == resolve_port(c, target)
                        for p in c.get("ports", [])
                    )
                    for c in cs
                ):
                    errors.append(
                        f"{name_of(svc)}: targetPort {target} is no container port of {name_of(o)}"
                    )
    return errors


def check_cronjob(objs: list[Obj], ctx: Context) -> list[str]:
    cj = find(objs, "CronJob", "taskq-prune")
    if cj is None:
        return ["CronJob/taskq-prune missing"]
    errors = []
    c = pod_template(cj)["spec"]["containers"][0]
    if (list(c.get("command", [])) + list(c.get("args", [])))[:1] != ["prune"]:
        errors.append("CronJob must run `taskq prune`")
    if cj["spec"].get("concurrencyPolicy") != "Forbid":
        errors.append("prune CronJob must not overlap (concurrencyPolicy Forbid)")
    return errors


def _peers_allowed_to(
    objs: list[Obj], target_labels: dict[str, str], port: int
) -> tuple[set[str], list[Obj]]:
    """Components (same namespace) and foreign peers allowed in to a pod on a port."""
    components: set[str] = set()
    foreign: list[Obj] = []
    pods = pod_labels(objs)
    for np in by_kind(objs, "NetworkPolicy"):
        spec = np["spec"]
        if "Ingress" not in spec.get("policyTypes", []) or not selector_matches(
            spec["podSelector"], target_labels
        ):
            continue
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                components.add("*anyone*")
                continue
            for peer in peers:
                if "ipBlock" in peer:
                    components.add("*ipBlock*")
                elif "namespaceSelector" in peer:
                    foreign.append(peer)
                else:
                    for o, lbl in pods:
                        if selector_matches(peer.get("podSelector"), lbl):
                            components.add(str(component(o)))
    return components, foreign


def _egress_allowed(
    objs: list[Obj], source_labels: dict[str, str], dest_labels: dict[str, str], port: int
) -> bool:
    for np in by_kind(objs, "NetworkPolicy"):
        spec = np["spec"]
        if "Egress" not in spec.get("policyTypes", []) or not selector_matches(
            spec["podSelector"], source_labels
        ):
            continue
        for rule in spec.get("egress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            for peer in rule.get("to", []):
                if "namespaceSelector" not in peer and selector_matches(
                    peer.get("podSelector"), dest_labels
                ):
                    return True
    return False


def check_network_policies(objs: list[Obj], ctx: Context) -> list[str]:
    errors = []
    nps = by_kind(objs, "NetworkPolicy")
    deny = [
        n
        for n in nps
        if n["spec"]["podSelector"] == {}
        and set(n["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not n["spec"].get("ingress")
        and not n["spec"].get("egress")
    ]
    if not deny:
        errors.append("no default-deny NetworkPolicy (ingress and egress)")
    dns = [
        n
        for n in nps
        if n["spec"]["podSelector"] == {}
        and any(
            any(p.get("port") == 53 and p.get("protocol") == "UDP" for p in r.get("ports", []))
            for r in n["spec"].get("egress", [])
        )
    ]
    if not dns:
        errors.append("no NetworkPolicy lets pods resolve DNS (UDP 53 egress)")
    pg_labels = db_pod_labels(objs)
    if pg_labels is None:
        return [*errors, "no postgresql workload"]
    allowed, foreign = _peers_allowed_to(objs, pg_labels, 5432)
    if allowed != DB_CLIENTS:
        errors.append(
            f"PostgreSQL 5432 must admit exactly {sorted(DB_CLIENTS)}, admits {sorted(allowed)}"
        )
    # From other namespaces, only KEDA's operator (its query) and, for a
    # CloudNativePG Cluster, the CloudNativePG operator; each narrowed to its pods.
    foreign_ok = {"keda", "cnpg-system"} if ctx.env == "prod" else set()
    for peer in foreign:
        ns = peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
        if ns not in foreign_ok or not peer.get("podSelector"):
            errors.append(f"unexpected foreign peer to PostgreSQL: {peer}")
    for comp in DB_CLIENTS:
        o = workload_by_component(objs, comp)
        if o is None:
            errors.append(f"no {comp} workload")
        elif not _egress_allowed(objs, pod_template(o)["metadata"]["labels"], pg_labels, 5432):
            errors.append(f"{comp} pods may not reach PostgreSQL 5432 (egress)")
    api = workload_by_component(objs, "api")
    if api is not None:
        api_in, api_foreign = _peers_allowed_to(objs, pod_template(api)["metadata"]["labels"], 8080)
        if not api_in and not api_foreign:
            errors.append("nothing may reach the API on 8080")
    return errors


def check_keda(objs: list[Obj], ctx: Context) -> list[str]:
    scaled = by_kind(objs, "ScaledObject")
    if ctx.env != "prod":
        return [f"{ctx.env} must not autoscale with KEDA"] if scaled else []
    errors = []
    if len(scaled) != 1:
        return [f"prod needs exactly one ScaledObject, has {len(scaled)}"]
    so = scaled[0]
    if find(objs, "Deployment", so["spec"]["scaleTargetRef"]["name"]) is None:
        errors.append("ScaledObject targets no Deployment of ours")
    url = urlsplit(config_data(objs).get("DATABASE_URL", ""))
    for trig in so["spec"]["triggers"]:
        md = trig.get("metadata", {})
        if trig["type"] != "postgresql":
            errors.append(f"unexpected trigger type {trig['type']}")
            continue
        if " ".join(md.get("query", "").split()) != " ".join(
            ctx.contract["queue_depth_query"].split()
        ):
            errors.append(
                f"KEDA query differs from the contract's queue-depth query: {md.get('query')}"
            )
        if md.get("host") != f"{db_service_host(objs)}.{ctx.namespace}.svc.cluster.local":
            errors.append(f"KEDA host {md.get('host')} is not the database Service's full name")
        if md.get("port") != str(url.port) or md.get("dbName") != url.path.lstrip("/"):
            errors.append("KEDA port/dbName differ from DATABASE_URL")
        if "password" in md or "connection" in md or "userName" in md:
            errors.append("KEDA trigger must not carry credentials inline")
        auth = trig.get("authenticationRef", {}).get("name")
        ta = find(objs, "TriggerAuthentication", auth or "")
        if ta is None:
            errors.append("KEDA trigger must authenticate through a TriggerAuthentication of ours")
            continue
        params = {r["parameter"] for r in ta["spec"].get("secretTargetRef", [])}
        if not {"userName", "password"} <= params:
            errors.append("TriggerAuthentication must take userName and password from the Secret")
    return errors


def _missing_defaults(obj: Obj, path: str) -> list[str]:
    """ESO_DEFAULTS entries for one ExternalSecret: each path that exists in the
    manifest must state every field the operator would default there."""
    missing = []
    for where, fields in ESO_DEFAULTS.items():
        nodes: list[tuple[str, Obj]] = [("", obj)]
        for part in where.split("."):
            key, many = part.removesuffix("[]"), part.endswith("[]")
            nxt: list[tuple[str, Obj]] = []
            for label, node in nodes:
                value = node.get(key)
                if value is None:
                    continue
                if many:
                    nxt += [(f"{label}.{key}[{i}]", v) for i, v in enumerate(value)]
                else:
                    nxt.append((f"{label}.{key}", value))
            nodes = nxt
        for label, node in nodes:
            missing += [f"{path}{label}.{f}" for f in fields if f not in node]
    return missing


def check_external_secrets(objs: list[Obj], ctx: Context) -> list[str]:
    """Every ExternalSecret writes the fields its pinned operator defaults
    (ESO_DEFAULTS); Argo CD would otherwise never see it in sync."""
    errors = []
    for es in by_kind(objs, "ExternalSecret"):
        for field in _missing_defaults(es, ""):
            errors.append(
                f"{name_of(es)}: {field.lstrip('.')} must be written out (ESO defaults it)"
            )
    return errors


def check_data_protection(objs: list[Obj], ctx: Context) -> list[str]:
    """prod's data objects survive a prune and the deletion of the Application."""
    if ctx.env != "prod":
        return []
    errors = []
    for o in objs:
        if o["kind"] in DATA_KINDS and not {"Prune=false", "Delete=false"} <= sync_options(o):
            errors.append(f"{name_of(o)}: a prod data object needs Prune=false,Delete=false")
    if db_cluster(objs) is None:
        errors.append("prod: no Cluster to protect")
    return errors


def check_config_rollout(objs: list[Obj], ctx: Context) -> list[str]:
    """Pods read the settings from a ConfigMap whose name carries a hash of its
    content, so a changed setting rolls them."""
    cm = config_map(objs)
    if cm is None:
        return ["no taskq-config ConfigMap"]
    name = cm["metadata"]["name"]
    errors = []
    if name == "taskq-config":
        errors.append("ConfigMap taskq-config has no content hash: edits would not roll pods")
    for owner, tmpl in workloads(objs):
        for c in containers(tmpl["spec"]):
            for ref in c.get("envFrom", []):
                used = ref.get("configMapRef", {}).get("name")
                if used and used != name:
                    errors.append(f"{name_of(owner)}: reads ConfigMap {used}, not {name}")
    return errors


def _peak_pods(objs: list[Obj], name: str) -> int:
    """Pods of a Deployment at its most: KEDA's maxReplicaCount (or spec.replicas)
    plus the rolling update's surge (a count, or a percentage rounded up)."""
    dep = find(objs, "Deployment", name)
    if dep is None:
        return 0
    scaled = [
        so for so in by_kind(objs, "ScaledObject") if so["spec"]["scaleTargetRef"]["name"] == name
    ]
    count = int(
        scaled[0]["spec"].get("maxReplicaCount", 100) if scaled else dep["spec"].get("replicas", 1)
    )
    surge = dep["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
    if isinstance(surge, str):
        surge = -(-count * int(surge.rstrip("%")) // 100)
    return count + int(surge)


def connection_budget(objs: list[Obj], ctx: Context) -> dict[str, int]:
    """What taskq may open at its peak, and what PostgreSQL lets it: every API and
    worker pod at its maximum count plus the rolling update's surge, each process at
    its pool maximum, the migrations and prune Jobs, and KEDA's query; against
    max_connections (less the superusers' reserve and room for the operator, its
    exporter and a human with psql) and the runtime role's connection limit."""
    data = config_data(objs)
    per_api_pod = int(data.get("TASKQ_API_WORKERS", "2")) * (
        int(data.get("TASKQ_DB_POOL_MAX", "4")) + API_EXTRA_CONNECTIONS
    )
    runtime = (
        _peak_pods(objs, "taskq-api") * per_api_pod
        + _peak_pods(objs, "taskq-worker") * WORKER_CONNECTIONS
        + 1  # prune
    )
    keda = 1 if by_kind(objs, "ScaledObject") else 0
    cluster = db_cluster(objs)
    spec = cluster["spec"] if cluster else {}
    max_connections = int(
        spec.get("postgresql", {}).get("parameters", {}).get("max_connections", "100")
    )
    roles = {r["name"]: r for r in spec.get("managed", {}).get("roles", [])}
    return {
        "peak": runtime + 1 + keda,  # + migrations
        "available": max_connections - 3 - 10,
        "runtime": runtime,
        "runtime_limit": int(roles.get("taskq_app", {}).get("connectionLimit", -1)),
    }


def check_connection_budget(objs: list[Obj], ctx: Context) -> list[str]:
    b = connection_budget(objs, ctx)
    errors = []
    if b["peak"] > b["available"]:
        errors.append(
            f"taskq may open {b['peak']} connections at its peak, PostgreSQL accepts "
            f"{b['available']} (max_connections minus reserved and operator headroom)"
        )
    if 0 <= b["runtime_limit"] < b["runtime"]:
        errors.append(
            f"taskq_app may open {b['runtime']} connections at its peak, its "
            f"connectionLimit is {b['runtime_limit']}"
        )
    return errors


def check_exposure(objs: list[Obj], ctx: Context) -> list[str]:
    """With the exposure component: TLS from a cert-manager Certificate on every
    front door, routes to the API Service, and the API open only to the front doors
    and Prometheus. Without it, nothing to check."""
    ingresses, routes = by_kind(objs, "Ingress"), by_kind(objs, "HTTPRoute")
    if not ingresses and not routes:
        return []
    errors = []
    certs = {c["spec"]["secretName"]: c for c in by_kind(objs, "Certificate")}
    api_svc = find(objs, "Service", "taskq-api")
    for ing in ingresses:
        for tls in ing["spec"].get("tls", []) or [{}]:
            if tls.get("secretName") not in certs:
                errors.append(
                    f"{name_of(ing)}: TLS Secret {tls.get('secretName')} has no Certificate"
                )
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                if p["backend"].get("service", {}).get("name") != "taskq-api":
                    errors.append(f"{name_of(ing)}: routes to something other than taskq-api")
    for route in routes:
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                ports = {p["port"] for p in (api_svc or {}).get("spec", {}).get("ports", [])}
                if ref.get("name") != "taskq-api" or ref.get("port") not in ports:
                    errors.append(f"{name_of(route)}: backend {ref} is not the API Service")
    grants = [
        g
        for g in by_kind(objs, "ReferenceGrant")
        if any(
            t.get("kind") == "Secret" and t.get("name") in certs for t in g["spec"].get("to", [])
        )
    ]
    if routes and not grants:
        errors.append("HTTPRoute: no ReferenceGrant lets the Gateway read the certificate Secret")
    api = workload_by_component(objs, "api")
    if api is not None:
        anyone, _ = _peers_allowed_to(objs, pod_template(api)["metadata"]["labels"], 8080)
        if "*anyone*" in anyone:
            errors.append("the exposed API must admit only its front doors, not any pod")
    return errors


CHECKS = {
    f.__name__.removeprefix("check_"): f
    for f in (
        check_labels,
        check_namespace,
        check_pod_security,
        check_postgresql,
        check_resources,
        check_images,
        check_service_accounts,
        check_secrets,
        check_sync_waves,
        check_migrate_hook,
        check_probes,
        check_api,
        check_worker,
        check_pdbs,
        check_services,
        check_cronjob,
        check_network_policies,
        check_keda,
        check_least_privilege,
        check_external_secrets,
        check_data_protection,
        check_config_rollout,
        check_connection_budget,
        check_exposure,
    )
}
