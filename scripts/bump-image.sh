#!/usr/bin/env bash
# Point dev's overlay at a new image: the "deploy" step of the release loop
# for dev, which follows main. Argo CD notices the commit and rolls dev.
# prod is not bumped here: a promotion pins prod's commit and image digest
# together (scripts/promote.sh).
#
# Usage: scripts/bump-image.sh dev REF    e.g. scripts/bump-image.sh dev sha256:4f1c...
#   REF  the image digest the release workflow pushed (sha256:<64 hex>), or a
#        tag (for a hand-built image; a digest is what the workflow writes)
# Env:   TASKQ_IMAGE  also change the image name (default: keep the overlay's)
#        GITOPS_ROOT  repository root to edit (default: this script's repo)
#
# Equivalent to `kustomize edit set image taskq=NAME@DIGEST` (or :TAG) in the
# overlay, without needing a kustomize binary: it rewrites only the `taskq`
# entry under images: (its digest or newTag, and optionally newName), keeps
# comments, and quotes a tag so an all-digit one stays a string.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 dev REF" >&2
  exit 2
fi
env_name="$1"
ref="$2"
root="${GITOPS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
file="$root/gitops/apps/overlays/$env_name/kustomization.yaml"

if [[ "$env_name" == "prod" ]]; then
  echo "bump-image: prod is pinned by a promotion: scripts/promote.sh COMMIT DIGEST" >&2
  exit 2
fi
if [[ ! -f "$file" ]]; then
  echo "bump-image: no overlay $env_name ($file)" >&2
  exit 2
fi
if [[ "$ref" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  line="    digest: $ref"
# Docker's tag grammar; "latest" is refused because it pins nothing.
elif [[ "$ref" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ && "$ref" != "latest" ]]; then
  line="    newTag: \"$ref\""
else
  echo "bump-image: '$ref' is neither a digest (sha256:<64 hex>) nor a pinned tag" >&2
  exit 2
fi
name="${TASKQ_IMAGE:-}"
if [[ -n "$name" && ! "$name" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ ]]; then
  echo "bump-image: invalid image name '$name'" >&2
  exit 2
fi

tmp="$(mktemp "$file.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# State machine over the YAML text: inside the top-level `images:` list, in
# the entry whose name is `taskq`, drop the old newTag/digest and write the
# new reference as the entry's last line.
awk -v line="$line" -v name="$name" '
  function close_entry() { if (in_entry) { print line; done++ } in_entry = 0 }
  /^images:/                 { in_images = 1; print; next }
  in_images && /^[^ #-]/     { close_entry(); in_images = 0 }
  in_images && /^  - /       { close_entry(); in_entry = ($0 ~ /^  - name: "?taskq"?[[:space:]]*$/) }
  in_entry && /^    (newTag|digest):/ { next }
  in_entry && name != "" && /^    newName:/ { print "    newName: " name; next }
  { print }
  END { close_entry(); if (done != 1) exit 3 }
' "$file" >"$tmp" || {
  echo "bump-image: $file has no single images entry 'taskq'" >&2
  exit 1
}
cat "$tmp" >"$file"
echo "bump-image: $env_name -> ${name:-(same image)} ${ref}"
