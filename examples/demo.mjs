#!/usr/bin/env node
// `npm start`: a tour of anthropic-quota-manager against an embedded usage-endpoint simulator on
// 127.0.0.1. No network, no token, no real waiting (backoff is shown in ManualClock time).
//
//   node examples/demo.mjs            simulator mode (default)
//   node examples/demo.mjs --real     a real token from $ANTHROPIC_OAUTH_TOKEN against the real
//                                     endpoint (also: ANTHROPIC_QUOTA_DEMO_REAL=1)
//   node examples/demo.mjs --clean    delete the temporary state directory at the end
//
// ANTHROPIC_QUOTA_DEMO_USAGE_URL overrides the endpoint of --real (for testing that path locally).
//
// Exit codes: 0 the tour ran to the end; 1 something in the tour failed; 2 bad arguments, or
// --real without ANTHROPIC_OAUTH_TOKEN (nothing is sent in that case).
//
// The state file always lives in a fresh temporary directory (never ~/.config); its path is
// printed, and it is left in place for `anthropic-quota-manager status --state PATH` unless
// --clean is given.

import { fork } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const here = path.dirname(fileURLToPath(import.meta.url))
const { QuotaManager, ManualClock, evaluateQuota, tokenFingerprint } = require('../index.js')
const { startUsageSimulator, usageBody, rateLimitHeaders } = require('../simulator/index.js')
const { buildStatus, readState, bar, formatDuration } = require('../bin/anthropic-quota-manager.js')

// ----- arguments -------------------------------------------------------------------------------

const args = process.argv.slice(2)
const known = new Set(['--real', '--clean', '--help', '-h'])
for (const arg of args) {
  if (!known.has(arg)) {
    console.error(`demo: unknown argument ${arg} (use --real, --clean or --help)`)
    process.exit(2)
  }
}
if (args.includes('--help') || args.includes('-h')) {
  console.log(
    'Usage: npm start [-- --real] [-- --clean]\n' +
      '  (default)  simulator on 127.0.0.1: no network, no token\n' +
      '  --real     use $ANTHROPIC_OAUTH_TOKEN against the real usage endpoint\n' +
      '             (or ANTHROPIC_QUOTA_DEMO_REAL=1); exits 2 without a token\n' +
      '  --clean    delete the temporary state directory at the end',
  )
  process.exit(0)
}
const REAL = args.includes('--real') || process.env.ANTHROPIC_QUOTA_DEMO_REAL === '1'
const CLEAN = args.includes('--clean')

// ----- output helpers --------------------------------------------------------------------------

