// Runtime smoke test: loads the addon under whatever runtime runs this file (Node 20/22/24, Bun,
// an arm64 Node under qemu), polls the local simulator once, pushes response headers, reads the
// cache back, closes, and then lets the process end on its own (a kept handle would hang it: CI
// runs this under a timeout). Prints one line starting with "smoke ok" and exits 0, or prints
// what went wrong and exits 1. Used by scripts/ci-runtimes.sh, scripts/ci-release-checks.sh
// (arm64, the install from a local registry) and the release workflow.
//
//   node __test__/smoke/smoke.mjs                  the checkout (index.js two folders up)
//   node smoke.mjs <package-name>                  the package as installed in ./node_modules

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const packageName = process.argv[2]
const load = (subpath) =>
  packageName
    ? createRequire(join(process.cwd(), 'noop.js'))(subpath ? `${packageName}/${subpath}` : packageName)
    : createRequire(import.meta.url)(subpath ? `../../${subpath}/index.js` : '../../index.js')
const { QuotaManager, __napiBindingTarget } = load()
const { startUsageSimulator, rateLimitHeaders } = load('simulator')

const TOKEN = 'sk-ant-oat01-smoke-' + 'x'.repeat(24)
const runtime = typeof globalThis.Bun === 'object' ? `bun ${globalThis.Bun.version}` : `node ${process.versions.node}`

function check(condition, what) {
  if (!condition) throw new Error(`smoke check failed: ${what}`)
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-smoke-'))
  const sim = await startUsageSimulator()
  try {
    const statePath = join(dir, 'state.json')
    const manager = new QuotaManager({ statePath, usageUrl: sim.url, apiCallGapMs: 0 })

    const polled = await manager.refreshMain('alice', TOKEN)
    check(sim.requests === 1, `one request reached the simulator (got ${sim.requests})`)
    check(polled.five_hour?.usedPercent === 9 && polled.seven_day?.usedPercent === 68, `polled quota ${JSON.stringify(polled)}`)
    check(polled.source === 'poll', `polled source ${polled.source}`)

    const pushed = manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.42, sevenDay: 0.7 }))
    check(pushed?.quota.five_hour?.usedPercent === 42, `pushed entry ${JSON.stringify(pushed)}`)

    const entry = manager.getMain('alice')
    check(entry?.quota.five_hour?.usedPercent === 42, `getMain after the push ${JSON.stringify(entry)}`)
    check(Object.isFrozen(entry), 'getMain returns a frozen entry')

    // The host's loop: nothing is due while the snapshot is fresh, so nothing is sent.
    check(manager.isMainStale() === false && manager.needsRefresh(1) === false, 'fresh after the poll')

    await manager.close()
    const state = JSON.parse(readFileSync(statePath, 'utf8'))
    check(state.routes?.['main:alice']?.entry?.quota?.five_hour?.usedPercent === 42, 'the state file holds the pushed quota')
    check(!readFileSync(statePath, 'utf8').includes(TOKEN), 'no token in the state file')

    const stats = manager.stats()
    console.log(
      `smoke ok: ${runtime} (${process.platform}-${process.arch}, binding ${__napiBindingTarget}) ` +
        `requests=${sim.requests} apiCalls=${stats.apiCalls} stateWrites=${stats.stateWrites} 5h=${entry.quota.five_hour.usedPercent}%`,
    )
  } finally {
    await sim.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(`smoke FAILED under ${runtime}: ${error?.stack ?? error}`)
  process.exitCode = 1
})
