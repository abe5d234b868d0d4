// Cost as work grows (issue 12: "no synchronous JS-thread work above a few ms for 10,000
// accounts"): refreshAllFallbacks and seedFallbacksFromAccounts at 10, 100, 1,000 and 10,000
// accounts, and the constructor on a ~51 MB state file. Every yardstick runs in the same process,
// interleaved with the addon, run by run.
//
// 1. refreshAllFallbacks, wall time per account (0 ms simulator, apiCallGapMs 0, fresh manager and
//    state file per run, BENCH_SCALING_SIZES or 10 … 10,000; 3 runs, 1 with BENCH_QUICK=1 which
//    also stops at 1,000): from the call until its promise settles, over the account count. The
//    accounts are minimal ({ id, enabled, access, expires }). Yardstick: a plain-JS pool of 4
//    concurrent http.get with a Map cache. The 10,000 row notes its per-account time over the
//    10-account one (the "flat within 2×" figure). A run that does not finish within
//    BENCH_SCALING_BUDGET_MS (default 60 s) is reported as not finished and larger sizes are
//    skipped. The synchronous time of these calls is only logged (section 2 reports it).
//
// The other refreshAllFallbacks and the seeding rows use accounts shaped like the plugin's OAuth
// account records: id, enabled, email, refresh and access (~100-character token-like strings),
// expires (now + 1 h), authLineageId (one per account) and quota (a poll snapshot, one object per
// account), loaded as the plugin loads them (JSON.parse of the list's JSON, outside the timed
// region). Sizes 10 … 10,000 (or BENCH_SCALING_SIZES), 7 runs (3 with BENCH_QUICK=1); each figure
// is the synchronous time of one call, from entry to return (what it holds the JS thread; a
// promise settles later), median over the runs.
//
// 2. refreshAllFallbacks, synchronous call: a fresh manager and state file per run on the same
//    simulator, every account due; once without a resolver, once with `(account) => account.access`.
//    The manager is closed right after the call returns (its requests are not what is measured
//    here). Yardstick: the plain-JS pool of 4 over the same list (the due filter, the resolver
//    asked per account, the 4 workers started), stopped after its synchronous part.
//
// 3. seedFallbacksFromAccounts, as the plugin calls it (it re-reads its accounts file before every
//    request and seeds each time): per run a fresh manager (statePath: null) seeded
//    a. the first time (the manager has never seen these accounts);
//    b. again with the same list reloaded from disk (JSON.parse(JSON.stringify(list)), outside the
//       timed region: new objects, nothing changed): the steady state;
//    c. again with the list reloaded and one account's quota newer (every checkedAt + 1 min).
//    Yardstick: the plugin's own TypeScript QuotaManager seeding, in plain JS: a Map cache; per
//    account skip disabled ones, date the snapshot by its latest window checkedAt, adopt
//    { quota, checkedAt, refreshAfter } when newer than the cached entry; forget ids no longer
//    listed (a Set of the configured ids). Every row notes µs per account; the 10,000 rows also
//    note how long JSON.stringify of that list alone takes (what merely serialising the host's
//    list costs).
//
// 4. new QuotaManager on a ~51 MB state file (~49,000 routes): the JS-thread time of the
//    constructor, 3 runs; yardstick readFileSync + JSON.parse of the same file.
import http from 'node:http'
import path from 'node:path'
import fs from 'node:fs'
import { randomBytes, randomUUID } from 'node:crypto'
import { addonPath, emit, getJson, log, median, pollSnapshot, QUICK, require, row, simulatorPath, tempDir } from './lib.mjs'

const { QuotaManager } = require(addonPath)
const { startUsageSimulator } = require(simulatorPath)

const CUSTOM_SIZES = process.env.BENCH_SCALING_SIZES ? process.env.BENCH_SCALING_SIZES.split(',').map(Number) : null
const SIZES = CUSTOM_SIZES ?? (QUICK ? [10, 100, 1_000] : [10, 100, 1_000, 10_000])
const RUNS = QUICK ? 1 : 3
/** The synchronous-call figures are cheap (no request has to finish): every size, more runs. */
const SYNC_SIZES = CUSTOM_SIZES ?? [10, 100, 1_000, 10_000]
const SYNC_RUNS = QUICK ? 3 : 7
const BUDGET_MS = Number(process.env.BENCH_SCALING_BUDGET_MS ?? 60_000)
const STATE_FILE_MB = 51
/** The plugin's freshness interval (checkIntervalMinutes default 5): the yardstick's refreshAfter. */
const CHECK_INTERVAL_MS = 5 * 60e3
const sim = await startUsageSimulator()
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
const dir = tempDir()
const rows = []

