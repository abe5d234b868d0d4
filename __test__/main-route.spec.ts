// The main-account route: single flight, the status matrix, backoff, freshness, seeding,
// callbacks, identity, background refresh, close() and pacing. Everything runs against the local
// usage simulator on a ManualClock: no real backoff delay is ever slept through.
import { afterEach, describe, expect, it } from 'vitest'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { ManualClock, QuotaManager, defaultStatePath, tokenFingerprint } from '../index.js'
import type { AccountStorage, QuotaApiError, QuotaSnapshot } from '../index.js'
import { startUsageSimulator, usageBody } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'
import { Harness, MINUTE, SECOND, T0, expectCode, rejectionOf } from './helpers/main-helpers.js'

const h = new Harness()
afterEach(async () => {
  await h.cleanup()
})

const TOKEN = 'sk-ant-oat01-main-token'
const TOKEN_2 = 'sk-ant-oat01-other-token'

function lastError(manager: QuotaManager): QuotaApiError {
  const error = manager.getLastApiError()
  if (error === undefined) throw new Error('expected a recorded API error')
  return error
}

function backoffMs(manager: QuotaManager): number {
  const error = lastError(manager)
  if (error.nextRetryAt === undefined) throw new Error('expected nextRetryAt')
  return error.nextRetryAt - error.checkedAt
}

async function until(condition: () => boolean, what: string, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe('single flight', () => {
  it('1,000 concurrent refreshMain calls send exactly one request and share its snapshot', async () => {
    const sim = await h.simulator({ delayMs: 100 })
    const { manager } = h.manager(sim)
    const calls: Promise<QuotaSnapshot>[] = []
    for (let i = 0; i < 1_000; i++) calls.push(manager.refreshMain('alice', TOKEN))
    const results = await Promise.all(calls)
    expect(sim.requests).toBe(1)
    for (const result of results) expect(result).toEqual(results[0])
    expect(results[0].five_hour?.usedPercent).toBe(9)
    const stats = manager.stats()
    expect(stats.apiCalls).toBe(1)
    expect(stats.joinedInFlight).toBe(999)
  })

  it('a refresh after the shared one settled sends a new request', async () => {
    const sim = await h.simulator({ delayMs: 50 })
    const { manager } = h.manager(sim)
    await Promise.all([manager.refreshMain('alice', TOKEN), manager.refreshMain('alice', TOKEN)])
    await manager.refreshMain('alice', TOKEN)
    expect(sim.requests).toBe(2)
    expect(manager.stats().joinedInFlight).toBe(1)
  })

  it('sends the documented request headers', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    await manager.refreshMain('alice', TOKEN)
    const [request] = sim.log
    expect(request.path).toBe('/api/oauth/usage')
    expect(request.tokenFingerprint).toBe(tokenFingerprint(TOKEN))
    expect(request.accept).toBe('application/json')
    expect(request.beta).toBe('oauth-2025-04-20')
    expect(request.userAgent).toMatch(/^claude-code\//)
  })
})

describe('status matrix', () => {
  it('200 resolves with a parsed poll snapshot and arms nothing', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    const quota = await manager.refreshMain('alice', TOKEN)
    expect(quota.source).toBe('poll')
    expect(quota.checkedAt).toBe(T0)
    expect(quota.five_hour).toMatchObject({ usedPercent: 9, remainingPercent: 91, checkedAt: T0 })
    expect(quota.seven_day).toMatchObject({ usedPercent: 68, remainingPercent: 32 })
    expect(quota.scoped?.[0]).toMatchObject({ id: 'claude-weekly-scoped-claude-fable-5-1', title: 'Fable only' })
    expect(quota.accountIdentity).toBe('alice')
    expect(manager.isBackedOff()).toBe(false)
    expect(manager.getLastApiError()).toBeUndefined()
  })

  for (const status of [401, 403]) {
    it(`${status} rejects with QUOTA_AUTH_ERROR and arms no backoff`, async () => {
      const sim = await h.simulator()
      const { manager } = h.manager(sim)
      sim.replyOnce({ status, body: 'invalid token' })
      const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
      expectCode(error, 'QUOTA_AUTH_ERROR')
      expect(error.status).toBe(status)
      expect(error.retryAfterMs).toBeUndefined()
      expect(error.message).toBe(`Claude quota check failed: ${status} — invalid token`)
      expect(manager.isBackedOff()).toBe(false)
      expect(manager.getLastApiError()).toBeUndefined()
      // Not backed off: the next call goes out at once.
      await manager.refreshMain('alice', TOKEN)
      expect(sim.requests).toBe(2)
    })
  }

  it('404 rejects with QUOTA_HTTP_ERROR and a flat 5 minute backoff', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 404, body: 'not here' })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error.status).toBe(404)
    expect(error.retryAfterMs).toBeUndefined()
    expect(error.message).toBe('Claude quota check failed: 404 — not here')
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(5 * MINUTE)
    expect(lastError(manager)).toMatchObject({ status: 404, retryCount: 1, checkedAt: T0, accountIdentity: 'alice' })
  })

  it('a flat 404 backoff does not escalate on repeated 404s', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.reply({ status: 404 })
    for (let i = 0; i < 3; i++) {
      await rejectionOf(manager.refreshMain('alice', TOKEN))
      expect(backoffMs(manager)).toBe(5 * MINUTE)
      clock.advance(5 * MINUTE)
    }
    expect(sim.requests).toBe(3)
  })

  it('429 without Retry-After: QUOTA_HTTP_ERROR, the exact message, 60 s ladder backoff', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, body: 'slow down' })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error).toBeInstanceOf(Error)
    expect(error.status).toBe(429)
    expect(error.retryAfterMs).toBeUndefined()
    expect(error.message).toBe('Claude quota check failed: 429 — slow down')
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(60 * SECOND)
    expect(lastError(manager)).toMatchObject({
      message: 'Claude quota check failed: 429 — slow down',
      status: 429,
      retryCount: 1,
      checkedAt: T0,
      nextRetryAt: T0 + 60 * SECOND,
    })
  })

  it('429 with a Retry-After longer than the rung: retryAfterMs on the error, the window follows it', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, body: 'slow down', headers: { 'retry-after': '120' } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error.status).toBe(429)
    expect(error.retryAfterMs).toBe(120 * SECOND)
    expect(lastError(manager).retryAfterMs).toBe(120 * SECOND)
    expect(backoffMs(manager)).toBe(120 * SECOND)
  })

  it('429 with a Retry-After shorter than the rung: the ladder wins', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': '30' } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.retryAfterMs).toBe(30 * SECOND)
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })

  for (const status of [500, 503]) {
    it(`${status} rejects with QUOTA_HTTP_ERROR and a 60 s ladder backoff`, async () => {
      const sim = await h.simulator()
      const { manager } = h.manager(sim)
      sim.replyOnce({ status, body: 'upstream trouble' })
      const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
      expectCode(error, 'QUOTA_HTTP_ERROR')
      expect(error.status).toBe(status)
      expect(error.retryAfterMs).toBeUndefined()
      expect(error.message).toBe(`Claude quota check failed: ${status} — upstream trouble`)
      expect(manager.isBackedOff()).toBe(true)
      expect(backoffMs(manager)).toBe(60 * SECOND)
    })
  }

  it('503 with Retry-After carries retryAfterMs', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 503, headers: { 'Retry-After': '300' } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.status).toBe(503)
    expect(error.retryAfterMs).toBe(300 * SECOND)
    expect(backoffMs(manager)).toBe(300 * SECOND)
  })

  it('a stalled request rejects with QUOTA_TIMEOUT after requestTimeoutMs, ladder backoff', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, { requestTimeoutMs: 300 })
    sim.replyOnce({ stall: true })
    const started = performance.now()
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    const elapsed = performance.now() - started
    expectCode(error, 'QUOTA_TIMEOUT')
    expect(error.status).toBeUndefined()
    expect(elapsed).toBeGreaterThanOrEqual(250)
    expect(elapsed).toBeLessThan(2_000)
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })
})

