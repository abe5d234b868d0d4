// Fallback accounts: per-account routes (cache, single flight, backoff), login replacement,
// host seeding, refreshAllFallbacks and bad input at the boundary.
import { describe, expect, it } from 'vitest'
import { QuotaManager, ManualClock } from '../index.js'
import type { FallbackAccount, OAuthFallbackAccount, QuotaEntry, QuotaSnapshot } from '../index.js'
import { rateLimitHeaders, usageBody } from '../simulator/index.js'
import {
  MINUTE,
  SECOND,
  T0,
  asQuotaError,
  failureOf,
  perTestHarness,
  junk,
  recordingCallbacks,
  requestsWith,
  sha16,
  startCountingServer,
  until,
} from './helpers/fallback-harness.js'
import type { RecordedEvents } from './helpers/fallback-harness.js'

const { setup, onCleanup } = perTestHarness()

/** Far ahead of every test clock: an `access` token is only used while `expires` is ahead (docs/compat.md#signatures). */
const NEVER_EXPIRES = Date.UTC(2100, 0, 1)
const account = (id: string, extra: Partial<OAuthFallbackAccount> = {}): FallbackAccount => ({
  id,
  ...(extra.access === undefined ? {} : { expires: NEVER_EXPIRES }),
  ...extra,
})

/** A fresh entry observed at `at`, with windows at the given used percentages. */
function entryAt(at: number, fiveUsed: number, sevenUsed = 50, refreshAfter = at + 5 * MINUTE): QuotaEntry {
  return {
    quota: {
      five_hour: { usedPercent: fiveUsed, remainingPercent: 100 - fiveUsed, checkedAt: at },
      seven_day: { usedPercent: sevenUsed, remainingPercent: 100 - sevenUsed, checkedAt: at },
      source: 'poll',
      checkedAt: at,
      // docs/compat.md#results: every snapshot handed out says where each present field came from.
      fieldSources: { five_hour: 'poll', seven_day: 'poll' },
    },
    checkedAt: at,
    refreshAfter,
  }
}

describe('fallback cache', () => {
  it('getFallback is null until a poll caches the account, then returns the polled entry', async () => {
    const { manager } = await setup()
    expect(manager.getFallback('a')).toBeNull()
    const quota = await manager.refreshFallback('a', 'tok-a')
    expect(quota.source).toBe('poll')
    expect(quota.five_hour?.usedPercent).toBe(9)
    expect(quota.seven_day?.usedPercent).toBe(68)
    expect(quota.accountIdentity).toBe('a')
    const entry = manager.getFallback('a')
    expect(entry).not.toBeNull()
    expect(entry?.checkedAt).toBe(T0)
    expect(entry?.refreshAfter).toBe(T0 + 5 * MINUTE)
    expect(entry?.quota).toEqual(quota)
  })

  it('refreshFallbackWithMetadata reports fetched: true for a request it sent', async () => {
    const { manager, sim } = await setup()
    const result = await manager.refreshFallbackWithMetadata('a', 'tok-a')
    expect(result.fetched).toBe(true)
    expect(result.quota.five_hour?.usedPercent).toBe(9)
    expect(sim.requests).toBe(1)
  })

  it('getAllFallbacks is a Map of every cached account, frozen so the caller cannot corrupt the cache', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    manager.setFallback('b', entryAt(T0, 30))
    const all = manager.getAllFallbacks()
    expect(all).toBeInstanceOf(Map)
    expect([...all.keys()].sort()).toEqual(['a', 'b'])
    expect(all.get('b')).toEqual(entryAt(T0, 30))
    expect(all.get('a')).toEqual(manager.getFallback('a'))
    // The entries are deep-frozen views shared with getFallback; the Map itself is the caller's.
    expect(Object.isFrozen(all.get('b')!.quota.five_hour)).toBe(true)
    expect(() => {
      all.get('b')!.quota.five_hour!.usedPercent = 99
    }).toThrow(TypeError)
    all.delete('a')
    expect(manager.getFallback('b')?.quota.five_hour?.usedPercent).toBe(30)
    expect(manager.getAllFallbacks().has('a')).toBe(true)
  })

  it('getAllFallbacks lists no account that has a route but no cached entry', async () => {
    const { manager, sim } = await setup()
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    expect(manager.getAllFallbacks().size).toBe(0)
  })

  it('setFallback replaces the entry as given; clearFallback forgets cache and backoff of that account only', async () => {
    const { manager, sim } = await setup()
    manager.setFallback('a', entryAt(T0, 10))
    manager.setFallback('b', entryAt(T0, 20))
    expect(manager.getFallback('a')).toEqual(entryAt(T0, 10))
    manager.setFallback('a', entryAt(T0 + SECOND, 11))
    expect(manager.getFallback('a')).toEqual(entryAt(T0 + SECOND, 11))

    sim.reply({ status: 429 })
    await manager.refreshFallbackWithMetadata('a', 'tok-a').catch(() => undefined)
    await manager.refreshFallbackWithMetadata('b', 'tok-b').catch(() => undefined)
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    expect(manager.isFallbackBackedOff('b')).toBe(true)

    manager.clearFallback('a')
    expect(manager.getFallback('a')).toBeNull()
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallbackApiError('a')).toBeUndefined()
    expect(manager.getAllFallbacks().has('a')).toBe(false)
    // b is untouched.
    expect(manager.getFallback('b')).toEqual(entryAt(T0, 20))
    expect(manager.isFallbackBackedOff('b')).toBe(true)
    // a can be polled again right away.
    sim.reply({ status: 200 })
    const result = await manager.refreshFallbackWithMetadata('a', 'tok-a')
    expect(result.fetched).toBe(true)
  })

  it('clearFallback during a running poll: the poll does not bring the forgotten account back', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ delayMs: 300 })
    const running = manager.refreshFallback('a', 'tok-a')
    await until(() => sim.requests === 1, 'the poll to reach the simulator')
    manager.clearFallback('a')
    await running.catch(() => undefined)
    expect(manager.getFallback('a')).toBeNull()
    expect(manager.getAllFallbacks().has('a')).toBe(false)
  })
})

