#!/usr/bin/env bash
# taskq on a local kind cluster, delivered by Argo CD from your Git fork, then
# the operational drills of docs/deploy.md. For machines with Docker.
#
#   scripts/kind-demo.sh            # everything: cluster, Argo CD, deploy, drills
#   scripts/kind-demo.sh up         # cluster + Argo CD + deploy + smoke test only
#   scripts/kind-demo.sh drills     # the drills, against a running demo
#   scripts/kind-demo.sh down       # delete the kind cluster
#
# Before the first run (docs/deploy.md, step 1): fork the repository, set
# YOUR fork's URL in gitops/argocd/projects/appproject-taskq.yaml (the one
# place it is written), commit and push. Argo CD deploys what is in Git, not
# what is in this working tree. The fork must be readable by Argo CD (public,
# or add repository credentials to Argo CD first).
#
# Needs: docker, kind (>= v0.30 for Kubernetes 1.34 node images and network
# policy enforcement by kindnet), kubectl, git, curl.
#
# The operators (cert-manager, CloudNativePG and its Barman Cloud plugin,
# KEDA, External Secrets Operator) are not installed by this script: the root
# Application installs them from gitops/argocd/platform, at the versions
# pinned there, before the environments (sync waves).
#
# Settings (environment):
#   KIND_CLUSTER      cluster name                  (taskq)
#   KIND_NODE_IMAGE   node image, the Kubernetes version the manifests target
#   ARGOCD_VERSION    Argo CD release installed by hand first; the same as
#                     gitops/argocd/platform/application-platform-argocd.yaml,
#                     which then manages it
#   WITH_PROD=1       also wait for prod's database and run its failover drill;
#                     creates a fake ClusterSecretStore with generated passwords.
#                     prod's API and workers run once a promotion has pinned an
#                     image (docs/deploy.md, "First promotion")
#   LOCAL_PORT        local port for kubectl port-forward (18080)
set -euo pipefail

KIND_CLUSTER="${KIND_CLUSTER:-taskq}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
ARGOCD_VERSION="${ARGOCD_VERSION:-v3.3.9}"
WITH_PROD="${WITH_PROD:-1}"
LOCAL_PORT="${LOCAL_PORT:-18080}"
CURL_IMAGE="docker.io/curlimages/curl:8.10.1"
PLACEHOLDER_URL="https://github.com/example/taskq.git"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTX="kind-${KIND_CLUSTER}"
PF_PID=""

# ------------------------------------------------------------------ helpers

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'kind-demo: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CTX" "$@"; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see the header of this script)"
  done
}

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...: poll a condition with a
# deadline instead of sleeping and hoping.
wait_until() {
  local what="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for: $what"
    fi
    sleep 2
  done
  info "ok: $what"
}

cleanup() {
  if [[ -n "$PF_PID" ]]; then
    kill "$PF_PID" 2>/dev/null || true
    PF_PID=""
  fi
}
trap cleanup EXIT

# port_forward NAMESPACE: local port -> Service taskq-api. A port-forward is
# bound to one pod, so it is restarted after anything that replaces pods.
port_forward() {
  local ns="$1"
  cleanup
  k -n "$ns" port-forward svc/taskq-api "${LOCAL_PORT}:8080" >/dev/null 2>&1 &
  PF_PID=$!
  wait_until "port-forward to $ns/taskq-api" 30 curl -fsS "http://127.0.0.1:${LOCAL_PORT}/live"
}

api() { curl -sS --max-time 5 "$@"; }

# submit_task KIND PAYLOAD: POST /tasks, print the new task's id.
submit_task() {
  api -X POST -H 'Content-Type: application/json' \
    --data "{\"kind\": \"$1\", \"payload\": $2}" \
    "http://127.0.0.1:${LOCAL_PORT}/tasks" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p'
}

task_status() {
  api "http://127.0.0.1:${LOCAL_PORT}/tasks/$1" | sed -n 's/.*"status": *"\([^"]*\)".*/\1/p'
}

task_succeeded() { [[ "$(task_status "$1")" == "succeeded" ]]; }

cluster_ready() {  # NAMESPACE CLUSTER INSTANCES
  [[ "$(k -n "$1" get cluster "$2" -o jsonpath='{.status.readyInstances}' 2>/dev/null)" == "$3" ]]
}

