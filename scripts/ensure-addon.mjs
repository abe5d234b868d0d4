#!/usr/bin/env node
// Builds the native addon of a checkout when it is missing or older than the Rust sources, so that
// `npm install && npm start` / `npm test` work from a fresh clone without an install script (the
// published package runs nothing at install: its binaries come from the per-platform packages).
//
//   node scripts/ensure-addon.mjs           build (release) if missing or stale, else say so
//   node scripts/ensure-addon.mjs --check   exit 1 if missing or stale, build nothing
//
// Set ANTHROPIC_QUOTA_SKIP_BUILD=1 to use whatever binding index.js finds (an installed platform
// package, NAPI_RS_NATIVE_LIBRARY_PATH) without building.

import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import process from 'node:process'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const binaryName = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).napi.binaryName
/** Inputs of the Rust build; a change in any of them makes the addon stale. */
const rustInputs = ['src', 'crates', 'Cargo.toml', 'Cargo.lock', 'build.rs']

/** The platform-arch-abi suffix `napi build --platform` gives the host's addon. */
function hostSuffix() {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`
  return `${platform}-${arch}`
}

function isMusl() {
  const report = process.report?.getReport?.()
  return !report?.header?.glibcVersionRuntime
}

/** Newest modification time (ms) of a file or, recursively, of the files under a directory. */
function newestMtime(target) {
  let stats
  try {
    stats = fs.statSync(target)
  } catch {
    return 0
  }
  if (!stats.isDirectory()) return stats.mtimeMs
  let newest = 0
  for (const entry of fs.readdirSync(target)) {
    if (entry === 'target' || entry.startsWith('.')) continue
    newest = Math.max(newest, newestMtime(path.join(target, entry)))
  }
  return newest
}

function addonState(addonPath) {
  if (!fs.existsSync(addonPath)) return 'missing'
  const sources = Math.max(...rustInputs.map((input) => newestMtime(path.join(root, input))))
  return fs.statSync(addonPath).mtimeMs < sources ? 'older than the Rust sources' : 'fresh'
}

function build() {
  const napi = path.join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'napi.cmd' : 'napi')
  if (!fs.existsSync(napi)) {
    console.error('ensure-addon: @napi-rs/cli is not installed: run `npm install` first.')
    process.exit(1)
  }
  const result = spawnSync(napi, ['build', '--platform', '--release', '--js', 'binding.js', '--dts', 'binding.d.ts'], {
    cwd: root,
    stdio: 'inherit',
    shell: process.platform === 'win32',
  })
  if (result.error?.code === 'ENOENT' || result.status !== 0) {
    console.error(
      'ensure-addon: building the addon failed. It needs a Rust toolchain (https://rustup.rs); ' +
        'users of the published package get a prebuilt binary instead.',
    )
    process.exit(result.status || 1)
  }
}

if (process.env.ANTHROPIC_QUOTA_SKIP_BUILD === '1') process.exit(0)
const addon = `${binaryName}.${hostSuffix()}.node`
const state = addonState(path.join(root, addon))
if (state === 'fresh') process.exit(0)
if (process.argv.includes('--check')) {
  console.error(`ensure-addon: ${addon} is ${state}`)
  process.exit(1)
}
console.error(`ensure-addon: ${addon} is ${state}: building it (npm run build)`)
build()