describe('backoff ladder', () => {
  it('escalates 60 s, 2, 4, 8, 15, 15, 15 min across expired windows', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.reply({ status: 429 })
    const expected = [1, 2, 4, 8, 15, 15, 15].map((m) => m * MINUTE)
    for (let k = 0; k < expected.length; k++) {
      await rejectionOf(manager.refreshMain('alice', TOKEN))
      const error = lastError(manager)
      expect(error.retryCount).toBe(k + 1)
      expect(error.checkedAt).toBe(clock.now())
      expect(error.nextRetryAt).toBe(clock.now() + expected[k])
      expect(manager.isBackedOff()).toBe(true)
      clock.advance(expected[k] - 1)
      expect(manager.isBackedOff()).toBe(true)
      clock.advance(1)
      expect(manager.isBackedOff()).toBe(false)
    }
    expect(sim.requests).toBe(expected.length)
  })

  it('default jitter only lengthens a rung and never passes the 15 minute cap', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { backoff: {} })
    sim.reply({ status: 500 })
    const rungs = [1, 2, 4, 8, 15, 15].map((m) => m * MINUTE)
    for (const rung of rungs) {
      await rejectionOf(manager.refreshMain('alice', TOKEN))
      const delay = backoffMs(manager)
      expect(delay).toBeGreaterThanOrEqual(rung)
      expect(delay).toBeLessThanOrEqual(Math.min(rung * 1.1, 15 * MINUTE))
      clock.advance(delay)
    }
  })

  it('a failure inside an open window (from the backed-off cache path) does not escalate', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.reply({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    const before = lastError(manager)
    for (let i = 0; i < 5; i++) await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(sim.requests).toBe(1)
    expect(lastError(manager).retryCount).toBe(1)
    expect(lastError(manager).nextRetryAt).toBe(before.nextRetryAt)
  })

  it("Retry-After '3600' wins over the ladder, beyond the 15 minute cap", async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': '3600' } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.retryAfterMs).toBe(3_600 * SECOND)
    expect(lastError(manager).nextRetryAt).toBe(T0 + 3_600 * SECOND)
    clock.advance(30 * MINUTE)
    expect(manager.isBackedOff()).toBe(true)
    clock.advance(30 * MINUTE)
    expect(manager.isBackedOff()).toBe(false)
  })

  // T0 + 2 h = Mon, 14 Sep 2026 04:10:00 GMT, in each of the three RFC 9110 forms.
  const httpDates: Array<[string, string]> = [
    ['IMF-fixdate', new Date(T0 + 2 * 3_600 * SECOND).toUTCString()],
    ['RFC 850', 'Monday, 14-Sep-26 04:10:00 GMT'],
    ['asctime', 'Mon Sep 14 04:10:00 2026'],
  ]
  for (const [form, at] of httpDates) {
    it(`an HTTP-date Retry-After (${form}) is honoured relative to the manager clock`, async () => {
      const sim = await h.simulator()
      const { manager } = h.manager(sim)
      sim.replyOnce({ status: 429, headers: { 'retry-after': at } })
      const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
      expect(error.retryAfterMs).toBe(2 * 3_600 * SECOND)
      expect(lastError(manager).nextRetryAt).toBe(T0 + 2 * 3_600 * SECOND)
    })
  }

  it("Retry-After '0' is ignored: no retryAfterMs, plain 60 s rung", async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': '0' } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.retryAfterMs).toBeUndefined()
    expect(lastError(manager).retryAfterMs).toBeUndefined()
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })

  it('a past HTTP-date Retry-After is ignored', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': new Date(T0 - 3_600 * SECOND).toUTCString() } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.retryAfterMs).toBeUndefined()
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })

  it('a Retry-After beyond maxRetryAfterMs is capped to it', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, { backoff: { jitter: 0, maxRetryAfterMs: 2 * 3_600 * SECOND } })
    sim.replyOnce({ status: 429, headers: { 'retry-after': String(5 * 3_600) } })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(backoffMs(manager)).toBe(2 * 3_600 * SECOND)
  })

  // Retry-After values up to 30 days are honoured (capped at maxRetryAfterMs); the bound is
  // inclusive. Default maxRetryAfterMs: 6 h.
  const THIRTY_DAYS_S = 30 * 24 * 3_600

  it('a Retry-After of exactly 30 days is honoured, capped at maxRetryAfterMs', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': String(THIRTY_DAYS_S) } })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error.retryAfterMs).toBe(THIRTY_DAYS_S * SECOND)
    expect(backoffMs(manager)).toBe(6 * 3_600 * SECOND)
  })

  // issue 11 (item 11): fixed by the hardening merge (capped, not dropped).
  it('a Retry-After beyond 30 days is capped at maxRetryAfterMs, not dropped to the 60 s rung', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429, headers: { 'retry-after': String(THIRTY_DAYS_S + 1) } })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(backoffMs(manager)).toBe(6 * 3_600 * SECOND)
  })

  it('a success resets the ladder: the next failure is attempt 1 again', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.replyOnce({ status: 429 })
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    clock.advance(backoffMs(manager))
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(lastError(manager).retryCount).toBe(2)
    expect(backoffMs(manager)).toBe(2 * MINUTE)
    clock.advance(backoffMs(manager))
    await manager.refreshMain('alice', TOKEN)
    expect(manager.isBackedOff()).toBe(false)
    sim.replyOnce({ status: 429 })
    clock.advance(10 * MINUTE)
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(lastError(manager).retryCount).toBe(1)
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })
})

