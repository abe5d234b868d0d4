// The facade's fast paths for account lists (index.js: seedFallbacksFromAccounts and
// refreshAllFallbacks send a compact row per account, a seeding sends a snapshot only when the
// core could adopt it, the same list again while no fallback route changed is not sent at all,
// and a reloaded list sends only its changed accounts) must behave as the native methods, which
// read the whole list through JSON. This file proves it differentially: every test runs the same
// operations on a facade manager and on the bare native class (binding.js, the oracle) sharing
// one ManualClock, and compares after every step what a host can observe (cached entries,
// backoff, recorded errors, staleness, thrown or rejected errors, the resolver's calls, the tokens
// polled). Identical and edited re-seedings after a change are covered closely: a skip that
// missed a change would show as a state the native manager does not have. The deliberate
// differences (README, "Account lists": fields the calls do not use are not read, junk inside a
// snapshot is dropped, the list is checked before a resolver is asked) are asserted as such.
import { createRequire } from 'node:module'
import { join, resolve } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { ManualClock, QuotaManager } from '../index.js'
import type {
  FallbackAccount,
  OAuthFallbackAccount,
  QuotaApiError,
  QuotaEntry,
  QuotaManagerOptions,
  QuotaSnapshot,
  QuotaWindow,
  ScopedQuotaWindow,
} from '../index.js'
import { fingerprint, startUsageSimulator, usageBody } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'
import { MINUTE, SECOND, T0, junk } from './helpers/fallback-harness.js'

const require = createRequire(__filename)
const binding = require(join(resolve(__dirname, '..'), 'binding.js')) as typeof import('../binding.js')

/** The ids every comparison probes (the random run draws from these). */
const POOL = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']
const HOUR = 60 * MINUTE
/** Far ahead of every test clock: `access` counts only while `expires` is ahead. */
const NEVER_EXPIRES = Date.UTC(2100, 0, 1)

// ----- data ------------------------------------------------------------------------------------

function quotaWindow(checkedAt: number, used = 10): QuotaWindow {
  return { usedPercent: used, remainingPercent: 100 - used, checkedAt }
}

function scopedWindow(checkedAt: number, used = 30): ScopedQuotaWindow {
  return { ...quotaWindow(checkedAt, used), id: 'scoped-fable', title: 'Fable only', modelId: 'claude-fable-5-1', modelName: 'Fable' }
}

/** A polled snapshot whose windows and own time are all `checkedAt`. */
function snapshot(checkedAt: number, used = 10, extra: Partial<QuotaSnapshot> = {}): QuotaSnapshot {
  return { five_hour: quotaWindow(checkedAt, used), seven_day: quotaWindow(checkedAt, used + 5), source: 'poll', checkedAt, ...extra }
}

/** A persisted failure; its backoff lasts until `nextRetryAt` (10 minutes after it, unless told). */
function apiError(checkedAt: number, extra: Partial<QuotaApiError> = {}): QuotaApiError {
  return {
    message: 'Too Many Requests',
    checkedAt,
    status: 429,
    retryAfterMs: 10 * MINUTE,
    nextRetryAt: checkedAt + 10 * MINUTE,
    retryCount: 1,
    ...extra,
  }
}

function entryAt(checkedAt: number, used = 50, source: 'poll' | 'headers' = 'poll'): QuotaEntry {
  return { quota: snapshot(checkedAt, used, { source }), checkedAt, refreshAfter: checkedAt + 5 * MINUTE }
}

function account(id: string, extra: Partial<OAuthFallbackAccount> = {}): OAuthFallbackAccount {
  return { id, ...extra }
}

// ----- the twin: one facade manager, one native manager, one clock -----------------------------

/** What a call did, as plain data: its value, or its error's class, code and message. */
type Outcome = { returned: unknown } | { threw: { kind: string; code: unknown; message: string } }

function errorShape(error: unknown): { kind: string; code: unknown; message: string } {
  if (!(error instanceof Error)) return { kind: typeof error, code: undefined, message: String(error) }
  return { kind: error.constructor.name, code: (error as Error & { code?: unknown }).code, message: error.message }
}

function outcomeOf(call: () => unknown): Outcome {
  try {
    return { returned: call() }
  } catch (error) {
    return { threw: errorShape(error) }
  }
}

/** Entries by id, as plain data in id order (a Map's order is not part of the contract). */
function fallbacksAsData(manager: QuotaManager): Array<[string, QuotaEntry]> {
  return [...manager.getAllFallbacks()].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))
}

/** Everything a host can read about the fallback routes of `ids`. */
function observe(manager: QuotaManager, ids: readonly string[]): unknown {
  return {
    all: fallbacksAsData(manager),
    routes: ids.map((id) => ({
      id,
      entry: manager.getFallback(id),
      backedOff: manager.isFallbackBackedOff(id),
      error: manager.getFallbackApiError(id) ?? null,
      stale: manager.isFallbackStale(id),
    })),
  }
}

const opened: QuotaManager[] = []
const sims: UsageSimulator[] = []
afterEach(async () => {
  await Promise.all(opened.splice(0).map((m) => m.close().catch(() => undefined)))
  await Promise.all(sims.splice(0).map((s) => s.close()))
})

class Twin {
  readonly clock = new ManualClock(T0)
  readonly facade: QuotaManager
  readonly native: QuotaManager
  /** What happened so far, for failure messages. */
  readonly log: string[] = []

  constructor(facadeOptions: QuotaManagerOptions = {}, nativeOptions: QuotaManagerOptions = facadeOptions) {
    const base: QuotaManagerOptions = { statePath: null, apiCallGapMs: 0, backoff: { jitter: 0 }, clock: this.clock }
    this.facade = new QuotaManager({ ...base, ...facadeOptions })
    this.native = new binding.QuotaManager({ ...base, ...nativeOptions })
    expect(this.native).not.toBeInstanceOf(QuotaManager)
    opened.push(this.facade, this.native)
  }

  /** Runs `call` on both managers and expects the same outcome; returns the facade's. */
  both(what: string, call: (manager: QuotaManager) => unknown): Outcome {
    this.log.push(what)
    const fromFacade = outcomeOf(() => call(this.facade))
    const fromNative = outcomeOf(() => call(this.native))
    expect(fromFacade, this.context()).toStrictEqual(fromNative)
    return fromFacade
  }

  seed(what: string, accounts: readonly FallbackAccount[]): Outcome {
    return this.both(`seed ${what}`, (manager) => manager.seedFallbacksFromAccounts(accounts))
  }

  advance(ms: number): void {
    this.log.push(`advance ${ms}`)
    this.clock.advance(ms)
  }

  expectSameState(ids: readonly string[] = POOL): void {
    expect(observe(this.facade, ids), this.context()).toStrictEqual(observe(this.native, ids))
  }

  context(): string {
    return `after: ${this.log.slice(-12).join(' | ')}`
  }
}

/** Seeds `accounts` on both and compares the outcome and the state. */
function seedAndCompare(twin: Twin, what: string, accounts: readonly FallbackAccount[]): Outcome {
  const outcome = twin.seed(what, accounts)
  twin.expectSameState()
  return outcome
}

function expectTypeErrorNaming(outcome: Outcome, culprit: string): void {
  expect('threw' in outcome && outcome.threw.kind).toBe('TypeError')
  expect('threw' in outcome && outcome.threw.message).toContain(culprit)
}

/** A baseline both managers hold, so that a refused list can be seen to have changed nothing. */
function seedBaseline(twin: Twin): void {
  seedAndCompare(twin, 'baseline', [
    account('a', { quota: snapshot(T0 - MINUTE, 20) }),
    account('b', { lastQuotaRefreshError: apiError(T0 - SECOND) }),
  ])
  expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(20)
  expect(twin.facade.isFallbackBackedOff('b')).toBe(true)
}