describe('fallback callbacks', () => {
  it('onFallbackQuotaFetched(accountId, quota, checkedAt, fetchStartedAt) fires after a poll; main callbacks do not', async () => {
    const { manager, clock, events, sim } = await setup({}, 250)
    const running = manager.refreshFallback('a', 'tok-a')
    // The request is on the wire (the simulator holds its answer 250 ms): time moves on now.
    await until(() => sim.requests === 1, 'the request to reach the simulator')
    clock.advance(5 * SECOND) // the response arrives later than the request started
    const quota = await running
    expect(events.fallbackFetched).toHaveLength(1)
    const [event] = events.fallbackFetched
    expect(event.accountId).toBe('a')
    expect(event.quota).toEqual(quota)
    expect(event.checkedAt).toBe(T0 + 5 * SECOND)
    expect(event.fetchStartedAt).toBe(T0)
    expect(events.mainFetched).toHaveLength(0)
    expect(events.mainErrors).toHaveLength(0)
    expect(events.fallbackErrors).toHaveLength(0)
  })

  it('onFallbackApiError(accountId, error) fires on a backoff-arming failure; onApiError does not', async () => {
    const { manager, sim, events } = await setup()
    sim.reply({ status: 429 })
    const error = asQuotaError(await failureOf(() => manager.refreshFallback('a', 'tok-a')))
    expect(error.code).toBe('QUOTA_HTTP_ERROR')
    expect(error.status).toBe(429)
    expect(events.fallbackErrors).toHaveLength(1)
    expect(events.fallbackErrors[0].accountId).toBe('a')
    expect(events.fallbackErrors[0].error).toEqual(manager.getFallbackApiError('a'))
    expect(events.fallbackErrors[0].error.status).toBe(429)
    expect(events.mainErrors).toHaveLength(0)
    expect(events.fallbackFetched).toHaveLength(0)
  })
})

describe('route isolation', () => {
  it('a fallback failure backs off only that fallback: not main, not another fallback, no onApiError', async () => {
    const { manager, sim, events } = await setup()
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    const error = manager.getFallbackApiError('a')
    expect(error?.status).toBe(429)
    expect(error?.retryCount).toBe(1)
    expect(error?.checkedAt).toBe(T0)
    expect(error?.nextRetryAt).toBe(T0 + 60 * SECOND)
    expect(error?.message.startsWith('Claude quota check failed: 429')).toBe(true)

    expect(manager.isBackedOff()).toBe(false)
    expect(manager.getLastApiError()).toBeUndefined()
    expect(events.mainErrors).toHaveLength(0)
    expect(manager.isFallbackBackedOff('b')).toBe(false)
    expect(manager.getFallbackApiError('b')).toBeUndefined()

    // main and b still reach the endpoint.
    const before = sim.requests
    const main = await manager.refreshMainWithMetadata('alice', 'tok-main')
    const b = await manager.refreshFallbackWithMetadata('b', 'tok-b')
    expect(main.fetched).toBe(true)
    expect(b.fetched).toBe(true)
    expect(sim.requests).toBe(before + 2)
  })

  it('a main failure never backs off a fallback or fires onFallbackApiError', async () => {
    const { manager, sim, events } = await setup()
    sim.replyOnce({ status: 503 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.isBackedOff()).toBe(true)
    expect(events.mainErrors).toHaveLength(1)
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallbackApiError('a')).toBeUndefined()
    const a = await manager.refreshFallbackWithMetadata('a', 'tok-a')
    expect(a.fetched).toBe(true)
    expect(events.fallbackErrors).toHaveLength(0)
    expect(requestsWith(sim, 'tok-a')).toBe(1)
  })

  it('a backed-off fallback serves its cache without a request (fetched: false), or rejects QUOTA_BACKED_OFF without one', async () => {
    const { manager, sim } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    await failureOf(() => manager.refreshFallback('b', 'tok-b'))
    expect(sim.requests).toBe(3)

    const cached = await manager.refreshFallbackWithMetadata('a', 'tok-a')
    expect(cached.fetched).toBe(false)
    expect(cached.quota).toEqual(manager.getFallback('a')?.quota)

    const refused = asQuotaError(await failureOf(() => manager.refreshFallback('b', 'tok-b')))
    expect(refused.code).toBe('QUOTA_BACKED_OFF')
    expect(refused.nextRetryAt).toBe(T0 + 60 * SECOND)
    expect(sim.requests).toBe(3)
  })

  it('each fallback backs off on its own ladder and recovers on its own', async () => {
    const { manager, sim, clock } = await setup()
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    clock.advance(61 * SECOND)
    await failureOf(() => manager.refreshFallback('a', 'tok-a')) // second failure in a row: 2 min
    await failureOf(() => manager.refreshFallback('b', 'tok-b')) // first for b: 60 s
    expect(manager.getFallbackApiError('a')?.retryCount).toBe(2)
    expect(manager.getFallbackApiError('a')?.nextRetryAt).toBe(T0 + 61 * SECOND + 2 * MINUTE)
    expect(manager.getFallbackApiError('b')?.retryCount).toBe(1)
    expect(manager.getFallbackApiError('b')?.nextRetryAt).toBe(T0 + 61 * SECOND + 60 * SECOND)
    clock.advance(60 * SECOND)
    expect(manager.isFallbackBackedOff('b')).toBe(false)
    expect(manager.isFallbackBackedOff('a')).toBe(true)
  })

  it('two fallback accounts never share a request, even with the same token', async () => {
    const { manager, sim } = await setup({}, 150)
    const [a, b] = await Promise.all([manager.refreshFallback('a', 'same'), manager.refreshFallback('b', 'same')])
    expect(sim.requests).toBe(2)
    expect(a.accountIdentity).toBe('a')
    expect(b.accountIdentity).toBe('b')
  })
})