describe('while backed off', () => {
  it('refreshMainWithMetadata serves the cached snapshot (whatever its age) with fetched: false and sends nothing', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    const first = await manager.refreshMainWithMetadata('alice', TOKEN)
    expect(first.fetched).toBe(true)
    clock.advance(60 * MINUTE) // the cache is long stale
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(sim.requests).toBe(2)
    const served = await manager.refreshMainWithMetadata('alice', TOKEN)
    expect(served.fetched).toBe(false)
    expect(served.quota).toEqual(first.quota)
    const plain = await manager.refreshMain('alice', TOKEN)
    expect(plain).toEqual(first.quota)
    expect(sim.requests).toBe(2)
    expect(manager.stats().servedDuringBackoff).toBe(2)
  })

  it('with nothing cached rejects with QUOTA_BACKED_OFF carrying nextRetryAt and retryAfterMs', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.replyOnce({ status: 503 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    clock.advance(10 * SECOND)
    const error = await rejectionOf(manager.refreshMainWithMetadata('alice', TOKEN))
    expectCode(error, 'QUOTA_BACKED_OFF')
    expect(error.message).toBe('Quota API rate-limited — try again later')
    expect(error.nextRetryAt).toBe(T0 + 60 * SECOND)
    expect(error.retryAfterMs).toBe(50 * SECOND)
    expect(sim.requests).toBe(1)
    expect(manager.stats().servedDuringBackoff).toBe(1)
    // Once the window ends the route polls again.
    clock.advance(50 * SECOND)
    const result = await manager.refreshMainWithMetadata('alice', TOKEN)
    expect(result.fetched).toBe(true)
    expect(sim.requests).toBe(2)
  })
})

describe('backoff configuration and the fail-closed answer', () => {
  it('backoff.initialMs / maxMs / nonTransientMs shape the ladder and the flat delay', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { backoff: { initialMs: 1_000, maxMs: 4_000, nonTransientMs: 7_000, jitter: 0 } })
    sim.reply({ status: 429 })
    for (const expected of [1_000, 2_000, 4_000, 4_000]) {
      await rejectionOf(manager.refreshMain('alice', TOKEN))
      expect(backoffMs(manager)).toBe(expected)
      clock.advance(expected)
    }
    sim.reply({ status: 404 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(backoffMs(manager)).toBe(7_000)
  })

  it('failClosedResponse: a 429 with retry-after until the backoff ends, only when nothing is cached', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { storage: { quota: { failClosedOnUnknownQuota: true } } })
    expect(manager.failClosedResponse()).toBeNull() // not backed off
    sim.replyOnce({ status: 429, body: 'slow down', headers: { 'retry-after': '120' } })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    const answer = manager.failClosedResponse()
    expect(answer?.status).toBe(429)
    expect(answer?.headers['retry-after']).toBe('120')
    expect(JSON.parse(answer?.body ?? '{}')).toEqual({
      type: 'error',
      error: {
        type: 'rate_limit_error',
        message: 'Quota API backed off for 120s after: Claude quota check failed: 429 — slow down',
      },
    })
    clock.advance(119_500)
    expect(manager.failClosedResponse()?.headers['retry-after']).toBe('1')
    clock.advance(500)
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('failClosedResponse fails closed by default (the plugin default, docs/routing.md#policy) and is null with failClosedOnUnknownQuota: false', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.failClosedResponse()?.status).toBe(429)
    manager.updateStorage({ quota: { failClosedOnUnknownQuota: false } })
    expect(manager.failClosedResponse()).toBeNull()
  })

  it('a header push while backed off leaves the backoff alone and becomes the cached answer', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    const entry = manager.pushMainFromHeaders('alice', {
      'anthropic-ratelimit-unified-5h-utilization': '0.25',
      'anthropic-ratelimit-unified-7d-utilization': '0.5',
    })
    expect(entry?.quota.five_hour?.usedPercent).toBe(25)
    expect(manager.isBackedOff()).toBe(true)
    expect(lastError(manager).retryCount).toBe(1)
    const served = await manager.refreshMainWithMetadata('alice', TOKEN)
    expect(served.fetched).toBe(false)
    expect(served.quota.five_hour?.usedPercent).toBe(25)
    expect(served.quota.source).toBe('headers')
    expect(sim.requests).toBe(1)
  })
})

