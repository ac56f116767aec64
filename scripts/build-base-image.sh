#!/usr/bin/env bash
# Build a stand-in for the public python:3.11-slim-bookworm base image from
# Debian's own packages, for machines that can reach Debian's archive but no
# container registry. The result is cached twice: as a podman image (reruns
# return at once) and as a root filesystem tarball (a wiped podman store is
# refilled by a quick import instead of a new debootstrap).
#
# Usage: scripts/build-base-image.sh [IMAGE]   (default localhost/taskq-base:bookworm-py311)
# Needs: root, debootstrap, podman (see scripts/podman-setup.sh).
set -euo pipefail

image="${1:-localhost/taskq-base:bookworm-py311}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

env_lines="$("$here/podman-setup.sh")"
while IFS='=' read -r key value; do
  export "$key=$value"
done <<<"$env_lines"

podman_cmd=(podman --runtime "$TASKQ_PODMAN_RUNTIME")

if "${podman_cmd[@]}" image exists "$image"; then
  echo "build-base-image: $image already present"
  exit 0
fi

# Bump this when the package set changes so old tarballs are not reused.
recipe="bookworm-minbase-python3-venv-v1"
tarball="$TASKQ_GITOPS_CACHE/base-$recipe.tar"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ ! -s "$tarball" ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base-image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 3
  fi
  rootfs="$(mktemp -d "$TASKQ_GITOPS_CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  echo "build-base-image: debootstrap bookworm into $rootfs"
  # python3-venv brings ensurepip, which the Dockerfile's builder stage uses;
  # ca-certificates lets pip verify the package index.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$TASKQ_GITOPS_CACHE/debootstrap.log" 2>&1 || {
      tail -n 30 "$TASKQ_GITOPS_CACHE/debootstrap.log" >&2
      exit 1
    }
  # Keep the image small, like the slim image it stands in for.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

# The slim image puts python3 on PATH and runs as root with a shell; mimic that.
"${podman_cmd[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$image" >/dev/null
echo "build-base-image: imported $image"
