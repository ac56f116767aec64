# GitOps targets (included by the main Makefile: -include mk/*.mk).
#   make gitops-tools            npm CRD schemas for tests/gitops (idempotent)
#   make gitops-render           render every overlay and the Argo CD objects to build/gitops/
#   make gitops-test             only the GitOps tests (the image test included)
#   make image [IMAGE=.. TAG=..] build the container image (podman, or ENGINE=docker)
#   make bump-image TAG=..       point dev at an image (sha256:<digest> or a tag)
#   make promote COMMIT=.. DIGEST=..   pin prod to a tested commit and its image digest
#   make lock                    regenerate requirements/*.txt (hashed) from pyproject.toml
#   make deps-locked             the venv from requirements/dev.txt, every file hash-checked
#   make bump-base-image [DIGEST=..]   move the Dockerfile's base image digest

GITOPS_KUBECTL ?= $(VENV)/bin/kubectl
GITOPS_OUT ?= build/gitops
ENGINE ?= podman
IMAGE ?= ghcr.io/example/taskq
TAG ?= $(shell git rev-parse HEAD 2>/dev/null || echo dev)
ENV ?= dev

.PHONY: gitops-tools gitops-render gitops-test image bump-image promote lock bump-base-image deps-locked

# `make test` (pytest) installs the npm CRD schemas first; the gitops tests
# would install them on demand too, this just makes the step visible.
TEST_TOOLS += gitops-tools

gitops-tools:
	@bash scripts/gitops-tools.sh >/dev/null

gitops-render: deps
	@mkdir -p $(GITOPS_OUT)
	@for env in dev prod; do \
	  $(GITOPS_KUBECTL) kustomize gitops/apps/overlays/$$env > $(GITOPS_OUT)/$$env.yaml || exit 1; \
	  echo "$(GITOPS_OUT)/$$env.yaml"; \
	done
	@for ex in gitops/apps/examples/*/; do \
	  name="$$(basename "$$ex")"; \
	  $(GITOPS_KUBECTL) kustomize "$$ex" > $(GITOPS_OUT)/example-$$name.yaml || exit 1; \
	  echo "$(GITOPS_OUT)/example-$$name.yaml"; \
	done
	@$(GITOPS_KUBECTL) kustomize gitops/platform/namespaces > $(GITOPS_OUT)/platform-namespaces.yaml && echo "$(GITOPS_OUT)/platform-namespaces.yaml"
	@# prod's image comes from its Application (kustomize.images), not the overlay.
	@$(GITOPS_KUBECTL) kustomize gitops/argocd > $(GITOPS_OUT)/argocd-bootstrap.yaml && echo "$(GITOPS_OUT)/argocd-bootstrap.yaml"
	@$(GITOPS_KUBECTL) kustomize gitops/argocd/apps > $(GITOPS_OUT)/argocd-apps.yaml && echo "$(GITOPS_OUT)/argocd-apps.yaml"

gitops-test: deps gitops-tools
	$(BIN)/pytest tests/gitops $(PYTEST_ARGS)

# podman needs the runtime/config quirks in scripts/podman-setup.sh; docker
# builds as is. BASE_IMAGE may point at a local stand-in
# (scripts/build-base-image.sh).
image:
ifeq ($(ENGINE),podman)
	@set -e; eval "$$(scripts/podman-setup.sh | sed 's/^/export /')"; \
	podman --runtime "$$TASKQ_PODMAN_RUNTIME" build --network=host \
	  $${TASKQ_CA_BUNDLE:+-v $$TASKQ_CA_BUNDLE:$$TASKQ_CA_BUNDLE:ro --build-arg PIP_CERT=$$TASKQ_CA_BUNDLE} \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --build-arg REVISION=$(TAG) -t $(IMAGE):$(TAG) .
else
	$(ENGINE) build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --build-arg REVISION=$(TAG) -t $(IMAGE):$(TAG) .
endif

bump-image:
	@# TAG must be given explicitly: the default (HEAD) may have no pushed image.
	@test "$(origin TAG)" != "file" || { echo "usage: make bump-image TAG=<sha256:digest|tag>"; exit 2; }
	scripts/bump-image.sh $(ENV) $(TAG)

promote:
	@test -n "$(COMMIT)" -a -n "$(DIGEST)" || { echo "usage: make promote COMMIT=<40-hex sha> DIGEST=sha256:<64 hex>"; exit 2; }
	scripts/promote.sh $(COMMIT) $(DIGEST)

lock:
	scripts/lock.sh

# `make deps` resolves pyproject.toml's ranges; this installs exactly the lock
# (--require-hashes), then taskq itself without resolving anything. It leaves
# the same stamp, so `make test` runs on it unchanged.
deps-locked:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

bump-base-image:
	scripts/bump-base-image.sh $(DIGEST)