describe('freshness', () => {
  it('isMainStale: true before a poll, false right after, true once the interval passed', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    expect(manager.isMainStale()).toBe(true)
    await manager.refreshMain('alice', TOKEN)
    expect(manager.isMainStale()).toBe(false)
    const entry = manager.getMain('alice')
    expect(entry).toMatchObject({ checkedAt: T0, refreshAfter: T0 + 5 * MINUTE })
    clock.advance(5 * MINUTE - 1)
    expect(manager.isMainStale()).toBe(false)
    clock.advance(1)
    expect(manager.isMainStale()).toBe(true)
  })

  it('checkIntervalMinutes is honoured, and overrides storage.quota.checkIntervalMinutes', async () => {
    const sim = await h.simulator()
    const a = h.manager(sim, { checkIntervalMinutes: 10 })
    await a.manager.refreshMain('alice', TOKEN)
    a.clock.advance(9 * MINUTE)
    expect(a.manager.isMainStale()).toBe(false)
    a.clock.advance(1 * MINUTE)
    expect(a.manager.isMainStale()).toBe(true)

    const b = h.manager(sim, { storage: { quota: { checkIntervalMinutes: 20 } } })
    await b.manager.refreshMain('alice', TOKEN)
    b.clock.advance(19 * MINUTE)
    expect(b.manager.isMainStale()).toBe(false)
    b.clock.advance(1 * MINUTE)
    expect(b.manager.isMainStale()).toBe(true)

    const c = h.manager(sim, { checkIntervalMinutes: 2, storage: { quota: { checkIntervalMinutes: 20 } } })
    await c.manager.refreshMain('alice', TOKEN)
    c.clock.advance(2 * MINUTE)
    expect(c.manager.isMainStale()).toBe(true)
  })

  it('needsRefresh(n) follows refreshEveryNRequests and staleness', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { refreshEveryNRequests: 3 })
    expect(manager.needsRefresh(1)).toBe(true) // nothing cached
    await manager.refreshMain('alice', TOKEN)
    expect(manager.needsRefresh(0)).toBe(false)
    expect(manager.needsRefresh(1)).toBe(false)
    expect(manager.needsRefresh(2)).toBe(false)
    expect(manager.needsRefresh(3)).toBe(true)
    expect(manager.needsRefresh(4)).toBe(false)
    expect(manager.needsRefresh(6)).toBe(true)
    expect(manager.shouldRefreshOnRequestCount(9)).toBe(true)
    expect(manager.shouldRefreshOnRequestCount(0)).toBe(false)
    clock.advance(5 * MINUTE)
    expect(manager.needsRefresh(1)).toBe(true)
  })

  it('refreshEveryNRequests defaults to off', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    await manager.refreshMain('alice', TOKEN)
    for (const n of [1, 2, 3, 10, 100]) expect(manager.needsRefresh(n)).toBe(false)
  })

  it('a model whose scoped window is older than the interval makes the entry stale for that model only', () => {
    const { manager } = h.manager(null)
    const old = T0 - 6 * MINUTE
    manager.setMain('alice', {
      checkedAt: T0 - MINUTE,
      refreshAfter: T0 + 4 * MINUTE,
      quota: {
        five_hour: { usedPercent: 10, remainingPercent: 90, checkedAt: T0 - MINUTE },
        seven_day: { usedPercent: 20, remainingPercent: 80, checkedAt: T0 - MINUTE },
        scoped: [
          {
            id: 'claude-weekly-scoped-claude-fable-5-1',
            title: 'Fable only',
            modelId: 'claude-fable-5-1',
            modelName: 'Fable',
            usedPercent: 22,
            remainingPercent: 78,
            checkedAt: old,
          },
        ],
        source: 'poll',
        checkedAt: T0 - MINUTE,
      },
    })
    expect(manager.isMainStale()).toBe(false)
    expect(manager.isMainStale('claude-opus-4-1')).toBe(false)
    expect(manager.isMainStale('claude-fable-5-1')).toBe(true)
    expect(manager.isMainStale('claude-fable-5-2')).toBe(true) // matches on the word "fable"
    expect(manager.needsRefresh(1, 'claude-fable-5-1')).toBe(true)
    expect(manager.needsRefresh(1, 'claude-opus-4-1')).toBe(false)
  })
})

describe('seeding from storage', () => {
  const freshStorage = (): AccountStorage => ({
    mainAccountId: 'alice',
    quota: {
      mainQuota: {
        five_hour: { usedPercent: 40, remainingPercent: 60, checkedAt: T0 - MINUTE },
        seven_day: { usedPercent: 50, remainingPercent: 50, checkedAt: T0 - MINUTE },
        source: 'poll',
        checkedAt: T0 - MINUTE,
      },
      mainQuotaCheckedAt: T0 - MINUTE,
    },
  })

  it('a fresh persisted snapshot makes the route fresh and is served without a request', () => {
    const { manager } = h.manager(null, { storage: freshStorage() })
    expect(manager.isMainStale()).toBe(false)
    const entry = manager.getMain('alice')
    expect(entry?.checkedAt).toBe(T0 - MINUTE)
    expect(entry?.quota.five_hour?.usedPercent).toBe(40)
    expect(manager.getMain('alice')?.quota.seven_day?.usedPercent).toBe(50)
    // docs/compat.md#main-identity: without an argument, getMain() serves only while no identity is bound.
    expect(manager.getMain()).toBeNull()
    expect(manager.stats().apiCalls).toBe(0)
  })

  it("a fresh persisted snapshot: the host's refresh loop sends nothing until it is due, against a live endpoint", async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { storage: freshStorage() })
    // The plugin's loop (README): on each request, refresh in the background when needed.
    const hostRequest = (n: number): void => {
      expect(manager.getMain('alice')).not.toBeNull()
      if (manager.needsRefresh(n)) manager.refreshMainInBackground(TOKEN)
    }
    for (let n = 1; n <= 20; n++) hostRequest(n)
    clock.advance(4 * MINUTE - 1) // checked at T0 - 1 min, interval 5 min: 1 ms short of due
    for (let n = 21; n <= 40; n++) hostRequest(n)
    await settle(50)
    expect(sim.requests).toBe(0)
    // The same loop does send once the snapshot is due, so the silence above was freshness.
    clock.advance(1)
    expect(manager.isMainStale()).toBe(true)
    hostRequest(41)
    await until(() => sim.requests === 1, 'the refresh once due')
  })

  it('an active persisted mainLastQuotaApiError backs the route off: refreshMain sends nothing', async () => {
    const sim = await h.simulator()
    const storage: AccountStorage = {
      mainAccountId: 'alice',
      quota: {
        mainLastQuotaApiError: {
          message: 'Claude quota check failed: 429 — slow down',
          checkedAt: T0 - 10 * SECOND,
          nextRetryAt: T0 + 110 * SECOND,
          retryCount: 2,
          status: 429,
        },
      },
    }
    const { manager, clock } = h.manager(sim, { storage })
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.getLastApiError()?.nextRetryAt).toBe(T0 + 110 * SECOND)
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_BACKED_OFF')
    expect(error.nextRetryAt).toBe(T0 + 110 * SECOND)
    expect(sim.requests).toBe(0)
    // The persisted count carries over: the next failure is rung 3 (4 min).
    clock.advance(110 * SECOND)
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(sim.requests).toBe(1)
    expect(lastError(manager).retryCount).toBe(3)
    expect(backoffMs(manager)).toBe(4 * MINUTE)
  })

  it('an expired persisted error does not back the route off', async () => {
    const sim = await h.simulator()
    const storage: AccountStorage = {
      quota: {
        mainLastQuotaApiError: {
          message: 'Claude quota check failed: 429 — slow down',
          checkedAt: T0 - 10 * MINUTE,
          nextRetryAt: T0 - 1,
          retryCount: 1,
          status: 429,
        },
      },
    }
    const { manager } = h.manager(sim, { storage })
    expect(manager.isBackedOff()).toBe(false)
    await manager.refreshMain('alice', TOKEN)
    expect(sim.requests).toBe(1)
  })

  it('updateStorage takes new settings and seeds main', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    expect(manager.getMain()).toBeNull()
    manager.updateStorage({ ...freshStorage(), quota: { ...freshStorage().quota, checkIntervalMinutes: 30, refreshEveryNRequests: 5 } })
    expect(manager.getMain('alice')?.quota.five_hour?.usedPercent).toBe(40)
    clock.advance(20 * MINUTE)
    expect(manager.isMainStale()).toBe(false) // 30 minute interval now
    expect(manager.needsRefresh(5)).toBe(true)
    expect(manager.needsRefresh(4)).toBe(false)
    // A poll after that is newer; an older persisted snapshot does not replace it.
    clock.advance(15 * MINUTE)
    await manager.refreshMain('alice', TOKEN)
    manager.updateStorage(freshStorage())
    expect(manager.getMain('alice')?.quota.five_hour?.usedPercent).toBe(9)
    expect(manager.getMain('alice')?.checkedAt).toBe(clock.now())
  })

  it('seedMainFromStorage binds the identity and adopts an active backoff', () => {
    const { manager } = h.manager(null)
    const storage = freshStorage()
    delete storage.mainAccountId
    manager.seedMainFromStorage(storage, 'carol')
    expect(manager.getMain('carol')?.quota.five_hour?.usedPercent).toBe(40)
    expect(manager.getMain('alice')).toBeNull()
    expect(manager.isBackedOff()).toBe(false)
    manager.seedMainFromStorage(
      { quota: { mainLastQuotaApiError: { message: 'x', checkedAt: T0, nextRetryAt: T0 + MINUTE, retryCount: 1 } } },
      'carol',
    )
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.getMain('carol')).not.toBeNull()
    manager.seedMainFromStorage(null)
    expect(manager.getMain('carol')).not.toBeNull()
  })
})

