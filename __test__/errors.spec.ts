// Bad input (TypeError / RangeError naming the argument) and bad endpoints (junk bodies, huge
// bodies, stalls, refused connections, redirects). Every rejection is an Error with a string code.
import { afterEach, describe, expect, it } from 'vitest'
import { ManualClock, QuotaManager } from '../index.js'
import type { QuotaManagerOptions } from '../index.js'
import { usageBody } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'
import { Harness, MINUTE, SECOND, T0, expectCode, freePort, rejectionOf, thrownBy } from './helpers/main-helpers.js'

const h = new Harness()
afterEach(async () => {
  await h.cleanup()
})

const TOKEN = 'sk-ant-oat01-errors-token'

/** Checks that a manager built with good options still works against the simulator. */
async function stillWorks(manager: QuotaManager, sim: UsageSimulator): Promise<void> {
  const before = sim.requests
  const quota = await manager.refreshMain('alice', TOKEN)
  expect(quota.five_hour?.usedPercent).toBe(9)
  expect(sim.requests).toBe(before + 1)
}

function backoffMs(manager: QuotaManager): number {
  const error = manager.getLastApiError()
  if (error?.nextRetryAt === undefined) throw new Error('expected an armed backoff')
  return error.nextRetryAt - error.checkedAt
}

/** Builds a manager from options TypeScript would refuse. */
function construct(options: unknown): QuotaManager {
  return h.track(new QuotaManager(options as QuotaManagerOptions))
}

describe('bad options throw at construction, naming the option', () => {
  const cases: Array<{ name: string; options: () => unknown; kind: 'TypeError' | 'RangeError' | 'either'; names: string }> = [
    {
      name: 'a negative checkIntervalMinutes',
      options: () => ({ statePath: null, checkIntervalMinutes: -5 }),
      kind: 'RangeError',
      names: 'checkIntervalMinutes',
    },
    {
      name: 'a zero checkIntervalMinutes (below the 1 minute floor)',
      options: () => ({ statePath: null, checkIntervalMinutes: 0 }),
      kind: 'RangeError',
      names: 'checkIntervalMinutes',
    },
    {
      name: 'a string checkIntervalMinutes',
      options: () => ({ statePath: null, checkIntervalMinutes: '5' }),
      kind: 'TypeError',
      names: 'checkIntervalMinutes',
    },
    {
      name: 'a non-function onMainQuotaFetched',
      options: () => ({ statePath: null, onMainQuotaFetched: 'log it' }),
      kind: 'TypeError',
      names: 'onMainQuotaFetched',
    },
    { name: 'a non-function onApiError', options: () => ({ statePath: null, onApiError: {} }), kind: 'TypeError', names: 'onApiError' },
    { name: 'an unparsable usageUrl', options: () => ({ statePath: null, usageUrl: 'not a url' }), kind: 'either', names: 'usageUrl' },
    {
      name: 'a non-http usageUrl',
      options: () => ({ statePath: null, usageUrl: 'ftp://example.com/usage' }),
      kind: 'either',
      names: 'usageUrl',
    },
    { name: 'a number as options', options: () => 42, kind: 'TypeError', names: 'options' },
    { name: 'a string as options', options: () => 'options', kind: 'TypeError', names: 'options' },
    { name: 'a plain object as clock', options: () => ({ statePath: null, clock: { now: () => T0 } }), kind: 'TypeError', names: 'clock' },
    { name: 'a Date as clock', options: () => ({ statePath: null, clock: new Date(T0) }), kind: 'TypeError', names: 'clock' },
    { name: 'a negative apiCallGapMs', options: () => ({ statePath: null, apiCallGapMs: -1 }), kind: 'RangeError', names: 'apiCallGapMs' },
    {
      name: 'a negative backoff.jitter',
      options: () => ({ statePath: null, backoff: { jitter: -0.5 } }),
      kind: 'RangeError',
      names: 'jitter',
    },
  ]

  for (const c of cases) {
    it(c.name, async () => {
      const error = await thrownBy(() => construct(c.options()))
      if (c.kind === 'TypeError') expect(error).toBeInstanceOf(TypeError)
      else if (c.kind === 'RangeError') expect(error).toBeInstanceOf(RangeError)
      else expect(error instanceof TypeError || error instanceof RangeError).toBe(true)
      expect((error as Error).message).toContain(c.names)
      // The addon is still usable afterwards.
      const sim = await h.simulator()
      const { manager } = h.manager(sim)
      await stillWorks(manager, sim)
    })
  }

  it('a userAgent that is not a header value is named as userAgent, not usageUrl', async () => {
    const error = await thrownBy(() => construct({ statePath: null, userAgent: 'claude\ncode' }))
    expect(error).toBeInstanceOf(TypeError)
    expect((error as Error).message).toContain('options.userAgent')
    expect((error as Error).message).not.toContain('usageUrl')
  })

  it('undefined and null option fields read as absent', () => {
    expect(() => h.track(new QuotaManager({ statePath: null, clock: undefined, onApiError: undefined, usageUrl: undefined }))).not.toThrow()
    expect(() => construct({ statePath: null, onMainQuotaFetched: null, storage: null })).not.toThrow()
  })
})

