// The JavaScript facade (index.js) over the generated binding (binding.js): it answers getMain,
// isMainStale, needsRefresh, getFallback and isFallbackStale without calling into native code
// while the core's change counter stays put. These tests prove it never serves a value the core has replaced, whatever replaced
// it, by comparing every facade answer with the native method's answer right after the change,
// and that it really answered from memory in between (the native methods are counted).
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { ManualClock, QuotaManager } from '../index.js'
import type { QuotaEntry, QuotaManagerOptions } from '../index.js'
import { rateLimitHeaders, startUsageSimulator } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'

const root = resolve(__dirname, '..')
const require = createRequire(__filename)
const binding = require(join(root, 'binding.js')) as typeof import('../binding.js')
const facade = require(join(root, 'index.js')) as Record<string, unknown>
const Native = binding.QuotaManager
const native = Native.prototype

const T0 = Date.UTC(2026, 8, 14, 2, 10, 0)
const MINUTE = 60_000
const ME = 'me@example.com'
const MODEL = 'claude-fable-5-1'

function entryAt(checkedAt: number, used = 10, identity = ME, scopedCheckedAt = checkedAt): QuotaEntry {
  const win = { usedPercent: used, remainingPercent: 100 - used, checkedAt }
  return {
    quota: {
      five_hour: win,
      seven_day: win,
      scoped: [{ ...win, checkedAt: scopedCheckedAt, id: `scoped-${MODEL}`, title: 'Fable only', modelId: MODEL, modelName: 'Fable' }],
      source: 'poll',
      checkedAt,
      accountIdentity: identity,
    },
    checkedAt,
    refreshAfter: checkedAt + 5 * MINUTE,
  }
}

const managers: QuotaManager[] = []
const sims: UsageSimulator[] = []
const dirs: string[] = []
afterEach(async () => {
  vi.restoreAllMocks()
  await Promise.all(sims.splice(0).map((s) => s.close()))
  await Promise.all(managers.splice(0).map((m) => m.close().catch(() => undefined)))
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function make(options: QuotaManagerOptions = {}): { manager: QuotaManager; clock: ManualClock } {
  const clock = options.clock ?? new ManualClock(T0)
  const manager = new QuotaManager({ statePath: null, apiCallGapMs: 0, backoff: { jitter: 0 }, ...options, clock })
  managers.push(manager)
  return { manager, clock }
}

/** Counts the native calls the facade makes. */
function countNative() {
  return {
    getMain: vi.spyOn(native, 'getMain'),
    staleFrom: vi.spyOn(native as unknown as { _mainStaleFrom: (m?: string) => number }, '_mainStaleFrom'),
    everyN: vi.spyOn(native as unknown as { _refreshEveryN: () => number }, '_refreshEveryN'),
  }
}

/** Asks the facade what the plugin asks on every request, so those answers are kept. */
function warm(manager: QuotaManager, id: string | undefined = ME): void {
  manager.getMain(id)
  manager.isMainStale(MODEL)
  manager.isMainStale()
  manager.needsRefresh(3, MODEL)
  manager.needsRefresh(3)
}

/**
 * The facade's answers equal the native methods' answers, for each identity and model. The first
 * identity and the first model are the ones `warm` keeps: asked first, they test the kept answers.
 * Ends warm again, so the next change is checked against kept answers too.
 */
function expectAgrees(
  manager: QuotaManager,
  ids: (string | undefined)[] = [ME, undefined, 'other'],
  models: (string | undefined)[] = [MODEL, undefined, 'opus'],
): void {
  for (const id of ids) expect(manager.getMain(id), `getMain(${id})`).toBe(native.getMain.call(manager, id))
  for (const model of models) {
    expect(manager.isMainStale(model), `isMainStale(${model})`).toBe(native.isMainStale.call(manager, model))
    for (const n of [3, 0, 1, 2, 6, 7.5]) {
      expect(manager.needsRefresh(n, model), `needsRefresh(${n}, ${model})`).toBe(native.needsRefresh.call(manager, n, model))
    }
  }
  warm(manager, ids[0])
}

/** Warms the facade, then proves the next reads stay in JavaScript. */
function expectServedFromMemory(manager: QuotaManager): void {
  warm(manager)
  const calls = countNative()
  for (let i = 0; i < 5; i++) {
    manager.getMain(ME)
    manager.isMainStale(MODEL)
    manager.isMainStale()
    manager.needsRefresh(i, MODEL)
  }
  expect(calls.getMain).not.toHaveBeenCalled()
  expect(calls.staleFrom).not.toHaveBeenCalled()
  expect(calls.everyN).not.toHaveBeenCalled()
  vi.restoreAllMocks()
  warm(manager)
}

describe('the facade module', () => {
  it('exports every name of the generated binding, with QuotaManager a subclass of the native class', () => {
    for (const name of Object.keys(binding)) expect(Object.keys(facade), name).toContain(name)
    expect(facade.QuotaManager).not.toBe(Native)
    expect(new QuotaManager({ statePath: null })).toBeInstanceOf(Native)
    expect(facade.ManualClock).toBe(binding.ManualClock)
  })

  it("Node's ESM import of index.js sees every name (static CommonJS export detection)", () => {
    const script = `import * as m from ${JSON.stringify(join(root, 'index.js'))}; console.log(JSON.stringify(Object.keys(m)))`
    const out = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })
    expect(out.status, out.stderr).toBe(0)
    const names: string[] = JSON.parse(out.stdout)
    for (const name of Object.keys(binding)) expect(names, name).toContain(name)
  })

  it('bad arguments still reach the native checks (same errors)', () => {
    const { manager } = make()
    expect(() => manager.getMain(42 as unknown as string)).toThrow(TypeError)
    expect(() => manager.isMainStale({} as unknown as string)).toThrow(TypeError)
    expect(() => manager.needsRefresh(-1)).toThrow(RangeError)
    expect(() => manager.needsRefresh('3' as unknown as number)).toThrow(TypeError)
    expect(() => manager.needsRefresh(Number.NaN)).toThrow()
  })
})