const get = (url, token) => getJson(url, token, agent)

/**
 * The yardstick: the same fan-out in plain JS (due check, pool of 4, Map cache). With a resolver
 * only its answer is used; without one, `access` while `expires` lies ahead. `run.stopped = true`
 * stops the workers after their current request.
 */
async function plainRefreshAll(cache, accounts, resolveAccessToken, run = { stopped: false }, width = 4) {
  const now = Date.now()
  const due = []
  for (const a of accounts) {
    if (!a.enabled || cache.has(a.id)) continue
    const token = resolveAccessToken ? resolveAccessToken(a) : a.expires > now ? a.access : undefined
    if (typeof token === 'string' && token) due.push({ id: a.id, token })
  }
  let next = 0
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (!run.stopped && next < due.length) {
        const { id, token } = due[next++]
        cache.set(id, { quota: await get(sim.url, token), checkedAt: Date.now() })
      }
    }),
  )
}

/** The latest `checkedAt` of a snapshot and its windows: the date the plugin gives a snapshot. */
function latestCheckedAt(quota) {
  let latest = typeof quota.checkedAt === 'number' ? quota.checkedAt : -Infinity
  const take = (window) => {
    if (window && typeof window.checkedAt === 'number' && window.checkedAt > latest) latest = window.checkedAt
  }
  take(quota.five_hour)
  take(quota.seven_day)
  if (Array.isArray(quota.scoped)) for (const window of quota.scoped) take(window)
  return latest
}

/** The yardstick: the plugin's TypeScript seeding in plain JS (a Map cache, a Set of listed ids). */
function plainSeed(cache, accounts) {
  const listed = new Set()
  for (const account of accounts) {
    listed.add(account.id)
    if (!account.enabled || !account.quota) continue
    const checkedAt = latestCheckedAt(account.quota)
    const cached = cache.get(account.id)
    if (cached !== undefined && cached.checkedAt >= checkedAt) continue
    cache.set(account.id, { quota: account.quota, checkedAt, refreshAfter: checkedAt + CHECK_INTERVAL_MS })
  }
  for (const id of cache.keys()) if (!listed.has(id)) cache.delete(id)
}

const accountsFor = (n, tag) =>
  Array.from({ length: n }, (_, i) => ({
    id: `acct-${tag}-${i}`,
    enabled: true,
    access: `token-${tag}-${i}`,
    expires: Date.now() + 3600e3,
  }))

/** `length` random-looking token characters (base64url). */
const tokenChars = (length) =>
  randomBytes(Math.ceil((length * 3) / 4))
    .toString('base64url')
    .slice(0, length)

/**
 * Accounts shaped like the plugin's OAuth account records, each with its own poll snapshot, as
 * the plugin has them: loaded from its accounts file (JSON.parse), so every string is flat (V8
 * would otherwise hand the calls concatenated strings to flatten first).
 */
function oauthAccounts(n, now = Date.now()) {
  return JSON.parse(JSON.stringify(builtAccounts(n, now)))
}

function builtAccounts(n, now) {
  return Array.from({ length: n }, (_, i) => ({
    id: `acct-${i}`,
    enabled: true,
    email: `user${i}@example.com`,
    refresh: `sk-ant-ort01-${tokenChars(87)}`,
    access: `sk-ant-oat01-${tokenChars(87)}`,
    expires: now + 3600e3,
    authLineageId: `lineage-${randomUUID()}`,
    quota: pollSnapshot(now),
  }))
}

/** A copy of `quota` polled `ms` later: its own and every window's `checkedAt` moved on. */
function polledLater(quota, ms) {
  const later = structuredClone(quota)
  for (const window of [later, later.five_hour, later.seven_day, ...(later.scoped ?? [])]) if (window) window.checkedAt += ms
  return later
}

