// Cold start, measured in fresh child processes: require() of the addon, then construction of a
// QuotaManager on a seeded state file (one main route and 50 fallbacks, as a long-lived machine
// has), then the first getMain. The yardstick is the same child doing nothing (`node -e 0`-like),
// i.e. Node's own start-up.
import { spawn } from 'node:child_process'
import path from 'node:path'
import fs from 'node:fs'
import { addonPath, emit, log, pollSnapshot, QUICK, require, row, tempDir } from './lib.mjs'

const { QuotaManager } = require(addonPath)
const RUNS = QUICK ? 3 : 11
const FALLBACKS = 50

const dir = tempDir()
const statePath = path.join(dir, 'anthropic-quota-state.json')
{
  const now = Date.now()
  const entry = { quota: { ...pollSnapshot(now), accountIdentity: 'me@example.com' }, checkedAt: now, refreshAfter: now + 3600e3 }
  const seed = new QuotaManager({ statePath })
  seed.setMain('me@example.com', entry)
  for (let i = 0; i < FALLBACKS; i++) seed.setFallback(`acct-${i}`, { ...entry, quota: { ...entry.quota, accountIdentity: `acct-${i}` } })
  await seed.close()
  const routes = Object.keys(JSON.parse(fs.readFileSync(statePath, 'utf8')).routes).length
  if (routes !== FALLBACKS + 1) throw new Error(`seeded ${routes} routes, expected ${FALLBACKS + 1}`)
  log(`cold start: state file seeded with ${routes} routes (${fs.statSync(statePath).size} bytes)`)
}

/** The constructor alone, in memory (`statePath: null`): the first in the process, then the mean of 200 more. */
const WARM_CONSTRUCTIONS = 200
const memoryChildCode = `
const { QuotaManager } = require(${JSON.stringify(addonPath)})
const t0 = performance.now()
new QuotaManager({ statePath: null })
const first = performance.now() - t0
const t1 = performance.now()
for (let i = 0; i < ${WARM_CONSTRUCTIONS}; i++) new QuotaManager({ statePath: null })
process.stdout.write(JSON.stringify({ first, warm: (performance.now() - t1) / ${WARM_CONSTRUCTIONS} }))
`

const childCode = (withAddon) => `
const t0 = performance.now()
${
  withAddon
    ? `
const { QuotaManager } = require(${JSON.stringify(addonPath)})
const t1 = performance.now()
const m = new QuotaManager({ statePath: ${JSON.stringify(statePath)}, storage: { mainAccountId: 'me@example.com' } })
const t2 = performance.now()
if (!m.getMain('me@example.com') || m.isMainStale()) throw new Error('seeded entry not adopted')
const t3 = performance.now()
process.stdout.write(JSON.stringify({ require: t1 - t0, construct: t2 - t1, firstRead: t3 - t2, sinceOrigin: t3 }))
`
    : `process.stdout.write(JSON.stringify({ sinceOrigin: t0 }))`
}
`

function runChild(withAddon, code = childCode(withAddon)) {
  return new Promise((resolve, reject) => {
    const start = performance.now()
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (c) => (out += c))
    child.on('error', reject)
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`child exited ${code}`))
      resolve({ ...JSON.parse(out), wall: performance.now() - start })
    })
  })
}

const addon = []
const bare = []
const memory = []
for (let r = 0; r < RUNS; r++) {
  bare.push(await runChild(false))
  addon.push(await runChild(true))
  memory.push(await runChild(true, memoryChildCode))
  log(
    `cold start run ${r + 1}/${RUNS}: require ${addon.at(-1).require.toFixed(1)} ms, construct ${addon.at(-1).construct.toFixed(2)} ms, process ${addon.at(-1).wall.toFixed(0)} ms (bare node ${bare.at(-1).wall.toFixed(0)} ms); in memory: first ${memory.at(-1).first.toFixed(2)} ms, then ${memory.at(-1).warm.toFixed(3)} ms each`,
  )
}
fs.rmSync(dir, { recursive: true, force: true })
const pick = (runs, k) => runs.map((x) => x[k])
const group = `cold start (child process, state file with ${FALLBACKS + 1} routes)`
emit('cold-start', [
  row(group, 'require() of the addon', pick(addon, 'require'), 'ms'),
  row(group, 'new QuotaManager (reads the file)', pick(addon, 'construct'), 'ms'),
  row(group, 'first getMain + isMainStale', pick(addon, 'firstRead'), 'ms'),
  row('constructor (child process, statePath: null)', 'first new QuotaManager in the process', pick(memory, 'first'), 'ms'),
  row('constructor (child process, statePath: null)', `new QuotaManager, mean of ${WARM_CONSTRUCTIONS} more`, pick(memory, 'warm'), 'ms'),
  row(group, 'process spawn → exit', pick(addon, 'wall'), 'ms', {
    baseline: { name: 'bare node process', value: row('', '', pick(bare, 'wall'), '').value },
  }),
])