describe('callbacks', () => {
  it('onMainQuotaFetched(quota, checkedAt, tokenFingerprint, fetchStartedAt) after each poll, before the caller resumes', async () => {
    const sim = await h.simulator()
    const calls: Array<[QuotaSnapshot, number, string, number]> = []
    const { manager, clock } = h.manager(sim, {
      onMainQuotaFetched: (quota, checkedAt, fingerprint, fetchStartedAt) => {
        calls.push([quota, checkedAt, fingerprint, fetchStartedAt])
      },
    })
    const quota = await manager.refreshMain('alice', TOKEN)
    expect(calls).toHaveLength(1)
    const [q, checkedAt, fingerprint, fetchStartedAt] = calls[0]
    expect(q).toEqual(quota)
    expect(checkedAt).toBe(T0)
    expect(fingerprint).toBe(tokenFingerprint(TOKEN))
    expect(fingerprint).toMatch(/^[0-9a-f]{16}$/)
    expect(fetchStartedAt).toBe(T0)
    clock.advance(10 * MINUTE)
    await manager.refreshMain('alice', TOKEN_2)
    expect(calls).toHaveLength(2)
    expect(calls[1][1]).toBe(T0 + 10 * MINUTE)
    expect(calls[1][2]).toBe(tokenFingerprint(TOKEN_2))
  })

  it('fetchStartedAt is when the request went out, checkedAt when the answer arrived', async () => {
    const sim = await h.simulator({ delayMs: 150 })
    const calls: Array<[number, number]> = []
    const { manager, clock } = h.manager(sim, {
      onMainQuotaFetched: (_quota, checkedAt, _fingerprint, fetchStartedAt) => {
        calls.push([checkedAt, fetchStartedAt])
      },
    })
    const pending = manager.refreshMain('alice', TOKEN)
    await until(() => sim.requests === 1, 'the request to go out')
    clock.advance(5 * SECOND)
    const quota = await pending
    expect(calls).toEqual([[T0 + 5 * SECOND, T0]])
    expect(quota.checkedAt).toBe(T0 + 5 * SECOND)
    expect(manager.getMain('alice')?.checkedAt).toBe(T0 + 5 * SECOND)
  })

  it('onApiError(error) fires on a 429 with the recorded error, once per window', async () => {
    const sim = await h.simulator()
    const errors: QuotaApiError[] = []
    const { manager } = h.manager(sim, { onApiError: (error) => errors.push(error) })
    sim.replyOnce({ status: 429, body: 'slow down', headers: { 'retry-after': '120' } })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({
      message: 'Claude quota check failed: 429 — slow down',
      checkedAt: T0,
      nextRetryAt: T0 + 120 * SECOND,
      retryCount: 1,
      status: 429,
      retryAfterMs: 120 * SECOND,
      accountIdentity: 'alice',
    })
    await rejectionOf(manager.refreshMain('alice', TOKEN)) // backed off: no new failure
    expect(errors).toHaveLength(1)
  })

  it('onApiError does not fire on a 401 (nor a 403)', async () => {
    const sim = await h.simulator()
    const errors: QuotaApiError[] = []
    const fetched: number[] = []
    const { manager } = h.manager(sim, {
      onApiError: (error) => errors.push(error),
      onMainQuotaFetched: (_q, checkedAt) => fetched.push(checkedAt),
    })
    sim.replyOnce({ status: 401 })
    sim.replyOnce({ status: 403 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(sim.requests).toBe(2)
    expect(errors).toHaveLength(0)
    expect(fetched).toHaveLength(0)
  })

  it('a throwing onMainQuotaFetched is counted; the refresh still resolves and no backoff is armed', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, {
      onMainQuotaFetched: () => {
        throw new Error('host storage exploded')
      },
    })
    const quota = await manager.refreshMain('alice', TOKEN)
    expect(quota.five_hour?.usedPercent).toBe(9)
    expect(manager.stats().callbackErrors).toBe(1)
    expect(manager.isBackedOff()).toBe(false)
    expect(manager.getLastApiError()).toBeUndefined()
    expect(manager.getMain('alice')).not.toBeNull()
    // And the manager keeps working.
    await manager.refreshMain('alice', TOKEN)
    expect(manager.stats().callbackErrors).toBe(2)
    expect(sim.requests).toBe(2)
  })

  it('a throwing onApiError is counted and the original error still rejects', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, {
      onApiError: () => {
        throw new Error('boom')
      },
    })
    sim.replyOnce({ status: 429 })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error.status).toBe(429)
    expect(manager.stats().callbackErrors).toBe(1)
    expect(backoffMs(manager)).toBe(60 * SECOND)
    expect(lastError(manager).retryCount).toBe(1)
  })
})

