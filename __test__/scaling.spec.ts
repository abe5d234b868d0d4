// Cost as work grows (issue 12), as behaviour: the state-file writes of many accounts' results are
// grouped (a write that finds nothing queued had its changes written by the one before it), and
// the state file is loaded off the constructor's thread. Neither may lose anything: these tests
// check what is on disk and what a new manager sees, never how long it took.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { QuotaManager } from '../index.js'
import { startUsageSimulator } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'

const dirs: string[] = []
const sims: UsageSimulator[] = []
const managers: QuotaManager[] = []
afterEach(async () => {
  await Promise.all(sims.splice(0).map((s) => s.close()))
  await Promise.all(managers.splice(0).map((m) => m.close().catch(() => undefined)))
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function statePath(): string {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-scaling-'))
  dirs.push(dir)
  return join(dir, 'state.json')
}

const accounts = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ id: `acct-${i}`, enabled: true, access: `token-${i}`, expires: Date.now() + 3_600_000 }))

describe('grouped state-file writes', () => {
  it('every result of refreshAllFallbacks is on disk when it resolves, in fewer writes than results or as many', async () => {
    const sim = await startUsageSimulator()
    sims.push(sim)
    const path = statePath()
    const manager = new QuotaManager({ statePath: path, usageUrl: sim.url, apiCallGapMs: 0 })
    managers.push(manager)
    const n = 60
    await manager.refreshAllFallbacks(accounts(n))
    expect(sim.requests).toBe(n)
    // On disk now, before close(): another process reading the file sees every account.
    const routes = Object.keys(JSON.parse(readFileSync(path, 'utf8')).routes).filter((k) => k.startsWith('fallback:'))
    expect(routes).toHaveLength(n)
    expect(manager.stats().stateWrites).toBeLessThanOrEqual(n)
    const other = new QuotaManager({ statePath: path })
    managers.push(other)
    expect(other.getAllFallbacks().size).toBe(n)
  })
})

describe('the state file loaded off the constructor', () => {
  it('a read right after construction sees everything the file holds (it waits for the load)', async () => {
    const path = statePath()
    const seed = new QuotaManager({ statePath: path })
    const now = Date.now()
    const win = { usedPercent: 10, remainingPercent: 90, checkedAt: now }
    for (let i = 0; i < 200; i++)
      seed.setFallback(`acct-${i}`, {
        quota: { five_hour: win, seven_day: win, source: 'poll', checkedAt: now },
        checkedAt: now,
        refreshAfter: now + 300_000,
      })
    await seed.close()
    const manager = new QuotaManager({ statePath: path })
    managers.push(manager)
    expect(manager.getAllFallbacks().size).toBe(200)
    expect(manager.isFallbackStale('acct-7')).toBe(false)
  })

  it('a corrupt file is still set aside and counted, as seen by the first stats()', async () => {
    const path = statePath()
    const { writeFileSync, readdirSync } = await import('node:fs')
    writeFileSync(path, '{ not json')
    const manager = new QuotaManager({ statePath: path })
    managers.push(manager)
    expect(manager.stats().stateFileQuarantines).toBe(1)
    expect(readdirSync(join(path, '..')).some((name) => name.includes('.corrupt-'))).toBe(true)
  })
})