primary_of() { k -n "$1" get cluster "$2" -o jsonpath='{.status.currentPrimary}'; }

primary_changed() {  # NAMESPACE CLUSTER OLD_PRIMARY
  local now
  now="$(primary_of "$1" "$2")"
  [[ -n "$now" && "$now" != "$3" ]]
}

# psql_in NAMESPACE POD SQL: run SQL in the taskq database inside an instance
# pod (its postgres user over the local socket; no password leaves the pod).
psql_in() { k -n "$1" exec "$2" -c postgres -- psql -qAt -d taskq -v ON_ERROR_STOP=1 -c "$3"; }

app_synced_healthy() {
  local status
  status="$(k -n argocd get application "$1" \
    -o jsonpath='{.status.sync.status}/{.status.health.status}' 2>/dev/null || true)"
  [[ "$status" == "Synced/Healthy" ]]
}

restarts() {
  k -n "$1" get pods -l "app.kubernetes.io/component=$2" \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{" "}{end}'
}

pods_ready() {
  local want="$3" got
  got="$(k -n "$1" get pods -l "app.kubernetes.io/component=$2" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{" "}{end}')"
  [[ -n "$got" ]] || return 1
  # every pod's Ready condition equals the wanted value
  ! tr ' ' '\n' <<<"$got" | grep -q -v -x -e "$want" -e ''
}

pod_phase_in() {  # NAMESPACE POD REGEX
  k -n "$1" get pod "$2" -o jsonpath='{.status.phase}' 2>/dev/null | grep -qE "^($3)\$"
}

worker_replicas_above_one() {
  local n
  n="$(k -n "$1" get deployment taskq-worker -o jsonpath='{.spec.replicas}')"
  [[ "${n:-0}" -gt 1 ]]
}

# Unfinished tasks, counted inside a worker pod (it has the driver, the
# DATABASE_URL and the password; the database admits only taskq's pods).
UNFINISHED_PY='import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"]) as c:
    print(c.execute("SELECT count(*) FROM taskq_tasks WHERE status IN (%s, %s)", ("queued", "running")).fetchone()[0])'

queue_drained() {
  [[ "$(k -n "$1" exec deploy/taskq-worker -- python -c "$UNFINISHED_PY")" == "0" ]]
}

repo_url() {
  # The one place the repository URL is written.
  sed -n '/sourceRepos:/{n;s/^ *- *//p;}' "$REPO/gitops/argocd/projects/appproject-taskq.yaml" | head -n 1
}

overlay_image() {
  kubectl kustomize "$REPO/gitops/apps/overlays/$1" |
    sed -n 's/^ *image: \(.*taskq:.*\)$/\1/p' | sort -u | head -n 1
}

# ------------------------------------------------------------------ steps

preflight() {
  log "Checking tools and the Git fork"
  need docker kind kubectl git curl
  local url
  url="$(repo_url)"
  [[ -n "$url" ]] || die "no repository URL found in gitops/argocd/projects/appproject-taskq.yaml"
  if [[ "$url" == "$PLACEHOLDER_URL" ]]; then
    die "gitops/argocd/projects/appproject-taskq.yaml still names $PLACEHOLDER_URL;
set your fork's URL there, commit, push, and run again (docs/deploy.md, step 1)"
  fi
  info "Argo CD will deploy from $url (branch main)"
  local head remote
  head="$(git -C "$REPO" rev-parse HEAD)"
  remote="$(git ls-remote "$url" refs/heads/main | cut -f1 || true)"
  if [[ -z "$remote" ]]; then
    die "cannot read $url (is it public, or reachable with your credentials?)"
  elif [[ "$remote" != "$head" ]]; then
    info "WARNING: main on $url is $remote, this checkout is $head;"
    info "Argo CD deploys what is pushed, not this working tree."
  fi
}

create_cluster() {
  log "kind cluster $KIND_CLUSTER ($KIND_NODE_IMAGE)"
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    info "exists, reusing it"
  else
    kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s
  fi
}

