// Routing: evaluateQuota (docs/routing.md#policy), thresholds and their aliases, model-scoped staleness of main,
// and the fail-closed answer (docs/routing.md#fail-closed-answer).
import { describe, expect, it } from 'vitest'
import { evaluateQuota } from '../index.js'
import type { QuotaEntry, QuotaPolicy, QuotaSnapshot, ScopedQuotaWindow } from '../index.js'
import { rateLimitHeaders } from '../simulator/index.js'
import { MINUTE, SECOND, T0, failureOf, junk, perTestHarness } from './helpers/fallback-harness.js'

const { setup } = perTestHarness()

const FIVE_RESET = '2026-09-14T02:10:00Z'
const SEVEN_RESET = '2026-09-19T09:00:00Z'
const SCOPED_RESET = '2026-09-18T00:00:00Z'

function fable(used: number, checkedAt = T0): ScopedQuotaWindow {
  return {
    id: 'claude-weekly-scoped-claude-fable-5-1',
    title: 'Fable only',
    modelId: 'claude-fable-5-1',
    modelName: 'Fable',
    usedPercent: used,
    remainingPercent: 100 - used,
    resetsAt: SCOPED_RESET,
    checkedAt,
  }
}

function snapshot(fiveUsed: number | null, sevenUsed: number | null, scoped: ScopedQuotaWindow[] = []): QuotaSnapshot {
  const q: QuotaSnapshot = { scoped, source: 'poll', checkedAt: T0 }
  if (fiveUsed !== null) q.five_hour = { usedPercent: fiveUsed, remainingPercent: 100 - fiveUsed, resetsAt: FIVE_RESET, checkedAt: T0 }
  if (sevenUsed !== null) q.seven_day = { usedPercent: sevenUsed, remainingPercent: 100 - sevenUsed, resetsAt: SEVEN_RESET, checkedAt: T0 }
  return q
}