/** refreshAllFallbacks on one manager: sync throws are a failure of their own. */
async function refreshOutcome(call: () => Promise<void>): Promise<Outcome | { threwSynchronously: unknown }> {
  let promise: Promise<void>
  try {
    promise = call()
  } catch (error) {
    return { threwSynchronously: errorShape(error) }
  }
  expect(promise).toBeInstanceOf(Promise)
  try {
    return { returned: await promise }
  } catch (error) {
    return { threw: errorShape(error) }
  }
}

async function refreshBoth(twin: Twin, what: string, call: (manager: QuotaManager) => Promise<void>): Promise<Outcome> {
  twin.log.push(`refreshAll ${what}`)
  const fromFacade = await refreshOutcome(() => call(twin.facade))
  // The bare native class throws what the facade turns into a rejection.
  const fromNative = await refreshOutcome(async () => call(twin.native))
  expect(fromFacade, twin.context()).toStrictEqual(fromNative)
  expect(fromFacade).not.toHaveProperty('threwSynchronously')
  return fromFacade as Outcome
}

// ----- 1. bad input ----------------------------------------------------------------------------

/** Each bad field shape, and the field the error must name. */
const BAD_FIELDS: Array<{ field: string; item: unknown }> = [
  { field: 'id', item: { enabled: true } },
  { field: 'id', item: { id: 7 } },
  { field: 'id', item: { id: '' } },
  { field: 'id', item: { id: '  \t' } },
  { field: 'id', item: { id: null } },
  { field: 'id', item: { id: ['a'] } },
  { field: 'enabled', item: { id: 'x', enabled: 'yes' } },
  { field: 'enabled', item: { id: 'x', enabled: 1 } },
  { field: 'enabled', item: { id: 'x', enabled: {} } },
  { field: 'access', item: { id: 'x', access: 42 } },
  { field: 'access', item: { id: 'x', access: { token: 't' } } },
  { field: 'access', item: { id: 'x', access: false } },
  { field: 'authLineageId', item: { id: 'x', authLineageId: 7 } },
  { field: 'authLineageId', item: { id: 'x', authLineageId: true } },
  { field: 'authLineageId', item: { id: 'x', authLineageId: ['l'] } },
]

/** `item` at `index` among good accounts (with snapshots, so a partial seeding would show). */
function listWithBadItemAt(index: number, item: unknown): FallbackAccount[] {
  const list: unknown[] = ['c', 'd', 'e', 'f'].map((id) => account(id, { quota: snapshot(T0, 40) }))
  list.splice(index, 0, item)
  return junk<FallbackAccount[]>(list)
}

class AccountRecord {
  constructor(
    readonly id: string,
    readonly quota: QuotaSnapshot,
  ) {}
}

describe('bad input: the same TypeError, naming the same account and field, and no change', () => {
  it('every bad field shape, at indices 0, 1 and 4, from both methods', async () => {
    const twin = new Twin()
    seedBaseline(twin)
    for (const { field, item } of BAD_FIELDS) {
      for (const index of [0, 1, 4]) {
        const list = listWithBadItemAt(index, item)
        const what = `${JSON.stringify(item)} at ${index}`
        const seeded = twin.seed(what, list)
        expectTypeErrorNaming(seeded, `accounts[${index}].${field}`)
        expect('threw' in seeded && seeded.threw.code).toBe('ERR_INVALID_ARG_TYPE')
        const refreshed = await refreshBoth(twin, what, (m) => m.refreshAllFallbacks(list))
        expectTypeErrorNaming(refreshed, `accounts[${index}].${field}`)
        const resolved = await refreshBoth(twin, `${what} with a resolver`, (m) => m.refreshAllFallbacks(list, () => 'tok'))
        expectTypeErrorNaming(resolved, `accounts[${index}].${field}`)
        twin.expectSameState()
      }
    }
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(20)
    expect(twin.facade.getFallback('c')).toBeNull()
  })

  it('a list that is not an array: seeding throws, refreshAllFallbacks rejects (never throws)', async () => {
    const twin = new Twin()
    seedBaseline(twin)
    const notLists: unknown[] = [undefined, null, 'accounts', 42, { id: 'a' }, { length: 1, 0: { id: 'a' } }, new Map([['a', { id: 'a' }]])]
    for (const value of notLists) {
      const list = junk<FallbackAccount[]>(value)
      const seeded = twin.seed(String(value), list)
      expect('threw' in seeded && seeded.threw.kind).toBe('TypeError')
      const refreshed = await refreshBoth(twin, String(value), (m) => m.refreshAllFallbacks(list))
      expect('threw' in refreshed && refreshed.threw.kind).toBe('TypeError')
      await refreshBoth(twin, `${String(value)} with a resolver`, (m) => m.refreshAllFallbacks(list, () => 'tok'))
    }
    const notResolvers: unknown[] = ['resolve', 42, {}]
    for (const resolver of notResolvers) {
      const refreshed = await refreshBoth(twin, `resolver ${String(resolver)}`, (m) =>
        m.refreshAllFallbacks([account('c')], junk<(a: FallbackAccount) => string>(resolver)),
      )
      expect('threw' in refreshed && refreshed.threw.message).toContain('resolveAccessToken')
    }
    twin.expectSameState()
  })

  it('holes, null items, arrays and non-objects as items name the index', async () => {
    const twin = new Twin()
    seedBaseline(twin)
    // eslint-disable-next-line no-sparse-arrays
    const sparse = [account('c'), , account('d')]
    const lists: Array<{ list: unknown[]; culprit: string }> = [
      { list: sparse, culprit: 'accounts[1]' },
      { list: [account('c'), null], culprit: 'accounts[1]' },
      { list: [account('c'), undefined], culprit: 'accounts[1]' },
      { list: [['c']], culprit: 'accounts[0]' },
      { list: [account('c'), account('d'), 'e'], culprit: 'accounts[2]' },
      { list: [7], culprit: 'accounts[0]' },
      { list: [account('c'), () => 'd'], culprit: 'accounts[1]' },
    ]
    for (const { list, culprit } of lists) {
      const accounts = junk<FallbackAccount[]>(list)
      expectTypeErrorNaming(twin.seed(culprit, accounts), culprit)
      expectTypeErrorNaming(await refreshBoth(twin, culprit, (m) => m.refreshAllFallbacks(accounts)), culprit)
      twin.expectSameState()
    }
  })

  it('class instances, objects with toJSON and null-prototype objects are read as JSON reads them', () => {
    const twin = new Twin()
    seedBaseline(twin)
    const bare = Object.assign(Object.create(null) as Record<string, unknown>, { id: 'e', quota: snapshot(T0, 61) })
    seedAndCompare(twin, 'instances and toJSON', [
      junk<FallbackAccount>(new AccountRecord('a', snapshot(T0, 33))),
      junk<FallbackAccount>({ id: 'ignored', toJSON: () => ({ id: 'c', quota: snapshot(T0, 44) }) }),
      account('d', { quota: junk<QuotaSnapshot>({ toJSON: () => snapshot(T0, 55) }) }),
      junk<FallbackAccount>(bare),
    ])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(33)
    expect(twin.facade.getFallback('c')?.quota.five_hour?.usedPercent).toBe(44)
    expect(twin.facade.getFallback('ignored')).toBeNull()
    // An instance with a bad field is named like an object.
    expectTypeErrorNaming(
      twin.seed('bad instance', junk<FallbackAccount[]>([account('a'), new AccountRecord(junk<string>(5), snapshot(T0))])),
      'accounts[1].id',
    )
    twin.expectSameState()
  })

  it('objects with (pure) getters are read like data', () => {
    const twin = new Twin()
    const withGetters = {
      get id() {
        return 'a'
      },
      get quota() {
        return snapshot(T0, 71)
      },
      get lastQuotaRefreshError() {
        return apiError(T0 - MINUTE)
      },
    }
    seedAndCompare(twin, 'getters', [junk<FallbackAccount>(withGetters)])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(71)
    const badGetter = {
      get id() {
        return 'b'
      },
      get enabled() {
        return 'sometimes'
      },
    }
    expectTypeErrorNaming(twin.seed('bad getter', junk<FallbackAccount[]>([badGetter])), 'accounts[0].enabled')
    twin.expectSameState()
  })

  it('a BigInt in a field the call reads: the same TypeError', async () => {
    const twin = new Twin()
    seedBaseline(twin)
    const readByBoth: FallbackAccount[][] = [[account('c', { enabled: junk<boolean>(1n) })], [account('c', { access: junk<string>(1n) })]]
    const readBySeeding = [[account('c', { lastQuotaRefreshError: { ...apiError(T0), checkedAt: junk<number>(5n) } })]]
    const readByRefreshing = [[account('c', { expires: junk<number>(5n), access: 'tok-c' })]]
    for (const list of [...readByBoth, ...readBySeeding]) {
      const seeded = twin.seed('bigint', list)
      expect('threw' in seeded && seeded.threw.kind).toBe('TypeError')
      twin.expectSameState()
    }
    for (const list of [...readByBoth, ...readByRefreshing]) {
      const refreshed = await refreshBoth(twin, 'bigint', (m) => m.refreshAllFallbacks(list))
      expect('threw' in refreshed && refreshed.threw.kind).toBe('TypeError')
      twin.expectSameState()
    }
  })
})