// docs/compat.md#signatures: promise-returning methods report bad arguments by rejecting, never by throwing
// synchronously (the plugin writes `void qm.refreshFallback(...).catch(() => {})`).
describe('bad arguments throw (sync methods) or reject (promise methods) a TypeError / RangeError naming the argument; the manager stays usable', () => {
  type Loose = {
    refreshMain(a: unknown, b?: unknown): Promise<unknown>
    refreshMainWithMetadata(a: unknown, b?: unknown): Promise<unknown>
    getMain(a: unknown): unknown
    needsRefresh(a: unknown, b?: unknown): unknown
    isMainStale(a: unknown): unknown
  }
  const cases: Array<{ name: string; call: (m: Loose) => unknown; kind: 'TypeError' | 'RangeError'; names: string }> = [
    { name: 'refreshMain(42)', call: (m) => m.refreshMain(42), kind: 'TypeError', names: 'mainAccountId' },
    { name: 'refreshMain()', call: (m) => m.refreshMain(undefined), kind: 'TypeError', names: 'accessToken' },
    { name: "refreshMain('alice', 7)", call: (m) => m.refreshMain('alice', 7), kind: 'TypeError', names: 'accessToken' },
    { name: 'refreshMainWithMetadata({})', call: (m) => m.refreshMainWithMetadata({}), kind: 'TypeError', names: 'mainAccountId' },
    { name: 'getMain(5)', call: (m) => m.getMain(5), kind: 'TypeError', names: 'mainAccountId' },
    { name: "needsRefresh('x')", call: (m) => m.needsRefresh('x'), kind: 'TypeError', names: 'requestCount' },
    { name: 'needsRefresh(-1)', call: (m) => m.needsRefresh(-1), kind: 'RangeError', names: 'requestCount' },
    { name: 'isMainStale(3)', call: (m) => m.isMainStale(3), kind: 'TypeError', names: 'modelId' },
  ]

  for (const c of cases) {
    it(c.name, async () => {
      const sim = await h.simulator()
      const { manager } = h.manager(sim)
      if (c.name.startsWith('refresh')) {
        // A promise, rejected: calling it does not throw.
        const returned = c.call(manager as unknown as Loose)
        expect(returned).toBeInstanceOf(Promise)
        await (returned as Promise<unknown>).catch(() => {})
      }
      const error = await thrownBy(() => c.call(manager as unknown as Loose))
      expect(error).toBeInstanceOf(c.kind === 'TypeError' ? TypeError : RangeError)
      expect((error as Error).message).toContain(c.names)
      expect(sim.requests).toBe(0)
      await stillWorks(manager, sim)
      expect(manager.needsRefresh(1)).toBe(false)
    })
  }

  it('new ManualClock with a bad start throws a RangeError / TypeError naming it', async () => {
    const negative = await thrownBy(() => new ManualClock(-1))
    expect(negative).toBeInstanceOf(RangeError)
    expect((negative as Error).message).toContain('startMs')
    const text = await thrownBy(() => new ManualClock('now' as unknown as number))
    expect(text).toBeInstanceOf(TypeError)
  })
})