describe('identity', () => {
  it('switching identity sends a new request and drops the old identity’s cache', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    await manager.refreshMain('alice', TOKEN)
    expect(manager.getMain('alice')).not.toBeNull()
    await manager.refreshMain('bob', TOKEN_2)
    expect(sim.requests).toBe(2)
    expect(sim.log.map((r) => r.tokenFingerprint)).toEqual([tokenFingerprint(TOKEN), tokenFingerprint(TOKEN_2)])
    expect(manager.getMain('alice')).toBeNull()
    const bob = manager.getMain('bob')
    expect(bob).not.toBeNull()
    expect(bob?.quota.accountIdentity).toBe('bob')
    // docs/compat.md#main-identity: without an argument, getMain() serves only while no identity is bound.
    expect(manager.getMain()).toBeNull()
  })

  it('two identities refreshing at once never share a request, and each gets its own identity back', async () => {
    const sim = await h.simulator({ delayMs: 100 })
    const { manager } = h.manager(sim)
    const [alice, bob] = await Promise.all([manager.refreshMain('alice', TOKEN), manager.refreshMain('bob', TOKEN_2)])
    expect(sim.requests).toBe(2)
    expect(manager.stats().joinedInFlight).toBe(0)
    expect(bob.accountIdentity).toBe('bob')
    expect(alice.accountIdentity).toBe('alice')
    expect(manager.getMain('alice')).toBeNull()
    expect(manager.getMain('bob')?.quota.accountIdentity).toBe('bob')
  })

  it('refreshMain(token) with one argument derives the identity from the token, never the token itself', async () => {
    const sim = await h.simulator({ delayMs: 50 })
    const { manager } = h.manager(sim)
    const quota = await manager.refreshMain(TOKEN)
    expect(sim.log[0].tokenFingerprint).toBe(tokenFingerprint(TOKEN))
    expect(quota.accountIdentity).toBeDefined()
    expect(quota.accountIdentity).not.toBe(TOKEN)
    expect(quota.accountIdentity ?? '').not.toContain(TOKEN)
    expect(manager.getMain(TOKEN)).not.toBeNull()
    expect(manager.getMain(TOKEN)?.quota.accountIdentity).toBe(quota.accountIdentity)
    expect(manager.getMain()).not.toBeNull()
    expect(manager.getMain(TOKEN_2)).toBeNull()
    // The same token again is the same identity: joins, keeps the cache.
    await Promise.all([manager.refreshMain(TOKEN), manager.refreshMain(TOKEN)])
    expect(manager.stats().joinedInFlight).toBe(1)
    expect(manager.getMain(TOKEN)).not.toBeNull()
  })

  it('getMain() before any refresh is null', () => {
    const { manager } = h.manager(null)
    expect(manager.getMain()).toBeNull()
    expect(manager.getMain('alice')).toBeNull()
  })
})

describe('refreshMainInBackground', () => {
  it('never rejects, even when the poll fails', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 500 })
    expect(() => manager.refreshMainInBackground(TOKEN)).not.toThrow()
    await until(() => manager.isBackedOff(), 'the background failure to arm backoff')
    expect(sim.requests).toBe(1)
    sim.replyOnce({ status: 401 })
    const { manager: other } = h.manager(sim)
    other.refreshMainInBackground(TOKEN)
    await until(() => sim.requests === 2, 'the second background request')
    await settle(50)
  })

  it('fills the cache when it succeeds', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    manager.refreshMainInBackground(TOKEN)
    await until(() => manager.getMain() !== null, 'the background result')
    expect(manager.getMain(TOKEN)?.quota.five_hour?.usedPercent).toBe(9)
  })

  it('starts no second request while one runs, and does not even join it', async () => {
    const sim = await h.simulator({ delayMs: 150 })
    const { manager } = h.manager(sim)
    const foreground = manager.refreshMain(TOKEN)
    manager.refreshMainInBackground(TOKEN)
    manager.refreshMainInBackground(TOKEN)
    await foreground
    await settle(100)
    expect(sim.requests).toBe(1)
    // Joining would be counted: the guard returns before any refresh is begun.
    expect(manager.stats()).toMatchObject({ apiCalls: 1, joinedInFlight: 0, servedDuringBackoff: 0 })
  })

  it('two background calls back to back share one request', async () => {
    const sim = await h.simulator({ delayMs: 100 })
    const { manager } = h.manager(sim)
    manager.refreshMainInBackground(TOKEN)
    manager.refreshMainInBackground(TOKEN)
    await until(() => manager.getMain() !== null, 'the background result')
    await settle(100)
    expect(sim.requests).toBe(1)
  })

  it('starts nothing while the route is backed off', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.replyOnce({ status: 429 })
    await rejectionOf(manager.refreshMain('alice', TOKEN))
    manager.refreshMainInBackground(TOKEN)
    await settle(100)
    expect(sim.requests).toBe(1)
    // Not even a refresh served from the backoff: that would be counted.
    expect(manager.stats()).toMatchObject({ apiCalls: 1, servedDuringBackoff: 0, joinedInFlight: 0 })
    clock.advance(60 * SECOND)
    manager.refreshMainInBackground(TOKEN)
    await until(() => sim.requests === 2, 'the request after the window')
    await until(() => manager.getMain('alice') !== null, 'the background result for the current identity')
  })
})