// The native method reads each account whole (JSON.stringify of the list); the facade reads only
// the fields it needs. These compare the two where that difference could show.
/**
 * Deliberate differences (README, "Account lists"): the facade reads only the fields the manager
 * uses, by property access, so what JSON.stringify of the whole account would trip over elsewhere
 * is not looked at. Each case compares the facade, given the odd list, with the native method
 * given the list a host means (the odd value left out).
 */
function seedMeaning(twin: Twin, what: string, odd: readonly FallbackAccount[], meant: readonly FallbackAccount[]): void {
  twin.log.push(`seed ${what}`)
  const fromFacade = outcomeOf(() => twin.facade.seedFallbacksFromAccounts(odd))
  const fromNative = outcomeOf(() => twin.native.seedFallbacksFromAccounts(meant))
  expect(fromFacade, twin.context()).toStrictEqual(fromNative)
  expect(fromFacade).toStrictEqual({ returned: undefined })
  twin.expectSameState()
}

describe('fields the manager does not read are not read (README: Account lists)', () => {
  it('a BigInt in a field no call reads, or in one this call does not read, is not an error', async () => {
    const twin = new Twin()
    seedBaseline(twin)
    const odd = [account('a'), account('c', { label: junk<string>(5n) })]
    seedMeaning(twin, 'bigint label', odd, [account('a'), account('c')])
    // The native method still reads the whole list, and refuses it.
    expectTypeErrorNaming(
      outcomeOf(() => twin.native.seedFallbacksFromAccounts(odd)),
      'could not be read as plain data',
    )
    twin.expectSameState()
    await expect(twin.facade.refreshAllFallbacks(odd)).resolves.toBeUndefined()
    await expect(twin.facade.refreshAllFallbacks(odd, () => undefined)).resolves.toBeUndefined()
    // Seeding does not read `expires`; refreshing does not read the error.
    seedMeaning(twin, 'bigint expires', [account('a'), account('c', { expires: junk<number>(5n) })], [account('a'), account('c')])
    const withBigError = [account('a'), account('c', { lastQuotaRefreshError: { ...apiError(T0), checkedAt: junk<number>(5n) } })]
    await expect(twin.facade.refreshAllFallbacks(withBigError)).resolves.toBeUndefined()
    // A BigInt in a field the call reads is refused alike.
    await refreshBoth(twin, 'bigint expires', (m) => m.refreshAllFallbacks([account('c', { access: 'x', expires: junk<number>(5n) })]))
    twin.expectSameState()
  })

  it('a BigInt inside a snapshot is dropped as junk, a snapshot that cannot be written counts as none, and nothing is left half done', () => {
    const twin = new Twin()
    seedBaseline(twin)
    const adoptable = snapshot(T0 + SECOND, 80, { extraUsage: junk<QuotaSnapshot['extraUsage']>({ used: 5n }) })
    seedMeaning(
      twin,
      'bigint in a newer snapshot',
      [account('c', { quota: adoptable })],
      [account('c', { quota: snapshot(T0 + SECOND, 80, { extraUsage: junk<QuotaSnapshot['extraUsage']>({}) }) })],
    )
    expect(twin.facade.getFallback('c')?.quota.five_hour?.usedPercent).toBe(80)
    const cyclic = snapshot(T0 + 2 * SECOND, 85) as QuotaSnapshot & { self?: unknown }
    cyclic.self = cyclic
    // The whole list seeds (a and b forgotten, d adopted); c's snapshot counts as none.
    seedMeaning(
      twin,
      'cycle in a newer snapshot',
      [account('c', { quota: cyclic }), account('d', { quota: snapshot(T0, 30) })],
      [account('c'), account('d', { quota: snapshot(T0, 30) })],
    )
    expect(twin.facade.getFallback('c')?.quota.five_hour?.usedPercent).toBe(80)
    expect(twin.facade.getFallback('d')?.quota.five_hour?.usedPercent).toBe(30)
  })

  it('a cycle or a throwing getter in a field no call reads is not looked at', () => {
    const twin = new Twin()
    seedBaseline(twin)
    const cyclic: Record<string, unknown> = { id: 'c' }
    cyclic.self = cyclic
    seedMeaning(twin, 'cycle', [account('a'), junk<FallbackAccount>(cyclic)], [account('a'), account('c')])
    const throwing = {
      id: 'c',
      get label(): string {
        throw new Error('label unavailable')
      },
    }
    seedMeaning(twin, 'throwing getter', [account('a'), junk<FallbackAccount>(throwing)], [account('a'), account('c')])
    // A getter that throws in a field the call reads: the native method reads the list whole and
    // refuses it, with nothing seeded.
    const throwingId = {
      get id(): string {
        throw new Error('id unavailable')
      },
    }
    twin.seed('throwing id', [account('a'), junk<FallbackAccount>(throwingId)])
    twin.expectSameState()
  })

  it('a non-enumerable field is not read, as JSON.stringify does not read it', () => {
    const twin = new Twin()
    seedBaseline(twin)
    const hiddenId = Object.defineProperty({ quota: snapshot(T0, 12) }, 'id', { value: 'c', enumerable: false })
    expectTypeErrorNaming(twin.seed('non-enumerable id', [junk<FallbackAccount>(hiddenId)]), 'accounts[0].id')
    twin.expectSameState()
    const hiddenDisabled = Object.defineProperty(account('d', { quota: snapshot(T0, 13) }), 'enabled', { value: false, enumerable: false })
    seedMeaning(twin, 'non-enumerable enabled', [junk<FallbackAccount>(hiddenDisabled)], [account('d', { quota: snapshot(T0, 13) })])
    expect(twin.facade.getFallback('d')?.quota.five_hour?.usedPercent).toBe(13)
  })

  it('an inherited field (an enumerable Object.prototype property) is not read, as JSON does not read it', () => {
    const twin = new Twin()
    const proto = Object.prototype as Record<string, unknown>
    proto.quota = snapshot(T0, 66)
    proto.enabled = false
    try {
      twin.seed('inherited quota and enabled', [junk<FallbackAccount>({ id: 'a' }), account('b', { quota: snapshot(T0, 14) })])
    } finally {
      delete proto.quota
      delete proto.enabled
    }
    twin.expectSameState()
    expect(twin.facade.getFallback('a')).toBeNull()
    expect(twin.facade.getFallback('b')?.quota.five_hour?.usedPercent).toBe(14)
  })

  it("a Proxy's traps are met as JSON.stringify meets them", () => {
    const twin = new Twin()
    // The target has no quota: JSON, walking its own keys, never asks the trap for one.
    const trapped = new Proxy({ id: 'a' }, { get: (target, key) => (key === 'quota' ? snapshot(T0, 77) : Reflect.get(target, key)) })
    // Own keys that hide every field: JSON reads an empty object.
    const hidden = new Proxy(account('b', { quota: snapshot(T0, 15) }), { ownKeys: () => [] })
    seedAndCompare(twin, 'proxies', [junk<FallbackAccount>(trapped), account('c', { quota: snapshot(T0, 16) })])
    expect(twin.facade.getFallback('a')).toBeNull()
    expectTypeErrorNaming(twin.seed('proxy without own keys', [junk<FallbackAccount>(hidden)]), 'accounts[0].id')
    twin.expectSameState()
  })

  it('a getter is read once per seeding, as JSON.stringify reads it', () => {
    const twin = new Twin()
    let reads = 0
    const nextSnapshot = (): QuotaSnapshot => snapshot(T0 + reads++ * SECOND, 10 + reads)
    const list = (): FallbackAccount[] => [
      junk<FallbackAccount>({
        id: 'a',
        get quota() {
          return nextSnapshot()
        },
      }),
    ]
    reads = 0
    twin.facade.seedFallbacksFromAccounts(list())
    const facadeReads = reads
    reads = 0
    twin.native.seedFallbacksFromAccounts(list())
    expect(facadeReads).toBe(reads)
    twin.expectSameState()
  })
})

