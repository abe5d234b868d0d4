// In-process single flight: 10,000 concurrent refreshMain calls on one route. Reports the
// requests the simulator received, the wall time until every call settled, and the p99
// event-loop delay while they ran (perf_hooks.monitorEventLoopDelay, 1 ms resolution). The
// yardstick is a plain-JS single flight (one shared promise around one http.get). The wall time
// includes issuing the 10,000 calls (synchronous) and resolving them.
import http from 'node:http'
import path from 'node:path'
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { addonPath, emit, log, QUICK, require, row, simulatorPath, tempDir } from './lib.mjs'

const { QuotaManager } = require(addonPath)
const { startUsageSimulator } = require(simulatorPath)

const CALLERS = 10_000
const RUNS = QUICK ? 3 : 9
const sim = await startUsageSimulator()
const dir = tempDir()

function plainSingleFlight(url) {
  let inFlight = null
  const fetchOnce = () =>
    new Promise((resolve, reject) => {
      http
        .get(url, { headers: { authorization: 'Bearer t', accept: 'application/json' } }, (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (c) => (body += c))
          res.on('end', () => resolve(JSON.parse(body)))
        })
        .on('error', reject)
    })
  return () => (inFlight ??= fetchOnce().finally(() => (inFlight = null)))
}

async function measure(makeCall) {
  const before = sim.requests
  const h = monitorEventLoopDelay({ resolution: 1 })
  const call = makeCall()
  // The histogram only records a stall when its timer fires after it: start it, let it tick
  // once before the calls, and let it tick again after they settle, so a stall at the start
  // (issuing the calls) or at the end (resolving them) is counted.
  h.enable()
  await sleep(5)
  const start = performance.now()
  await Promise.all(Array.from({ length: CALLERS }, () => call()))
  const wall = performance.now() - start
  await sleep(5)
  h.disable()
  return { requests: sim.requests - before, wall, p99: h.percentile(99) / 1e6, max: h.max / 1e6 }
}

const addon = []
const plain = []
for (let r = 0; r < RUNS; r++) {
  const statePath = path.join(dir, `state-${r}.json`)
  let manager
  addon.push(
    await measure(() => {
      manager = new QuotaManager({ statePath, usageUrl: sim.url })
      return () => manager.refreshMain(`me-${r}@example.com`, `token-${r}`)
    }),
  )
  await manager.close()
  plain.push(await measure(() => plainSingleFlight(sim.url)))
  log(
    `single flight run ${r + 1}/${RUNS}: addon ${addon.at(-1).requests} req ${addon.at(-1).wall.toFixed(1)} ms p99 ${addon.at(-1).p99.toFixed(1)} ms max ${addon.at(-1).max.toFixed(1)} ms; plain JS ${plain.at(-1).wall.toFixed(1)} ms p99 ${plain.at(-1).p99.toFixed(1)} ms`,
  )
}
// Issuing 1,000 concurrent refreshMain calls: the synchronous time of the loop that issues
// them (until the last call has returned its promise), against a TypeScript-style single flight
// (an async method that checks a Map of in-flight promises and joins or starts one).
const ISSUE = 1_000
class TsStyleSingleFlight {
  constructor(url) {
    this.url = url
    this.inFlight = new Map()
    this.fetchOnce = plainSingleFlight(url)
  }
  async refreshMain(identity, token) {
    const key = `main:${identity}`
    const running = this.inFlight.get(key)
    if (running) return running
    const started = this.fetchOnce().finally(() => this.inFlight.delete(key))
    this.inFlight.set(key, started)
    void token
    return started
  }
}
const issueAddon = []
const issuePlain = []
for (let r = 0; r < RUNS * 3; r++) {
  const manager = new QuotaManager({ statePath: path.join(dir, `issue-${r}.json`), usageUrl: sim.url })
  let start = performance.now()
  const calls = []
  for (let i = 0; i < ISSUE; i++) calls.push(manager.refreshMain(`issue-${r}@example.com`, `token-issue-${r}`))
  issueAddon.push(performance.now() - start)
  await Promise.all(calls)
  await manager.close()
  const ts = new TsStyleSingleFlight(sim.url)
  start = performance.now()
  const tsCalls = []
  for (let i = 0; i < ISSUE; i++) tsCalls.push(ts.refreshMain(`issue-${r}@example.com`, `token-issue-${r}`))
  issuePlain.push(performance.now() - start)
  await Promise.all(tsCalls)
}
log(
  `single flight: issuing ${ISSUE} refreshMain: addon ${row('', '', issueAddon, '').value.toFixed(2)} ms, TS-style ${row('', '', issuePlain, '').value.toFixed(2)} ms`,
)
await sim.close()
fs.rmSync(dir, { recursive: true, force: true })

const pick = (runs, k) => runs.map((x) => x[k])
const base = (runs, k) => ({ name: 'plain-JS single flight', value: row('', '', pick(runs, k), '').value })
emit('single-flight', [
  row('single flight (10,000 concurrent refreshMain)', 'requests sent', pick(addon, 'requests'), 'requests', {
    baseline: base(plain, 'requests'),
  }),
  row('single flight (10,000 concurrent refreshMain)', 'wall time', pick(addon, 'wall'), 'ms', { baseline: base(plain, 'wall') }),
  row('single flight (10,000 concurrent refreshMain)', 'p99 event-loop delay', pick(addon, 'p99'), 'ms', { baseline: base(plain, 'p99') }),
  row('single flight (10,000 concurrent refreshMain)', 'max event-loop delay', pick(addon, 'max'), 'ms', { baseline: base(plain, 'max') }),
  row('single flight (1,000 concurrent refreshMain)', 'issuing the calls (synchronous)', issueAddon, 'ms', {
    baseline: { name: 'TypeScript-style single flight', value: row('', '', issuePlain, '').value },
  }),
])
