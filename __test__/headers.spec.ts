// Quota harvested from response headers: parseQuotaHeaders (docs/headers.md) and the merge rules of
// pushMainFromHeaders / pushFallbackFromHeaders.
import { describe, expect, it } from 'vitest'
import { parseQuotaHeaders } from '../index.js'
import type { QuotaSnapshot } from '../index.js'
import { rateLimitHeaders, usageBody } from '../simulator/index.js'
import { MINUTE, SECOND, T0, failureOf, junk, perTestHarness, sleep } from './helpers/fallback-harness.js'

const { setup } = perTestHarness()

const P = 'anthropic-ratelimit-unified-'
const RESET_5H = Math.floor(T0 / 1000) + 7200
const RESET_7D = Math.floor(T0 / 1000) + 4 * 86400

describe('parseQuotaHeaders', () => {
  it('reads a full frame (docs/headers.md#parsing)', () => {
    const snapshot = parseQuotaHeaders(
      rateLimitHeaders({
        fiveHour: 0.12,
        sevenDay: 0.7,
        fiveHourReset: RESET_5H,
        sevenDayReset: RESET_7D,
        status: 'allowed_warning',
        claim: 'seven_day',
        fallback: 'available',
      }),
      T0,
    )
    expect(snapshot).not.toBeNull()
    const s = snapshot as QuotaSnapshot
    expect(s.five_hour?.usedPercent).toBe(12)
    expect(s.five_hour?.remainingPercent).toBe(88)
    expect(s.five_hour?.checkedAt).toBe(T0)
    expect(Date.parse(s.five_hour?.resetsAt ?? '')).toBe(RESET_5H * 1000)
    expect(s.seven_day?.usedPercent).toBe(70)
    expect(s.seven_day?.remainingPercent).toBe(30)
    expect(s.seven_day?.checkedAt).toBe(T0)
    expect(Date.parse(s.seven_day?.resetsAt ?? '')).toBe(RESET_7D * 1000)
    expect(s).not.toHaveProperty('status')
    expect(s.bindingWindow).toBe('seven_day')
    expect(s.bindingWindowSource).toBe('headers')
    expect(s.fallbackAdvised).toBe(true)
    expect(s.source).toBe('headers')
    expect(s.checkedAt).toBe(T0)
    expect(s.scoped).toBeUndefined()
    expect(s.extraUsage).toBeUndefined()
  })

  it('fallbackAdvised is only true for "available"', () => {
    const without = parseQuotaHeaders(rateLimitHeaders({}), T0)
    expect(without?.fallbackAdvised).not.toBe(true)
    const other = parseQuotaHeaders({ ...rateLimitHeaders({}), [`${P}fallback`]: 'unavailable' }, T0)
    expect(other?.fallbackAdvised).not.toBe(true)
  })

  it("reads no status, unified or per window: a snapshot has no `status` key (the plugin's quota codec refuses one)", () => {
    const s = parseQuotaHeaders(
      {
        [`${P}status`]: 'rejected',
        [`${P}5h-status`]: 'rejected',
        [`${P}7d-status`]: 'allowed',
        [`${P}5h-utilization`]: '1',
        [`${P}7d-utilization`]: '0.4',
        [`${P}reset`]: String(RESET_5H),
      },
      T0,
    )
    expect(s).not.toHaveProperty('status')
    expect(s?.five_hour?.usedPercent).toBe(100)
    expect(s?.five_hour?.remainingPercent).toBe(0)
    expect(s?.seven_day?.usedPercent).toBe(40)
  })

  it('matches header names case-insensitively', () => {
    const s = parseQuotaHeaders(
      {
        'Anthropic-Ratelimit-Unified-5H-Utilization': '0.25',
        'ANTHROPIC-RATELIMIT-UNIFIED-7D-UTILIZATION': '0.5',
        'Anthropic-RateLimit-Unified-5h-Reset': String(RESET_5H),
        'Anthropic-RateLimit-Unified-Status': 'allowed',
      },
      T0,
    )
    expect(s?.five_hour?.usedPercent).toBe(25)
    expect(s?.seven_day?.usedPercent).toBe(50)
    expect(Date.parse(s?.five_hour?.resetsAt ?? '')).toBe(RESET_5H * 1000)
    expect(s).not.toHaveProperty('status')
  })

  it('rounds fraction × 100 and clamps to 0..100', () => {
    const used = (fraction: string): number | undefined =>
      parseQuotaHeaders({ [`${P}5h-utilization`]: fraction }, T0)?.five_hour?.usedPercent
    expect(used('0.125')).toBe(13)
    expect(used('0.124')).toBe(12)
    expect(used('0.004')).toBe(0)
    expect(used('0')).toBe(0)
    expect(used('1')).toBe(100)
    expect(used('1.7')).toBe(100)
  })

  it('returns null for a frame without 5h or 7d utilisation', () => {
    expect(parseQuotaHeaders({}, T0)).toBeNull()
    expect(parseQuotaHeaders({ 'content-type': 'application/json' }, T0)).toBeNull()
    expect(
      parseQuotaHeaders(
        {
          [`${P}status`]: 'allowed',
          [`${P}5h-reset`]: String(RESET_5H),
          [`${P}fallback`]: 'available',
          [`${P}representative-claim`]: 'five_hour',
        },
        T0,
      ),
    ).toBeNull()
  })

  it('reads one window when only that window is present', () => {
    const s = parseQuotaHeaders({ [`${P}7d-utilization`]: '0.3' }, T0)
    expect(s?.five_hour).toBeUndefined()
    expect(s?.seven_day?.usedPercent).toBe(30)
  })

  const huge = '9'.repeat(1 << 20)
  const garbage: Array<[string, string]> = [
    ['abc', 'abc'],
    ['-1', '-1'],
    ['1e400', '1e400'],
    ['NaN', 'NaN'],
    ['1 MB of digits', huge],
    ['1 MB of letters', 'x'.repeat(1 << 20)],
  ]

  for (const [label, value] of garbage) {
    it(`ignores a garbage utilisation (${label}) field by field`, () => {
      const started = Date.now()
      const s = parseQuotaHeaders({ ...rateLimitHeaders({ sevenDay: 0.6 }), [`${P}5h-utilization`]: value }, T0)
      expect(Date.now() - started).toBeLessThan(500)
      expect(s?.five_hour).toBeUndefined()
      expect(s?.seven_day?.usedPercent).toBe(60)
      // Alone, the garbage utilisation is no quota at all.
      expect(parseQuotaHeaders({ [`${P}5h-utilization`]: value }, T0)).toBeNull()
    })

    it(`ignores a garbage reset (${label}) but keeps its window`, () => {
      const s = parseQuotaHeaders({ [`${P}5h-utilization`]: '0.5', [`${P}5h-reset`]: value }, T0)
      expect(s?.five_hour?.usedPercent).toBe(50)
      expect(s?.five_hour?.resetsAt).toBeUndefined()
    })
  }

  it('ignores non-string header values field by field', () => {
    for (const bad of [null, true, {}, ['0.5'], { value: '0.5' }]) {
      const s = parseQuotaHeaders(
        junk<Record<string, string>>({ [`${P}5h-utilization`]: bad, [`${P}7d-utilization`]: '0.2', [`${P}status`]: bad }),
        T0,
      )
      expect(s?.five_hour, JSON.stringify(bad)).toBeUndefined()
      expect(s?.seven_day?.usedPercent).toBe(20)
      expect(s).not.toHaveProperty('status')
    }
  })

  it('a garbage claim drops only that field (and a status is never read)', () => {
    const s = parseQuotaHeaders(
      { [`${P}5h-utilization`]: '0.5', [`${P}status`]: 'x'.repeat(1 << 20), [`${P}representative-claim`]: '<script>' },
      T0,
    )
    expect(s?.five_hour?.usedPercent).toBe(50)
    expect(s).not.toHaveProperty('status')
    expect(s?.bindingWindow).toBeUndefined()
  })

  it('throws a TypeError when headers is not an object', async () => {
    for (const bad of ['headers', 42, null, undefined]) {
      expect(await failureOf(() => parseQuotaHeaders(junk<Record<string, string>>(bad))), String(bad)).toBeInstanceOf(TypeError)
    }
  })

  it('stamps the current time when nowMs is omitted', () => {
    const before = Date.now()
    const s = parseQuotaHeaders({ [`${P}5h-utilization`]: '0.5' })
    const after = Date.now()
    expect(s?.checkedAt).toBeGreaterThanOrEqual(before)
    expect(s?.checkedAt).toBeLessThanOrEqual(after)
    expect(s?.five_hour?.checkedAt).toBe(s?.checkedAt)
  })
})