// ----- 2. which accounts count ---------------------------------------------------------------

describe('which accounts count', () => {
  it("type 'api' accounts are ignored, even with bad fields, and do not shadow an OAuth twin", () => {
    const twin = new Twin()
    seedAndCompare(twin, 'api first', [
      junk<FallbackAccount>({ type: 'api', id: 'a', quota: snapshot(T0, 90), apiKey: 'k' }),
      account('a', { quota: snapshot(T0, 15) }),
      junk<FallbackAccount>({ type: 'api', id: 5, enabled: 'x', access: 7 }),
      account('b', { type: 'oauth', quota: snapshot(T0, 25) }),
    ])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(15)
    // Only an API-key account listed: the OAuth one is forgotten.
    seedAndCompare(twin, 'api only', [junk<FallbackAccount>({ type: 'api', id: 'a' }), account('b')])
    expect(twin.facade.getFallback('a')).toBeNull()
    // Other type values are OAuth accounts.
    seedAndCompare(twin, 'odd types', [
      junk<FallbackAccount>({ type: 'API', id: 'c', quota: snapshot(T0, 35) }),
      junk<FallbackAccount>({ type: 7, id: 'd', quota: snapshot(T0, 45) }),
    ])
  })

  it('duplicate ids: the first wins, but a later duplicate with a bad field still throws', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'duplicates', [
      account('a', { quota: snapshot(T0, 10), lastQuotaRefreshError: undefined }),
      account('b'),
      account('a', { quota: snapshot(T0 + MINUTE, 90), lastQuotaRefreshError: apiError(T0) }),
    ])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(false)
    expectTypeErrorNaming(
      twin.seed('bad duplicate', junk<FallbackAccount[]>([account('a'), { id: 'a', enabled: 'no' }])),
      'accounts[1].enabled',
    )
    // A disabled first record wins over an enabled duplicate.
    seedAndCompare(twin, 'disabled first', [
      account('c', { enabled: false, quota: snapshot(T0, 10) }),
      account('c', { quota: snapshot(T0, 20) }),
    ])
    expect(twin.facade.getFallback('c')).toBeNull()
  })

  it('disabled accounts are not seeded but kept; enabled again, they are seeded', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'a cached', [account('a', { quota: snapshot(T0 - MINUTE, 10) })])
    const disabled = [
      account('a', { enabled: false, quota: snapshot(T0, 60), lastQuotaRefreshError: apiError(T0) }),
      account('b', { enabled: false, quota: snapshot(T0, 70) }),
    ]
    seedAndCompare(twin, 'disabled', disabled)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(false)
    expect(twin.facade.getFallback('b')).toBeNull()
    seedAndCompare(twin, 'disabled again', disabled)
    seedAndCompare(twin, 'enabled: null', [
      account('a', { enabled: junk<boolean>(null), quota: snapshot(T0, 60) }),
      account('b', { enabled: true, quota: snapshot(T0, 70) }),
    ])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(60)
    expect(twin.facade.getFallback('b')?.quota.five_hour?.usedPercent).toBe(70)
  })
})

// ----- 3. snapshot adoption --------------------------------------------------------------------

describe('snapshot adoption', () => {
  it('a newer snapshot is adopted; an older or equal one is not', () => {
    const twin = new Twin()
    const at = (checkedAt: number, used: number) => [account('a', { quota: snapshot(checkedAt, used) })]
    seedAndCompare(twin, 'first', at(T0 - 5 * MINUTE, 10))
    seedAndCompare(twin, 'newer', at(T0 - MINUTE, 20))
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(20)
    seedAndCompare(twin, 'equal', at(T0 - MINUTE, 30))
    seedAndCompare(twin, 'older', at(T0 - 3 * MINUTE, 40))
    seedAndCompare(twin, 'fraction above', at(T0 - MINUTE + 0.5, 50))
    seedAndCompare(twin, 'one ms newer', at(T0 - MINUTE + 1, 60))
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(60)
  })

  it('windows without checkedAt, junk windows, only its own checkedAt', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'cached', [account('a', { quota: snapshot(T0 - 5 * MINUTE, 10) })])
    const quotas: unknown[] = [
      { five_hour: { usedPercent: 30, remainingPercent: 70 }, seven_day: { usedPercent: 40, remainingPercent: 60 } },
      { five_hour: { usedPercent: 30, remainingPercent: 70 }, checkedAt: T0 - MINUTE },
      { checkedAt: T0 },
      { five_hour: 'full', seven_day: { usedPercent: 'x', checkedAt: T0 }, scoped: 'none', checkedAt: T0 },
      { five_hour: [quotaWindow(T0, 33)], seven_day: quotaWindow(T0 - 2 * MINUTE, 44) },
      { five_hour: null, seven_day: quotaWindow(T0 - MINUTE, 45), checkedAt: null },
      { five_hour: quotaWindow(T0 - 10 * MINUTE, 46), checkedAt: T0 - 30 * SECOND },
      7,
      'quota',
      [],
      null,
    ]
    for (const quota of quotas) {
      // a has a cached entry, b has none.
      seedAndCompare(twin, JSON.stringify(quota), [
        account('a', { quota: junk<QuotaSnapshot>(quota) }),
        account('b', { quota: junk<QuotaSnapshot>(quota) }),
      ])
      twin.both('clear b', (m) => m.clearFallback('b'))
    }
    // The last snapshot is dated by its own checkedAt, newer than its only window.
    expect(twin.facade.getFallback('a')?.checkedAt).toBe(T0 - 30 * SECOND)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(46)
  })

  it('scoped windows date the snapshot too', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'cached', [account('a', { quota: snapshot(T0 - 5 * MINUTE, 10) })])
    const scopedNewer = snapshot(T0 - 10 * MINUTE, 20, { checkedAt: undefined, scoped: [scopedWindow(T0 - MINUTE)] })
    seedAndCompare(twin, 'scoped newer', [account('a', { quota: scopedNewer })])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(20)
    const junkScoped = snapshot(T0 - 10 * MINUTE, 30, {
      checkedAt: undefined,
      scoped: junk<ScopedQuotaWindow[]>([{ checkedAt: T0 }, null, 4, [scopedWindow(T0)], scopedWindow(T0 - 20 * MINUTE)]),
    })
    seedAndCompare(twin, 'junk scoped', [account('a', { quota: junkScoped })])
    const scopedNotArray = snapshot(T0 - 10 * MINUTE, 35, {
      checkedAt: undefined,
      scoped: junk<ScopedQuotaWindow[]>({ 0: scopedWindow(T0) }),
    })
    seedAndCompare(twin, 'scoped object', [account('a', { quota: scopedNotArray })])
    const scopedOnly = { scoped: [scopedWindow(T0, 77)] }
    seedAndCompare(twin, 'scoped only', [account('a', { quota: scopedOnly }), account('b', { quota: scopedOnly })])
    expect(twin.facade.getFallback('b')?.quota.scoped?.[0]?.usedPercent).toBe(77)
  })

  it('checkedAt as a string, Infinity, NaN, negative, huge or fractional', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'cached', [account('a', { quota: snapshot(T0 - 5 * MINUTE, 10) })])
    const times: unknown[] = [
      String(T0),
      new Date(T0).toISOString(),
      Infinity,
      -Infinity,
      NaN,
      -5,
      -0.5,
      0,
      9e15,
      1e300,
      T0 + 0.999,
      new Date(T0),
    ]
    let used = 20
    for (const at of times) {
      used += 1
      const odd = junk<number>(at)
      const inWindows = { five_hour: quotaWindow(odd, used), seven_day: quotaWindow(T0 - 6 * MINUTE, used) }
      const asOwn = { ...snapshot(T0 - 6 * MINUTE, used), checkedAt: odd }
      const mixed = { ...snapshot(T0 - 4 * MINUTE, used), scoped: [scopedWindow(odd)] }
      for (const [shape, quota] of Object.entries({ inWindows, asOwn, mixed })) {
        seedAndCompare(twin, `${shape} ${String(at)}`, [account('a', { quota }), account('b', { quota })])
      }
    }
  })

  it('a snapshot from the future (clock skew) seeded again as the clock catches up', () => {
    const twin = new Twin()
    const list = [account('a', { quota: snapshot(T0 + HOUR, 10) }), account('b', { quota: snapshot(T0 + 2 * MINUTE, 20) })]
    seedAndCompare(twin, 'future', list)
    expect(twin.facade.getFallback('a')?.checkedAt).toBe(T0 + HOUR)
    seedAndCompare(twin, 'future again', list)
    twin.advance(30 * MINUTE)
    twin.expectSameState()
    seedAndCompare(twin, 'future, clock +30 min', list)
    twin.advance(2 * HOUR)
    seedAndCompare(twin, 'past now', list)
    seedAndCompare(twin, 'a copy', structuredClone(list))
  })
})

