// Cost as work grows (issue 12): refreshAllFallbacks and seedFallbacksFromAccounts at 10, 100,
// 1,000 and 10,000 accounts, and the constructor on a ~51 MB state file.
//
// For each size: the wall time per account, and the synchronous time the call itself holds the
// JS thread (the call timed from entry to return; the promise settles later). The yardstick is a
// plain-JS version of the same algorithm in the same run: a pool of 4 concurrent http.get with a
// Map cache (refreshAllFallbacks), a Set-based de-duplication into a Map (seeding), and
// readFileSync + JSON.parse (the state file). The figure that matters for "flat" is the per-account
// time at 10,000 accounts over the per-account time at 10 (printed as a note on the 10,000 row).
//
// A refreshAllFallbacks run that does not finish within BENCH_SCALING_BUDGET_MS (default 60 s) is
// reported as "> budget" and the larger sizes are skipped.
import http from 'node:http'
import path from 'node:path'
import fs from 'node:fs'
import { addonPath, emit, getJson, log, median, pollSnapshot, QUICK, require, row, simulatorPath, tempDir } from './lib.mjs'

const { QuotaManager } = require(addonPath)
const { startUsageSimulator } = require(simulatorPath)

const SIZES = process.env.BENCH_SCALING_SIZES ? process.env.BENCH_SCALING_SIZES.split(',').map(Number) : QUICK ? [10, 100, 1_000] : [10, 100, 1_000, 10_000]
const RUNS = QUICK ? 1 : 3
const BUDGET_MS = Number(process.env.BENCH_SCALING_BUDGET_MS ?? 60_000)
const STATE_FILE_MB = 51
const sim = await startUsageSimulator()
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
const dir = tempDir()
const rows = []

const get = (url, token) => getJson(url, token, agent)

/** The yardstick: the same fan-out in plain JS (due check, pool of 4, Map cache). */
async function plainRefreshAll(cache, accounts, width = 4) {
  const due = accounts.filter((a) => a.enabled && a.access && !cache.has(a.id))
  let next = 0
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < due.length) {
        const a = due[next++]
        cache.set(a.id, { quota: await get(sim.url, a.access), checkedAt: Date.now() })
      }
    }),
  )
}

/** The yardstick: de-duplicate the configured ids with a Set, then seed a Map. */
function plainSeed(cache, accounts) {
  const wanted = new Set(accounts.map((a) => a.id))
  for (const id of cache.keys()) if (!wanted.has(id)) cache.delete(id)
  for (const a of accounts) if (a.enabled && a.quota && !cache.has(a.id)) cache.set(a.id, { quota: a.quota, checkedAt: a.quota.checkedAt })
}

const accountsFor = (n, tag) => Array.from({ length: n }, (_, i) => ({ id: `acct-${tag}-${i}`, enabled: true, access: `token-${tag}-${i}`, expires: Date.now() + 3600e3 }))

function timed(fn) {
  const start = performance.now()
  const result = fn()
  return { result, syncMs: performance.now() - start }
}

// ----- refreshAllFallbacks ------------------------------------------------------------------
let overBudget = false
const perAccount = {}
for (const n of SIZES) {
  if (overBudget) {
    rows.push({ group: 'refreshAllFallbacks (0 ms simulator)', name: `${n} accounts: wall per account`, value: NaN, unit: 'ms', runs: 0, note: 'skipped: a smaller size exceeded the budget' })
    continue
  }
  const wall = []
  const sync = []
  const plainWall = []
  const plainSync = []
  for (let r = 0; r < RUNS && !overBudget; r++) {
    const accounts = accountsFor(n, `${n}-${r}`)
    const manager = new QuotaManager({ statePath: path.join(dir, `refresh-${n}-${r}.json`), usageUrl: sim.url, apiCallGapMs: 0 })
    const start = performance.now()
    const { result, syncMs } = timed(() => manager.refreshAllFallbacks(accounts))
    let timer
    const outcome = await Promise.race([result.then(() => 'done'), new Promise((resolve) => (timer = setTimeout(resolve, BUDGET_MS, 'timeout')))])
    clearTimeout(timer)
    const elapsed = performance.now() - start
    if (outcome === 'timeout') {
      overBudget = true
      log(`scaling refreshAllFallbacks n=${n}: did not finish in ${BUDGET_MS} ms`)
      wall.push(Infinity)
      sync.push(syncMs)
      // the process exits at the end; the manager is abandoned
      break
    }
    await manager.close()
    wall.push(elapsed / n)
    sync.push(syncMs)
    const cache = new Map()
    const plainStart = performance.now()
    const p = timed(() => plainRefreshAll(cache, accounts))
    await p.result
    plainWall.push((performance.now() - plainStart) / n)
    plainSync.push(p.syncMs)
    log(`scaling refreshAllFallbacks n=${n} run ${r + 1}/${RUNS}: addon ${(elapsed / n).toFixed(3)} ms/account (sync ${syncMs.toFixed(1)} ms), plain JS ${plainWall.at(-1).toFixed(3)} ms/account (sync ${p.syncMs.toFixed(1)} ms)`)
  }
  const group = 'refreshAllFallbacks (0 ms simulator)'
  perAccount[n] = median(wall)
  const flat = n === SIZES.at(-1) && perAccount[SIZES[0]] ? `${(perAccount[n] / perAccount[SIZES[0]]).toFixed(2)}× the per-account time at ${SIZES[0]}` : undefined
  if (plainWall.length) {
    rows.push(row(group, `${n} accounts: wall per account`, wall, 'ms', { baseline: { name: 'plain-JS pool of 4', value: median(plainWall) }, note: flat }))
    rows.push(row(group, `${n} accounts: synchronous call`, sync, 'ms', { baseline: { name: 'plain-JS pool of 4', value: median(plainSync) } }))
  } else {
    rows.push({ group, name: `${n} accounts: wall per account`, value: Infinity, unit: 'ms', runs: 1, note: `did not finish in ${BUDGET_MS / 1000} s` })
    rows.push(row(group, `${n} accounts: synchronous call`, sync, 'ms'))
  }
}