describe('close()', () => {
  type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown }
  const settled = <T>(promise: Promise<T>): Promise<Settled<T>> =>
    promise.then(
      (value): Settled<T> => ({ ok: true, value }),
      (error: unknown): Settled<T> => ({ ok: false, error }),
    )
  const codeOf = (s: Settled<unknown>): string | undefined => (s.ok ? undefined : String((s.error as { code?: unknown }).code))

  it('running calls settle; later refreshMain rejects with QUOTA_CLOSED', async () => {
    const sim = await h.simulator({ delayMs: 150 })
    const { manager } = h.manager(sim)
    const running = settled(manager.refreshMain('alice', TOKEN))
    const joined = settled(manager.refreshMainWithMetadata('alice', TOKEN))
    // Let the calls reach the manager before closing (see the next test for the same tick).
    await until(() => sim.requests === 1, 'the request to go out')
    await manager.close()
    // Both calls made before close() succeed. (Awaiting them here cannot show that close()
    // waited for them to settle first: issue 11 item 13, a rare race, not asserted here.)
    const [first, second] = await Promise.all([running, joined])
    if (!first.ok || !second.ok) throw new Error(`a call made before close() failed: ${codeOf(first)} ${codeOf(second)}`)
    expect(first.value.five_hour?.usedPercent).toBe(9)
    expect(second.value.quota).toEqual(first.value)
    expect(sim.requests).toBe(1)
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_CLOSED')
    expectCode(await rejectionOf(manager.refreshMainWithMetadata(TOKEN)), 'QUOTA_CLOSED')
    const before = manager.stats()
    expect(() => manager.refreshMainInBackground(TOKEN)).not.toThrow()
    await settle(50)
    expect(sim.requests).toBe(1)
    expect(manager.stats()).toEqual(before) // closed: nothing begun, nothing counted
    // Reads still answer from the cache, and a second close() is harmless.
    expect(manager.getMain('alice')).not.toBeNull()
    await manager.close()
  })

  it('a refreshMain issued before close() in the same tick is never rejected with QUOTA_CLOSED', async () => {
    const sim = await h.simulator()
    const outcomes: Array<Promise<Settled<QuotaSnapshot>>> = []
    const closes: Array<Promise<void>> = []
    for (let i = 0; i < 200; i++) {
      const { manager } = h.manager(sim)
      outcomes.push(settled(manager.refreshMain('alice', `${TOKEN}-${i}`)))
      closes.push(manager.close())
    }
    await Promise.all(closes)
    const results = await Promise.all(outcomes)
    const closed = results.filter((r) => codeOf(r) === 'QUOTA_CLOSED').length
    expect(closed, `${closed} of 200 calls made before close() were rejected with QUOTA_CLOSED`).toBe(0)
    expect(results.every((r) => r.ok)).toBe(true)
    expect(sim.requests).toBe(200)
  })

  it('close() resolves promptly with nothing running', async () => {
    const { manager } = h.manager(null)
    const started = performance.now()
    await manager.close()
    expect(performance.now() - started).toBeLessThan(500)
  })
})

describe('pacing', () => {
  const gapBetween = (sim: UsageSimulator): number => sim.log[1].at - sim.log[0].at

  it('apiCallGapMs: 1000 keeps two sequential requests with one token about 1 s apart, on a frozen clock', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, { apiCallGapMs: 1_000 })
    await manager.refreshMain('alice', TOKEN)
    await manager.refreshMain('alice', TOKEN)
    expect(sim.requests).toBe(2)
    expect(gapBetween(sim)).toBeGreaterThanOrEqual(950)
    expect(gapBetween(sim)).toBeLessThan(3_000)
  })

  // The next two tests each include a request that must be paced, so pacing that did not happen
  // at all fails them too. Gaps are measured on the simulator's receive times.
  const gapOf = (sim: UsageSimulator, from: number, to: number): number => sim.log[to].at - sim.log[from].at

  it('the gap is per access token: another token goes at once while the first one still waits', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim, { apiCallGapMs: 2_000 })
    await manager.refreshMain('alice', TOKEN)
    await manager.refreshMain('alice', TOKEN_2)
    await manager.refreshMain('alice', TOKEN)
    expect(sim.log.map((r) => r.tokenFingerprint)).toEqual([TOKEN, TOKEN_2, TOKEN].map(tokenFingerprint))
    expect(gapOf(sim, 0, 1)).toBeLessThan(1_000) // TOKEN_2 was not held by TOKEN's gap
    expect(gapOf(sim, 0, 2)).toBeGreaterThanOrEqual(1_950) // TOKEN was held by its own
  })

  it('time that passed on the manager clock counts toward the gap (and only that time)', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { apiCallGapMs: 2_000 })
    await manager.refreshMain('alice', TOKEN)
    clock.advance(2_000)
    await manager.refreshMain('alice', TOKEN) // the gap already passed on the manager clock
    await manager.refreshMain('alice', TOKEN) // the clock did not move: a whole gap again
    expect(sim.requests).toBe(3)
    expect(gapOf(sim, 0, 1)).toBeLessThan(1_000)
    expect(gapOf(sim, 1, 2)).toBeGreaterThanOrEqual(1_950)
  })
})