// ----- 4. errors ------------------------------------------------------------------------------

describe('lastQuotaRefreshError adoption', () => {
  it('an error alone arms the backoff, which ends with the clock', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'error', [
      account('a', { lastQuotaRefreshError: apiError(T0 - MINUTE) }),
      account('b', { lastQuotaRefreshError: apiError(T0 - MINUTE, { status: 500, retryAfterMs: undefined, nextRetryAt: undefined }) }),
    ])
    expect(twin.facade.isFallbackBackedOff('a')).toBe(true)
    expect(twin.facade.getFallbackApiError('a')?.status).toBe(429)
    twin.advance(5 * MINUTE)
    twin.expectSameState()
    twin.advance(10 * MINUTE)
    twin.expectSameState()
    expect(twin.facade.isFallbackBackedOff('a')).toBe(false)
  })

  it('with a snapshot in the same account: the error counts unless a poll newer than it was adopted', () => {
    const twin = new Twin()
    const cases: Array<{ id: string; quota?: QuotaSnapshot; error: QuotaApiError; backedOff: boolean }> = [
      { id: 'a', quota: snapshot(T0 - 30 * SECOND), error: apiError(T0 - MINUTE), backedOff: false },
      { id: 'b', quota: snapshot(T0 - 2 * MINUTE), error: apiError(T0 - MINUTE), backedOff: true },
      { id: 'c', quota: snapshot(T0 - 30 * SECOND, 10, { source: 'headers' }), error: apiError(T0 - MINUTE), backedOff: true },
      { id: 'd', quota: snapshot(T0 - MINUTE), error: apiError(T0 - MINUTE), backedOff: true },
      { id: 'e', quota: junk<QuotaSnapshot>({ five_hour: 'junk', checkedAt: T0 }), error: apiError(T0 - MINUTE), backedOff: true },
    ]
    seedAndCompare(
      twin,
      'snapshot and error',
      cases.map(({ id, quota, error }) => account(id, { quota, lastQuotaRefreshError: error })),
    )
    for (const { id, backedOff } of cases) expect(twin.facade.isFallbackBackedOff(id), id).toBe(backedOff)
  })

  it('with a cached entry: the error is judged against it when the snapshot is not newer', () => {
    const twin = new Twin()
    twin.both('set a', (m) => m.setFallback('a', entryAt(T0)))
    twin.both('set b', (m) => m.setFallback('b', entryAt(T0 - 5 * MINUTE)))
    twin.both('set c', (m) => m.setFallback('c', entryAt(T0, 50, 'headers')))
    twin.expectSameState()
    const list = ['a', 'b', 'c'].map((id) =>
      account(id, { quota: snapshot(T0 - 10 * MINUTE), lastQuotaRefreshError: apiError(T0 - MINUTE) }),
    )
    seedAndCompare(twin, 'older snapshots, error', list)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(false)
    expect(twin.facade.isFallbackBackedOff('b')).toBe(true)
    expect(twin.facade.isFallbackBackedOff('c')).toBe(true)
    // A newer error of the same account, then an older one again.
    const newer = ['a', 'b', 'c'].map((id) =>
      account(id, {
        quota: snapshot(T0 - 10 * MINUTE),
        lastQuotaRefreshError: apiError(T0 + SECOND, { status: 503, retryAfterMs: HOUR, nextRetryAt: T0 + HOUR }),
      }),
    )
    seedAndCompare(twin, 'newer error', newer)
    seedAndCompare(twin, 'older error again', list)
    twin.advance(20 * MINUTE)
    seedAndCompare(twin, 'older error, later', list)
  })

  it('junk errors and odd fields', () => {
    const twin = new Twin()
    const errors: unknown[] = [
      '429!',
      { message: 5 },
      { message: 'no time' },
      { checkedAt: T0 },
      { message: 'string time', checkedAt: String(T0) },
      { message: 'odd', checkedAt: T0, status: 'x', retryAfterMs: -1, nextRetryAt: NaN, retryCount: 1.5 },
      { message: 'retry count', checkedAt: T0 - SECOND, retryCount: 3, nextRetryAt: T0 + 3 * MINUTE },
      { message: 'infinite', checkedAt: Infinity },
    ]
    errors.forEach((error, index) => {
      const id = POOL[index % POOL.length] ?? 'a'
      seedAndCompare(twin, JSON.stringify(error), [account(id, { lastQuotaRefreshError: junk<QuotaApiError>(error) })])
    })
  })
})

// ----- 5. identical re-seeding after a change ------------------------------------------------