describe('header pushes: merge ownership (docs/headers.md#merging-a-header-frame)', () => {
  it('a push into an empty cache makes a header entry for that route', async () => {
    const { manager } = await setup()
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.12, sevenDay: 0.7 }))
    expect(entry).not.toBeNull()
    expect(entry?.checkedAt).toBe(T0)
    expect(entry?.refreshAfter).toBe(T0 + 5 * MINUTE)
    expect(entry?.quota.source).toBe('headers')
    expect(entry?.quota.five_hour?.usedPercent).toBe(12)
    expect(entry?.quota.five_hour?.checkedAt).toBe(T0)
    expect(entry?.quota.seven_day?.usedPercent).toBe(70)
    expect(entry?.quota.accountIdentity).toBe('a')
    expect(manager.getFallback('a')).toEqual(entry)
    expect(manager.getMain()).toBeNull()
  })

  it('header windows replace the cached 5h and 7d windows', async () => {
    const { manager, clock } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    clock.advance(MINUTE)
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.3, sevenDay: 0.8 }))
    expect(entry?.quota.five_hour?.usedPercent).toBe(30)
    expect(entry?.quota.five_hour?.remainingPercent).toBe(70)
    expect(entry?.quota.five_hour?.checkedAt).toBe(T0 + MINUTE)
    expect(entry?.quota.seven_day?.usedPercent).toBe(80)
    expect(entry?.quota.seven_day?.checkedAt).toBe(T0 + MINUTE)
    expect(entry?.quota.source).toBe('headers')
    expect(entry?.checkedAt).toBe(T0 + MINUTE)
    expect(manager.getFallback('a')).toEqual(entry)
  })

  it('keeps the polled scoped windows', async () => {
    const { manager, clock } = await setup()
    const polled = await manager.refreshFallback('a', 'tok-a')
    expect(polled.scoped).toHaveLength(1)
    clock.advance(MINUTE)
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.3 }))
    expect(entry?.quota.scoped).toEqual(polled.scoped)
  })

  it('keeps an empty polled scoped list as []', async () => {
    const { manager, sim } = await setup()
    sim.replyOnce({ body: usageBody({ scoped: [] }) })
    const polled = await manager.refreshFallback('a', 'tok-a')
    expect(polled.scoped).toEqual([])
    expect(manager.pushFallbackFromHeaders('a', rateLimitHeaders({}))?.quota.scoped).toEqual([])
  })

  it('keeps the polled extraUsage', async () => {
    const { manager, clock } = await setup()
    const polled = await manager.refreshMain('alice', 'tok-main')
    expect(polled.extraUsage?.used.amountMinor).toBe(1261)
    clock.advance(MINUTE)
    const entry = manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.3 }))
    expect(entry?.quota.extraUsage).toEqual(polled.extraUsage)
  })

  it('keeps a bindingWindow that came from a poll', async () => {
    const { manager, sim, clock } = await setup()
    sim.replyOnce({ body: usageBody({ active: 'weekly_all' }) })
    const polled = await manager.refreshFallback('a', 'tok-a')
    expect(polled.bindingWindow).toBe('seven_day')
    expect(polled.bindingWindowSource).toBe('poll')
    clock.advance(MINUTE)
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ claim: 'five_hour' }))
    expect(entry?.quota.bindingWindow).toBe('seven_day')
    expect(entry?.quota.bindingWindowSource).toBe('poll')
  })

  it('a bindingWindow that came from headers follows the newest frame', async () => {
    const { manager } = await setup()
    manager.pushFallbackFromHeaders('a', rateLimitHeaders({ claim: 'five_hour' }))
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ claim: 'seven_day' }))
    expect(entry?.quota.bindingWindow).toBe('seven_day')
    expect(entry?.quota.bindingWindowSource).toBe('headers')
  })

  it('headers never introduce scoped or extraUsage, even pushed as a whole snapshot', async () => {
    const { manager } = await setup()
    const snapshot: QuotaSnapshot = {
      five_hour: { usedPercent: 10, remainingPercent: 90, checkedAt: T0 },
      scoped: [
        {
          id: 'claude-weekly-scoped-claude-fable-5-1',
          title: 'Fable only',
          modelId: 'claude-fable-5-1',
          modelName: 'Fable',
          usedPercent: 100,
          remainingPercent: 0,
          checkedAt: T0,
        },
      ],
      extraUsage: {
        used: { amountMinor: 5, currency: 'USD', exponent: 2 },
        limit: { amountMinor: 10, currency: 'USD', exponent: 2 },
        exhausted: false,
      },
    }
    const main = manager.pushMainFromHeaders('alice', snapshot)
    const fallback = manager.pushFallbackFromHeaders('a', snapshot)
    for (const entry of [main, fallback]) {
      expect(entry?.quota.five_hour?.usedPercent).toBe(10)
      expect(entry?.quota.scoped).toBeUndefined()
      expect(entry?.quota.extraUsage).toBeUndefined()
      expect(entry?.quota.source).toBe('headers')
    }
  })

  it('refreshAfter stays due at the oldest preserved window freshness point', async () => {
    const { manager, clock } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    expect(manager.getFallback('a')?.refreshAfter).toBe(T0 + 5 * MINUTE)
    clock.advance(4 * MINUTE)
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.2 }))
    expect(entry?.checkedAt).toBe(T0 + 4 * MINUTE)
    expect(entry?.refreshAfter).toBe(T0 + 5 * MINUTE) // the polled scoped window is still from T0
    expect(manager.isFallbackStale('a')).toBe(false)
    clock.advance(MINUTE)
    expect(manager.isFallbackStale('a')).toBe(true)
  })

  it('refreshAfter of main also stays at the polled windows freshness point', async () => {
    const { manager, clock } = await setup()
    await manager.refreshMain('alice', 'tok-main')
    clock.advance(3 * MINUTE)
    const entry = manager.pushMainFromHeaders('alice', rateLimitHeaders({}))
    expect(entry?.refreshAfter).toBe(T0 + 5 * MINUTE)
    clock.advance(2 * MINUTE)
    expect(manager.isMainStale()).toBe(true)
  })

  it('a push never touches the fallback backoff', async () => {
    const { manager, sim, clock } = await setup()
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshFallback('a', 'tok-a'))
    const error = manager.getFallbackApiError('a')
    clock.advance(10 * SECOND)
    const entry = manager.pushFallbackFromHeaders('a', rateLimitHeaders({}))
    expect(entry).not.toBeNull()
    expect(manager.isFallbackBackedOff('a')).toBe(true)
    expect(manager.getFallbackApiError('a')).toEqual(error)
    const served = await manager.refreshFallbackWithMetadata('a', 'tok-a')
    expect(served.fetched).toBe(false)
    expect(sim.requests).toBe(1)
  })

  it('a push never touches the main backoff', async () => {
    const { manager, sim, clock } = await setup()
    sim.reply({ status: 429 })
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    const error = manager.getLastApiError()
    clock.advance(10 * SECOND)
    manager.pushMainFromHeaders('alice', rateLimitHeaders({}))
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.getLastApiError()).toEqual(error)
    // After the window ends, the next failure escalates: the push did not reset the count.
    clock.advance(MINUTE)
    await failureOf(() => manager.refreshMain('alice', 'tok-main'))
    expect(manager.getLastApiError()?.retryCount).toBe(2)
  })

  it('a push for a different main identity starts from nothing', async () => {
    const { manager, clock } = await setup()
    await manager.refreshMain('alice', 'tok-alice')
    clock.advance(MINUTE)
    const entry = manager.pushMainFromHeaders('bob', rateLimitHeaders({ fiveHour: 0.5 }))
    expect(entry?.quota.five_hour?.usedPercent).toBe(50)
    expect(entry?.quota.scoped).toBeUndefined()
    expect(entry?.quota.extraUsage).toBeUndefined()
    expect(entry?.quota.bindingWindowSource).not.toBe('poll')
    expect(entry?.quota.accountIdentity).toBe('bob')
    expect(entry?.refreshAfter).toBe(T0 + MINUTE + 5 * MINUTE)
    expect(manager.getMain('alice')).toBeNull()
    expect(manager.getMain('bob')).toEqual(entry)
  })

  it('a push without an identity merges into the current main entry', async () => {
    const { manager, clock } = await setup()
    const polled = await manager.refreshMain('alice', 'tok-alice')
    clock.advance(MINUTE)
    const entry = manager.pushMainFromHeaders(undefined, rateLimitHeaders({ fiveHour: 0.5 }))
    expect(entry?.quota.scoped).toEqual(polled.scoped)
    expect(manager.getMain('alice')?.quota.five_hour?.usedPercent).toBe(50)
  })

  it('a frame without quota returns null and changes nothing', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    await manager.refreshMain('alice', 'tok-main')
    const fallbackBefore = manager.getFallback('a')
    const mainBefore = manager.getMain('alice')
    const empty = { [`${P}status`]: 'allowed', [`${P}5h-utilization`]: 'NaN' }
    expect(manager.pushFallbackFromHeaders('a', empty)).toBeNull()
    expect(manager.pushMainFromHeaders('alice', empty)).toBeNull()
    expect(manager.pushFallbackFromHeaders('a', {})).toBeNull()
    expect(manager.pushFallbackFromHeaders('new', empty)).toBeNull()
    expect(manager.getFallback('a')).toEqual(fallbackBefore)
    expect(manager.getMain('alice')).toEqual(mainBefore)
    expect(manager.getAllFallbacks().has('new')).toBe(false)
  })

  it("a pushed snapshot without windows is merged, as the plugin's manager merges it", async () => {
    const { manager } = await setup()
    await manager.refreshMain('alice', 'tok-main')
    const polled = manager.getMain('alice')
    const pushed = manager.pushMainFromHeaders('alice', { fallbackAdvised: true, source: 'headers' })
    expect(pushed).not.toBeNull()
    expect(pushed?.quota.fallbackAdvised).toBe(true)
    expect(pushed?.quota.five_hour).toEqual(polled?.quota.five_hour)
    expect(pushed?.quota.scoped).toEqual(polled?.quota.scoped)
    expect(manager.getMain('alice')).toEqual(pushed)
    expect(manager.pushFallbackFromHeaders('a', { fallbackAdvised: false })?.quota.fallbackAdvised).toBe(false)
  })

  it('garbage header values in a push are ignored field by field; wrong types are TypeErrors', async () => {
    const { manager } = await setup()
    await manager.refreshFallback('a', 'tok-a')
    const before = manager.getFallback('a')
    const entry = manager.pushFallbackFromHeaders('a', {
      [`${P}5h-utilization`]: '1e400',
      [`${P}7d-utilization`]: '0.55',
      [`${P}7d-reset`]: 'abc',
    })
    expect(entry?.quota.five_hour).toEqual(before?.quota.five_hour)
    expect(entry?.quota.seven_day?.usedPercent).toBe(55)
    for (const bad of ['headers', 5, null, undefined]) {
      expect(await failureOf(() => manager.pushFallbackFromHeaders('a', junk<Record<string, string>>(bad)))).toBeInstanceOf(TypeError)
      expect(await failureOf(() => manager.pushMainFromHeaders('alice', junk<Record<string, string>>(bad)))).toBeInstanceOf(TypeError)
    }
    expect(manager.getFallback('a')).toEqual(entry)
  })

  it('fallback pushes never touch main, and main pushes never touch fallbacks', async () => {
    const { manager } = await setup()
    manager.pushFallbackFromHeaders('a', rateLimitHeaders({}))
    expect(manager.getMain()).toBeNull()
    manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.9 }))
    expect(manager.getFallback('a')?.quota.five_hour?.usedPercent).toBe(12)
    expect([...manager.getAllFallbacks().keys()]).toEqual(['a'])
  })
})

