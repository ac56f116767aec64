#!/usr/bin/env bash
# Promote to prod: pin prod's Application to a tested commit and to the image
# built from that commit, by digest, in one edit of one file
# (gitops/argocd/apps/application-taskq-prod.yaml). The root Application
# follows main, so the commit that carries this edit is what moves prod; a
# merge to main alone changes nothing there.
#
# Usage: scripts/promote.sh COMMIT DIGEST
#   COMMIT  the full 40-character SHA whose manifests prod should run (the one
#           CI tested and built the image from)
#   DIGEST  sha256:<64 hex> of that image, as the release workflow pushed it
# Env:   TASKQ_IMAGE  the image name (default: keep the one in the file)
#        GITOPS_ROOT  repository root to edit (default: this script's repo)
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 COMMIT DIGEST" >&2
  exit 2
fi
commit="$1"
digest="$2"
root="${GITOPS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
file="$root/gitops/argocd/apps/application-taskq-prod.yaml"

if [[ ! "$commit" =~ ^[0-9a-f]{40}$ ]]; then
  echo "promote: COMMIT must be a full 40-character SHA, not '$commit' (never a branch)" >&2
  exit 2
fi
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "promote: DIGEST must be sha256:<64 hex>, not '$digest'" >&2
  exit 2
fi
name="${TASKQ_IMAGE:-}"
if [[ -n "$name" && ! "$name" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ ]]; then
  echo "promote: invalid image name '$name'" >&2
  exit 2
fi

tmp="$(mktemp "$file.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# The file has exactly one targetRevision (spec.source) and one taskq= image.
awk -v commit="$commit" -v digest="$digest" -v name="$name" '
  /^    targetRevision: / { print "    targetRevision: " commit; revs++; next }
  /^        - taskq=/ {
    image = name
    if (image == "") { image = substr($0, index($0, "=") + 1); sub(/@.*/, "", image) }
    print "        - taskq=" image "@" digest; imgs++; next
  }
  { print }
  END { if (revs != 1 || imgs != 1) exit 3 }
' "$file" >"$tmp" || {
  echo "promote: $file must have one targetRevision and one taskq= image" >&2
  exit 1
}
cat "$tmp" >"$file"
echo "promote: prod -> $commit, image ${name:-(same name)}@$digest"
