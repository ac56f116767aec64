#!/usr/bin/env bash
# Point an environment's overlay at a new image tag: the "deploy" step of the
# release loop. Argo CD notices the commit and rolls the environment.
#
# Usage: scripts/bump-image.sh ENV TAG       e.g. scripts/bump-image.sh dev 3f2c1e0...
#   ENV  dev | prod (a directory under gitops/apps/overlays)
#   TAG  the image tag to deploy (the release workflow uses the commit SHA)
# Env:   TASKQ_IMAGE  also change the image name (default: keep the overlay's)
#        GITOPS_ROOT  repository root to edit (default: this script's repo)
#
# Equivalent to `kustomize edit set image taskq=NAME:TAG` in the overlay,
# without needing a kustomize binary: it rewrites only the newTag (and
# optionally newName) of the `taskq` entry under images:, keeps comments,
# and quotes the tag so an all-digit SHA prefix stays a string.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 ENV TAG" >&2
  exit 2
fi
env_name="$1"
tag="$2"
root="${GITOPS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
file="$root/gitops/apps/overlays/$env_name/kustomization.yaml"

if [[ ! -f "$file" ]]; then
  echo "bump-image: no overlay $env_name ($file)" >&2
  exit 2
fi
# Docker's tag grammar; "latest" is refused because it pins nothing.
if [[ ! "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ || "$tag" == "latest" ]]; then
  echo "bump-image: invalid or unpinned tag '$tag'" >&2
  exit 2
fi
name="${TASKQ_IMAGE:-}"
if [[ -n "$name" && ! "$name" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ ]]; then
  echo "bump-image: invalid image name '$name'" >&2
  exit 2
fi

tmp="$(mktemp "$file.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# State machine over the YAML text: inside the top-level `images:` list,
# inside the entry whose name is `taskq`, replace newTag / newName.
awk -v tag="$tag" -v name="$name" '
  /^images:/                 { in_images = 1; print; next }
  in_images && /^[^ #-]/     { in_images = 0; in_entry = 0 }
  in_images && /^  - /       { in_entry = ($0 ~ /^  - name: "?taskq"?[[:space:]]*$/) }
  in_entry && /^    newTag:/ { print "    newTag: \"" tag "\""; tags++; next }
  in_entry && name != "" && /^    newName:/ { print "    newName: " name; next }
  { print }
  END { if (tags != 1) exit 3 }
' "$file" >"$tmp" || {
  echo "bump-image: $file has no single images entry 'taskq' with a newTag" >&2
  exit 1
}
cat "$tmp" >"$file"
echo "bump-image: $env_name -> ${name:-(same image)}:$tag"