describe('the same list again, after something changed in between', () => {
  /** One list, seeded as it is every time (the same array and objects). */
  function standingList(): FallbackAccount[] {
    return [
      account('a', { authLineageId: 'login-a', quota: snapshot(T0 - MINUTE, 10), lastQuotaRefreshError: apiError(T0 - 30 * SECOND) }),
      account('b', { quota: snapshot(T0 - 2 * MINUTE, 20) }),
      account('c', { lastQuotaRefreshError: apiError(T0 - 10 * SECOND, { status: 500 }) }),
    ]
  }

  it('clearFallback, then the same list: entry and backoff come back', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(true)
    twin.both('clear a', (m) => m.clearFallback('a'))
    twin.both('clear c', (m) => m.clearFallback('c'))
    twin.expectSameState()
    expect(twin.facade.getFallback('a')).toBeNull()
    seedAndCompare(twin, 'list again', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(true)
    expect(twin.facade.isFallbackBackedOff('c')).toBe(true)
  })

  it('clearFallback of an id that has no entry, then the same list', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    twin.both('clear z', (m) => m.clearFallback('z'))
    seedAndCompare(twin, 'list again', list)
  })

  it('setFallback with an older entry, then the same list: the snapshot wins again', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    twin.both('set older a', (m) => m.setFallback('a', entryAt(T0 - HOUR, 99)))
    twin.both('set older b', (m) => m.setFallback('b', entryAt(T0 - HOUR, 98, 'headers')))
    twin.expectSameState()
    seedAndCompare(twin, 'list again', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    expect(twin.facade.getFallback('b')?.quota.five_hour?.usedPercent).toBe(20)
    twin.both('set newer a', (m) => m.setFallback('a', entryAt(T0, 97)))
    seedAndCompare(twin, 'list once more', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(97)
  })

  it('a replaced login: the first seeding after it adopts nothing for that account, the next identical one does', () => {
    const twin = new Twin()
    seedAndCompare(twin, 'login 1', [account('a', { authLineageId: 'login-1', quota: snapshot(T0 - 10 * MINUTE, 10) })])
    const replaced = [
      account('a', { authLineageId: 'login-2', quota: snapshot(T0 - MINUTE, 60), lastQuotaRefreshError: apiError(T0 - 30 * SECOND) }),
    ]
    seedAndCompare(twin, 'login 2', replaced)
    expect(twin.facade.getFallback('a')).toBeNull()
    expect(twin.facade.isFallbackBackedOff('a')).toBe(false)
    seedAndCompare(twin, 'login 2 again', replaced)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(60)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(true)
    // Back to the first login (retired): the same list as before, twice.
    const back = [account('a', { authLineageId: 'login-1', quota: snapshot(T0, 11) })]
    seedAndCompare(twin, 'login 1 again', back)
    seedAndCompare(twin, 'login 1 again, twice', back)
    // A login named for the first time, then the same list, in a copy.
    const named = [account('b', { quota: snapshot(T0 - MINUTE, 20) })]
    seedAndCompare(twin, 'b without login', named)
    const namedLater = [account('b', { authLineageId: 'login-b', quota: snapshot(T0, 21) })]
    seedAndCompare(twin, 'b with login', namedLater)
    seedAndCompare(twin, 'b with login, copy', structuredClone(namedLater))
  })

  it('a login replaced through getFallback(id, account) between two identical seedings', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    twin.both('getFallback with another login', (m) => m.getFallback('a', { authLineageId: 'login-z' }))
    twin.expectSameState()
    seedAndCompare(twin, 'list again', list)
    seedAndCompare(twin, 'list once more', list)
  })

  it('an account removed, then the same list again', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    seedAndCompare(twin, 'without a', list.slice(1))
    expect(twin.facade.getFallback('a')).toBeNull()
    seedAndCompare(twin, 'list again', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    seedAndCompare(twin, 'empty', [])
    seedAndCompare(twin, 'list after empty', list)
    expect(twin.facade.isFallbackBackedOff('c')).toBe(true)
  })

  it('the clock moved between identical seedings', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    for (const step of [SECOND, 5 * MINUTE, 20 * MINUTE, 2 * HOUR]) {
      twin.advance(step)
      seedAndCompare(twin, `list after ${step}`, list)
    }
    twin.clock.set(T0 - HOUR)
    seedAndCompare(twin, 'list, clock set back', list)
  })

  it('the list changed in place (same array, same objects)', () => {
    const twin = new Twin()
    const junkWindow = { usedPercent: junk<number>('x'), remainingPercent: 1, checkedAt: T0 - MINUTE }
    const quota: QuotaSnapshot = { five_hour: junkWindow, checkedAt: T0 - MINUTE }
    const first = account('a', { quota })
    const list: FallbackAccount[] = [first, account('b', { quota: snapshot(T0 - 2 * MINUTE, 20) })]
    seedAndCompare(twin, 'junk window', list)
    expect(twin.facade.getFallback('a')).toBeNull()
    // The host fixes the window in place: same times, same ids, now adoptable.
    junkWindow.usedPercent = 33
    seedAndCompare(twin, 'window fixed in place', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(33)
    // A newer snapshot written in place.
    first.quota = snapshot(T0, 44)
    seedAndCompare(twin, 'newer snapshot in place', list)
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(44)
    // An error added in place, a login added in place, an account disabled in place.
    first.lastQuotaRefreshError = apiError(T0 + SECOND)
    seedAndCompare(twin, 'error in place', list)
    expect(twin.facade.isFallbackBackedOff('a')).toBe(true)
    first.authLineageId = 'login-new'
    seedAndCompare(twin, 'login in place', list)
    seedAndCompare(twin, 'login in place, again', list)
    list.push(account('c', { quota: snapshot(T0, 55) }))
    seedAndCompare(twin, 'pushed in place', list)
    list.length = 1
    seedAndCompare(twin, 'truncated in place', list)
    expect(twin.facade.getFallback('c')).toBeNull()
  })

  it('a new list whose compact rows are equal but whose snapshots differ', () => {
    const twin = new Twin()
    // No windows: nothing to adopt, but the rows (id, enabled, type, login, bound) are set.
    seedAndCompare(twin, 'windowless', [account('a', { quota: { checkedAt: T0 - MINUTE } })])
    expect(twin.facade.getFallback('a')).toBeNull()
    // Same rows, same bound (T0 - MINUTE), but now a window.
    seedAndCompare(twin, 'with a window', [
      account('a', { quota: { five_hour: quotaWindow(T0 - 2 * MINUTE, 66), checkedAt: T0 - MINUTE } }),
    ])
    expect(twin.facade.getFallback('a')?.quota.five_hour?.usedPercent).toBe(66)
  })

  it('a header push between identical seedings', () => {
    const twin = new Twin()
    const list = standingList()
    seedAndCompare(twin, 'list', list)
    twin.both('push b', (m) => m.pushFallbackFromHeaders('b', snapshot(T0 - 90 * MINUTE, 5, { source: 'headers' })))
    twin.both('push d', (m) => m.pushFallbackFromHeaders('d', snapshot(T0, 6, { source: 'headers' })))
    twin.expectSameState()
    seedAndCompare(twin, 'list again', list)
    expect(twin.facade.getFallback('d')).toBeNull()
  })
})

// ----- 6. random differential run -----------------------------------------------------------

/** A small seeded generator (xorshift32): the same seed, the same run. */
function randomSource(seed: number): () => number {
  let state = seed >>> 0 || 0x9e3779b9
  return () => {
    state ^= state << 13
    state >>>= 0
    state ^= state >>> 17
    state ^= state << 5
    state >>>= 0
    return state / 4294967296
  }
}

class Dice {
  constructor(readonly next: () => number) {}
  below(n: number): number {
    return Math.floor(this.next() * n)
  }
  chance(p: number): boolean {
    return this.next() < p
  }
  pick<T>(items: readonly T[]): T {
    const item = items[this.below(items.length)]
    if (item === undefined && !items.includes(item as T)) throw new Error('pick from an empty list')
    return item as T
  }
}

const LOGINS = [undefined, undefined, 'login-1', 'login-2']
const OFFSETS = [-30 * MINUTE, -10 * MINUTE, -5 * MINUTE, -MINUTE, 0, MINUTE, 10 * MINUTE]

function randomTime(dice: Dice, now: number): number {
  return now + dice.pick(OFFSETS)
}

function randomQuota(dice: Dice, now: number): QuotaSnapshot | undefined {
  const used = dice.below(101)
  switch (dice.below(6)) {
    case 0:
      return undefined
    case 1:
      return { checkedAt: randomTime(dice, now) }
    case 2:
      return snapshot(randomTime(dice, now), used, { checkedAt: undefined, scoped: [scopedWindow(randomTime(dice, now), used)] })
    case 3:
      return {
        five_hour: { ...quotaWindow(randomTime(dice, now), used), usedPercent: junk<number>('junk') },
        checkedAt: randomTime(dice, now),
      }
    default:
      return snapshot(randomTime(dice, now), used, { source: dice.pick(['poll', 'headers'] as const) })
  }
}