install_argocd() {
  log "Installing Argo CD $ARGOCD_VERSION"
  k create namespace argocd --dry-run=client -o yaml | k apply -f -
  # Server-side apply: the CRDs are too large for client-side apply's
  # last-applied annotation.
  k apply -n argocd --server-side --force-conflicts \
    -f "https://raw.githubusercontent.com/argoproj/argo-cd/${ARGOCD_VERSION}/manifests/install.yaml" >/dev/null
  k -n argocd rollout status deployment/argocd-repo-server --timeout=300s
  k -n argocd rollout status deployment/argocd-server --timeout=300s
  k -n argocd rollout status statefulset/argocd-application-controller --timeout=300s
}

secret_store() {
  [[ "$WITH_PROD" == "1" ]] || return 0
  log "A fake ClusterSecretStore for prod's credentials"
  # Stand-in for a real secret store (Vault, a cloud secret manager): the fake
  # provider of External Secrets Operator (installed by the platform) serves
  # passwords generated here, never written to Git. It ignores
  # remoteRef.property, so each key holds the bare value. The object store
  # credentials are placeholders: backups and WAL archiving fail on kind
  # unless you point the ObjectStore at a bucket (docs/deploy.md, "Backups").
  wait_until "External Secrets Operator's CRDs" 900 k get crd clustersecretstores.external-secrets.io
  local owner app keda
  owner="$(random_password)"
  app="$(random_password)"
  keda="$(random_password)"
  if ! k get clustersecretstore taskq-secrets >/dev/null 2>&1; then
    k apply -f - <<EOF
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata:
  name: taskq-secrets
spec:
  provider:
    fake:
      data:
        - key: taskq/prod/postgresql/owner
          value: "${owner}"
        - key: taskq/prod/postgresql/app
          value: "${app}"
        - key: taskq/prod/postgresql/keda
          value: "${keda}"
        - key: taskq/prod/backup-s3
          value: "kind-demo-placeholder"
EOF
  fi
}

random_password() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

load_images() {
  log "Building the image and loading it into kind"
  # The overlays name the image Argo CD will run; build it under that name so
  # kind's nodes have it (imagePullPolicy IfNotPresent: no registry needed).
  # (prod runs the image its Application pins by digest: a registry's, after
  # a promotion.)
  local dev_image
  dev_image="$(overlay_image dev)"
  [[ -n "$dev_image" ]] || die "could not read the image from gitops/apps/overlays/dev"
  docker build -t "$dev_image" "$REPO"
  kind load docker-image "$dev_image" --name "$KIND_CLUSTER"
  # The PostgreSQL image, so the first sync does not wait on a pull.
  local pg_image
  pg_image="$(kubectl kustomize "$REPO/gitops/apps/overlays/dev" | sed -n 's/^ *image: \(.*postgres:.*\)$/\1/p' | head -n 1)"
  docker pull "$pg_image" >/dev/null
  kind load docker-image "$pg_image" --name "$KIND_CLUSTER"
}

bootstrap() {
  log "Applying gitops/argocd (projects + root app-of-apps: platform, then environments)"
  k apply -k "$REPO/gitops/argocd"
  secret_store
  local app
  for app in platform-namespaces platform-cert-manager platform-cloudnative-pg platform-keda \
             platform-external-secrets platform-barman-cloud; do
    wait_until "$app Synced and Healthy" 900 app_synced_healthy "$app"
  done
  wait_until "taskq-dev Synced and Healthy (waves: secret/config -> postgresql -> migrate hook -> api/worker)" 900 \
    app_synced_healthy taskq-dev
  show_waves taskq-dev
  if [[ "$WITH_PROD" == "1" ]]; then
    wait_until "prod's Cluster taskq-db: 3 instances ready" 900 cluster_ready taskq-prod taskq-db 3
  fi
}

show_waves() {
  log "Sync order Argo CD used for $1"
  k -n argocd get application "$1" -o jsonpath='{range .status.operationState.syncResult.resources[*]}{.syncPhase}{"\t"}{.hookPhase}{"\t"}{.kind}/{.name}{"\t"}{.message}{"\n"}{end}' |
    column -t -s $'\t' || true
}