describe('a poll finishing after newer headers arrived', () => {
  // The poll's observation time is its response's arrival on the manager clock. The clock is
  // moved ahead for the header push and back before the response lands, so the header frame is
  // strictly newer than the poll it races with.
  it('fallback: keeps the newer header windows and takes the poll scoped and extraUsage fields', async () => {
    const { manager, sim, clock } = await setup()
    sim.replyOnce({ delayMs: 300, body: usageBody({ fiveHour: 9, sevenDay: 68 }) })
    const running = manager.refreshFallback('a', 'tok-a')
    await sleep(80)
    clock.set(T0 + 20 * SECOND)
    manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.4, sevenDay: 0.75, status: 'allowed_warning' }))
    clock.set(T0 + 10 * SECOND)
    const polled = await running
    const entry = manager.getFallback('a')
    expect(entry?.quota.five_hour?.usedPercent).toBe(40)
    expect(entry?.quota.five_hour?.checkedAt).toBe(T0 + 20 * SECOND)
    expect(entry?.quota.seven_day?.usedPercent).toBe(75)
    expect(entry?.quota.seven_day?.checkedAt).toBe(T0 + 20 * SECOND)
    expect(entry?.quota.scoped).toHaveLength(1)
    expect(entry?.quota.scoped?.[0].usedPercent).toBe(22)
    expect(entry?.quota.scoped?.[0].checkedAt).toBe(T0 + 10 * SECOND)
    expect(entry?.quota.extraUsage?.used.amountMinor).toBe(1261)
    // What the caller got is what was cached.
    expect(polled).toEqual(entry?.quota)
  })

  it('main: keeps the newer header windows and takes the poll scoped and extraUsage fields', async () => {
    const { manager, sim, clock } = await setup()
    sim.replyOnce({ delayMs: 300, body: usageBody({ fiveHour: 9, sevenDay: 68 }) })
    const running = manager.refreshMain('alice', 'tok-main')
    await sleep(80)
    clock.set(T0 + 20 * SECOND)
    manager.pushMainFromHeaders('alice', rateLimitHeaders({ fiveHour: 0.4, sevenDay: 0.75 }))
    clock.set(T0 + 10 * SECOND)
    await running
    const entry = manager.getMain('alice')
    expect(entry?.quota.five_hour?.usedPercent).toBe(40)
    expect(entry?.quota.seven_day?.usedPercent).toBe(75)
    expect(entry?.quota.scoped?.[0].id).toBe('claude-weekly-scoped-claude-fable-5-1')
    expect(entry?.quota.extraUsage?.limit.amountMinor).toBe(10000)
  })

  it('a poll newer than the cached headers wins its windows', async () => {
    const { manager, sim, clock } = await setup()
    manager.pushFallbackFromHeaders('a', rateLimitHeaders({ fiveHour: 0.4, sevenDay: 0.75 }))
    clock.advance(10 * SECOND)
    sim.replyOnce({ body: usageBody({ fiveHour: 9, sevenDay: 68 }) })
    await manager.refreshFallback('a', 'tok-a')
    const entry = manager.getFallback('a')
    expect(entry?.quota.five_hour?.usedPercent).toBe(9)
    expect(entry?.quota.seven_day?.usedPercent).toBe(68)
    expect(entry?.quota.source).toBe('poll')
    expect(entry?.quota.scoped).toHaveLength(1)
    expect(entry?.checkedAt).toBe(T0 + 10 * SECOND)
  })
})