describe('evaluateQuota', () => {
  it('passes a healthy snapshot with no reason or blockedUntil', () => {
    expect(evaluateQuota(snapshot(9, 68, [fable(22)]), {}, 'claude-fable-5-1')).toEqual({ passes: true })
    expect(evaluateQuota(snapshot(9, 68))).toEqual({ passes: true })
  })

  it('blocks on five_hour below its threshold, until the 5h reset', () => {
    const policy: QuotaPolicy = { minimumRemaining: { five_hour: 20 } }
    expect(evaluateQuota(snapshot(85, 10), policy)).toEqual({
      passes: false,
      reason: 'five_hour',
      blockedUntil: Date.parse(FIVE_RESET),
    })
  })

  it('blocks on seven_day below its threshold, until the 7d reset', () => {
    const policy: QuotaPolicy = { minimumRemaining: { seven_day: 40 } }
    expect(evaluateQuota(snapshot(10, 68), policy)).toEqual({
      passes: false,
      reason: 'seven_day',
      blockedUntil: Date.parse(SEVEN_RESET),
    })
  })

  it('passes a window exactly at its threshold (remaining >= minimum)', () => {
    expect(evaluateQuota(snapshot(80, 60), { minimumRemaining: { five_hour: 20, seven_day: 40 } }).passes).toBe(true)
    expect(evaluateQuota(snapshot(81, 60), { minimumRemaining: { five_hour: 20, seven_day: 40 } }).reason).toBe('five_hour')
  })

  it('accepts the aliases 5h and 1w for the thresholds', () => {
    expect(evaluateQuota(snapshot(85, 10), { minimumRemaining: { '5h': 20 } })).toEqual({
      passes: false,
      reason: 'five_hour',
      blockedUntil: Date.parse(FIVE_RESET),
    })
    expect(evaluateQuota(snapshot(10, 68), { minimumRemaining: { '1w': 40 } })).toEqual({
      passes: false,
      reason: 'seven_day',
      blockedUntil: Date.parse(SEVEN_RESET),
    })
    expect(evaluateQuota(snapshot(85, 68), { minimumRemaining: { '5h': 10, '1w': 30 } }).passes).toBe(true)
  })

  it('blocks on the exhausted scoped window of the requested model only', () => {
    const q = snapshot(9, 68, [fable(100)])
    expect(evaluateQuota(q, {}, 'claude-fable-5-1')).toEqual({
      passes: false,
      reason: 'scoped',
      blockedUntil: Date.parse(SCOPED_RESET),
    })
    // Another version of the same family counts against the Fable window (docs/freshness.md#model-matching).
    expect(evaluateQuota(q, {}, 'claude-fable-6').reason).toBe('scoped')
    expect(evaluateQuota(q, {}, 'claude-sonnet-4-5')).toEqual({ passes: true })
    expect(evaluateQuota(q)).toEqual({ passes: true })
    expect(evaluateQuota(snapshot(9, 68, [fable(99)]), {}, 'claude-fable-5-1').passes).toBe(true)
  })

  it('unknown quota fails closed by default (the plugin default, docs/routing.md#policy) and passes with failClosedOnUnknownQuota: false', () => {
    expect(evaluateQuota(null)).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota(undefined, {})).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota({})).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota(snapshot(null, 68))).toEqual({ passes: false, reason: 'unknown' })
    const open: QuotaPolicy = { failClosedOnUnknownQuota: false }
    expect(evaluateQuota(null, open)).toEqual({ passes: true })
    expect(evaluateQuota({}, open)).toEqual({ passes: true })
    expect(evaluateQuota(snapshot(null, 68), open)).toEqual({ passes: true })
    const closed: QuotaPolicy = { failClosedOnUnknownQuota: true }
    expect(evaluateQuota(null, closed)).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota({}, closed)).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota(snapshot(null, 68), closed)).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota(snapshot(9, null), closed)).toEqual({ passes: false, reason: 'unknown' })
    expect(evaluateQuota(snapshot(9, 68), closed)).toEqual({ passes: true })
  })

  it('a known blocking window wins over unknown, and blockedUntil is the latest blocking reset', () => {
    expect(evaluateQuota(snapshot(95, null), { minimumRemaining: { five_hour: 10 }, failClosedOnUnknownQuota: true })).toEqual({
      passes: false,
      reason: 'five_hour',
      blockedUntil: Date.parse(FIVE_RESET),
    })
    // Both windows below threshold: usable again only when the later one resets.
    expect(evaluateQuota(snapshot(95, 95), { minimumRemaining: { five_hour: 10, seven_day: 10 } })).toEqual({
      passes: false,
      reason: 'seven_day',
      blockedUntil: Date.parse(SEVEN_RESET),
    })
  })

  describe('tie-break between several blocking windows (the latest known reset wins; ties go to 5h, 7d, scoped)', () => {
    const both: QuotaPolicy = { minimumRemaining: { five_hour: 10, seven_day: 10 } }
    const FABLE = 'claude-fable-5-1'
    /** A snapshot whose 5h, 7d and Fable windows are all exhausted, with the given resets. */
    function exhausted(fiveReset: string | undefined, sevenReset: string | undefined, scopedReset?: string): QuotaSnapshot {
      const q = snapshot(100, 100, [{ ...fable(100), resetsAt: scopedReset }])
      q.five_hour = { ...q.five_hour!, resetsAt: fiveReset }
      q.seven_day = { ...q.seven_day!, resetsAt: sevenReset }
      return q
    }
    const LATE = '2026-09-20T00:00:00Z'

    it('a later 5h reset wins over an earlier 7d one (order is not what decides)', () => {
      expect(evaluateQuota(exhausted(LATE, SEVEN_RESET), both)).toEqual({
        passes: false,
        reason: 'five_hour',
        blockedUntil: Date.parse(LATE),
      })
    })

    it('equal resets go to the first blocker: five_hour before seven_day before scoped', () => {
      expect(evaluateQuota(exhausted(SEVEN_RESET, SEVEN_RESET), both)).toEqual({
        passes: false,
        reason: 'five_hour',
        blockedUntil: Date.parse(SEVEN_RESET),
      })
      expect(evaluateQuota(exhausted(FIVE_RESET, SEVEN_RESET, SEVEN_RESET), both, FABLE)).toEqual({
        passes: false,
        reason: 'seven_day',
        blockedUntil: Date.parse(SEVEN_RESET),
      })
      expect(evaluateQuota(exhausted(LATE, LATE, LATE), both, FABLE)).toEqual({
        passes: false,
        reason: 'five_hour',
        blockedUntil: Date.parse(LATE),
      })
    })

    it('a known reset wins over an unknown one, whichever window has it', () => {
      expect(evaluateQuota(exhausted(undefined, SEVEN_RESET), both)).toEqual({
        passes: false,
        reason: 'seven_day',
        blockedUntil: Date.parse(SEVEN_RESET),
      })
      expect(evaluateQuota(exhausted(FIVE_RESET, undefined), both)).toEqual({
        passes: false,
        reason: 'five_hour',
        blockedUntil: Date.parse(FIVE_RESET),
      })
      expect(evaluateQuota(exhausted(undefined, undefined, SCOPED_RESET), both, FABLE)).toEqual({
        passes: false,
        reason: 'scoped',
        blockedUntil: Date.parse(SCOPED_RESET),
      })
    })

    it('no known reset at all: the first blocker, with no blockedUntil', () => {
      expect(evaluateQuota(exhausted(undefined, undefined), both)).toEqual({ passes: false, reason: 'five_hour' })
      expect(evaluateQuota(exhausted(undefined, undefined, undefined), both, FABLE)).toEqual({ passes: false, reason: 'five_hour' })
    })

    it('a later scoped reset wins over both windows', () => {
      expect(evaluateQuota(exhausted(FIVE_RESET, SEVEN_RESET, LATE), both, FABLE)).toEqual({
        passes: false,
        reason: 'scoped',
        blockedUntil: Date.parse(LATE),
      })
    })
  })

  it('a blocking window without a known reset has no blockedUntil', () => {
    const q: QuotaSnapshot = { five_hour: { usedPercent: 95, remainingPercent: 5, checkedAt: T0 } }
    expect(evaluateQuota(q, { minimumRemaining: { five_hour: 10 } })).toEqual({ passes: false, reason: 'five_hour' })
  })

  it('junk policy fields fall back to the defaults; a non-object quota is a TypeError', async () => {
    const q = snapshot(85, 68)
    expect(evaluateQuota(q, junk<QuotaPolicy>({ minimumRemaining: { five_hour: 'lots' }, failClosedOnUnknownQuota: 'yes' }))).toEqual({
      passes: true,
    })
    expect(evaluateQuota(null, junk<QuotaPolicy>({ failClosedOnUnknownQuota: 'yes' }))).toEqual({ passes: false, reason: 'unknown' })
    expect(await failureOf(() => evaluateQuota(junk<QuotaSnapshot>('full')))).toBeInstanceOf(TypeError)
    expect(await failureOf(() => evaluateQuota(snapshot(1, 1), {}, junk<string>(5)))).toBeInstanceOf(TypeError)
  })
})