// ----- seedFallbacksFromAccounts ------------------------------------------------------------
for (const n of [10, 100, 1_000, 10_000]) {
  const now = Date.now()
  const quota = pollSnapshot(now)
  const accounts = accountsFor(n, `seed-${n}`).map((a) => ({ ...a, quota }))
  const addon = []
  const plain = []
  for (let r = 0; r < Math.max(RUNS, 3); r++) {
    const manager = new QuotaManager({ statePath: null })
    addon.push(timed(() => manager.seedFallbacksFromAccounts(accounts)).syncMs)
    // a second seeding with the same list: the steady state (every account already known)
    addon[addon.length - 1] += timed(() => manager.seedFallbacksFromAccounts(accounts)).syncMs
    if (manager.getAllFallbacks().size !== n) throw new Error('seeding lost accounts')
    await manager.close()
    const cache = new Map()
    plain.push(timed(() => plainSeed(cache, accounts)).syncMs + timed(() => plainSeed(cache, accounts)).syncMs)
  }
  log(`scaling seedFallbacksFromAccounts n=${n} (twice): addon ${median(addon).toFixed(2)} ms, plain JS ${median(plain).toFixed(2)} ms`)
  rows.push(row('seedFallbacksFromAccounts (twice, synchronous)', `${n} accounts`, addon, 'ms', { baseline: { name: 'plain-JS Set + Map', value: median(plain) }, note: `${((median(addon) / n) * 1000).toFixed(2)} µs/account` }))
}

// ----- a 51 MB state file -------------------------------------------------------------------
{
  const statePath = path.join(dir, 'big-state.json')
  const seed = new QuotaManager({ statePath })
  const now = Date.now()
  seed.setFallback('template', { quota: pollSnapshot(now), checkedAt: now, refreshAfter: now + 3600e3 })
  await seed.close()
  const file = JSON.parse(fs.readFileSync(statePath, 'utf8'))
  const template = file.routes['fallback:template']
  const perRoute = JSON.stringify(template).length + 40
  const count = Math.ceil((STATE_FILE_MB * 1e6) / perRoute)
  for (let i = 0; i < count; i++) file.routes[`fallback:big-${i}`] = template
  fs.writeFileSync(statePath, JSON.stringify(file))
  const bytes = fs.statSync(statePath).size
  log(`scaling: state file of ${(bytes / 1e6).toFixed(1)} MB, ${count} routes`)
  const addon = []
  const plain = []
  for (let r = 0; r < Math.max(RUNS, 3); r++) {
    const t = timed(() => new QuotaManager({ statePath }))
    addon.push(t.syncMs)
    // let any off-thread load finish before the next run; the manager is then closed
    await t.result.close()
    plain.push(timed(() => JSON.parse(fs.readFileSync(statePath, 'utf8'))).syncMs)
    log(`scaling: constructor on the big file ${t.syncMs.toFixed(0)} ms on the JS thread, plain readFileSync + JSON.parse ${plain.at(-1).toFixed(0)} ms`)
  }
  rows.push(row(`state file of ${(bytes / 1e6).toFixed(0)} MB (${count.toLocaleString('en')} routes)`, 'new QuotaManager: JS-thread time', addon, 'ms', { baseline: { name: 'readFileSync + JSON.parse', value: median(plain) } }))
}

emit('scaling', rows)
agent.destroy()
await sim.close()
// an abandoned over-budget manager may still be writing there: best effort, then exit
try {
  fs.rmSync(dir, { recursive: true, force: true })
} catch {}
process.exit(0)