describe('persistence (shared state file)', () => {
  it('a second manager on the same statePath adopts the snapshot without a request, and no token is written', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-main-'))
    try {
      const sim = await h.simulator()
      const statePath = path.join(dir, 'state.json')
      const clock = new ManualClock(T0)
      const first = h.manager(sim, { statePath, clock })
      await first.manager.refreshMain('alice', TOKEN)
      await first.manager.close()
      const text = fs.readFileSync(statePath, 'utf8')
      expect(text).not.toContain(TOKEN)
      clock.advance(MINUTE)
      const second = h.manager(sim, { statePath, clock, storage: { mainAccountId: 'alice' } })
      expect(second.manager.isMainStale()).toBe(false)
      expect(second.manager.getMain('alice')?.checkedAt).toBe(T0)
      expect(second.manager.stats().apiCalls).toBe(0)
      expect(sim.requests).toBe(1)
      await second.manager.close()
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('a backoff armed by one manager is honoured by another on the same state file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-main-'))
    try {
      const sim = await h.simulator()
      const statePath = path.join(dir, 'state.json')
      const clock = new ManualClock(T0)
      const first = h.manager(sim, { statePath, clock })
      sim.replyOnce({ status: 429 })
      await rejectionOf(first.manager.refreshMain('alice', TOKEN))
      await first.manager.close()
      const second = h.manager(sim, { statePath, clock, storage: { mainAccountId: 'alice' } })
      expect(second.manager.isBackedOff()).toBe(true)
      expectCode(await rejectionOf(second.manager.refreshMain('alice', TOKEN)), 'QUOTA_BACKED_OFF')
      expect(sim.requests).toBe(1)
      await second.manager.close()
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

// Keeps the imported body builder honest: the simulator's default body is what the tests assume.
it('the simulator default body has the shape the assertions above rely on', () => {
  const body = usageBody()
  expect(body.five_hour).toMatchObject({ utilization: 9 })
  expect(body.seven_day).toMatchObject({ utilization: 68 })
})

describe('cache views', () => {
  it('getMain returns one frozen object until the entry changes', async () => {
    const sim = await startUsageSimulator()
    const manager = new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0 })
    try {
      await manager.refreshMain('alice', 'tok')
      const first = manager.getMain('alice')!
      expect(manager.getMain('alice')).toBe(first)
      expect(Object.isFrozen(first)).toBe(true)
      expect(Object.isFrozen(first.quota.scoped![0])).toBe(true)
      expect(() => {
        first.quota.five_hour!.usedPercent = 0
      }).toThrow(TypeError)

      const pushed = manager.pushMainFromHeaders('alice', {
        'anthropic-ratelimit-unified-5h-utilization': '0.5',
      })!
      expect(pushed).not.toBe(first)
      expect(manager.getMain('alice')).toBe(pushed)
      expect(first.quota.five_hour!.usedPercent).toBe(9)
      expect(manager.getMain('bob')).toBeNull()
    } finally {
      await manager.close()
      await sim.close()
    }
  })
})

describe('state path', () => {
  // Read from the host's `process.env` (Bun does not mirror it into the C environment).
  it("beside OPENCODE_ANTHROPIC_AUTH_FILE when that is set (read from the host's process.env)", () => {
    const saved = process.env.OPENCODE_ANTHROPIC_AUTH_FILE
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-auth-'))
    try {
      process.env.OPENCODE_ANTHROPIC_AUTH_FILE = path.join(dir, 'anthropic-auth.json')
      expect(defaultStatePath()).toBe(path.join(dir, 'anthropic-quota-state.json'))
      expect(new QuotaManager().statePath).toBe(path.join(dir, 'anthropic-quota-state.json'))
      process.env.OPENCODE_ANTHROPIC_AUTH_FILE = '  '
      expect(defaultStatePath()).not.toBe(path.join(dir, 'anthropic-quota-state.json'))
    } finally {
      if (saved === undefined) delete process.env.OPENCODE_ANTHROPIC_AUTH_FILE
      else process.env.OPENCODE_ANTHROPIC_AUTH_FILE = saved
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("defaults to the OpenCode config dir read from the host's process.env, resolved once at construction", () => {
    const saved = { oc: process.env.OPENCODE_CONFIG_DIR, xdg: process.env.XDG_CONFIG_HOME, auth: process.env.OPENCODE_ANTHROPIC_AUTH_FILE }
    delete process.env.OPENCODE_ANTHROPIC_AUTH_FILE
    const first = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-oc-'))
    const second = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-oc-'))
    try {
      process.env.OPENCODE_CONFIG_DIR = first
      expect(defaultStatePath()).toBe(path.join(first, 'anthropic-quota-state.json'))
      const manager = new QuotaManager()
      process.env.OPENCODE_CONFIG_DIR = second
      expect(defaultStatePath()).toBe(path.join(second, 'anthropic-quota-state.json'))
      expect(manager.statePath).toBe(path.join(first, 'anthropic-quota-state.json'))
      delete process.env.OPENCODE_CONFIG_DIR
      process.env.XDG_CONFIG_HOME = second
      expect(defaultStatePath()).toBe(path.join(second, 'opencode', 'anthropic-quota-state.json'))
    } finally {
      if (saved.oc === undefined) delete process.env.OPENCODE_CONFIG_DIR
      else process.env.OPENCODE_CONFIG_DIR = saved.oc
      if (saved.xdg === undefined) delete process.env.XDG_CONFIG_HOME
      else process.env.XDG_CONFIG_HOME = saved.xdg
      if (saved.auth !== undefined) process.env.OPENCODE_ANTHROPIC_AUTH_FILE = saved.auth
      fs.rmSync(first, { recursive: true, force: true })
      fs.rmSync(second, { recursive: true, force: true })
    }
  })

  it('null is memory only; a relative statePath is resolved against the working directory', () => {
    expect(new QuotaManager({ statePath: null }).statePath).toBeNull()
    expect(new QuotaManager({ statePath: 'rel/state.json' }).statePath).toBe(path.resolve('rel/state.json'))
  })
})

describe('one promise per request', () => {
  it('callers of one request share one promise and one frozen result; each shape keeps its own', async () => {
    const sim = await startUsageSimulator({ delayMs: 100 })
    const manager = new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0 })
    try {
      const plain = Array.from({ length: 500 }, () => manager.refreshMain('alice', 'tok'))
      const withMetadata = Array.from({ length: 500 }, () => manager.refreshMainWithMetadata('alice', 'tok'))
      expect(new Set(plain).size).toBe(1)
      expect(new Set(withMetadata).size).toBe(1)
      const [snapshot, result] = await Promise.all([plain[0], withMetadata[0]])
      expect(sim.requests).toBe(1)
      expect(Object.isFrozen(snapshot)).toBe(true)
      expect(Object.isFrozen(snapshot.five_hour)).toBe(true)
      expect(result).toEqual({ quota: snapshot, fetched: true })
      expect(manager.stats().joinedInFlight).toBe(999)

      // Once it settled, the next refresh is a new request with a new promise.
      const next = manager.refreshMain('alice', 'tok')
      expect(next).not.toBe(plain[0])
      await next
      expect(sim.requests).toBe(2)
    } finally {
      await manager.close()
      await sim.close()
    }
  })
})