describe('single flight per account id', () => {
  it('concurrent refreshes of one account share one request', async () => {
    const { manager, sim } = await setup({}, 150)
    const results = await Promise.all([
      manager.refreshFallback('a', 'tok-a'),
      manager.refreshFallback('a', 'tok-a'),
      manager.refreshFallbackWithMetadata('a', 'tok-a'),
    ])
    expect(sim.requests).toBe(1)
    expect(results[1]).toEqual(results[0])
    expect(results[2].quota).toEqual(results[0])
    expect(manager.stats().joinedInFlight).toBe(2)
  })

  it('a rotated access token joins the request already running for that account', async () => {
    const { manager, sim } = await setup({}, 300)
    const lineage = { authLineageId: 'login-1' }
    const first = manager.refreshFallback('a', 'tok-old', account('a', { access: 'tok-old', ...lineage }))
    await until(() => sim.requests === 1, 'the first poll to reach the simulator')
    const rotated = manager.refreshFallbackWithMetadata('a', 'tok-new', account('a', { access: 'tok-new', ...lineage }))
    const [q1, q2] = await Promise.all([first, rotated])
    expect(sim.requests).toBe(1)
    expect(sim.log[0].tokenFingerprint).toBe(sha16('tok-old'))
    expect(q2.quota).toEqual(q1)
    expect(manager.stats().joinedInFlight).toBe(1)
  })

  it('a rotated access token keeps the account cache', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-old', account('a', { access: 'tok-old', authLineageId: 'login-1' }))
    const cached = manager.getFallback('a')
    expect(cached).not.toBeNull()
    expect(manager.getFallback('a', account('a', { access: 'tok-new', authLineageId: 'login-1' }))).toEqual(cached)
    expect(manager.isFallbackStale('a', 'tok-new')).toBe(false)
  })

  it('a rotated access token keeps the account backoff: no request until it ends', async () => {
    const { manager, sim, clock } = await setup()
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-old', account('a', { access: 'tok-old', authLineageId: 'login-1' })))
    const refused = asQuotaError(
      await failureOf(() => manager.refreshFallback('a', 'tok-new', account('a', { access: 'tok-new', authLineageId: 'login-1' }))),
    )
    expect(refused.code).toBe('QUOTA_BACKED_OFF')
    expect(requestsWith(sim, 'tok-new')).toBe(0)
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    expect(manager.getFallbackApiError('a')?.retryCount).toBe(1)
    clock.advance(60 * SECOND)
    const ok = await manager.refreshFallbackWithMetadata('a', 'tok-new', account('a', { access: 'tok-new', authLineageId: 'login-1' }))
    expect(ok.fetched).toBe(true)
    expect(requestsWith(sim, 'tok-new')).toBe(1)
  })
})

