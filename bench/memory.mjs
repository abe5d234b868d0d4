// Memory: RSS growth of a process that holds 1,000 fallback routes (each a poll snapshot with a
// scoped window and extra usage), measured in fresh child processes with --expose-gc. The
// yardstick is the same 1,000 entries kept in a plain JS Map.
import { spawn } from 'node:child_process'
import { addonPath, emit, log, QUICK, root, row } from './lib.mjs'
import path from 'node:path'

const RUNS = QUICK ? 2 : 5
const ROUTES = 1000
const lib = path.join(root, 'bench', 'lib.mjs')

const childCode = (kind) => `
const { pollSnapshot } = await import(${JSON.stringify(lib)})
const { createRequire } = await import('node:module')
const require = createRequire(${JSON.stringify(lib)})
const settle = async () => { for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setTimeout(r, 20)) } }
const { QuotaManager } = require(${JSON.stringify(addonPath)})
let holder
if (${JSON.stringify(kind)} === 'addon') holder = new QuotaManager({ statePath: null })
else holder = new Map()
await settle()
const before = process.memoryUsage()
const now = Date.now()
for (let i = 0; i < ${ROUTES}; i++) {
  const id = 'acct-' + i
  const entry = { quota: { ...pollSnapshot(now), accountIdentity: id }, checkedAt: now, refreshAfter: now + 300000 }
  if (holder instanceof Map) holder.set(id, entry)
  else holder.setFallback(id, entry, { id, authLineageId: 'login-' + i })
}
await settle()
const after = process.memoryUsage()
const size = holder instanceof Map ? holder.size : holder.getAllFallbacks().size
if (size !== ${ROUTES}) throw new Error('held ' + size)
process.stdout.write(JSON.stringify({ rss: after.rss - before.rss, heap: after.heapUsed - before.heapUsed, external: after.external - before.external }))
`

function runChild(kind) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--input-type=module', '-e', childCode(kind)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    child.stdout.on('data', (c) => (out += c))
    child.on('error', reject)
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child exited ${code}`))))
  })
}

const addon = []
const plain = []
for (let r = 0; r < RUNS; r++) {
  addon.push(await runChild('addon'))
  plain.push(await runChild('plain'))
  log(
    `memory run ${r + 1}/${RUNS}: addon RSS +${(addon.at(-1).rss / 1024).toFixed(0)} KiB, plain JS Map RSS +${(plain.at(-1).rss / 1024).toFixed(0)} KiB`,
  )
}
const kib = (runs, k) => runs.map((x) => x[k] / 1024)
const group = `memory (${ROUTES.toLocaleString('en')} fallback routes)`
emit('memory', [
  row(group, 'RSS growth', kib(addon, 'rss'), 'KiB', {
    baseline: { name: 'plain JS Map', value: row('', '', kib(plain, 'rss'), '').value },
  }),
  row(group, 'JS heap growth', kib(addon, 'heap'), 'KiB', {
    baseline: { name: 'plain JS Map', value: row('', '', kib(plain, 'heap'), '').value },
    note: 'the addon keeps routes in Rust',
  }),
])