function randomError(dice: Dice, now: number): QuotaApiError | undefined {
  if (!dice.chance(0.3)) return undefined
  const checkedAt = randomTime(dice, now)
  const lasting = dice.pick([undefined, 30 * SECOND, 10 * MINUTE, HOUR])
  return apiError(checkedAt, {
    status: dice.pick([429, 500, 401, undefined]),
    retryAfterMs: dice.pick([undefined, 30 * SECOND, 10 * MINUTE]),
    nextRetryAt: lasting === undefined ? undefined : checkedAt + lasting,
    retryCount: dice.pick([undefined, 1, 3]),
  })
}

function randomAccount(dice: Dice, now: number): FallbackAccount {
  const id = dice.pick(POOL)
  if (dice.chance(0.05)) return { type: 'api', id }
  return {
    id,
    enabled: dice.pick([undefined, true, true, true, false]),
    authLineageId: dice.pick(LOGINS),
    quota: randomQuota(dice, now),
    lastQuotaRefreshError: randomError(dice, now),
  }
}

function randomList(dice: Dice, now: number): FallbackAccount[] {
  const list = Array.from({ length: dice.below(11) }, () => randomAccount(dice, now))
  if (dice.chance(0.5)) return list
  // As the plugin's lists are: each id once, OAuth accounts only (the facade may then seed a
  // reloaded list's edited accounts alone).
  const ids = new Set<string>()
  return list.filter((account) => account.type !== 'api' && !ids.has(account.id) && ids.add(account.id))
}

/** One random step on the twin; `previous` is the list last seeded. */
function randomStep(twin: Twin, dice: Dice, previous: FallbackAccount[]): FallbackAccount[] {
  const now = twin.clock.now()
  const id = dice.pick(POOL)
  const roll = dice.below(100)
  if (roll < 30) {
    const list = randomList(dice, now)
    twin.seed(`new list ${JSON.stringify(list)}`, list)
    return list
  }
  if (roll < 55) {
    twin.seed('the same list', previous)
    return previous
  }
  if (roll < 60) {
    const copy = structuredClone(previous)
    twin.seed('a copy of the list', copy)
    return copy
  }
  if (roll < 65) {
    const changed = previous.find((a) => a.type !== 'api' && a.quota?.five_hour !== undefined)
    if (changed?.quota?.five_hour) changed.quota.five_hour.usedPercent = dice.below(101)
    twin.seed(`the same list, ${changed?.id ?? 'nothing'} changed in place`, previous)
    return previous
  }
  if (roll < 72 && previous.length > 0) {
    // The list reloaded with one account edited (same ids): the facade seeds that one alone.
    const edited = structuredClone(previous)
    const at = dice.below(edited.length)
    const fresh = randomAccount(dice, now)
    const field = dice.pick(['quota', 'lastQuotaRefreshError', 'authLineageId', 'enabled'] as const)
    edited[at] = junk<FallbackAccount>({ ...edited[at], [field]: (fresh as unknown as Record<string, unknown>)[field] })
    twin.seed(`the list with ${String(edited[at]?.id)}.${field} edited`, edited)
    return edited
  }
  if (roll < 75) twin.both(`clear ${id}`, (m) => m.clearFallback(id))
  else if (roll < 83) {
    const entry = entryAt(randomTime(dice, now), dice.below(101), dice.pick(['poll', 'headers'] as const))
    twin.both(`set ${id} ${entry.checkedAt - T0}`, (m) => m.setFallback(id, entry))
  } else if (roll < 88) {
    const login = dice.pick(LOGINS)
    twin.both(`getFallback ${id} ${String(login)}`, (m) => m.getFallback(id, { authLineageId: login }))
  } else twin.advance(dice.pick([0, SECOND, MINUTE, 5 * MINUTE, 20 * MINUTE]))
  return previous
}

/** Seeds from the environment (ACCOUNT_LISTS_SEED) to replay a failure, else fixed ones. */
const RANDOM_SEEDS = process.env.ACCOUNT_LISTS_SEED ? [Number(process.env.ACCOUNT_LISTS_SEED)] : [1, 20260914, 0xc0ffee]

describe('random differential run', () => {
  for (const seed of RANDOM_SEEDS) {
    it(`300 random steps over 8 accounts (seed ${seed}; replay with ACCOUNT_LISTS_SEED=${seed})`, () => {
      const twin = new Twin()
      const dice = new Dice(randomSource(seed))
      let previous: FallbackAccount[] = []
      for (let step = 0; step < 300; step++) {
        twin.log.push(`#${step}`)
        previous = randomStep(twin, dice, previous)
        twin.expectSameState()
      }
      // The run reached the states it is meant to compare.
      expect(twin.log.filter((line) => line === 'seed the same list').length).toBeGreaterThan(30)
      expect(twin.log.filter((line) => line.includes(' edited')).length).toBeGreaterThan(5)
    })
  }
})

// ----- 7. refreshAllFallbacks against the simulator -----------------------------------------

/** The same answer for every poll of both simulators, so both caches can be compared. */
const FIXED_BODY = usageBody({
  fiveHour: 21,
  sevenDay: 42,
  fiveHourResetsAt: new Date(T0 + 2 * HOUR).toISOString(),
  sevenDayResetsAt: new Date(T0 + 4 * 24 * HOUR).toISOString(),
})

async function simulator(delayMs = 0): Promise<UsageSimulator> {
  const sim = await startUsageSimulator({ delayMs })
  sim.reply({ body: FIXED_BODY, delayMs })
  sims.push(sim)
  return sim
}

/** A twin whose managers poll two simulators of their own. */
async function polledTwin(delayMs = 0): Promise<{ twin: Twin; facadeSim: UsageSimulator; nativeSim: UsageSimulator }> {
  const facadeSim = await simulator(delayMs)
  const nativeSim = await simulator(delayMs)
  const twin = new Twin({ usageUrl: facadeSim.url }, { usageUrl: nativeSim.url })
  return { twin, facadeSim, nativeSim }
}

function polledTokens(sim: UsageSimulator, tokens: readonly string[]): string[] {
  const byFingerprint = new Map(tokens.map((token) => [fingerprint(token), token]))
  return sim.log.map((request) => byFingerprint.get(request.tokenFingerprint) ?? `unknown ${request.tokenFingerprint}`).sort()
}