function timed(fn) {
  const start = performance.now()
  const result = fn()
  return { result, syncMs: performance.now() - start }
}

const perAccountNote = (ms, n) => `${((ms / n) * 1000).toFixed(2)} µs/account`

// ----- 1. refreshAllFallbacks: wall time per account ---------------------------------------------
let overBudget = false
const perAccount = {}
for (const n of SIZES) {
  if (overBudget) {
    rows.push({
      group: 'refreshAllFallbacks (0 ms simulator)',
      name: `${n} accounts: wall per account`,
      value: NaN,
      unit: 'ms',
      runs: 0,
      note: 'skipped: a smaller size exceeded the budget',
    })
    continue
  }
  const wall = []
  const plainWall = []
  for (let r = 0; r < RUNS && !overBudget; r++) {
    const accounts = accountsFor(n, `${n}-${r}`)
    const manager = new QuotaManager({ statePath: path.join(dir, `refresh-${n}-${r}.json`), usageUrl: sim.url, apiCallGapMs: 0 })
    const start = performance.now()
    const { result, syncMs } = timed(() => manager.refreshAllFallbacks(accounts))
    let timer
    const outcome = await Promise.race([
      result.then(() => 'done'),
      new Promise((resolve) => (timer = setTimeout(resolve, BUDGET_MS, 'timeout'))),
    ])
    clearTimeout(timer)
    const elapsed = performance.now() - start
    if (outcome === 'timeout') {
      overBudget = true
      log(`scaling refreshAllFallbacks n=${n}: did not finish in ${BUDGET_MS} ms`)
      wall.push(Infinity)
      // the process exits at the end; the manager is abandoned
      break
    }
    await manager.close()
    wall.push(elapsed / n)
    const cache = new Map()
    const plainStart = performance.now()
    const p = timed(() => plainRefreshAll(cache, accounts))
    await p.result
    plainWall.push((performance.now() - plainStart) / n)
    log(
      `scaling refreshAllFallbacks n=${n} run ${r + 1}/${RUNS}: addon ${(elapsed / n).toFixed(3)} ms/account (sync ${syncMs.toFixed(1)} ms), plain JS ${plainWall.at(-1).toFixed(3)} ms/account (sync ${p.syncMs.toFixed(1)} ms)`,
    )
  }
  const group = 'refreshAllFallbacks (0 ms simulator)'
  perAccount[n] = median(wall)
  const flat =
    n === SIZES.at(-1) && perAccount[SIZES[0]]
      ? `${(perAccount[n] / perAccount[SIZES[0]]).toFixed(2)}× the per-account time at ${SIZES[0]}`
      : undefined
  // (the synchronous time of these calls, on minimal accounts, is only logged: section 2 reports it)
  if (plainWall.length) {
    rows.push(
      row(group, `${n} accounts: wall per account`, wall, 'ms', {
        baseline: { name: 'plain-JS pool of 4', value: median(plainWall) },
        note: flat,
      }),
    )
  } else {
    rows.push({
      group,
      name: `${n} accounts: wall per account`,
      value: Infinity,
      unit: 'ms',
      runs: 1,
      note: `did not finish in ${BUDGET_MS / 1000} s`,
    })
  }
}

// ----- 2. refreshAllFallbacks: synchronous call, realistic accounts ------------------------------
{
  const resolver = (account) => account.access
  const variants = [
    { label: 'no resolver', resolve: undefined },
    { label: 'resolver (account) => account.access', resolve: resolver },
  ]
  const figures = variants.map(() => [])
  for (const n of SYNC_SIZES) {
    for (const [v, { label, resolve }] of variants.entries()) {
      const addon = []
      const plain = []
      for (let r = 0; r < SYNC_RUNS; r++) {
        const accounts = oauthAccounts(n)
        const manager = new QuotaManager({ statePath: path.join(dir, `sync-${n}-${v}-${r}.json`), usageUrl: sim.url, apiCallGapMs: 0 })
        const { result, syncMs } = timed(() => manager.refreshAllFallbacks(accounts, resolve))
        addon.push(syncMs)
        // only the call's own time is measured: stop the requests it started before the next run
        await manager.close()
        await result
        const run = { stopped: false }
        const p = timed(() => plainRefreshAll(new Map(), accounts, resolve, run))
        run.stopped = true
        await p.result
        plain.push(p.syncMs)
      }
      log(
        `scaling refreshAllFallbacks n=${n}, ${label}: synchronous call ${median(addon).toFixed(2)} ms, plain JS ${median(plain).toFixed(2)} ms (medians of ${SYNC_RUNS})`,
      )
      figures[v].push(
        row(`refreshAllFallbacks: sync call, ${label}`, `${n} accounts`, addon, 'ms', {
          baseline: { name: 'plain-JS pool of 4', value: median(plain) },
          note: perAccountNote(median(addon), n),
        }),
      )
    }
  }
  for (const group of figures) rows.push(...group)
}

