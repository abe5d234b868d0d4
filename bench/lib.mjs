// Shared helpers of the benchmarks. Each bench script prints progress on stderr and, last, one
// JSON line on stdout: { "bench": name, "rows": [Row] } where a Row is
// { group, name, value, unit, runs, baseline?: { name, value }, ratio?, note? }.
// `bench/run.mjs` runs every script in its own process and prints the table.
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const require = createRequire(import.meta.url)
export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const addonPath = path.join(root, 'index.js')
export const simulatorPath = path.join(root, 'simulator', 'index.js')
/** BENCH_QUICK=1 (or --quick) cuts repetitions, for a smoke run. */
export const QUICK = process.env.BENCH_QUICK === '1' || process.argv.includes('--quick')

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

export function tempDir(prefix = 'aqm-bench-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

export const log = (...args) => process.stderr.write(args.join(' ') + '\n')

export function row(group, name, values, unit, extra = {}) {
  const value = median(values)
  const out = { group, name, value, unit, runs: values.length, ...extra }
  if (extra.baseline) out.ratio = value / extra.baseline.value
  return out
}

export function emit(bench, rows) {
  process.stdout.write(JSON.stringify({ bench, rows }) + '\n')
}

/** A realistic poll snapshot (5h, 7d, one scoped window, extra usage), as the manager keeps it. */
export function pollSnapshot(now = Date.now()) {
  const win = (used, resetsInMs) => ({
    usedPercent: used,
    remainingPercent: 100 - used,
    resetsAt: new Date(now + resetsInMs).toISOString(),
    checkedAt: now,
  })
  return {
    five_hour: win(9, 2 * 3600e3),
    seven_day: win(68, 4 * 86400e3),
    scoped: [
      {
        ...win(22, 3 * 86400e3),
        id: 'claude-weekly-scoped-claude-fable-5-1',
        title: 'Fable only',
        modelId: 'claude-fable-5-1',
        modelName: 'Fable',
      },
    ],
    extraUsage: {
      used: { amountMinor: 1261, currency: 'USD', exponent: 2 },
      limit: { amountMinor: 10000, currency: 'USD', exponent: 2 },
      utilizationPercent: 12.61,
      severity: 'normal',
      exhausted: false,
    },
    bindingWindow: 'five_hour',
    bindingWindowSource: 'poll',
    source: 'poll',
    checkedAt: now,
  }
}

/** The yardsticks' usage request: a bare GET through `agent`, its JSON body. */
export async function getJson(url, token, agent) {
  try {
    return await getJsonOnce(url, token, agent)
  } catch (error) {
    // A kept-alive socket the server closed as it was reused (the server's keep-alive timeout
    // ran out during a long addon run): the request never reached it; send it again, once.
    if (error.code !== 'ECONNRESET' && error.code !== 'EPIPE') throw error
    return getJsonOnce(url, token, agent)
  }
}

function getJsonOnce(url, token, agent) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent, headers: { authorization: `Bearer ${token}`, accept: 'application/json' } }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c) => (body += c))
        res.on('error', reject)
        res.on('end', () => resolve(JSON.parse(body)))
      })
      .on('error', reject)
  })
}

/** The test suite's worker fixture: a QuotaManager in a child process, driven by JSON lines. */
const WORKER = path.join(root, '__test__', 'fixtures', 'mp-worker.cjs')
const liveWorkers = new Set()

/**
 * Starts a worker process. `post(command)` sends a command and returns its id; `answer(id)`
 * resolves with its answer (one that came before it was asked for is kept); `request(command)`
 * is both. `ready` settles once the addon is loaded, `exited` when the process ends.
 */
export function startWorker() {
  const proc = spawn(process.execPath, [WORKER], { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] })
  liveWorkers.add(proc)
  const waiting = new Map()
  const early = new Map()
  let loaded
  const ready = new Promise((done) => (loaded = done))
  let buffer = ''
  let nextId = 1
  proc.stdin.on('error', () => {})
  proc.stdout.setEncoding('utf8')
  proc.stdout.on('data', (chunk) => {
    buffer += chunk
    let nl
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl)
      buffer = buffer.slice(nl + 1)
      if (!line.trim()) continue
      const message = JSON.parse(line)
      if (message.event === 'loaded') loaded()
      else if (waiting.has(message.id)) {
        waiting.get(message.id)(message)
        waiting.delete(message.id)
      } else early.set(message.id, message)
    }
  })
  const exited = new Promise((done) => proc.on('exit', () => (liveWorkers.delete(proc), done())))
  const post = (command) => {
    const id = nextId++
    proc.stdin.write(JSON.stringify({ ...command, id }) + '\n')
    return id
  }
  const answer = (id) =>
    new Promise((done, fail) => {
      const settle = (message) => (message.ok ? done(message) : fail(new Error(`${message.code}: ${message.message}`)))
      if (early.has(id)) return settle(early.get(id))
      waiting.set(id, settle)
    })
  const request = (command) => answer(post(command))
  return { proc, ready, exited, post, answer, request }
}

/** SIGKILLs every worker still running; resolves once they are gone. */
export async function killWorkers() {
  const procs = [...liveWorkers]
  for (const proc of procs) proc.kill('SIGKILL')
  await Promise.all(
    procs.map((proc) => new Promise((done) => (proc.exitCode !== null || proc.signalCode !== null ? done() : proc.on('exit', done)))),
  )
}