describe('thresholds from storage', () => {
  it('storage minimumRemaining aliases make an exhausted account due at reset + 60 s', async () => {
    const { manager } = await setup({ storage: { quota: { minimumRemaining: { '5h': 95 } } } })
    const reset = Math.floor(T0 / 1000) + 120
    const entry = manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.12, sevenDay: 0.1, fiveHourReset: reset }))
    expect(entry?.refreshAfter).toBe(reset * 1000 + 60 * SECOND)
  })

  it('without a threshold breach the entry is due one interval after the check', async () => {
    const { manager } = await setup({ storage: { quota: { minimumRemaining: { '5h': 50 } } } })
    const reset = Math.floor(T0 / 1000) + 120
    const entry = manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.12, fiveHourReset: reset }))
    expect(entry?.refreshAfter).toBe(T0 + 5 * MINUTE)
  })
})

describe('model-scoped staleness of main', () => {
  function mainEntry(scopedAt: number): QuotaEntry {
    return {
      quota: { ...snapshot(10, 20, [fable(22, scopedAt)]), source: 'headers' },
      checkedAt: T0,
      refreshAfter: T0 + 5 * MINUTE,
    }
  }

  it('isMainStale(model) is true when that model scoped window is older than the interval, even with fresh 5h/7d', async () => {
    const { manager } = await setup()
    manager.setMain('alice', mainEntry(T0 - 6 * MINUTE))
    expect(manager.isMainStale()).toBe(false)
    expect(manager.isMainStale('claude-fable-5-1')).toBe(true)
    expect(manager.isMainStale('claude-sonnet-4-5')).toBe(false)
    expect(manager.needsRefresh(1, 'claude-fable-5-1')).toBe(true)
    expect(manager.needsRefresh(1)).toBe(false)
  })

  it('a scoped window becomes stale exactly one interval after it was observed', async () => {
    const { manager, clock } = await setup()
    manager.setMain('alice', mainEntry(T0 - 2 * MINUTE))
    expect(manager.isMainStale('claude-fable-5-1')).toBe(false)
    clock.advance(3 * MINUTE - 1)
    expect(manager.isMainStale('claude-fable-5-1')).toBe(false)
    clock.advance(1)
    expect(manager.isMainStale('claude-fable-5-1')).toBe(true)
    expect(manager.isMainStale()).toBe(false)
  })
})

