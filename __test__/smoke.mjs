// Smoke test of an installed or freshly built anthropic-quota-manager: load the native binding,
// poll a usage-endpoint simulator on 127.0.0.1 once, check the snapshot, close cleanly.
// Runs as it is under Node and Bun; used by scripts/ci-release-checks.sh (arm64 under qemu, musl,
// the install from a local registry) and by the release workflow on every runner.
//
//   node __test__/smoke.mjs                   the checkout (index.js next to __test__/)
//   node __test__/smoke.mjs <package-name>    the package as installed in ./node_modules
//
// Prints one line starting with "smoke ok" and exits 0, or prints why and exits 1.

import { createRequire } from 'node:module'
import path from 'node:path'
import process from 'node:process'

const requireHere = createRequire(path.join(process.cwd(), 'noop.js'))
const packageName = process.argv[2]
const load = (subpath) =>
  packageName
    ? requireHere(subpath ? `${packageName}/${subpath}` : packageName)
    : createRequire(import.meta.url)(subpath ? `../${subpath}/index.js` : '../index.js')

function check(condition, what) {
  if (!condition) throw new Error(`smoke: ${what}`)
}

async function main() {
  const { QuotaManager } = load()
  const { startUsageSimulator, usageBody } = load('simulator')
  const simulator = await startUsageSimulator()
  const manager = new QuotaManager({ usageUrl: simulator.url, statePath: null, apiCallGapMs: 0 })
  try {
    simulator.reply({ body: usageBody({ fiveHour: 37, sevenDay: 61 }) })
    const snapshot = await manager.refreshMain('smoke-account', 'smoke-token')
    check(simulator.requests === 1, `expected 1 usage request, saw ${simulator.requests}`)
    check(snapshot.five_hour?.usedPercent === 37, `five_hour ${JSON.stringify(snapshot.five_hour)}`)
    check(snapshot.seven_day?.usedPercent === 61, `seven_day ${JSON.stringify(snapshot.seven_day)}`)
    check(snapshot.source === 'poll', `source ${snapshot.source}`)
    const cached = manager.getMain('smoke-account')
    check(cached?.quota.five_hour?.usedPercent === 37, 'getMain does not return the polled snapshot')
  } finally {
    await manager.close()
    await simulator.close()
  }
  const runtime = process.versions.bun ? `bun ${process.versions.bun}` : `node ${process.version}`
  console.log(`smoke ok: ${runtime} ${process.platform}-${process.arch}, refreshMain -> five_hour 37%, seven_day 61%`)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
