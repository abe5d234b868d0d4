// One "OpenCode process" of the demo: builds a QuotaManager on the shared state file, waits for
// the parent's "go", then fires many concurrent main-quota requests and reports what happened.
// Started by examples/demo.mjs with child_process.fork (IPC); not meant to be run by hand.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { QuotaManager } = require('../index.js')

const config = JSON.parse(process.argv[2])
const manager = new QuotaManager({
  statePath: config.statePath,
  ...(config.usageUrl ? { usageUrl: config.usageUrl } : {}),
})

process.on('message', async (message) => {
  if (message !== 'go') return
  const started = performance.now()
  const outcomes = await Promise.all(
    Array.from({ length: config.callers }, () =>
      manager.refreshMainWithMetadata(config.identity, config.token).then(
        (result) => ({ ok: true, fetched: result.fetched }),
        (error) => ({ ok: false, code: error.code ?? 'ERROR', message: String(error.message) }),
      ),
    ),
  )
  const ms = performance.now() - started
  const errors = {}
  let firstError
  for (const o of outcomes) {
    if (o.ok) continue
    errors[o.code] = (errors[o.code] ?? 0) + 1
    firstError ??= o.message
  }
  const stats = manager.stats()
  await manager.close()
  process.send(
    {
      pid: process.pid,
      callers: config.callers,
      answered: outcomes.filter((o) => o.ok).length,
      fetched: outcomes.filter((o) => o.ok && o.fetched).length,
      fromCache: outcomes.filter((o) => o.ok && !o.fetched).length,
      errors,
      firstError,
      ms,
      stats,
    },
    () => process.exit(0),
  )
})

process.send('ready')