describe('the facade never serves a replaced value', () => {
  it('warm reads stay in JavaScript and agree with the core', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0))
    expectAgrees(manager)
    expectServedFromMemory(manager)
    expect(manager.getMain(ME)?.quota.five_hour?.usedPercent).toBe(10)
  })

  it('after a poll', async () => {
    const sim = await startUsageSimulator()
    sims.push(sim)
    const { manager, clock } = make({ usageUrl: sim.url })
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    clock.advance(6 * MINUTE)
    expect(manager.isMainStale()).toBe(true)
    const before = manager.getMain(ME)
    await manager.refreshMain(ME, 'token-poll')
    expect(sim.requests).toBe(1)
    expect(manager.getMain(ME)).not.toBe(before)
    expect(manager.getMain(ME)?.quota.source).toBe('poll')
    expect(manager.isMainStale()).toBe(false)
    expectAgrees(manager)
  })

  it('after a header push', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    const before = manager.getMain(ME)
    manager.pushMainFromHeaders(ME, rateLimitHeaders({ fiveHour: 0.77, sevenDay: 0.5 }))
    expect(manager.getMain(ME)).not.toBe(before)
    expect(manager.getMain(ME)?.quota.five_hour?.usedPercent).toBe(77)
    expectAgrees(manager)
  })

  it("after another process's record is adopted from the shared state file", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'aqm-facade-'))
    dirs.push(dir)
    const statePath = join(dir, 'state.json')
    const sim = await startUsageSimulator()
    sims.push(sim)
    // Real time here: the other process stamps its entry with the wall clock.
    const manager = new QuotaManager({ statePath, usageUrl: sim.url, apiCallGapMs: 0 })
    managers.push(manager)
    const old = Date.now() - 10 * MINUTE
    manager.setMain(ME, entryAt(old, 10))
    expect(manager.isMainStale()).toBe(true)
    expectServedFromMemory(manager)
    const child = `
      const { QuotaManager } = require(${JSON.stringify(join(root, 'index.js'))})
      const now = Date.now()
      const win = { usedPercent: 64, remainingPercent: 36, checkedAt: now }
      const m = new QuotaManager({ statePath: ${JSON.stringify(statePath)} })
      m.setMain(${JSON.stringify(ME)}, { quota: { five_hour: win, seven_day: win, source: 'poll', checkedAt: now, accountIdentity: ${JSON.stringify(ME)} }, checkedAt: now, refreshAfter: now + 300000 })
      m.close().then(() => process.exit(0))
    `
    const out = spawnSync(process.execPath, ['-e', child], { encoding: 'utf8' })
    expect(out.status, out.stderr).toBe(0)
    // Nothing in this process changed yet: the kept answer is still the core's answer.
    expectAgrees(manager)
    // The refresh finds the other process's fresh record under the route lock and adopts it.
    await manager.refreshMain(ME, 'token-adopt')
    expect(sim.requests).toBe(0)
    expect(manager.getMain(ME)?.quota.five_hour?.usedPercent).toBe(64)
    expect(manager.isMainStale()).toBe(false)
    expectAgrees(manager)
  })

  it('after an identity change', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    expect(manager.getMain(ME)).not.toBeNull()
    manager.setMain('someone-else', entryAt(T0, 20, 'someone-else'))
    expect(manager.getMain(ME)).toBeNull()
    expect(manager.getMain('someone-else')?.quota.five_hour?.usedPercent).toBe(20)
    expectAgrees(manager, [ME, 'someone-else', undefined])
  })

  it('after the settings change (updateStorage)', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0, 10))
    expect(manager.needsRefresh(3)).toBe(false)
    expectServedFromMemory(manager)
    manager.updateStorage({ quota: { refreshEveryNRequests: 3 } } as never)
    expect(manager.needsRefresh(3)).toBe(true)
    expect(manager.needsRefresh(4)).toBe(false)
    expectAgrees(manager)
  })

  it('after seeding from the host storage', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0 - 2 * MINUTE, 10))
    expectServedFromMemory(manager)
    manager.seedMainFromStorage({ quota: { mainQuota: entryAt(T0, 55).quota } } as never, ME)
    expect(manager.getMain(ME)?.quota.five_hour?.usedPercent).toBe(55)
    expectAgrees(manager)
  })

  it('after close', async () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    await manager.close()
    expectAgrees(manager)
  })

  it('as a ManualClock moves: stale exactly when the core says so, with nothing cached to invalidate', () => {
    const { manager, clock } = make()
    manager.setMain(ME, entryAt(T0, 10, ME, T0 - 3 * MINUTE))
    expectServedFromMemory(manager)
    // The scoped window turns stale at T0 + 2 min, the entry at T0 + 5 min.
    for (const step of [0, MINUTE, MINUTE - 1, 1, 3 * MINUTE - 1, 1, 10 * MINUTE]) {
      clock.advance(step)
      expectAgrees(manager)
    }
    clock.set(T0)
    expectAgrees(manager)
    expect(manager.isMainStale()).toBe(false)
  })

  it('after clearMain', () => {
    const { manager } = make()
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    manager.clearMain()
    expect(manager.getMain(ME)).toBeNull()
    expect(manager.isMainStale()).toBe(true)
    expectAgrees(manager)
  })

  it('after the strict identity moves to another account (setMainQuotaAccountIdentity)', () => {
    const { manager } = make()
    manager.setMainQuotaAccountIdentity(ME, true)
    manager.setMain(ME, entryAt(T0, 10))
    expect(manager.getMain(ME)).not.toBeNull()
    expect(manager.isMainStale()).toBe(false)
    expectServedFromMemory(manager)
    manager.setMainQuotaAccountIdentity('someone-else', true)
    expect(manager.getMain(ME)).toBeNull()
    expect(manager.isMainStale()).toBe(true)
    expectAgrees(manager, [ME, 'someone-else', undefined])
  })

  it("as the host's `now` option moves (sampled by the facade as by every native entry)", () => {
    let time = T0
    const manager = new QuotaManager({ statePath: null, now: () => time })
    managers.push(manager)
    manager.setMain(ME, entryAt(T0, 10, ME, T0 - 3 * MINUTE))
    expectServedFromMemory(manager)
    for (const step of [0, MINUTE, MINUTE - 1, 1, 3 * MINUTE - 1, 1, 10 * MINUTE]) {
      time += step
      expectAgrees(manager)
    }
    time = T0 + 0.75
    expectAgrees(manager)
    expect(manager.isMainStale()).toBe(false)
  })

  it("the first read after a change compares with the host's `now` that read sampled", () => {
    let time = T0
    const manager = new QuotaManager({ statePath: null, now: () => time })
    managers.push(manager)
    manager.setMain(ME, entryAt(T0, 10))
    time = T0 + 60 * MINUTE
    expect(manager.isMainStale()).toBe(true)
    manager.setMain(ME, entryAt(time, 10))
    time += 60 * MINUTE
    expect(manager.isMainStale(MODEL)).toBe(true)
  })

  it('a `now` option answering garbage gets the native TypeError, from the kept path too', () => {
    let time: unknown = T0
    const manager = new QuotaManager({ statePath: null, now: () => time as number })
    managers.push(manager)
    manager.setMain(ME, entryAt(T0, 10))
    expectServedFromMemory(manager)
    time = Number.NaN
    expect(() => manager.isMainStale()).toThrow(TypeError)
    expect(() => manager.getMain(ME)).toThrow(TypeError)
    expect(() => manager.needsRefresh(1)).toThrow(TypeError)
    time = T0
    expectAgrees(manager)
  })

  it('two managers on one ManualClock both follow it (the time is shared once per clock)', () => {
    const clock = new ManualClock(T0)
    const { manager: a } = make({ clock })
    const { manager: b } = make({ clock })
    a.setMain(ME, entryAt(T0, 10))
    b.setMain(ME, entryAt(T0 + MINUTE, 20))
    expectServedFromMemory(a)
    expectServedFromMemory(b)
    clock.advance(5 * MINUTE)
    expect(a.isMainStale()).toBe(true)
    expect(b.isMainStale()).toBe(false)
    expectAgrees(a)
    expectAgrees(b)
  })

  it('without a ManualClock, against the system clock', () => {
    const manager = new QuotaManager({ statePath: null })
    managers.push(manager)
    expect(manager.isMainStale()).toBe(true)
    const now = Date.now()
    manager.setMain(ME, entryAt(now, 10))
    expect(manager.isMainStale()).toBe(false)
    expectAgrees(manager)
    manager.setMain(ME, { ...entryAt(now - 10 * MINUTE, 10), refreshAfter: now - 1 })
    expect(manager.isMainStale()).toBe(true)
    expectAgrees(manager)
  })
})

