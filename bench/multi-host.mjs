// Multi-host benchmark (issue 13): K "hosts" — real `node` processes, each with a state file of
// its own, so nothing but the shared store is shared — × 50 concurrent callers on one account,
// against the local usage simulator answering after 300 ms. File store (each host only has its
// own file: what several machines get today) beside the Redis store (one redis-server started
// here on 127.0.0.1, a random port, no persistence). Figures: requests that reach the endpoint,
// and the callers' wall time from the "go" to the last caller settled; median of the runs.
//
//   node bench/multi-host.mjs [--quick]
//
// Prints a markdown table on stderr and, last on stdout, the rows for bench/run.mjs. Without
// redis-server installed it says so and reports the file store alone.

import { execFile, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

import { QUICK, emit, killWorkers, log, median, require, root, row, startWorker } from './lib.mjs'

const { startUsageSimulator } = require(join(root, 'simulator', 'index.js'))
const HOSTS = [1, 2, 4, 8]
const CALLERS = 50
const DELAY_MS = 300
const RUNS = QUICK ? 1 : 3
const TOKEN = 'sk-ant-oat01-bench-multi-host'

const sleep = (ms) => new Promise((done) => setTimeout(done, ms))
const dirs = []

function freshDir() {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-bench-hosts-'))
  dirs.push(dir)
  return dir
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function startRedis() {
  if (spawnSync('redis-server', ['--version']).status !== 0) return null
  const port = await freePort()
  const proc = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', freshDir()],
    { stdio: 'ignore' },
  )
  const ping = () =>
    new Promise((done) => execFile('redis-cli', ['-p', String(port), 'PING'], (error, out) => done(!error && out.trim() === 'PONG')))
  for (let i = 0; i < 300 && !(await ping()); i++) await sleep(10)
  return { url: `redis://127.0.0.1:${port}/`, proc }
}

async function runOnce(sim, k, redisUrl) {
  sim.reset()
  sim.reply({ status: 200, delayMs: DELAY_MS })
  const keyPrefix = `bench-${Math.random().toString(16).slice(2)}:`
  const hosts = Array.from({ length: k }, () => startWorker())
  await Promise.all(hosts.map((h) => h.ready))
  await Promise.all(
    hosts.map((h) =>
      h.request({
        cmd: 'init',
        options: {
          statePath: join(freshDir(), 'state.json'),
          usageUrl: sim.url,
          lockTimeoutMs: 20_000,
          ...(redisUrl ? { redis: { url: redisUrl, keyPrefix } } : {}),
        },
      }),
    ),
  )
  const t0 = performance.now()
  const reports = await Promise.all(hosts.map((h) => h.request({ cmd: 'refresh', callers: CALLERS, identity: 'alice', token: TOKEN })))
  const wall = performance.now() - t0
  const failed = reports.flatMap((r) => r.results).filter((r) => !r.ok).length
  if (failed) throw new Error(`${failed} callers failed (${redisUrl ? 'redis' : 'file'}, ${k} hosts)`)
  const requests = sim.requests
  await killWorkers()
  return { wall, requests }
}

async function main() {
  const sim = await startUsageSimulator()
  const redis = await startRedis()
  if (!redis) log('multi-host: redis-server is not installed: the Redis store column is skipped')
  const rows = []
  const table = [
    '| hosts × callers | file store: requests | file store: wall | Redis store: requests | Redis store: wall |',
    '|---|---:|---:|---:|---:|',
  ]
  try {
    for (const k of HOSTS) {
      const file = { wall: [], requests: [] }
      const shared = { wall: [], requests: [] }
      // Interleaved, so drift on the machine colours both the same.
      for (let run = 0; run < RUNS; run++) {
        const f = await runOnce(sim, k, null)
        file.wall.push(f.wall)
        file.requests.push(f.requests)
        if (redis) {
          const r = await runOnce(sim, k, redis.url)
          shared.wall.push(r.wall)
          shared.requests.push(r.requests)
        }
      }
      const group = `multi-host, ${CALLERS} callers per host, endpoint ${DELAY_MS} ms`
      const fileReq = median(file.requests)
      if (redis) {
        rows.push(
          row(group, `${k} hosts: requests, Redis store`, shared.requests, 'requests', {
            baseline: { name: 'file store', value: fileReq },
          }),
        )
        rows.push(
          row(group, `${k} hosts: wall, Redis store`, shared.wall, 'ms', { baseline: { name: 'file store', value: median(file.wall) } }),
        )
      } else {
        rows.push(row(group, `${k} hosts: requests, file store`, file.requests, 'requests'))
        rows.push(row(group, `${k} hosts: wall, file store`, file.wall, 'ms'))
      }
      const ms = (values) => `${median(values).toFixed(0)} ms`
      table.push(
        `| ${k} × ${CALLERS} | ${file.requests.join(', ')} | ${ms(file.wall)} | ${redis ? shared.requests.join(', ') : '—'} | ${redis ? ms(shared.wall) : '—'} |`,
      )
      log(table.at(-1))
    }
  } finally {
    await killWorkers()
    redis?.proc.kill('SIGKILL')
    await sim.close()
  }
  log('')
  log(`Multi-host (each host its own state file; median of ${RUNS} run${RUNS > 1 ? 's' : ''}; requests per run)`)
  log(table.join('\n'))
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
  emit('multi-host', rows)
}

main().catch(async (error) => {
  console.error(error)
  await killWorkers()
  process.exit(1)
})
