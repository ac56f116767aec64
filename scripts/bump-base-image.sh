#!/usr/bin/env bash
# Move the Dockerfile's base image to the current digest of its tag
# (python:3.11-slim-bookworm): the base is pinned by digest so a rebuild
# starts from exactly the release that was tested, and moves only through a
# reviewed commit made by this script (Debian and Python security fixes).
#
# Usage: scripts/bump-base-image.sh            look the digest up (skopeo, or
#                                              docker buildx imagetools)
#        scripts/bump-base-image.sh DIGEST     use this sha256:<64 hex>
# Env:   DOCKERFILE  the file to edit (default: the repository's Dockerfile)
#
# The digest must be the multi-arch index (manifest list), not one
# platform's manifest, or the arm64 build would start from the amd64 image:
# the lookup below takes the index and checks that it lists both.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile="${DOCKERFILE:-$repo/Dockerfile}"
line="$(grep -E '^ARG BASE_IMAGE=' "$dockerfile" || true)"
if [[ ! "$line" =~ ^ARG\ BASE_IMAGE=([^@]+)@sha256:[0-9a-f]{64}$ ]]; then
  echo "bump-base-image: $dockerfile has no 'ARG BASE_IMAGE=NAME:TAG@sha256:...' line" >&2
  exit 1
fi
ref="${BASH_REMATCH[1]}"

if [[ $# -ge 1 ]]; then
  digest="$1"
else
  if command -v skopeo >/dev/null 2>&1; then
    raw="$(skopeo inspect --raw "docker://docker.io/library/$ref")"
  elif command -v docker >/dev/null 2>&1; then
    raw="$(docker buildx imagetools inspect --raw "$ref")"
  else
    echo "bump-base-image: needs skopeo or docker buildx to look up $ref" >&2
    exit 2
  fi
  for arch in amd64 arm64; do
    if ! grep -q "\"architecture\": *\"$arch\"" <<<"$raw"; then
      echo "bump-base-image: $ref is not a multi-arch index with $arch" >&2
      exit 1
    fi
  done
  digest="sha256:$(printf '%s' "$raw" | sha256sum | cut -d' ' -f1)"
fi
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "bump-base-image: '$digest' is not sha256:<64 hex>" >&2
  exit 2
fi

tmp="$(mktemp "$dockerfile.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
sed -E "s|^ARG BASE_IMAGE=.*$|ARG BASE_IMAGE=$ref@$digest|" "$dockerfile" >"$tmp"
cat "$tmp" >"$dockerfile"
echo "bump-base-image: $ref@$digest"
