#!/usr/bin/env node
// `prepublishOnly` guard of the root package: refuses to publish a manifest that users could not
// install without a compiler. Run by `npm publish` after `napi prepublish -t npm` has pinned the
// per-platform packages (see .github/workflows/release.yml). Checks:
//   - no install-time script (preinstall, install, postinstall, prepare) in the manifest;
//   - one npm/<platform> package per napi target, each at the root's version;
//   - each of them in optionalDependencies at exactly that version;
//   - no native binary and no Rust/Cargo file in what `files` publishes.

import fs from 'node:fs'
import path from 'node:path'
import process from 'node:process'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const manifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
const problems = []

for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) {
  if (manifest.scripts?.[script]) problems.push(`scripts.${script} would run on users' machines`)
}

const npmDir = path.join(root, 'npm')
const platformPackages = fs.readdirSync(npmDir).map((dir) => JSON.parse(fs.readFileSync(path.join(npmDir, dir, 'package.json'), 'utf8')))
if (platformPackages.length !== manifest.napi.targets.length) {
  problems.push(`${manifest.napi.targets.length} napi targets but ${platformPackages.length} npm/ packages`)
}
for (const { name, version } of platformPackages) {
  if (version !== manifest.version) problems.push(`${name} is at ${version}, the root at ${manifest.version}`)
  const pinned = manifest.optionalDependencies?.[name]
  if (pinned !== manifest.version) {
    problems.push(`optionalDependencies["${name}"] is ${pinned ?? 'missing'}, expected ${manifest.version} (run napi prepublish -t npm)`)
  }
}

for (const entry of manifest.files ?? []) {
  if (/\.node$|^src\/?$|^crates\/?$|^Cargo\.|^build\.rs$/.test(entry)) problems.push(`files publishes ${entry}`)
}

if (problems.length > 0) {
  console.error(`check-publish: not publishing ${manifest.name}@${manifest.version}:\n  ${problems.join('\n  ')}`)
  process.exit(1)
}
console.log(`check-publish: ${manifest.name}@${manifest.version} pins ${platformPackages.length} platform packages`)