describe('login replacement (authLineageId)', () => {
  const login1 = (extra: Partial<OAuthFallbackAccount> = {}): FallbackAccount =>
    account('a', { access: 'tok-1', authLineageId: 'login-1', ...extra })
  const login2 = (extra: Partial<OAuthFallbackAccount> = {}): FallbackAccount =>
    account('a', { access: 'tok-2', authLineageId: 'login-2', ...extra })

  it('drops the old login cache before it is read', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-1', login1())
    expect(manager.getFallback('a', login1())).not.toBeNull()
    expect(manager.getFallback('a', login2())).toBeNull()
    expect(manager.getFallback('a')).toBeNull()
    expect(manager.getAllFallbacks().has('a')).toBe(false)
    expect(manager.isFallbackStale('a')).toBe(true)
  })

  it('drops the old login backoff: the new login polls at once', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-1', login1()))
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    const result = await manager.refreshFallbackWithMetadata('a', 'tok-2', login2())
    expect(result.fetched).toBe(true)
    expect(requestsWith(sim, 'tok-2')).toBe(1)
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallbackApiError('a')).toBeUndefined()
  })

  it('drops the old login backoff when only read with the new account', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-1', login1()))
    expect(manager.getFallback('a', login2())).toBeNull()
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallbackApiError('a')).toBeUndefined()
  })

  it('a poll still running for the old login is not cached when it finishes', async () => {
    const { manager, sim, events } = await setup()
    sim.replyOnce({ delayMs: 300, body: usageBody({ fiveHour: 11 }) })
    const old = manager.refreshFallback('a', 'tok-1', login1())
    await until(() => sim.requests === 1, 'the first poll to reach the simulator')
    expect(manager.getFallback('a', login2())).toBeNull()
    const settled = await old
    expect(settled.five_hour?.usedPercent).toBe(11) // its own caller still gets an answer
    expect(manager.getFallback('a')).toBeNull()
    expect(manager.getFallback('a', login2())).toBeNull()
    expect(manager.getAllFallbacks().has('a')).toBe(false)
    expect(events.fallbackFetched).toHaveLength(0)
  })

  it('the new login does not join the old login request, and the old result never overwrites the new one', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ delayMs: 300, body: usageBody({ fiveHour: 11 }) })
    sim.replyOnce({ delayMs: 0, body: usageBody({ fiveHour: 22 }) })
    const old = manager.refreshFallback('a', 'tok-1', login1())
    await until(() => sim.requests === 1, 'the first poll to reach the simulator')
    const fresh = await manager.refreshFallback('a', 'tok-2', login2())
    expect(fresh.five_hour?.usedPercent).toBe(22)
    await old
    expect(sim.requests).toBe(2)
    expect(manager.getFallback('a', login2())?.quota.five_hour?.usedPercent).toBe(22)
  })

  it('a failure of the old login poll does not back off the new login', async () => {
    const { manager, sim, events } = await setup()
    sim.replyOnce({ delayMs: 300, status: 429 })
    const old = manager.refreshFallback('a', 'tok-1', login1())
    await until(() => sim.requests === 1, 'the first poll to reach the simulator')
    manager.getFallback('a', login2())
    await failureOf(() => old)
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallbackApiError('a')).toBeUndefined()
    expect(events.fallbackErrors).toHaveLength(0)
  })

  it('an observation carrying the old lineage is discarded and returns null', async () => {
    const { manager } = await setup()
    manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.1 }), login1())
    // docs/compat.md#signatures (upstream acceptFallbackQuotaObservation): a header push never rebinds the login;
    // one of another login than the bound one is discarded...
    expect(manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.2 }), login2())).toBeNull()
    expect(manager.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    // ...until an authoritative call (a seed, a refresh, getFallback with the account) rebinds it.
    expect(manager.getFallback('a', login2())).toBeNull()
    const current = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.2 }), login2())
    expect(current?.quota.five_hour?.usedPercent).toBe(20)
    const stale = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.9 }), login1())
    expect(stale).toBeNull()
    expect(manager.getFallback('a', login2())?.quota.five_hour?.usedPercent).toBe(20)
    // The old login does not re-bind the slot either: a later push for login 2 still merges.
    const again = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.3 }), login2())
    expect(again?.quota.five_hour?.usedPercent).toBe(30)
  })

  it('setFallback with the old lineage after a replacement is ignored', async () => {
    const { manager } = await setup()
    manager.setFallback('a', entryAt(T0, 10), login1())
    manager.setFallback('a', entryAt(T0, 20), login2())
    manager.setFallback('a', entryAt(T0 + SECOND, 90), login1())
    expect(manager.getFallback('a', login2())).toEqual(entryAt(T0, 20))
  })

  it('refreshAllFallbacks with a replaced login drops the old backoff and polls', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-1', login1()))
    await manager.refreshAllFallbacks([login2()])
    expect(requestsWith(sim, 'tok-2')).toBe(1)
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.getFallback('a', login2())?.quota.source).toBe('poll')
  })

  it('seedFallbacksFromAccounts with a replaced login starts that account from its persisted data only', async () => {
    const { manager } = await setup()
    manager.setFallback('a', entryAt(T0, 10), login1())
    manager.seedFallbacksFromAccounts([login2()])
    expect(manager.getFallback('a')).toBeNull()
  })
})

