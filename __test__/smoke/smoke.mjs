// Runtime smoke test: loads the built addon under whatever runtime runs this file (Node 20/22/24,
// Bun), polls the local simulator once, pushes response headers, reads the cache back, closes,
// and then lets the process end on its own (a kept handle would hang it: CI runs this under a
// timeout). Prints one summary line and exits 0, or prints what went wrong and exits 1.
//
//   node __test__/smoke/smoke.mjs        bun __test__/smoke/smoke.mjs

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const require = createRequire(import.meta.url)
const { QuotaManager, __napiBindingTarget } = require('../../index.js')
const { startUsageSimulator, rateLimitHeaders } = require('../../simulator/index.js')

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