describe('bad endpoints', () => {
  async function badResponse(
    answer: Parameters<UsageSimulator['reply']>[0],
  ): Promise<{ manager: QuotaManager; sim: UsageSimulator; clock: ManualClock }> {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim)
    sim.replyOnce(answer)
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error).toBeInstanceOf(Error)
    expectCode(error, 'QUOTA_BAD_RESPONSE')
    expect(typeof error.message).toBe('string')
    expect(error.message.length).toBeGreaterThan(0)
    expect(error.message).not.toContain(TOKEN)
    // Not JSON / too large: a flat 5 minute backoff, unjittered.
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(5 * MINUTE)
    expect(manager.getLastApiError()?.retryCount).toBe(1)
    expect(manager.getMain('alice')).toBeNull()
    return { manager, sim, clock }
  }

  it('HTML on 200 is QUOTA_BAD_RESPONSE', async () => {
    await badResponse({ status: 200, body: '<!doctype html><html><body>Sign in</body></html>', headers: { 'content-type': 'text/html' } })
  })

  it('an empty 200 body is QUOTA_BAD_RESPONSE', async () => {
    await badResponse({ status: 200, body: '' })
  })

  it('truncated JSON is QUOTA_BAD_RESPONSE', async () => {
    await badResponse({ status: 200, body: JSON.stringify(usageBody()).slice(0, 60) })
  })

  it('a 10 MB (valid JSON) body is QUOTA_BAD_RESPONSE with a flat 5 minute backoff', async () => {
    const body = JSON.stringify({ ...usageBody(), padding: 'x'.repeat(10 * 1024 * 1024) })
    const { manager, sim, clock } = await badResponse({ status: 200, body })
    // Backoff ends after exactly 5 minutes, not escalated by the ladder.
    clock.advance(5 * MINUTE)
    expect(manager.isBackedOff()).toBe(false)
    await stillWorks(manager, sim)
  })

  it('a 10 MB chunked body (no Content-Length) is refused while streaming: QUOTA_BAD_RESPONSE', async () => {
    const body = JSON.stringify({ ...usageBody(), padding: 'x'.repeat(10 * 1024 * 1024) })
    await badResponse({ status: 200, body, headers: { 'transfer-encoding': 'chunked' } })
  })

  it('a stalled connection is QUOTA_TIMEOUT with ladder backoff, and the next call is not held up', async () => {
    const sim = await h.simulator()
    const { manager, clock } = h.manager(sim, { requestTimeoutMs: 300 })
    sim.replyOnce({ stall: true })
    const started = performance.now()
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(performance.now() - started).toBeLessThan(2_000)
    expect(error).toBeInstanceOf(Error)
    expectCode(error, 'QUOTA_TIMEOUT')
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(60 * SECOND)
    clock.advance(60 * SECOND + 1)
    expect(manager.isBackedOff()).toBe(false)
    const next = performance.now()
    await stillWorks(manager, sim)
    expect(performance.now() - next).toBeLessThan(250)
  })

  it('a refused connection is QUOTA_NETWORK_ERROR with ladder backoff', async () => {
    const port = await freePort()
    const { manager } = h.manager(null, { usageUrl: `http://127.0.0.1:${port}/api/oauth/usage` })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error).toBeInstanceOf(Error)
    expectCode(error, 'QUOTA_NETWORK_ERROR')
    expect(error.status).toBeUndefined()
    expect(error.message).not.toContain(TOKEN)
    expect(manager.isBackedOff()).toBe(true)
    expect(backoffMs(manager)).toBe(60 * SECOND)
  })

  it('a 302 is QUOTA_HTTP_ERROR with status 302 and is not followed', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    const elsewhere = sim.url.replace('/api/oauth/usage', '/elsewhere')
    sim.replyOnce({ status: 302, headers: { location: elsewhere }, body: '' })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(error).toBeInstanceOf(Error)
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error.status).toBe(302)
    expect(error.message).toMatch(/^Claude quota check failed: 302 — /)
    expect(sim.requests).toBe(1)
    expect(sim.log.map((r) => r.path)).toEqual(['/api/oauth/usage'])
    expect(backoffMs(manager)).toBe(5 * MINUTE)
  })

  it('an error body longer than 1 KiB is cut in the message, and the token is never echoed', async () => {
    const sim = await h.simulator()
    const { manager } = h.manager(sim)
    sim.replyOnce({ status: 500, body: `bad token ${TOKEN} ` + 'y'.repeat(5_000) })
    const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_HTTP_ERROR')
    expect(error.message).toMatch(/^Claude quota check failed: 500 — /)
    expect(error.message).not.toContain(TOKEN)
    expect(Buffer.byteLength(error.message.replace(/^Claude quota check failed: 500 — /, ''))).toBeLessThanOrEqual(1024)
  })

  it('every failure kind rejects with an Error carrying a string code', async () => {
    const sim = await h.simulator()
    const answers: Array<Parameters<UsageSimulator['reply']>[0]> = [
      { status: 400 },
      { status: 401 },
      { status: 418, body: 'teapot' },
      { status: 502 },
      { status: 200, body: 'nope' },
    ]
    for (const answer of answers) {
      const { manager } = h.manager(sim)
      sim.replyOnce(answer)
      const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
      expect(error).toBeInstanceOf(Error)
      expect(typeof error.code).toBe('string')
      expect(error.code).toMatch(/^QUOTA_/)
    }
  })
})