describe('freshness', () => {
  it('isFallbackStale: missing, fresh, then due after the interval; the token slot is unused', async () => {
    const { manager, clock } = await setup()
    expect(manager.isFallbackStale('a')).toBe(true)
    await manager.refreshFallback('a', 'tok-a')
    expect(manager.isFallbackStale('a')).toBe(false)
    expect(manager.isFallbackStale('a', 'some-other-token')).toBe(false)
    clock.advance(5 * MINUTE - 1)
    expect(manager.isFallbackStale('a')).toBe(false)
    clock.advance(1)
    expect(manager.isFallbackStale('a')).toBe(true)
  })

  it('isFallbackStale(id, token, model) is true when that model scoped window is older than the interval', async () => {
    const { manager, clock } = await setup()
    const scopedAt = T0 - 4 * MINUTE
    manager.setFallback('a', {
      quota: {
        five_hour: { usedPercent: 10, remainingPercent: 90, checkedAt: T0 },
        seven_day: { usedPercent: 20, remainingPercent: 80, checkedAt: T0 },
        scoped: [
          {
            id: 'claude-weekly-scoped-claude-fable-5-1',
            title: 'Fable only',
            modelId: 'claude-fable-5-1',
            modelName: 'Fable',
            usedPercent: 22,
            remainingPercent: 78,
            checkedAt: scopedAt,
          },
        ],
        source: 'headers',
        checkedAt: T0,
      },
      checkedAt: T0,
      refreshAfter: T0 + 5 * MINUTE,
    })
    expect(manager.isFallbackStale('a', undefined, 'claude-fable-5-1')).toBe(false)
    clock.advance(1 * MINUTE) // scoped window now exactly one interval old; 5h/7d one minute old
    expect(manager.isFallbackStale('a')).toBe(false)
    expect(manager.isFallbackStale('a', 'tok', 'claude-fable-5-1')).toBe(true)
    expect(manager.isFallbackStale('a', undefined, 'claude-sonnet-4-5')).toBe(false)
  })

  it('fallback freshness is independent of main freshness', async () => {
    const { manager } = await setup()
    await manager.refreshMain('alice', 'tok-main')
    expect(manager.isMainStale()).toBe(false)
    expect(manager.isFallbackStale('a')).toBe(true)
    await manager.refreshFallback('a', 'tok-a')
    expect(manager.getMain('alice')?.quota.accountIdentity).toBe('alice')
    expect(manager.getFallback('a')?.quota.accountIdentity).toBe('a')
  })
})

describe('seedFallbacksFromAccounts', () => {
  const persisted = (at: number, fiveUsed: number): QuotaSnapshot => ({
    five_hour: { usedPercent: fiveUsed, remainingPercent: 100 - fiveUsed, checkedAt: at },
    seven_day: { usedPercent: 40, remainingPercent: 60, checkedAt: at },
    source: 'poll',
    checkedAt: at,
  })

  it('adopts persisted quota when there is no cache', async () => {
    const { manager } = await setup()
    manager.seedFallbacksFromAccounts([account('a', { quota: persisted(T0 - MINUTE, 33) })])
    const entry = manager.getFallback('a')
    expect(entry?.quota.five_hour?.usedPercent).toBe(33)
    expect(entry?.checkedAt).toBe(T0 - MINUTE)
    expect(entry?.refreshAfter).toBe(T0 + 4 * MINUTE)
    expect(manager.isFallbackStale('a')).toBe(false)
  })

  it('adopts persisted quota only when newer than the cache', async () => {
    const { manager } = await setup()
    manager.setFallback('a', entryAt(T0, 10))
    manager.seedFallbacksFromAccounts([account('a', { quota: persisted(T0 - SECOND, 70) })])
    expect(manager.getFallback('a')?.quota.five_hour?.usedPercent).toBe(10)
    manager.seedFallbacksFromAccounts([account('a', { quota: persisted(T0 + SECOND, 70) })])
    expect(manager.getFallback('a')?.quota.five_hour?.usedPercent).toBe(70)
    expect(manager.getFallback('a')?.checkedAt).toBe(T0 + SECOND)
  })

  it('adopts an active persisted lastQuotaRefreshError as the backoff; refreshes make no request', async () => {
    const { manager, sim } = await setup()
    manager.seedFallbacksFromAccounts([
      account('a', {
        access: 'tok-a',
        lastQuotaRefreshError: {
          message: 'Claude quota check failed: 429 — slow down',
          checkedAt: T0 - 10 * SECOND,
          nextRetryAt: T0 + 2 * MINUTE,
          retryCount: 2,
          status: 429,
        },
      }),
    ])
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    const error = manager.getFallbackApiError('a')
    expect(error?.nextRetryAt).toBe(T0 + 2 * MINUTE)
    expect(error?.message).toBe('Claude quota check failed: 429 — slow down')
    expect(manager.isBackedOff()).toBe(false)
    const refused = asQuotaError(await failureOf(() => manager.refreshFallback('a', 'tok-a')))
    expect(refused.code).toBe('QUOTA_BACKED_OFF')
    await manager.refreshAllFallbacks([account('a', { access: 'tok-a' })])
    expect(sim.requests).toBe(0)
  })

  it('an expired persisted error does not back the account off', async () => {
    const { manager } = await setup()
    manager.seedFallbacksFromAccounts([
      account('a', {
        lastQuotaRefreshError: { message: 'old', checkedAt: T0 - 10 * MINUTE, nextRetryAt: T0 - MINUTE, retryCount: 1 },
      }),
    ])
    expect(manager.isFallbackBackedOff('a')).toBe(false)
  })

  it('drops slots (cache and backoff) of accounts no longer configured', async () => {
    const { manager, sim } = await setup()
    manager.setFallback('a', entryAt(T0, 10))
    manager.setFallback('b', entryAt(T0, 20))
    sim.replyOnce({ status: 429 })
    await failureOf(() => manager.refreshFallback('c', 'tok-c'))
    expect(manager.isFallbackBackedOff('c')).toBe(true)
    manager.seedFallbacksFromAccounts([account('a')])
    expect([...manager.getAllFallbacks().keys()]).toEqual(['a'])
    expect(manager.getFallback('b')).toBeNull()
    expect(manager.isFallbackBackedOff('c')).toBe(false)
    expect(manager.getFallbackApiError('c')).toBeUndefined()
    expect(manager.getFallback('a')).toEqual(entryAt(T0, 10))
  })

  it('skips disabled accounts: neither their quota nor their error is adopted', async () => {
    const { manager } = await setup()
    manager.seedFallbacksFromAccounts([
      account('off', {
        enabled: false,
        quota: persisted(T0, 50),
        lastQuotaRefreshError: { message: 'x', checkedAt: T0, nextRetryAt: T0 + MINUTE, retryCount: 1 },
      }),
      account('on', { enabled: true, quota: persisted(T0, 60) }),
    ])
    expect(manager.getFallback('off')).toBeNull()
    expect(manager.isFallbackBackedOff('off')).toBe(false)
    expect(manager.getFallback('on')?.quota.five_hour?.usedPercent).toBe(60)
  })
})

