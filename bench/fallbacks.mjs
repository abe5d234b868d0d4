// refreshAllFallbacks over 20 and 100 accounts against a simulator that answers after 50 ms.
// The manager runs at most 4 fetches at a time (maxConcurrentFetches default), so the ideal is
// ceil(n / 4) × 50 ms. The yardstick is a plain-JS pool of 4 concurrent http.get calls on the
// same simulator (no state file, no backoff, no lock).
import http from 'node:http'
import path from 'node:path'
import fs from 'node:fs'
import { addonPath, emit, getJson, log, QUICK, require, row, simulatorPath, tempDir } from './lib.mjs'

const { QuotaManager } = require(addonPath)
const { startUsageSimulator } = require(simulatorPath)

const DELAY_MS = 50
const RUNS = QUICK ? 2 : 5
const sim = await startUsageSimulator({ delayMs: DELAY_MS })
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
const dir = tempDir()

const get = (url, token) => getJson(url, token, agent)

async function plainPool(accounts, width = 4) {
  const queue = [...accounts]
  const results = new Map()
  await Promise.all(
    Array.from({ length: width }, async () => {
      for (let a = queue.shift(); a; a = queue.shift()) results.set(a.id, await get(sim.url, a.access))
    }),
  )
  return results
}

const rows = []
for (const n of [20, 100]) {
  const addon = []
  const plain = []
  let requests = []
  for (let r = 0; r < RUNS; r++) {
    const accounts = Array.from({ length: n }, (_, i) => ({
      id: `acct-${r}-${i}`,
      enabled: true,
      access: `token-${n}-${r}-${i}`,
      expires: Date.now() + 3600e3,
    }))
    const manager = new QuotaManager({ statePath: path.join(dir, `state-${n}-${r}.json`), usageUrl: sim.url })
    const before = sim.requests
    let start = performance.now()
    await manager.refreshAllFallbacks(accounts)
    addon.push(performance.now() - start)
    requests.push(sim.requests - before)
    const cached = manager.getAllFallbacks().size
    await manager.close()
    if (cached !== n) throw new Error(`only ${cached} of ${n} fallbacks cached`)
    start = performance.now()
    await plainPool(accounts)
    plain.push(performance.now() - start)
    log(
      `fallbacks n=${n} run ${r + 1}/${RUNS}: addon ${addon.at(-1).toFixed(0)} ms (${requests.at(-1)} req), plain JS pool ${plain.at(-1).toFixed(0)} ms`,
    )
  }
  const group = `refreshAllFallbacks (${DELAY_MS} ms simulator)`
  const ideal = Math.ceil(n / 4) * DELAY_MS
  rows.push(
    row(group, `${n} accounts: wall time`, addon, 'ms', {
      baseline: { name: 'plain-JS pool of 4', value: row('', '', plain, '').value },
      note: `ideal ${ideal} ms`,
    }),
  )
  rows.push(row(group, `${n} accounts: requests`, requests, 'requests', { note: `one per account` }))
}
agent.destroy()
await sim.close()
fs.rmSync(dir, { recursive: true, force: true })
emit('fallbacks', rows)