describe('the fallback reads (getFallback, isFallbackStale) are kept the same way', () => {
  const IDS = ['acct-a', 'acct-b', 'missing']
  const MODELS = [MODEL, undefined, 'opus']

  /** The facade's fallback answers equal the native ones, for each id and model (the first ones kept). */
  function expectFallbacksAgree(manager: QuotaManager): void {
    for (const id of IDS) {
      expect(manager.getFallback(id), `getFallback(${id})`).toBe(native.getFallback.call(manager, id))
      for (const model of MODELS) {
        expect(manager.isFallbackStale(id, 'token', model), `isFallbackStale(${id}, ${model})`).toBe(
          native.isFallbackStale.call(manager, id, 'token', model),
        )
        expect(manager.isFallbackStale(id, undefined, model)).toBe(native.isFallbackStale.call(manager, id, undefined, model))
      }
    }
  }

  /** Warms the fallback reads, then proves the next ones stay in JavaScript. */
  function expectFallbacksFromMemory(manager: QuotaManager): void {
    expectFallbacksAgree(manager)
    const getFallback = vi.spyOn(native, 'getFallback')
    const staleFrom = vi.spyOn(native as unknown as { _fallbackStaleFrom: (id: string, m?: string) => number }, '_fallbackStaleFrom')
    const isFallbackStale = vi.spyOn(native, 'isFallbackStale')
    for (let i = 0; i < 3; i++) {
      for (const id of IDS) {
        manager.getFallback(id)
        for (const model of MODELS) manager.isFallbackStale(id, 'token', model)
      }
    }
    expect(getFallback).not.toHaveBeenCalled()
    expect(staleFrom).not.toHaveBeenCalled()
    expect(isFallbackStale).not.toHaveBeenCalled()
    vi.restoreAllMocks()
  }

  function seeded(options: QuotaManagerOptions = {}) {
    const made = make(options)
    made.manager.setFallback('acct-a', entryAt(T0, 10, 'acct-a', T0 - 3 * MINUTE), { authLineageId: 'lineage-a' })
    made.manager.setFallback('acct-b', entryAt(T0 - 2 * MINUTE, 20, 'acct-b'))
    return made
  }

  it('warm reads stay in JavaScript, and the main reads stay kept beside them', () => {
    const { manager } = seeded()
    manager.setMain(ME, entryAt(T0))
    expectFallbacksFromMemory(manager)
    expectServedFromMemory(manager)
    expectFallbacksFromMemory(manager)
    expect(manager.getFallback('acct-a')?.quota.five_hour?.usedPercent).toBe(10)
  })

  it('after setFallback, clearFallback, a header push, seeding and a poll', async () => {
    const sim = await startUsageSimulator()
    sims.push(sim)
    const { manager, clock } = seeded({ usageUrl: sim.url })
    expectFallbacksFromMemory(manager)
    manager.setFallback('acct-b', entryAt(T0, 30, 'acct-b'))
    expect(manager.getFallback('acct-b')?.quota.five_hour?.usedPercent).toBe(30)
    expectFallbacksAgree(manager)
    manager.clearFallback('acct-b')
    expect(manager.getFallback('acct-b')).toBeNull()
    expect(manager.isFallbackStale('acct-b')).toBe(true)
    expectFallbacksAgree(manager)
    manager.pushFallbackFromHeaders('acct-b', rateLimitHeaders({ fiveHour: 0.41, sevenDay: 0.5 }))
    expectFallbacksAgree(manager)
    manager.seedFallbacksFromAccounts([{ id: 'acct-a', authLineageId: 'lineage-a' }])
    expect(manager.getFallback('acct-b')).toBeNull()
    expectFallbacksAgree(manager)
    clock.advance(6 * MINUTE)
    expect(manager.isFallbackStale('acct-a', 'token')).toBe(true)
    const before = manager.getFallback('acct-a')
    await manager.refreshFallback('acct-a', 'token-a')
    expect(sim.requests).toBe(1)
    expect(manager.getFallback('acct-a')).not.toBe(before)
    expect(manager.isFallbackStale('acct-a', 'token')).toBe(false)
    expectFallbacksAgree(manager)
  })

  it('a call with an account (its login bound first) goes native, and what it changes is seen', () => {
    const { manager } = seeded()
    expectFallbacksFromMemory(manager)
    expect(manager.getFallback('acct-a', { authLineageId: 'lineage-a' })).not.toBeNull()
    expect(manager.getFallback('acct-a', { authLineageId: 'another-login' })).toBeNull()
    expect(manager.getFallback('acct-a')).toBeNull()
    expect(manager.isFallbackStale('acct-a', 'token', undefined, { authLineageId: 'another-login' })).toBe(true)
    expectFallbacksAgree(manager)
  })

  it("as a ManualClock or the host's `now` moves", () => {
    const { manager, clock } = seeded()
    let time = T0
    const sampled = new QuotaManager({ statePath: null, now: () => time })
    managers.push(sampled)
    sampled.setFallback('acct-a', entryAt(T0, 10, 'acct-a', T0 - 3 * MINUTE))
    expectFallbacksFromMemory(manager)
    expectFallbacksFromMemory(sampled)
    // acct-a's scoped window turns stale at T0 + 2 min, its entry at T0 + 5 min; acct-b's at T0 + 3 min.
    for (const step of [0, MINUTE, MINUTE - 1, 1, MINUTE - 1, 1, 2 * MINUTE - 1, 1, 10 * MINUTE]) {
      clock.advance(step)
      time += step
      expectFallbacksAgree(manager)
      expectFallbacksAgree(sampled)
    }
  })

  it('bad arguments still reach the native checks (same errors)', () => {
    const { manager } = seeded()
    expectFallbacksFromMemory(manager)
    for (const call of [
      () => manager.getFallback(42 as unknown as string),
      () => manager.getFallback(' '),
      () => manager.isFallbackStale(undefined as unknown as string),
      () => manager.isFallbackStale('acct-a', 42 as unknown as string),
      () => manager.isFallbackStale('acct-a', 'token', {} as unknown as string),
      () => manager.isFallbackStale('', 'token'),
    ]) {
      expect(call).toThrow(TypeError)
    }
  })
})