smoke_test() {
  log "Smoke test through the API (port-forward, curl)"
  port_forward taskq-dev
  api "http://127.0.0.1:${LOCAL_PORT}/ready"
  echo
  local id
  id="$(submit_task echo '{"hello": "kind"}')"
  [[ -n "$id" ]] || die "POST /tasks returned no id"
  info "submitted task $id"
  wait_until "task $id succeeded" 60 task_succeeded "$id"
  api "http://127.0.0.1:${LOCAL_PORT}/tasks/$id"
  echo
}

# Argo CD's selfHeal undoes manual changes within seconds, which is what we
# want in production and not during a drill. The root Application would
# re-enable the child's automation, so pause the root first. `resume_gitops`
# re-applies gitops/argocd, restoring both.
pause_gitops() {
  log "Pausing automated sync for the drills"
  # A merge patch with null removes the field and is idempotent.
  k -n argocd patch application taskq-root --type merge \
    -p '{"spec": {"syncPolicy": {"automated": null}}}' >/dev/null
  k -n argocd patch application "$1" --type merge \
    -p '{"spec": {"syncPolicy": {"automated": null}}}' >/dev/null
}

resume_gitops() {
  log "Resuming automated sync"
  k apply -k "$REPO/gitops/argocd" >/dev/null
  wait_until "root Application synced" 300 app_synced_healthy taskq-root
  wait_until "$1 back in sync with Git" 600 app_synced_healthy "$1"
}

drill_database_outage() {
  local ns=taskq-dev before after
  log "Drill: database outage (readiness flips, no crash loops, recovery)"
  before="api:$(restarts "$ns" api) worker:$(restarts "$ns" worker)"
  k -n "$ns" scale statefulset taskq-postgresql --replicas=0
  wait_until "API pods not ready while PostgreSQL is down" 120 pods_ready "$ns" api False
  wait_until "worker pods not ready while PostgreSQL is down" 120 pods_ready "$ns" worker False
  k -n "$ns" get pods
  k -n "$ns" scale statefulset taskq-postgresql --replicas=1
  wait_until "PostgreSQL ready again" 300 pods_ready "$ns" postgresql True
  wait_until "API pods ready again" 120 pods_ready "$ns" api True
  wait_until "worker pods ready again" 120 pods_ready "$ns" worker True
  after="api:$(restarts "$ns" api) worker:$(restarts "$ns" worker)"
  info "restart counts before: $before"
  info "restart counts after:  $after"
  [[ "$before" == "$after" ]] || die "a pod restarted during the outage (liveness must not depend on the database)"
}