describe('refreshAllFallbacks', () => {
  const eight = (): FallbackAccount[] => Array.from({ length: 8 }, (_, i) => account(`acct-${i}`, { access: `tok-${i}` }))

  async function concurrencyRun(maxConcurrentFetches: number | undefined): Promise<{ max: number; elapsed: number; cached: number }> {
    const server = await startCountingServer(() => ({ delayMs: 200 }))
    const clock = new ManualClock(T0)
    const manager = new QuotaManager({
      statePath: null,
      usageUrl: server.url,
      apiCallGapMs: 0,
      clock,
      backoff: { jitter: 0 },
      ...(maxConcurrentFetches === undefined ? {} : { maxConcurrentFetches }),
    })
    onCleanup(async () => {
      await manager.close()
      await server.close()
    })
    const started = Date.now()
    await manager.refreshAllFallbacks(eight())
    const elapsed = Date.now() - started
    expect(server.served).toHaveLength(8)
    return { max: server.maxInFlight, elapsed, cached: manager.getAllFallbacks().size }
  }

  it('runs at most maxConcurrentFetches (4) requests at once, in about two rounds rather than eight', async () => {
    const { max, elapsed, cached } = await concurrencyRun(4)
    expect(max).toBe(4)
    expect(elapsed).toBeGreaterThanOrEqual(390)
    expect(elapsed).toBeLessThan(1000) // eight in a row would take 1600 ms
    expect(cached).toBe(8)
  })

  it('defaults to 4 at a time', async () => {
    const { max, elapsed } = await concurrencyRun(undefined)
    expect(max).toBe(4)
    expect(elapsed).toBeLessThan(1000)
  })

  it('honours a smaller maxConcurrentFetches', async () => {
    const { max, elapsed } = await concurrencyRun(2)
    expect(max).toBe(2)
    expect(elapsed).toBeGreaterThanOrEqual(790)
  })

  it('refreshes only due, enabled accounts with a token', async () => {
    const { manager, sim } = await setup()
    manager.setFallback('fresh', entryAt(T0, 10))
    manager.setFallback('stale', entryAt(T0 - 10 * MINUTE, 10, 50, T0 - 5 * MINUTE))
    manager.seedFallbacksFromAccounts([
      account('fresh'),
      account('stale'),
      account('missing'),
      account('disabled', { enabled: false }),
      account('tokenless'),
      account('backed-off', {
        lastQuotaRefreshError: { message: 'x', checkedAt: T0, nextRetryAt: T0 + MINUTE, retryCount: 1, status: 429 },
      }),
    ])
    await manager.refreshAllFallbacks([
      account('fresh', { access: 'tok-fresh' }),
      account('stale', { access: 'tok-stale' }),
      account('missing', { access: 'tok-missing' }),
      account('disabled', { access: 'tok-disabled', enabled: false }),
      account('tokenless'),
      account('backed-off', { access: 'tok-backed-off' }),
    ])
    expect(requestsWith(sim, 'tok-fresh')).toBe(0)
    expect(requestsWith(sim, 'tok-stale')).toBe(1)
    expect(requestsWith(sim, 'tok-missing')).toBe(1)
    expect(requestsWith(sim, 'tok-disabled')).toBe(0)
    expect(requestsWith(sim, 'tok-backed-off')).toBe(0)
    expect(sim.requests).toBe(2)
    expect(manager.getFallback('missing')?.quota.source).toBe('poll')
    expect(manager.getFallback('stale')?.checkedAt).toBe(T0)
  })

  it('records a failure on that account route and resolves; other accounts and main are untouched', async () => {
    const server = await startCountingServer((token) => (token === 'tok-bad' ? { status: 429 } : {}))
    const clock = new ManualClock(T0)
    const events: RecordedEvents = { mainFetched: [], mainErrors: [], fallbackFetched: [], fallbackErrors: [] }
    const manager = new QuotaManager({
      statePath: null,
      usageUrl: server.url,
      apiCallGapMs: 0,
      clock,
      backoff: { jitter: 0 },
      ...recordingCallbacks(events),
    })
    onCleanup(async () => {
      await manager.close()
      await server.close()
    })
    // Resolves (never rejects) although one account failed.
    await manager.refreshAllFallbacks([
      account('good-1', { access: 'tok-good-1' }),
      account('bad', { access: 'tok-bad' }),
      account('good-2', { access: 'tok-good-2' }),
    ])
    expect(server.served).toHaveLength(3)
    expect(manager.isFallbackBackedOff('bad')).toBe(true)
    const error = manager.getFallbackApiError('bad')
    expect(error?.status).toBe(429)
    expect(error?.retryCount).toBe(1)
    expect(error?.nextRetryAt).toBe(T0 + 60 * SECOND)
    expect(manager.getFallback('bad')).toBeNull()
    expect(manager.getFallback('good-1')?.quota.source).toBe('poll')
    expect(manager.getFallback('good-2')?.quota.source).toBe('poll')
    expect(manager.isFallbackBackedOff('good-1')).toBe(false)
    expect(manager.isBackedOff()).toBe(false)
    expect(events.mainErrors).toHaveLength(0)
    expect(events.fallbackErrors.map((e) => e.accountId)).toEqual(['bad'])
    expect(events.fallbackFetched.map((e) => e.accountId).sort()).toEqual(['good-1', 'good-2'])
  })

  it('resolves even when every account fails, including a connection failure', async () => {
    const { manager } = await setup({ usageUrl: 'http://127.0.0.1:9/api/oauth/usage', requestTimeoutMs: 2000 })
    // Must resolve: an awaited rejection would fail this test.
    await manager.refreshAllFallbacks([account('a', { access: 'tok-a' }), account('b', { access: 'tok-b' })])
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    expect(manager.isFallbackBackedOff('b')).toBe(true)
    expect(manager.isBackedOff()).toBe(false)
  })

  it('paces requests per access token: two accounts sharing a token are spaced by apiCallGapMs', async () => {
    const server = await startCountingServer(() => ({}))
    const manager = new QuotaManager({
      statePath: null,
      usageUrl: server.url,
      apiCallGapMs: 300,
      clock: new ManualClock(T0),
    })
    onCleanup(async () => {
      await manager.close()
      await server.close()
    })
    await manager.refreshAllFallbacks([
      account('a', { access: 'shared' }),
      account('b', { access: 'shared' }),
      account('c', { access: 'own' }),
    ])
    const shared = server.served
      .filter((r) => r.token === 'shared')
      .map((r) => r.startedAt)
      .sort((x, y) => x - y)
    const own = server.served.filter((r) => r.token === 'own').map((r) => r.startedAt)
    expect(shared).toHaveLength(2)
    expect(own).toHaveLength(1)
    expect(shared[1] - shared[0]).toBeGreaterThanOrEqual(250)
    // A different token is not held back by the shared one.
    expect(Math.abs(own[0] - shared[0])).toBeLessThan(200)
  })
})

