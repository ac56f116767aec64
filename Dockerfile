# syntax=docker/dockerfile:1
# One image for every taskq process: API, worker, migrations and prune.
# The command is chosen by the manifests (args: ["api"], ["worker"], ...).
#
# BASE_IMAGE is an argument so the image test can build against a locally
# made stand-in when no registry is reachable. The default is pinned by
# digest (the multi-arch index, so amd64 and arm64 builds start from the same
# release); scripts/bump-base-image.sh moves it to the tag's current digest.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---- builder: wheel + virtualenv ------------------------------------------
FROM ${BASE_IMAGE} AS build

# Only set when the build needs a private CA (see scripts/podman-setup.sh);
# an ARG without a default stays unset, so pip keeps its own CA list otherwise.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Two venvs: /opt/build holds pip and the wheel's build backend (build
# tools), /opt/taskq gets only the application and its dependencies and is
# the only thing copied onwards.
#
# Nothing is resolved at build time: both venvs install exactly the lock
# files (scripts/lock.sh), every file checked against its sha256
# (--require-hashes; --no-deps because the lock already lists every
# dependency). The taskq wheel is built without build isolation, so its
# backend is the hashed one from requirements/build.txt, not whatever the
# index serves that day.
WORKDIR /src
COPY requirements/ requirements/
RUN python3 -m venv /opt/build \
 && python3 -m venv --without-pip /opt/taskq \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt \
 && /opt/build/bin/pip --python /opt/taskq/bin/python install \
      --require-hashes --no-deps -r requirements/runtime.txt

# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/build/bin/pip --python /opt/taskq/bin/python install --no-deps --no-index /tmp/wheels/*.whl \
 && /opt/build/bin/pip --python /opt/taskq/bin/python check \
 && /opt/taskq/bin/taskq --help >/dev/null

# ---- runtime ---------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG REVISION=unknown
LABEL org.opencontainers.image.title="taskq" \
      org.opencontainers.image.description="PostgreSQL-only task queue: API, worker, migrations" \
      org.opencontainers.image.revision="${REVISION}"

# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric
# UID. No home directory is needed; HOME points at /tmp, the one writable path
# (an emptyDir under readOnlyRootFilesystem).
#
# The base image's own pip, setuptools and wheel (and the wheels ensurepip or
# Debian's venv would reinstall them from) are build tools: the processes run
# from /opt/taskq, a venv without them that never sees the base's
# site-packages, so they are removed before anything else is added.
RUN groupadd --gid 10001 taskq \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
            --shell /usr/sbin/nologin taskq \
 && for site in $(python3 -c 'import site; print(*site.getsitepackages())'); do \
      rm -rf "$site"/pip "$site"/pip-*.dist-info \
             "$site"/setuptools "$site"/setuptools-*.dist-info \
             "$site"/pkg_resources "$site"/_distutils_hack \
             "$site"/distutils-precedence.pth \
             "$site"/wheel "$site"/wheel-*.dist-info; \
    done \
 && rm -rf /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/wheel \
           /usr/local/lib/python3*/ensurepip/_bundled /usr/share/python-wheels

COPY --from=build /opt/taskq /opt/taskq

ENV PATH=/opt/taskq/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKQ_API_BIND=0.0.0.0:8080 \
    TASKQ_API_HEALTH_BIND=0.0.0.0:8082 \
    TASKQ_WORKER_HEALTH_BIND=0.0.0.0:8081

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081 8082
ENTRYPOINT ["taskq"]
CMD ["api"]