drill_rollout() {
  local ns=taskq-dev
  log "Drill: API rollout without failed requests"
  # The client runs in its own namespace: taskq-dev's default-deny egress
  # would block it, and the API's ingress policy admits any source on 8080.
  k create namespace taskq-drill --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n taskq-drill delete pod drill-client --ignore-not-found >/dev/null
  # 600 requests, one every ~0.1 s, through the Service; exits non-zero if
  # any failed. (Single quotes: the loop runs in the client pod's shell.)
  # shellcheck disable=SC2016
  k -n taskq-drill run drill-client --image="$CURL_IMAGE" --restart=Never --command -- sh -c '
    ok=0; bad=0; i=0
    while [ $i -lt 600 ]; do
      code=$(curl -s -o /dev/null -w "%{http_code}" --max-time 3 http://taskq-api.taskq-dev.svc:8080/ready)
      if [ "$code" = "200" ]; then ok=$((ok+1)); else bad=$((bad+1)); echo "failed: $code"; fi
      i=$((i+1)); sleep 0.1
    done
    echo "ok=$ok failed=$bad"; [ $bad -eq 0 ]'
  wait_until "drill client running" 120 pod_phase_in taskq-drill drill-client Running
  k -n "$ns" rollout restart deployment/taskq-api
  k -n "$ns" rollout status deployment/taskq-api --timeout=300s
  wait_until "drill client finished" 300 pod_phase_in taskq-drill drill-client 'Succeeded|Failed'
  k -n taskq-drill logs drill-client | tail -n 5
  local phase
  phase="$(k -n taskq-drill get pod drill-client -o jsonpath='{.status.phase}')"
  k delete namespace taskq-drill --wait=false >/dev/null
  [[ "$phase" == "Succeeded" ]] || die "requests failed during the rollout"
}

drill_postgres_pod_deletion() {
  local ns=taskq-dev id
  log "Drill: delete the PostgreSQL pod; the data stays"
  port_forward "$ns"
  id="$(submit_task echo '{"drill": "persistence"}')"
  wait_until "task $id succeeded" 60 task_succeeded "$id"
  k -n "$ns" delete pod taskq-postgresql-0
  wait_until "PostgreSQL ready again" 300 pods_ready "$ns" postgresql True
  wait_until "API ready again" 120 pods_ready "$ns" api True
  port_forward "$ns"
  wait_until "task $id still there after the pod was replaced" 60 task_succeeded "$id"
}

drill_scale_workers() {
  local ns=taskq-dev
  log "Drill: scaling workers by hand (dev)"
  k -n "$ns" scale deployment/taskq-worker --replicas=3
  k -n "$ns" rollout status deployment/taskq-worker --timeout=180s
  k -n "$ns" exec deploy/taskq-worker -- taskq submit sleep --payload '{"seconds": 0.2}' --count 300
  info "300 tasks of 0.2 s submitted; three workers drain them:"
  wait_until "queue drained" 300 queue_drained "$ns"
  k -n "$ns" scale deployment/taskq-worker --replicas=1

  [[ "$WITH_PROD" == "1" ]] || return 0
  log "Drill: KEDA scales prod workers on queue depth"
  if ! pods_ready taskq-prod worker True; then
    info "prod's workers are not running (no image promoted yet): skipping this drill."
    return 0
  fi
  k -n taskq-prod exec deploy/taskq-worker -- taskq submit sleep --payload '{"seconds": 1}' --count 2000
  wait_until "KEDA scaled taskq-worker above 1 replica" 300 worker_replicas_above_one taskq-prod
  k -n taskq-prod get scaledobject,hpa,deployment/taskq-worker
  info "KEDA scales back to 1 replica after the queue drains and the cooldown (5 min) passes."
}

# Synchronous replication, proven: write numbered rows, one transaction each,
# while the primary's pod is deleted; every row whose COMMIT returned must be
# on the standby that takes over.
drill_failover() {
  [[ "$WITH_PROD" == "1" ]] || return 0
  local ns=taskq-prod cluster=taskq-db primary acked=0 i found
  log "Drill: failover of prod's database (delete the primary, nothing acknowledged lost)"
  primary="$(primary_of "$ns" "$cluster")"
  info "primary: $primary"
  psql_in "$ns" "$primary" "CREATE TABLE IF NOT EXISTS drill_failover (n int PRIMARY KEY)"
  psql_in "$ns" "$primary" "TRUNCATE drill_failover"
  k -n "$ns" delete pod "$primary" --wait=false
  for i in $(seq 1 400); do
    if psql_in "$ns" "$primary" "INSERT INTO drill_failover VALUES ($i)" 2>/dev/null; then
      acked=$i
    else
      break
    fi
  done
  info "acknowledged rows before the primary went: $acked"
  wait_until "a standby promoted" 300 primary_changed "$ns" "$cluster" "$primary"
  primary="$(primary_of "$ns" "$cluster")"
  info "new primary: $primary"
  wait_until "new primary answers" 120 psql_in "$ns" "$primary" "SELECT 1"
  found="$(psql_in "$ns" "$primary" "SELECT count(*) FROM drill_failover WHERE n <= $acked")"
  psql_in "$ns" "$primary" "DROP TABLE drill_failover"
  info "acknowledged rows on the new primary: $found of $acked"
  [[ "$found" == "$acked" ]] || die "acknowledged commits were lost in the failover"
  wait_until "Cluster back to 3 ready instances" 600 cluster_ready "$ns" "$cluster" 3
}

drills() {
  drill_failover
  pause_gitops taskq-dev
  drill_database_outage
  drill_rollout
  drill_postgres_pod_deletion
  drill_scale_workers
  resume_gitops taskq-dev
  log "All drills passed"
}

up() {
  preflight
  create_cluster
  install_argocd
  load_images
  bootstrap
  smoke_test
}

case "${1:-all}" in
  all) up; drills ;;
  up) up ;;
  drills) need kubectl curl; drills ;;
  down) kind delete cluster --name "$KIND_CLUSTER" ;;
  *) die "usage: $0 [all|up|drills|down]" ;;
esac