describe('bad input at the boundary', () => {
  it('wrong types are TypeErrors and leave the cache intact', async () => {
    const { manager } = await setup()
    manager.setFallback('a', entryAt(T0, 10))
    const calls: Array<() => unknown> = [
      () => manager.getFallback(junk<string>(42)),
      () => manager.getFallback(junk<string>(undefined)),
      () => manager.setFallback('a', junk<QuotaEntry>(null)),
      () => manager.setFallback('a', junk<QuotaEntry>('entry')),
      () => manager.setFallback('a', junk<QuotaEntry>({ quota: 'x', checkedAt: T0 })),
      () => manager.clearFallback(junk<string>({})),
      () => manager.refreshFallback('a', junk<string>(undefined)),
      () => manager.refreshFallback('a', ''),
      () => manager.refreshFallback(junk<string>(7), 'tok'),
      () => manager.getFallback('a', junk<FallbackAccount>({ id: 'a', authLineageId: 5 })),
      () => manager.pushFallbackFromHeaders('a', junk<Record<string, string>>('headers')),
      () => manager.isFallbackBackedOff(junk<string>(null)),
      () => manager.seedFallbacksFromAccounts(junk<FallbackAccount[]>('accounts')),
      () => manager.seedFallbacksFromAccounts(junk<FallbackAccount[]>({ id: 'a' })),
      () => manager.refreshAllFallbacks(junk<FallbackAccount[]>(null)),
    ]
    for (const call of calls) {
      const error = await failureOf(call)
      expect(error, String(call)).toBeInstanceOf(TypeError)
    }
    expect(manager.getFallback('a')).toEqual(entryAt(T0, 10))
  })

  it('accounts with a missing or blank id, or a non-boolean enabled, are TypeErrors naming the field', async () => {
    const { manager, sim } = await setup()
    manager.setFallback('a', entryAt(T0, 10))
    const lists: unknown[] = [
      [{ enabled: true }],
      [{ id: '' }],
      [{ id: 3 }],
      [account('a'), { id: 'b', enabled: 'yes' }],
      [account('a'), { id: 'b', access: 42 }],
      [null],
    ]
    for (const list of lists) {
      const seeded = await failureOf(() => manager.seedFallbacksFromAccounts(junk<FallbackAccount[]>(list)))
      expect(seeded, JSON.stringify(list)).toBeInstanceOf(TypeError)
      const refreshed = await failureOf(() => manager.refreshAllFallbacks(junk<FallbackAccount[]>(list)))
      expect(refreshed, JSON.stringify(list)).toBeInstanceOf(TypeError)
    }
    expect(
      (await failureOf(() => manager.seedFallbacksFromAccounts(junk<FallbackAccount[]>([{ enabled: true }])))) as Error,
    ).toHaveProperty('message', expect.stringMatching(/id/))
    expect(
      (await failureOf(() => manager.seedFallbacksFromAccounts(junk<FallbackAccount[]>([{ id: 'b', enabled: 1 }])))) as Error,
    ).toHaveProperty('message', expect.stringMatching(/enabled/))
    // A rejected list changed nothing: a is still cached and nothing was fetched.
    expect(manager.getFallback('a')).toEqual(entryAt(T0, 10))
    expect(sim.requests).toBe(0)
  })

  it('duplicate ids do not crash and leave one slot', async () => {
    const { manager, sim } = await setup()
    const q = (used: number): QuotaSnapshot => ({
      five_hour: { usedPercent: used, remainingPercent: 100 - used, checkedAt: T0 },
      checkedAt: T0,
    })
    manager.seedFallbacksFromAccounts([account('a', { quota: q(10) }), account('a', { quota: q(90) })])
    expect(manager.getAllFallbacks().size).toBe(1)
    expect([10, 90]).toContain(manager.getFallback('a')?.quota.five_hour?.usedPercent)
    await manager.refreshAllFallbacks([account('d', { access: 'tok-d1' }), account('d', { access: 'tok-d2' })])
    expect(sim.requests).toBe(1)
    expect(manager.getFallback('d')?.quota.source).toBe('poll')
  })

  it('a quota of the wrong shape is dropped field by field and never corrupts the cache', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    const good = manager.getFallback('a')
    expect(good?.quota.five_hour?.usedPercent).toBe(9)

    // Not an object at all: ignored.
    manager.seedFallbacksFromAccounts([account('a', { quota: junk<QuotaSnapshot>(7) })])
    expect(manager.getFallback('a')).toEqual(good)
    manager.seedFallbacksFromAccounts([account('a', { quota: junk<QuotaSnapshot>('full') })])
    expect(manager.getFallback('a')).toEqual(good)

    // An object whose every window is junk carries no quota: it must not replace good windows.
    manager.seedFallbacksFromAccounts([
      account('a', {
        quota: junk<QuotaSnapshot>({
          five_hour: 'full',
          seven_day: { usedPercent: 'x', checkedAt: T0 + 10 },
          scoped: 'none',
          checkedAt: T0 + 10,
        }),
      }),
    ])
    expect(manager.getFallback('a')?.quota.five_hour?.usedPercent).toBe(9)
    expect(manager.getFallback('a')?.quota.seven_day?.usedPercent).toBe(68)
  })

  it('a newer persisted snapshot with one good window and junk elsewhere adopts the good window only', async () => {
    const { manager } = await setup()
    manager.seedFallbacksFromAccounts([
      account('b', {
        quota: junk<QuotaSnapshot>({
          five_hour: { usedPercent: 44, remainingPercent: 56, checkedAt: T0 },
          seven_day: { usedPercent: 'lots', checkedAt: T0 },
          extraUsage: 12,
          checkedAt: T0,
        }),
      }),
    ])
    const b = manager.getFallback('b')
    expect(b?.quota.five_hour?.usedPercent).toBe(44)
    expect(b?.quota.five_hour?.remainingPercent).toBe(56)
    expect(b?.quota.seven_day).toBeUndefined()
    expect(b?.quota.extraUsage).toBeUndefined()
  })

  it('a junk lastQuotaRefreshError is ignored rather than arming a backoff', async () => {
    const { manager } = await setup()
    manager.seedFallbacksFromAccounts([
      account('a', { lastQuotaRefreshError: junk<FallbackAccount['lastQuotaRefreshError']>('429!') }),
      account('b', { lastQuotaRefreshError: junk<FallbackAccount['lastQuotaRefreshError']>({ message: 5 }) }),
    ])
    expect(manager.isFallbackBackedOff('a')).toBe(false)
    expect(manager.isFallbackBackedOff('b')).toBe(false)
  })
})