// ----- 3. seedFallbacksFromAccounts, as the plugin calls it --------------------------------------
{
  const scenarios = ['first seeding', 'list reloaded, nothing changed (steady state)', 'list reloaded, one account changed']
  const figures = scenarios.map(() => [])
  for (const n of SYNC_SIZES) {
    const addon = scenarios.map(() => [])
    const plain = scenarios.map(() => [])
    const stringify = []
    for (let r = 0; r < SYNC_RUNS; r++) {
      const now = Date.now()
      const accounts = oauthAccounts(n, now)
      const serialised = timed(() => JSON.stringify(accounts))
      stringify.push(serialised.syncMs)
      const reloaded = JSON.parse(serialised.result)
      const changed = JSON.parse(serialised.result)
      const target = changed[n >> 1]
      target.quota = polledLater(target.quota, 60e3)
      const lists = [accounts, reloaded, changed]

      const manager = new QuotaManager({ statePath: null })
      for (const [s, list] of lists.entries()) addon[s].push(timed(() => manager.seedFallbacksFromAccounts(list)).syncMs)
      // outside the timed region: the seeding did what it should
      if (manager.getAllFallbacks().size !== n) throw new Error(`seeding kept ${manager.getAllFallbacks().size} of ${n} accounts`)
      if (manager.getFallback(target.id, target)?.checkedAt !== now + 60e3) throw new Error('seeding did not adopt the newer snapshot')
      await manager.close()

      const cache = new Map()
      for (const [s, list] of lists.entries()) plain[s].push(timed(() => plainSeed(cache, list)).syncMs)
      if (cache.size !== n || cache.get(target.id).checkedAt !== now + 60e3) throw new Error('the yardstick did not seed')
    }
    const stringifyNote =
      n === 10_000 ? `; JSON.stringify(list) alone: ${median(stringify).toFixed(1)} ms (${perAccountNote(median(stringify), n)})` : ''
    for (const [s, scenario] of scenarios.entries()) {
      const value = median(addon[s])
      log(
        `scaling seedFallbacksFromAccounts n=${n}, ${scenario}: ${value.toFixed(2)} ms, plain JS ${median(plain[s]).toFixed(2)} ms (medians of ${SYNC_RUNS})`,
      )
      figures[s].push(
        row(`seedFallbacksFromAccounts: sync call, ${scenario}`, `${n} accounts`, addon[s], 'ms', {
          baseline: { name: "plain-JS Map (plugin's algorithm)", value: median(plain[s]) },
          note: perAccountNote(value, n) + stringifyNote,
        }),
      )
    }
    log(`scaling JSON.stringify of ${n} accounts: ${median(stringify).toFixed(2)} ms`)
  }
  for (const group of figures) rows.push(...group)
}

// ----- 4. a 51 MB state file ---------------------------------------------------------------------
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
    log(
      `scaling: constructor on the big file ${t.syncMs.toFixed(0)} ms on the JS thread, plain readFileSync + JSON.parse ${plain.at(-1).toFixed(0)} ms`,
    )
  }
  rows.push(
    row(
      `state file of ${(bytes / 1e6).toFixed(0)} MB (${count.toLocaleString('en')} routes)`,
      'new QuotaManager: JS-thread time',
      addon,
      'ms',
      { baseline: { name: 'readFileSync + JSON.parse', value: median(plain) } },
    ),
  )
}

emit('scaling', rows)
agent.destroy()
await sim.close()
// an abandoned over-budget manager may still be writing there: best effort, then exit
try {
  fs.rmSync(dir, { recursive: true, force: true })
} catch {}
process.exit(0)