describe('refreshAllFallbacks', () => {
  it('asks the resolver about each kept account once, in list order, with the object itself', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const list: FallbackAccount[] = [
      { type: 'api', id: 'k', apiKey: 'key' },
      account('a', { label: 'first a', access: 'ignored-a', expires: NEVER_EXPIRES }),
      account('b', { enabled: false }),
      account('a', { label: 'second a' }),
      account('c', { access: 'ignored-c', expires: NEVER_EXPIRES }),
      account('d'),
      account('e'),
      account('f'),
      account('g', { authLineageId: 'login-g' }),
    ]
    const answers: Record<string, unknown> = { a: 'tok-a', b: 'tok-b', c: 5, d: null, e: '', f: new String('tok-f'), g: 'tok-g' }
    const asked = new Map<QuotaManager, unknown[]>()
    for (const manager of [twin.facade, twin.native]) {
      const calls: unknown[] = []
      asked.set(manager, calls)
      await manager.refreshAllFallbacks(list, (item) => {
        calls.push(item)
        return junk<string>(answers[item.id])
      })
    }
    const facadeCalls = asked.get(twin.facade) ?? []
    expect(facadeCalls.map((item) => list.indexOf(item as FallbackAccount))).toStrictEqual([1, 2, 4, 5, 6, 7, 8])
    expect(facadeCalls).toStrictEqual(asked.get(twin.native))
    for (const [k, item] of facadeCalls.entries()) expect(item).toBe(asked.get(twin.native)?.[k])
    const tokens = ['tok-a', 'tok-b', 'tok-f', 'tok-g', 'ignored-a', 'ignored-c']
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(['tok-a', 'tok-g'])
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(polledTokens(nativeSim, tokens))
    twin.expectSameState()
  })

  it('polls with own enumerable tokens only: an inherited, non-enumerable or trapped access is not a token', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const proto = Object.prototype as Record<string, unknown>
    const list = [
      junk<FallbackAccount>({ id: 'a', expires: NEVER_EXPIRES }),
      junk<FallbackAccount>(
        Object.defineProperty({ id: 'b', expires: NEVER_EXPIRES }, 'access', { value: 'tok-hidden', enumerable: false }),
      ),
      junk<FallbackAccount>(
        new Proxy(
          { id: 'c', expires: NEVER_EXPIRES },
          { get: (target, key) => (key === 'access' ? 'tok-trapped' : Reflect.get(target, key)) },
        ),
      ),
      account('d', { access: 'tok-d', expires: NEVER_EXPIRES }),
    ]
    proto.access = 'tok-inherited'
    try {
      await refreshBoth(twin, 'odd access fields', (manager) => manager.refreshAllFallbacks(list))
    } finally {
      delete proto.access
    }
    const tokens = ['tok-inherited', 'tok-hidden', 'tok-trapped', 'tok-d']
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(['tok-d'])
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(polledTokens(nativeSim, tokens))
    twin.expectSameState()
  })

  it('a resolver that answers with a Promise rejects with a TypeError naming the account, and nothing is polled', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const list = [account('a'), account('b'), account('c')]
    const outcome = await refreshBoth(twin, 'async resolver', (manager) =>
      manager.refreshAllFallbacks(list, (item) => (item.id === 'b' ? junk<string>(Promise.resolve('tok-b')) : `tok-${item.id}`)),
    )
    expectTypeErrorNaming(outcome, 'accounts[1]')
    expect('threw' in outcome && outcome.threw.message).toContain('Promise')
    // The native method reads a list holding anything but plain objects: the same answer.
    const odd = [account('a'), junk<FallbackAccount>(new AccountRecord('b', snapshot(T0)))]
    expectTypeErrorNaming(
      await refreshBoth(twin, 'async resolver, native', (manager) =>
        manager.refreshAllFallbacks(odd, () => junk<string>(Promise.resolve('tok'))),
      ),
      'accounts[0]',
    )
    expect(facadeSim.requests).toBe(0)
    expect(nativeSim.requests).toBe(0)
    twin.expectSameState()
  })

  it('a resolver that throws rejects the promise with its error, and nothing is polled', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const list = [account('a'), account('b'), account('c')]
    for (const manager of [twin.facade, twin.native]) {
      const thrown = new RangeError('resolver broke')
      const asked: string[] = []
      let promise: Promise<void> | undefined
      // The bare native class throws what the facade turns into a rejection.
      const start = manager === twin.facade ? (f: () => Promise<void>) => f() : async (f: () => Promise<void>) => f()
      expect(() => {
        promise = start(() =>
          manager.refreshAllFallbacks(list, (item) => {
            asked.push(item.id)
            if (item.id === 'b') throw thrown
            return `tok-${item.id}`
          }),
        )
      }).not.toThrow()
      await expect(promise).rejects.toBe(thrown)
      expect(asked).toStrictEqual(['a', 'b'])
    }
    expect(facadeSim.requests).toBe(0)
    expect(nativeSim.requests).toBe(0)
    twin.expectSameState()
  })

  it('a bad account after good ones: the same rejection; the list is checked before the resolver is asked (README)', async () => {
    const { twin } = await polledTwin()
    const list = junk<FallbackAccount[]>([account('a'), account('b'), { id: 5 }])
    const asked: string[] = []
    const outcome = await refreshBoth(twin, 'bad third', (m) =>
      m.refreshAllFallbacks(list, (item) => {
        if (m === twin.facade) asked.push(item.id)
        return `tok-${item.id}`
      }),
    )
    expectTypeErrorNaming(outcome, 'accounts[2].id')
    expect(asked).toStrictEqual([])
    // A resolver that would throw is not reached either: the list's error is the answer.
    const thrower = (): string => {
      throw new Error('resolver broke first')
    }
    await expect(twin.facade.refreshAllFallbacks(list, thrower)).rejects.toThrow('accounts[2].id must be a non-empty string')
    twin.expectSameState()
  })

  it('without a resolver, access counts only while expires is in the future', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const list: FallbackAccount[] = [
      account('a', { access: 'tok-past', expires: T0 - 1 }),
      account('b', { access: 'tok-now', expires: T0 }),
      account('c', { access: 'tok-future', expires: T0 + 1 }),
      account('d', { access: 'tok-no-expiry' }),
      account('e', { access: 'tok-string-expiry', expires: junk<number>(String(NEVER_EXPIRES)) }),
      account('f', { access: 'tok-nan-expiry', expires: NaN }),
      account('g', { access: '', expires: NEVER_EXPIRES }),
      account('h', { access: 'tok-disabled', expires: NEVER_EXPIRES, enabled: false }),
    ]
    await refreshBoth(twin, 'expiries', (m) => m.refreshAllFallbacks(list))
    const tokens = list.map((a) => (a.type === 'api' ? '' : (a.access ?? '')))
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(['tok-future'])
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(polledTokens(nativeSim, tokens))
    twin.expectSameState()
    // Later, the same list: nothing is fresh enough to count any more but c's cache.
    twin.advance(10 * MINUTE)
    await refreshBoth(twin, 'expiries later', (m) => m.refreshAllFallbacks(list))
    expect(polledTokens(facadeSim, tokens)).toStrictEqual(polledTokens(nativeSim, tokens))
    twin.expectSameState()
  })

  it('refreshAllFallbacks then refreshFallback for a listed id: one request for that account', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin(100)
    const list = [account('a', { access: 'tok-a', expires: NEVER_EXPIRES }), account('b', { access: 'tok-b', expires: NEVER_EXPIRES })]
    const results = new Map<QuotaManager, QuotaSnapshot>()
    for (const manager of [twin.facade, twin.native]) {
      const all = manager.refreshAllFallbacks(list)
      const one = manager.refreshFallback('a', 'tok-a')
      const [, quota] = await Promise.all([all, one])
      results.set(manager, quota)
    }
    for (const sim of [facadeSim, nativeSim]) expect(polledTokens(sim, ['tok-a', 'tok-b'])).toStrictEqual(['tok-a', 'tok-b'])
    expect(results.get(twin.facade)?.five_hour?.usedPercent).toBe(21)
    expect(results.get(twin.facade)).toStrictEqual(results.get(twin.native))
    twin.expectSameState()
  })

  it('refreshFallback then refreshAllFallbacks, and a resolver: still one request per account', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin(100)
    const list = [account('a'), account('b')]
    for (const manager of [twin.facade, twin.native]) {
      const one = manager.refreshFallback('a', 'tok-a')
      const all = manager.refreshAllFallbacks(list, (item) => `tok-${item.id}`)
      const again = manager.refreshFallback('b', 'tok-b')
      await Promise.all([one, all, again])
    }
    for (const sim of [facadeSim, nativeSim]) expect(polledTokens(sim, ['tok-a', 'tok-b'])).toStrictEqual(['tok-a', 'tok-b'])
    twin.expectSameState()
  })

  it('a resolver that seeds the manager while it is asked does not mix the lists up', async () => {
    const { twin, facadeSim, nativeSim } = await polledTwin()
    const list = [account('a'), account('b')]
    for (const manager of [twin.facade, twin.native]) {
      await manager.refreshAllFallbacks(list, (item) => {
        manager.seedFallbacksFromAccounts([account('z', { quota: snapshot(T0 - MINUTE, 5) }), account(item.id)])
        return `tok-${item.id}`
      })
    }
    expect(polledTokens(facadeSim, ['tok-a', 'tok-b'])).toStrictEqual(polledTokens(nativeSim, ['tok-a', 'tok-b']))
    expect(facadeSim.requests).toBeGreaterThan(0)
    twin.expectSameState()
  })
})
