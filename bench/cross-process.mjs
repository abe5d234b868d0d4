// Cross-process benchmark: real `node` processes sharing one state file, against the local
// usage simulator (which runs in this process).
//
//   node bench/cross-process.mjs
//
// Measures, for K ∈ {1, 2, 4, 8} processes × 50 concurrent callers each (simulator answering
// after 300 ms): requests that reach the server, and the callers' wall time (from the "go" to
// the last caller settled), median of 5 runs. Then the time from a lock holder's SIGKILL to the
// waiting process's successful refresh (median of 5), and the p99 event-loop delay in a process
// waiting on another process's lock for ~2 s. Prints a markdown table, then the figures as JSON
// on the last line of stdout.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { QUICK, killWorkers, median, require, root, startWorker } from './lib.mjs'

const { startUsageSimulator } = require(join(root, 'simulator', 'index.js'))

const RUNS = QUICK ? 3 : 5
const CALLERS = 50
const DELAY_MS = 300
const TOKEN = 'sk-ant-oat01-bench-cross-process'

const sleep = (ms) => new Promise((done) => setTimeout(done, ms))
const round1 = (x) => Math.round(x * 10) / 10

async function workers(count, options) {
  const started = Array.from({ length: count }, () => startWorker())
  await Promise.all(started.map((w) => w.ready))
  await Promise.all(started.map((w) => w.request({ cmd: 'init', options })))
  return started
}

function freshStatePath(dirs) {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-bench-'))
  dirs.push(dir)
  return join(dir, 'state.json')
}

async function fanIn(sim, k, dirs) {
  const requests = []
  const wall = []
  const failures = []
  for (let run = 0; run < RUNS; run++) {
    sim.reset()
    sim.reply({ status: 200, delayMs: DELAY_MS })
    const statePath = freshStatePath(dirs)
    const ws = await workers(k, { statePath, usageUrl: sim.url, lockTimeoutMs: 20_000 })
    const t0 = performance.now()
    const ids = ws.map((w) => w.post({ cmd: 'refresh', callers: CALLERS, identity: 'alice', token: TOKEN }))
    const reports = await Promise.all(ws.map((w, i) => w.answer(ids[i])))
    wall.push(performance.now() - t0)
    requests.push(sim.requests)
    failures.push(reports.flatMap((r) => r.results).filter((r) => !r.ok).length)
    await killWorkers()
  }
  return {
    k,
    callers: k * CALLERS,
    requests,
    medianRequests: median(requests),
    medianWallMs: round1(median(wall)),
    wallMs: wall.map(round1),
    failures: failures.reduce((a, b) => a + b, 0),
  }
}

async function killToSuccess(sim, dirs) {
  const times = []
  for (let run = 0; run < RUNS; run++) {
    sim.reset()
    sim.replyOnce({ stall: true })
    sim.reply({ status: 200 })
    const statePath = freshStatePath(dirs)
    const [holder, waiter] = await workers(2, { statePath, usageUrl: sim.url, lockTimeoutMs: 60_000, requestTimeoutMs: 60_000 })
    holder.post({ cmd: 'refresh', callers: 1, identity: 'alice', token: TOKEN })
    while (sim.requests < 1) await sleep(2)
    const call = waiter.post({ cmd: 'refresh', callers: 1, identity: 'alice', token: TOKEN })
    while ((await waiter.request({ cmd: 'stats' })).stats.lockWaits < 1) await sleep(5)
    await sleep(100)
    const t0 = performance.now()
    holder.proc.kill('SIGKILL')
    const report = await waiter.answer(call)
    times.push(performance.now() - t0)
    if (!report.results[0].ok) throw new Error(`waiter failed: ${JSON.stringify(report.results[0])}`)
    await killWorkers()
  }
  return { medianMs: round1(median(times)), runsMs: times.map(round1) }
}

async function eventLoopWhileWaiting(sim, dirs) {
  const HOLD_MS = 2_000
  const p99s = []
  const maxes = []
  let idleP99
  for (let run = 0; run < 3; run++) {
    sim.reset()
    sim.reply({ status: 200, delayMs: HOLD_MS })
    const statePath = freshStatePath(dirs)
    const [holder, waiter] = await workers(2, { statePath, usageUrl: sim.url, lockTimeoutMs: 20_000 })
    if (run === 0) {
      // Baseline: the same process, idle, for as long.
      await waiter.request({ cmd: 'eldStart' })
      await sleep(HOLD_MS)
      idleP99 = (await waiter.request({ cmd: 'eldStop' })).p99
    }
    const held = holder.post({ cmd: 'refresh', callers: 1, identity: 'alice', token: TOKEN })
    while (sim.requests < 1) await sleep(2)
    await waiter.request({ cmd: 'eldStart' })
    const waited = await waiter.request({ cmd: 'refresh', callers: CALLERS, identity: 'alice', token: TOKEN })
    const delay = await waiter.request({ cmd: 'eldStop' })
    await holder.answer(held)
    if (waited.stats.lockWaits < 1 || waited.stats.apiCalls !== 0) throw new Error('the waiter did not wait on the lock')
    p99s.push(delay.p99)
    maxes.push(delay.max)
    await killWorkers()
  }
  return { p99Ms: round1(median(p99s)), maxMs: round1(median(maxes)), idleP99Ms: round1(idleP99), holdMs: HOLD_MS }
}

async function main() {
  const sim = await startUsageSimulator()
  const dirs = []
  try {
    const fan = []
    for (const k of QUICK ? [1, 8] : [1, 2, 4, 8]) fan.push(await fanIn(sim, k, dirs))
    const kill = await killToSuccess(sim, dirs)
    const eld = await eventLoopWhileWaiting(sim, dirs)

    const lines = [
      `Cross-process refresh (simulator answers after ${DELAY_MS} ms; ${CALLERS} callers per process; median of ${RUNS} runs)`,
      '',
      '| processes | callers | requests reaching the server (per run) | callers\u2019 wall time, median |',
      '|---:|---:|---|---:|',
      ...fan.map((f) => `| ${f.k} | ${f.callers} | ${f.requests.join(', ')} | ${f.medianWallMs} ms |`),
      '',
      `8 processes × ${CALLERS} callers, wall over 1 process × ${CALLERS} callers (issue 12, goal ≤ 1.00×): ${(fan.at(-1).medianWallMs / fan[0].medianWallMs).toFixed(2)}×`,
      '',
      '| measure | value |',
      '|---|---:|',
      `| holder SIGKILL \u2192 waiter's successful refresh (median of ${RUNS}) | ${kill.medianMs} ms |`,
      `| p99 event-loop delay in a process waiting ${eld.holdMs} ms on another's lock (median of 3) | ${eld.p99Ms} ms (max ${eld.maxMs} ms; idle p99 ${eld.idleP99Ms} ms) |`,
      '',
    ]
    process.stdout.write(lines.join('\n') + '\n')
    process.stdout.write(
      JSON.stringify({
        fanIn: fan,
        eightOverOne: fan.at(-1).medianWallMs / fan[0].medianWallMs,
        killToSuccess: kill,
        eventLoopWhileWaiting: eld,
      }) + '\n',
    )
  } finally {
    await killWorkers()
    await sim.close()
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(async (error) => {
  console.error(error)
  await killWorkers()
  process.exit(1)
})