const out = (line = '') => process.stdout.write(line + '\n')
const heading = (text) => out(`\n${text}\n${'─'.repeat(Math.min(78, text.length))}`)
const ms = (n) => `${Math.round(n)} ms`
const pct = (n) => `${Math.round(n)}%`.padStart(4)
/** Renders rows (arrays of strings) with padded columns; first column left-aligned. */
function table(header, rows, indent = '   ', align = 'l' + 'r'.repeat(header.length - 1)) {
  const all = [header, ...rows]
  const widths = header.map((_, i) => Math.max(...all.map((r) => String(r[i]).length)))
  const line = (r) =>
    (indent + r.map((c, i) => (align[i] === 'l' ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ')).trimEnd()
  out(line(header))
  for (const r of rows) out(line(r))
}
function quotaLines(quota, indent = '    ') {
  const lines = []
  const w = (label, win) => {
    if (!win) return lines.push(`${indent}${label.padEnd(11)} unknown`)
    const reset = win.resetsAt ? `resets in ${formatDuration(Date.parse(win.resetsAt) - Date.now())}` : ''
    lines.push(`${indent}${label.padEnd(11)} ${bar(win.usedPercent)} ${pct(win.usedPercent)} used  ${reset}`.trimEnd())
  }
  w('5h', quota?.five_hour)
  w('7d', quota?.seven_day)
  for (const s of quota?.scoped ?? []) w(s.title, s)
  for (const l of lines) out(l)
}

// ----- child processes -------------------------------------------------------------------------

const children = new Set()
/** Forks `count` demo-child processes, waits until all are ready, then starts them together. */
async function runProcesses(count, config) {
  const kids = Array.from({ length: count }, () => {
    const child = fork(path.join(here, 'demo-child.mjs'), [JSON.stringify(config)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    children.add(child)
    child.on('exit', () => children.delete(child))
    return child
  })
  const settle = (child) =>
    new Promise((resolve, reject) => {
      child.on('message', (m) => m !== 'ready' && resolve(m))
      child.on('exit', (code) => reject(new Error(`demo child ${child.pid} exited with ${code} before reporting`)))
    })
  const results = kids.map(settle)
  await Promise.all(kids.map((child) => new Promise((resolve) => child.once('message', resolve))))
  for (const child of kids) child.send('go')
  return Promise.all(results)
}

// ----- setup -----------------------------------------------------------------------------------

const started = performance.now()
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'anthropic-quota-demo-'))
const statePath = path.join(dir, 'anthropic-quota-state.json')
const managers = [] // [label, manager] for the stats() table
let sim

const watchdog = setTimeout(() => {
  console.error('demo: still running after 25 s, giving up')
  for (const child of children) child.kill()
  process.exit(1)
}, 25_000)
watchdog.unref()

async function simulatorTour() {
  sim = await startUsageSimulator()
  out('anthropic-quota-manager demo: simulator mode (no network, no token)')
  out(`  usage endpoint  ${sim.url}  (embedded simulator)`)
  out(`  state file      ${statePath}`)
  out('                  (a fresh temp dir, never your ~/.config)')

  // 1. single flight across processes ------------------------------------------------------------
  const PROCS = 4
  const CALLERS = 250
  const IDENTITY = 'me@example.com'
  heading(`1. ${PROCS} processes × ${CALLERS} concurrent callers ask for the main quota`)
  out('   All callers run refreshMain at once and the simulator takes 300 ms to answer,')
  out('   so they overlap. One process polls; the others wait on its refresh lock and')
  out('   then read its result from the shared state file.')
  sim.reply({ status: 200, delayMs: 300 })
  const before1 = sim.requests
  const r1 = await runProcesses(PROCS, { statePath, usageUrl: sim.url, identity: IDENTITY, token: 'demo-token-main', callers: CALLERS })
  const requests1 = sim.requests - before1
  table(
    ['process', 'callers', 'requests', 'joined in-process', 'via other process', 'took'],
    r1.map((r, i) => [`#${i + 1} pid ${r.pid}`, r.callers, r.stats.apiCalls, r.stats.joinedInFlight, r.stats.joinedOtherProcess, ms(r.ms)]),
  )
  const served1 = r1.reduce((n, r) => n + r.answered, 0)
  out(`   → the simulator received ${requests1} request${requests1 === 1 ? '' : 's'}; ${served1} of ${PROCS * CALLERS} callers served.`)
  const main = new QuotaManager({ statePath, usageUrl: sim.url })
  managers.push(['routing', main])
  out(`   main quota of ${IDENTITY}, as every process now sees it:`)
  quotaLines(main.getMain(IDENTITY)?.quota)

  // 2a. shared backoff across processes ----------------------------------------------------------
  const TEAM = 'team@example.com'
  heading('2. The endpoint starts answering 429: one failure backs off every process')
  const agedClock = new ManualClock(Date.now() - 10 * 60_000)
  const aged = new QuotaManager({ statePath, usageUrl: sim.url, clock: agedClock })
  sim.reply({ status: 200 })
  await aged.refreshMain(TEAM, 'demo-token-team')
  await aged.close()
  out(`   ${TEAM} has a snapshot polled 10 min ago (seeded via a ManualClock),`)
  out('   so it is stale. The simulator now answers 429 with "Retry-After: 0"')
  out('   (meaningless: ignored). 3 processes × 100 callers refresh it together:')
  sim.reply({ status: 429, headers: { 'retry-after': '0' } })
  const before2 = sim.requests
  const r2 = await runProcesses(3, { statePath, usageUrl: sim.url, identity: TEAM, token: 'demo-token-team', callers: 100 })
  table(
    ['process', 'callers', 'requests', 'got the 429 error', 'served cached (stale)'],
    r2.map((r, i) => [
      `#${i + 1} pid ${r.pid}`,
      r.callers,
      r.stats.apiCalls,
      Object.values(r.errors).reduce((a, b) => a + b, 0),
      r.fromCache,
    ]),
  )
  const teamRecord = readState(statePath).routes[`main:${TEAM}`]
  const b = teamRecord.backoff
  out(
    `   → ${sim.requests - before2} request${sim.requests - before2 === 1 ? '' : 's'}. The state file now holds the backoff: attempt ${b.attempts},`,
  )
  out(`     ${formatDuration(b.nextRetryAt - b.lastError.checkedAt)} (60 s + up to 10 % jitter), shared by every process.`)
  const before2b = sim.requests
  const [late] = await runProcesses(1, { statePath, usageUrl: sim.url, identity: TEAM, token: 'demo-token-team', callers: 20 })
  out(`   A process started afterwards: ${late.fromCache} callers served from cache, ${sim.requests - before2b} requests.`)

  // 2b. the ladder in simulated time -------------------------------------------------------------
  out('')
  out('   The ladder, in ManualClock time (jitter 0 for exact figures). Mid-window,')
  out('   20 callers arrive each time: they get the cached snapshot, no request.')
  const clock = new ManualClock(Date.now())
  const t0 = clock.now()
  const ladder = new QuotaManager({ statePath: null, usageUrl: sim.url, clock, backoff: { jitter: 0 } })
  managers.push(['ladder', ladder])
  sim.reply({ status: 200 })
  await ladder.refreshMain('ladder@example.com', 'demo-token-ladder')
  clock.advance(6 * 60_000) // the snapshot is now stale
  const steps = [
    { status: 429, retryAfter: '0', note: ' (ignored)' },
    { status: 429 },
    { status: 429, retryAfter: '30', note: ' (shorter)' },
    { status: 429 },
    { status: 503 },
    { status: 429 },
    { status: 429, retryAfter: '3000', note: ' (longer)' },
    { status: 200, note: ' (ladder resets)' },
    { status: 429 },
  ]
  const rows = []
  const realLadderStart = performance.now()
  const beforeLadder = sim.requests
  let windowRequests = 0
  for (const step of steps) {
    const at = formatClock(clock.now() - t0)
    sim.replyOnce({ status: step.status, ...(step.retryAfter ? { headers: { 'retry-after': step.retryAfter } } : {}) })
    const answer = `${step.status}${step.retryAfter ? `, Retry-After: ${step.retryAfter}` : ''}${step.note ?? ''}`
    let failed = false
    try {
      await ladder.refreshMain('ladder@example.com', 'demo-token-ladder')
    } catch {
      failed = true
    }
    if (!failed) {
      rows.push([at, answer, '', '', ''])
      clock.advance(6 * 60_000)
      continue
    }
    const err = ladder.getLastApiError()
    const wait = err.nextRetryAt - clock.now()
    // callers inside the window: served from cache, no request
    clock.advance(Math.floor(wait / 2))
    const inWindow = sim.requests
    await Promise.all(Array.from({ length: 20 }, () => ladder.refreshMainWithMetadata('ladder@example.com', 'demo-token-ladder')))
    windowRequests += sim.requests - inWindow
    clock.set(err.nextRetryAt)
    rows.push([at, answer, `${err.retryCount}`, formatDuration(wait), '█'.repeat(Math.max(1, Math.round(wait / 120_000)))])
  }
  table(['time', 'answer', '#', 'backoff', '█ = 2 min'], rows, '   ', 'llrrl')
  const st = ladder.stats()
  out(`   → ${sim.requests - beforeLadder} requests in all: one per answer above; the callers inside the`)
  out(`     windows sent ${windowRequests} (servedDuringBackoff = ${st.servedDuringBackoff}).`)
  out(`     ${formatDuration(clock.now() - t0)} of simulated time took ${ms(performance.now() - realLadderStart)} of real time.`)

  // 3. header harvest -----------------------------------------------------------------------------
  heading('3. Header harvest: a /v1/messages response updates 5h/7d, no request')
  const before3 = sim.requests
  const harvested = main.pushMainFromHeaders(IDENTITY, rateLimitHeaders({ fiveHour: 0.41, sevenDay: 0.73 }))
  out('   anthropic-ratelimit-unified-5h-utilization: 0.41, -7d-utilization: 0.73 →')
  quotaLines(harvested?.quota)
  out(`   → source "${harvested?.quota.source}", the poll-only Fable window kept; ${sim.requests - before3} requests sent.`)

  // 4. routing -----------------------------------------------------------------------------------
  heading('4. Routing: main exhausted → evaluateQuota picks a fallback')
  const MODEL = 'claude-fable-5-1'
  const policy = { minimumRemaining: { five_hour: 10, seven_day: 5 } }
  const exhausted = main.pushMainFromHeaders(
    IDENTITY,
    rateLimitHeaders({ fiveHour: 1, sevenDay: 0.8, status: 'rejected', fallback: 'available' }),
  )
  out(`   A response says main's 5h window is at 100 %. Policy: keep ≥10 % of 5h and`)
  out(`   ≥5 % of 7d; the request is for ${MODEL}. Each fallback is polled:`)
  const accounts = [
    { id: 'alice', body: usageBody({ fiveHour: 96, sevenDay: 40 }) },
    { id: 'carol', body: usageBody({ fiveHour: 12, sevenDay: 30, scoped: [{ id: MODEL, name: 'Fable', percent: 100 }] }) },
    { id: 'bob', body: usageBody({ fiveHour: 18, sevenDay: 35 }) },
  ]
  const before4 = sim.requests
  for (const a of accounts) {
    sim.replyOnce({ status: 200, body: a.body })
    await main.refreshFallback(a.id, `demo-token-${a.id}`)
  }
  const candidates = [['main', exhausted?.quota], ...accounts.map((a) => [a.id, main.getFallback(a.id)?.quota])]
  let chosen
  const routeRows = candidates.map(([name, quota]) => {
    const verdict = evaluateQuota(quota, policy, MODEL)
    if (verdict.passes && !chosen) chosen = name
    const fable = quota?.scoped?.find((s) => s.modelId === MODEL)
    const why = verdict.passes
      ? '✓ passes'
      : `✗ ${verdict.reason}${verdict.blockedUntil ? ` (${formatDuration(verdict.blockedUntil - Date.now())})` : ''}`
    return [
      name,
      `${bar(quota?.five_hour?.usedPercent, 10)}${pct(quota?.five_hour?.usedPercent ?? 0)}`,
      `${bar(quota?.seven_day?.usedPercent, 10)}${pct(quota?.seven_day?.usedPercent ?? 0)}`,
      fable ? pct(fable.usedPercent) : '   -',
      why,
    ]
  })
  table(['route', '5h used', '7d used', 'Fable', 'evaluateQuota'], routeRows, '   ', 'lrrrl')
  out(`   → ${chosen ? `route to fallback ${chosen}` : 'no usable route'} (${sim.requests - before4} requests: one per fallback).`)

  out('')
  out('   Nothing usable: fail closed. A host with storage')
  out('   { quota: { failClosedOnUnknownQuota: true } }, main backed off, no cache:')
  const failClosed = new QuotaManager({ statePath, usageUrl: sim.url, storage: { quota: { failClosedOnUnknownQuota: true } } })
  managers.push(['fail-closed', failClosed])
  sim.replyOnce({ status: 429, headers: { 'retry-after': '120' } })
  let code = ''
  try {
    await failClosed.refreshMain('solo@example.com', 'demo-token-solo')
  } catch (error) {
    code = error.code
  }
  let refusedCode = ''
  const before4b = sim.requests
  try {
    await failClosed.refreshMain('solo@example.com', 'demo-token-solo')
  } catch (error) {
    refusedCode = error.code
  }
  const verdict = evaluateQuota(failClosed.getMain('solo@example.com')?.quota, { failClosedOnUnknownQuota: true })
  const response = failClosed.failClosedResponse()
  out(`   poll → 429, Retry-After: 120 (${code})`)
  out(`   poll again → ${refusedCode} (${sim.requests - before4b} requests sent)`)
  out(`   evaluateQuota(nothing) → passes: ${verdict.passes}, reason: "${verdict.reason}"`)
  out('   failClosedResponse() →')
  if (response) {
    out(`     HTTP ${response.status}  retry-after: ${response.headers['retry-after']}`)
    const body = JSON.parse(response.body)
    out(`     {"type":"${body.type}","error":{"type":"${body.error.type}","message":`)
    out(`       ${JSON.stringify(body.error.message.length > 68 ? body.error.message.slice(0, 67) + '…' : body.error.message)}}}`)
  } else {
    out('     null (unexpected: see the bug report in the README)')
    process.exitCode = 1
  }

  await finish({ requests: sim.requests, childStats: sumStats([...r1, ...r2, late]) })
}

function formatClock(msValue) {
  const s = Math.round(msValue / 1000)
  return `${Math.floor(s / 3600)}:${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}`
}

// ----- 5. the state file and stats() -----------------------------------------------------------

function sumStats(results) {
  const sum = {}
  for (const r of results) for (const [k, v] of Object.entries(r.stats)) sum[k] = (sum[k] ?? 0) + v
  return sum
}

async function finish({ requests, childStats }) {
  for (const [, m] of managers) await m.close() // flushes coalesced writes
  heading('5. The shared state file and stats()')
  const status = buildStatus(readState(statePath), statePath)
  const size = fs.statSync(statePath).size
  out(`   ${statePath}`)
  out(`   ${size} bytes, ${status.routes.length} route${status.routes.length === 1 ? '' : 's'}, no token inside (only fingerprints):`)
  table(
    ['route', 'source', 'age', '5h', '7d', 'backoff'],
    status.routes.map((r) => [
      r.key.length > 26 ? r.key.slice(0, 25) + '…' : r.key,
      r.source ?? '-',
      r.ageMs === null ? '-' : formatDuration(r.ageMs),
      r.fiveHour ? pct(r.fiveHour.usedPercent) : '   ?',
      r.sevenDay ? pct(r.sevenDay.usedPercent) : '   ?',
      r.backoff.active ? `${formatDuration(r.backoff.remainingMs)} left` : r.backoff.attempts ? 'over' : 'none',
    ]),
    '     ',
    'llrrrr',
  )
  const text = fs.readFileSync(statePath, 'utf8')
  const leaked = ['demo-token-main', 'demo-token-team', process.env.ANTHROPIC_OAUTH_TOKEN].filter((t) => t && text.includes(t))
  if (leaked.length) {
    out('   !! a token was found in the state file')
    process.exitCode = 1
  }
  out('')
  out('   stats(): the child processes (summed) and the managers in this process:')
  const keys = [
    'apiCalls',
    'joinedInFlight',
    'joinedOtherProcess',
    'servedDuringBackoff',
    'lockWaits',
    'lockTimeouts',
    'stateWrites',
    'callbackErrors',
  ]
  const columns = [['children', childStats], ...managers.map(([label, m]) => [label, m.stats()])]
  table(
    ['', ...columns.map(([label]) => label)],
    keys.map((k) => [k, ...columns.map(([, st]) => st[k] ?? 0)]),
    '     ',
  )
  if (requests !== undefined) out(`   The simulator received ${requests} requests in all.`)
  out('')
  out('   Look at it again with the status command:')
  out(`   node bin/anthropic-quota-manager.js status --state ${statePath}`)
  if (CLEAN) {
    fs.rmSync(dir, { recursive: true, force: true })
    out(`   (--clean: ${dir} removed)`)
  } else {
    out(`   (left in place; remove with: rm -r ${dir})`)
  }
  out(
    `\nDone in ${(performance.now() - started) / 1000 < 10 ? ((performance.now() - started) / 1000).toFixed(1) : Math.round((performance.now() - started) / 1000)} s.`,
  )
}

// ----- --real ----------------------------------------------------------------------------------

async function realTour() {
  const token = process.env.ANTHROPIC_OAUTH_TOKEN
  out('anthropic-quota-manager demo: REAL mode (your token, the real usage endpoint)')
  if (!token || token.trim() === '') {
    console.error('demo --real: ANTHROPIC_OAUTH_TOKEN is not set, so nothing was sent.')
    console.error('  Set it to a Claude OAuth access token, or run `npm start` without --real to use the simulator.')
    fs.rmSync(dir, { recursive: true, force: true })
    process.exitCode = 2
    return
  }
  const identity = `demo-${tokenFingerprint(token)}`
  // For testing the --real path against a local server; unset = the real endpoint.
  const usageUrl = process.env.ANTHROPIC_QUOTA_DEMO_USAGE_URL || undefined
  if (usageUrl) out(`  usage endpoint  ${usageUrl}  (ANTHROPIC_QUOTA_DEMO_USAGE_URL)`)
  out(`  token           fingerprint ${tokenFingerprint(token)} (the token itself is never printed or stored)`)
  out(`  state file      ${statePath}`)
  out('                  (a fresh temp dir, never your ~/.config)')
  heading('1. 3 processes × 50 concurrent callers ask for the main quota')
  const r = await runProcesses(3, { statePath, identity, token, callers: 50, usageUrl })
  table(
    ['process', 'callers', 'requests', 'joined in-process', 'via other process', 'errors'],
    r.map((x, i) => [
      `#${i + 1} pid ${x.pid}`,
      x.callers,
      x.stats.apiCalls,
      x.stats.joinedInFlight,
      x.stats.joinedOtherProcess,
      Object.entries(x.errors)
        .map(([k, v]) => `${k}×${v}`)
        .join(' ') || '0',
    ]),
  )
  const sent = r.reduce((n, x) => n + x.stats.apiCalls, 0)
  out(`   → ${sent} request${sent === 1 ? '' : 's'} to the endpoint for ${r.reduce((n, x) => n + x.callers, 0)} callers.`)
  const record = readState(statePath).routes?.[`main:${identity}`]
  const lastError = record?.backoff?.lastError
  if (lastError) {
    out(`   The endpoint failed: ${lastError.message.slice(0, 56)}`)
    const asked = lastError.retryAfterMs ? `, Retry-After ${formatDuration(lastError.retryAfterMs)}` : ''
    out(`   → backed off for ${formatDuration(record.backoff.nextRetryAt - Date.now())}${asked}; every process honours it.`)
  } else {
    const firstError = r.find((x) => x.firstError)?.firstError
    if (firstError) out(`   The request failed: ${firstError.slice(0, 60)}`)
  }
  const main = new QuotaManager({ statePath, ...(usageUrl ? { usageUrl } : {}) })
  managers.push(['demo process', main])
  const entry = main.getMain(identity)
  if (entry) {
    out('   your quota:')
    quotaLines(entry.quota)
    const verdict = evaluateQuota(entry.quota, { minimumRemaining: { five_hour: 10, seven_day: 5 } })
    out(`   evaluateQuota (keep ≥10 % 5h, ≥5 % 7d) → ${verdict.passes ? 'passes' : `blocked: ${verdict.reason}`}`)
  } else {
    out('   No snapshot yet. (The real endpoint often answers 429: that is its own')
    out("   rate limit, and the demo's state file now carries the backoff.)")
  }
  out('')
  out('   Sections 2–4 (429 ladder, header harvest, routing) need a controllable endpoint:')
  out('   run `npm start` without --real to see them against the simulator.')
  await finish({ childStats: sumStats(r) })
}

// ----- main ------------------------------------------------------------------------------------

try {
  if (REAL) await realTour()
  else await simulatorTour()
} catch (error) {
  console.error(`demo failed: ${error?.stack ?? error}`)
  process.exitCode = 1
} finally {
  for (const child of children) child.kill()
  if (sim) await sim.close()
}