describe('refreshMain joined in JavaScript', () => {
  it("a call like the last one, while its request runs, gets the same promise and is counted in the core's tally", async () => {
    const sim = await startUsageSimulator({ delayMs: 50 })
    sims.push(sim)
    const { manager } = make({ usageUrl: sim.url })
    const calls = vi.spyOn(native, 'refreshMain')
    const first = manager.refreshMain(ME, 'token-join')
    const rest = Array.from({ length: 99 }, () => manager.refreshMain(ME, 'token-join'))
    expect(calls).toHaveBeenCalledTimes(1)
    for (const p of rest) expect(p).toBe(first)
    // Another shape is another promise, on the same request (its first call is native too).
    const withMetadata = manager.refreshMainWithMetadata(ME, 'token-join')
    expect(withMetadata).not.toBe(first)
    expect(manager.refreshMainWithMetadata(ME, 'token-join')).toBe(withMetadata)
    expect(calls).toHaveBeenCalledTimes(2)
    await Promise.all([first, withMetadata])
    expect(sim.requests).toBe(1)
    expect(manager.stats().joinedInFlight).toBe(101)
    // The request is over: the next call is a new request, natively.
    await manager.refreshMain(ME, 'token-join')
    expect(sim.requests).toBe(2)
    expect(calls).toHaveBeenCalledTimes(3)
  })

  it('other arguments, an expected generation, or close() are never joined in JavaScript', async () => {
    const sim = await startUsageSimulator({ delayMs: 50 })
    sims.push(sim)
    const { manager } = make({ usageUrl: sim.url })
    const calls = vi.spyOn(native, 'refreshMain')
    const first = manager.refreshMain(ME, 'token-a')
    const generation = manager.getMainQuotaIdentityGeneration()
    expect(manager.refreshMain(ME, 'token-a', generation)).toBe(first)
    expect(calls).toHaveBeenCalledTimes(2)
    const other = manager.refreshMain('someone-else', 'token-b')
    expect(other).not.toBe(first)
    expect(calls).toHaveBeenCalledTimes(3)
    const closing = manager.close()
    const afterClose = manager.refreshMain('someone-else', 'token-b')
    expect(calls).toHaveBeenCalledTimes(4)
    await expect(afterClose).rejects.toMatchObject({ code: 'QUOTA_CLOSED' })
    await Promise.allSettled([first, other])
    await closing
  })

  it('a request that was switched away from (another identity bound) is not joined', async () => {
    const sim = await startUsageSimulator({ delayMs: 50 })
    sims.push(sim)
    const { manager } = make({ usageUrl: sim.url })
    const first = manager.refreshMain(ME, 'token-a')
    manager.setMain('someone-else', entryAt(T0, 20, 'someone-else'))
    const calls = vi.spyOn(native, 'refreshMain')
    const again = manager.refreshMain(ME, 'token-a')
    expect(calls).toHaveBeenCalledTimes(1)
    expect(again).toBe(native.refreshMain.call(manager, ME, 'token-a'))
    await Promise.allSettled([first, again])
  })
})