describe('failClosedResponse (docs/routing.md#fail-closed-answer)', () => {
  const failClosed = { storage: { quota: { failClosedOnUnknownQuota: true } } }

  function expectedBody(seconds: number, message: string): string {
    return JSON.stringify({
      type: 'error',
      error: { type: 'rate_limit_error', message: `Quota API backed off for ${seconds}s after: ${message}` },
    })
  }

  it('answers 429 with retry-after, content type and the exact body', async () => {
    const { manager, sim } = await setup(failClosed)
    expect(manager.failClosedResponse()).toBeNull() // not backed off yet
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    const lastError = manager.getLastApiError()
    expect(lastError?.message.startsWith('Claude quota check failed: 429 — ')).toBe(true)
    const answer = manager.failClosedResponse()
    expect(answer).not.toBeNull()
    expect(answer?.status).toBe(429)
    expect(answer?.headers['retry-after']).toBe('60')
    expect(answer?.headers['content-type']).toBe('application/json')
    expect(answer?.body).toBe(expectedBody(60, lastError?.message ?? ''))
  })

  it('retry-after is whole seconds, rounded up, at least 1, and the body names the same N', async () => {
    const { manager, sim, clock } = await setup(failClosed)
    sim.reply({ status: 503 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    const message = manager.getLastApiError()?.message ?? ''
    clock.advance(30 * SECOND + 200) // 29.8 s left
    let answer = manager.failClosedResponse()
    expect(answer?.headers['retry-after']).toBe('30')
    expect(JSON.parse(answer?.body ?? '{}')).toEqual(JSON.parse(expectedBody(30, message)))
    clock.set(T0 + 60 * SECOND - 1) // 1 ms left
    answer = manager.failClosedResponse()
    expect(answer?.headers['retry-after']).toBe('1')
    expect(JSON.parse(answer?.body ?? '{}')).toEqual(JSON.parse(expectedBody(1, message)))
    clock.set(T0 + 60 * SECOND) // backoff over
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('honours a long Retry-After from the server', async () => {
    const { manager, sim } = await setup(failClosed)
    sim.reply({ status: 429, headers: { 'retry-after': '3000' } })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.failClosedResponse()?.headers['retry-after']).toBe('3000')
  })

  it('is null when the policy does not fail closed', async () => {
    const { manager, sim } = await setup({ storage: { quota: { failClosedOnUnknownQuota: false } } })
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('is null when main has a cached snapshot, however old', async () => {
    const { manager, sim, clock } = await setup(failClosed)
    await manager.refreshMain('alice', 'tok-main')
    clock.advance(60 * MINUTE)
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('is null when only a fallback is backed off', async () => {
    const { manager, sim } = await setup(failClosed)
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('follows updateStorage turning fail-closed on', async () => {
    const { manager, sim } = await setup({ storage: { quota: { failClosedOnUnknownQuota: false } } })
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.failClosedResponse()).toBeNull()
    manager.updateStorage({ quota: { failClosedOnUnknownQuota: true } })
    expect(manager.failClosedResponse()?.status).toBe(429)
  })
})
