// The drop-in surface for the plugin (issue 9, docs/compat.md): the host transports, the
// `now` clock, callbacks that are not awaited, the main identity generations, the changed
// signatures, rejections instead of throws, and no raw token ever used as an identity (issue 11
// item 3). Polls go through `fetchImpl` / `fetchQuotaSnapshot`, so no server is needed; runs under
// Node and Bun.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterEach, describe, expect, it, vi } from 'vitest'

import { QuotaManager, ManualClock, tokenFingerprint } from '../index.js'
import type { QuotaApiError, QuotaManagerOptions, QuotaSnapshot, QuotaSnapshotRequest } from '../index.js'
import { rejectionOf, thrownBy } from './helpers/main-helpers.js'

const T0 = Date.UTC(2026, 8, 14, 2, 10, 0)
const SECOND = 1_000
const MINUTE = 60 * SECOND
const NOWHERE = 'http://127.0.0.1:9/api/oauth/usage'

const usage = (percent = 25) =>
  new Response(JSON.stringify({ five_hour: { utilization: percent }, seven_day: { utilization: 50 } }), { status: 200 })

const snapshot = (percent = 25): QuotaSnapshot => ({
  five_hour: { usedPercent: percent, remainingPercent: 100 - percent, checkedAt: T0 },
})

/** An error like the plugin's own poll rejects with. */
function httpError(status: number | undefined, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(`quota poll failed: ${status ?? 'network'}`), { status, ...extra })
}

const dirs: string[] = []
const managers: QuotaManager[] = []

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-dropin-'))
  dirs.push(dir)
  return dir
}

function make(options: QuotaManagerOptions = {}): QuotaManager {
  const manager = new QuotaManager({ statePath: null, usageUrl: NOWHERE, apiCallGapMs: 0, ...options })
  managers.push(manager)
  return manager
}

afterEach(async () => {
  await Promise.allSettled(managers.splice(0).map((m) => m.close()))
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

describe('options', () => {
  it('an unknown key is a TypeError naming it; a key set to undefined counts as absent', async () => {
    const misspelt = await thrownBy(() => new QuotaManager({ statePath: null, fetchImp: () => usage() } as QuotaManagerOptions))
    expect(misspelt).toBeInstanceOf(TypeError)
    expect((misspelt as Error).message).toContain('options.fetchImp')
    const nested = await thrownBy(() => new QuotaManager({ statePath: null, backoff: { initalMs: 5 } } as QuotaManagerOptions))
    expect((nested as Error).message).toContain('options.backoff.initalMs')
    expect(() => make({ fetchImpl: undefined, now: undefined })).not.toThrow()
  })

  it('now and clock together are a TypeError; a clock that answers junk is one too', async () => {
    const both = await thrownBy(() => new QuotaManager({ statePath: null, now: () => T0, clock: new ManualClock(T0) }))
    expect(both).toBeInstanceOf(TypeError)
    const junk = await thrownBy(() => new QuotaManager({ statePath: null, now: () => Number.NaN }))
    expect(junk).toBeInstanceOf(TypeError)
  })

  it('now drives every timestamp: sampled at each call and when the poll settles', async () => {
    let now = T0
    const manager = make({
      now: () => now,
      fetchImpl: async () => {
        now += 2 * SECOND // the poll takes two seconds
        return usage()
      },
    })
    const quota = await manager.refreshMain('alice', 'tok')
    expect(quota.checkedAt).toBe(T0 + 2 * SECOND)
    expect(manager.getMain('alice')?.refreshAfter).toBe(T0 + 2 * SECOND + 5 * MINUTE)
    expect(manager.isMainStale()).toBe(false)
    now += 5 * MINUTE + 2 * SECOND
    expect(manager.isMainStale()).toBe(true)
  })
})

describe('fetchImpl', () => {
  it('gets the URL and plain headers, and its answer is read like a response (Retry-After, retryAfter seconds)', async () => {
    const seen: Array<{ url: string; init: { method: string; headers: Record<string, string> } }> = []
    const manager = make({
      now: () => T0,
      fetchImpl: async (url, init) => {
        seen.push({ url, init })
        return new Response('slow down', { status: 429, headers: { 'retry-after': '120' } })
      },
    })
    const error = await rejectionOf(manager.refreshMain('alice', 'tok-1'))
    expect(seen).toHaveLength(1)
    expect(seen[0].url).toBe(NOWHERE)
    expect(seen[0].init.method).toBe('GET')
    expect(seen[0].init.headers.Authorization).toBe('Bearer tok-1')
    expect(error.code).toBe('QUOTA_HTTP_ERROR')
    expect(error.status).toBe(429)
    expect(error.retryAfterMs).toBe(120 * SECOND)
    expect((error as { retryAfter?: number }).retryAfter).toBe(120)
    expect(manager.getLastApiError()?.nextRetryAt).toBe(T0 + 120 * SECOND)
  })

  it('a rejection is a network error; a fetch that never settles times out', async () => {
    const failing = make({ now: () => T0, fetchImpl: async () => Promise.reject(new Error('offline')) })
    expect((await rejectionOf(failing.refreshMain('alice', 'tok'))).code).toBe('QUOTA_NETWORK_ERROR')
    const hanging = make({ requestTimeoutMs: 50, fetchImpl: () => new Promise<Response>(() => {}) })
    expect((await rejectionOf(hanging.refreshMain('alice', 'tok'))).code).toBe('QUOTA_TIMEOUT')
  })
})

describe('fetchQuotaSnapshot', () => {
  it('replaces the poll; an empty token is allowed only with it', async () => {
    const requests: QuotaSnapshotRequest[] = []
    const manager = make({
      now: () => T0 + SECOND,
      fetchQuotaSnapshot: async (request) => {
        requests.push(request)
        return { ...snapshot(40), junk: 1 } as QuotaSnapshot
      },
    })
    expect(manager.canFetchWithoutAccessToken()).toBe(true)
    const fallback = await manager.refreshFallback('vault-account', '')
    expect(fallback.source).toBe('poll')
    expect(fallback.five_hour?.usedPercent).toBe(40)
    expect(fallback).not.toHaveProperty('junk')
    const main = await manager.refreshMainWithMetadata('main-a', '')
    expect(main.fetched).toBe(true)
    expect(main.quota.accountIdentity).toBe('main-a')
    expect(requests).toEqual([
      { kind: 'fallback', accountId: 'vault-account', accessToken: '' },
      { kind: 'main', accountId: 'main-a', accessToken: '' },
    ])

    const http = make()
    expect(http.canFetchWithoutAccessToken()).toBe(false)
    const refused = http.refreshFallback('a', '')
    expect(refused).toBeInstanceOf(Promise)
    expect(await thrownBy(() => refused)).toBeInstanceOf(TypeError)
  })

  it("a rejection is classified by its status and retryAfter, like the plugin's poll errors", async () => {
    let next: Error = httpError(429, { retryAfter: 90 })
    const manager = make({ now: () => T0, fetchQuotaSnapshot: async () => Promise.reject(next) })
    const limited = await rejectionOf(manager.refreshFallback('a', ''))
    expect(limited.code).toBe('QUOTA_HTTP_ERROR')
    expect(manager.getFallbackApiError('a')?.nextRetryAt).toBe(T0 + 90 * SECOND)

    next = httpError(401)
    expect((await rejectionOf(manager.refreshFallback('b', ''))).code).toBe('QUOTA_AUTH_ERROR')
    expect(manager.isFallbackBackedOff('b')).toBe(false)

    next = httpError(404)
    await rejectionOf(manager.refreshFallback('c', ''))
    expect(manager.getFallbackApiError('c')?.nextRetryAt).toBe(T0 + 5 * MINUTE)

    // No status: a refusal of the host's (a vault that is locked) is not a network failure,
    // and is not retried on the ladder's first minute.
    next = httpError(undefined)
    const refused = await rejectionOf(manager.refreshFallback('d', ''))
    expect(refused.code).toBe('QUOTA_TRANSPORT_ERROR')
    expect(refused.message).toBe('Claude quota check failed: quota poll failed: network')
    expect(manager.getFallbackApiError('d')?.nextRetryAt).toBe(T0 + 5 * MINUTE)
  })

  it('a rejection without a status is transient only when it is a network failure', async () => {
    let next: unknown
    const manager = make({ now: () => T0, backoff: { jitter: 0 }, fetchQuotaSnapshot: async () => Promise.reject(next) })
    const failures: Array<[string, unknown]> = [
      ...['ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'ECONNREFUSED'].map((code): [string, unknown] => [
        code,
        Object.assign(new Error(`socket: ${code}`), { code }),
      ]),
      ['a TypeError, as fetch rejects', new TypeError('fetch failed')],
      [
        'a code on the cause, as undici sets it',
        new Error('fetch failed', { cause: Object.assign(new Error('reset'), { code: 'ECONNRESET' }) }),
      ],
    ]
    for (const [what, error] of failures) {
      next = error
      const rejection = await rejectionOf(manager.refreshFallback(what, ''))
      expect(rejection.code, what).toBe('QUOTA_NETWORK_ERROR')
      expect(manager.getFallbackApiError(what)?.nextRetryAt, what).toBe(T0 + MINUTE)
    }
    for (const [what, error] of [
      ['another code', Object.assign(new Error('locked'), { code: 'EVAULTLOCKED' })],
      ['a plain Error', new Error('no credential')],
      ['a string', 'no credential'],
    ] as Array<[string, unknown]>) {
      next = error
      expect((await rejectionOf(manager.refreshFallback(what, ''))).code, what).toBe('QUOTA_TRANSPORT_ERROR')
      expect(manager.getFallbackApiError(what)?.nextRetryAt, what).toBe(T0 + 5 * MINUTE)
    }
  })
})

describe('callbacks', () => {
  it('get the plugin arities (errorGeneration, errorClearedAt) and run before the refresh settles', async () => {
    let now = T0
    let answer: () => Promise<Response> = async () => new Response('x', { status: 429 })
    const fetched: unknown[][] = []
    const errors: Array<[QuotaApiError, number]> = []
    const manager = make({
      now: () => now,
      fetchImpl: () => answer(),
      onMainQuotaFetched: (...args) => {
        fetched.push(args)
      },
      onApiError: (error, generation) => {
        errors.push([error, generation])
      },
    })
    await rejectionOf(manager.refreshMain('alice', 'tok'))
    expect(errors).toHaveLength(1)
    expect(errors[0][1]).toBe(1)
    expect(manager.getMainQuotaErrorGeneration()).toBe(1)

    now += 2 * MINUTE
    answer = async () => usage()
    await manager.refreshMain('alice', 'tok')
    expect(fetched).toHaveLength(1)
    const [quota, checkedAt, fingerprint, startedAt, errorGeneration, clearedAt] = fetched[0]
    expect((quota as QuotaSnapshot).five_hour?.usedPercent).toBe(25)
    expect([checkedAt, startedAt]).toEqual([now, now])
    expect(fingerprint).toBe(tokenFingerprint('tok'))
    expect(errorGeneration).toBe(2)
    expect(clearedAt).toBe(now)
    expect(manager.getMainQuotaErrorClearedAt()).toBe(now)
  })

  it('a promise a callback returns is not awaited by default, and a never-settling one is no error', async () => {
    const manager = make({
      now: () => T0,
      fetchImpl: async () => usage(),
      onMainQuotaFetched: () => new Promise<void>(() => {}),
      onFallbackQuotaFetched: async () => {
        throw new Error('host storage locked')
      },
    })
    const started = Date.now()
    await manager.refreshMain('alice', 'tok')
    expect(Date.now() - started).toBeLessThan(4_000) // awaited, it would hold the refresh 5 s
    await manager.refreshFallback('a', 'tok-a')
    for (let i = 0; i < 100 && manager.stats().callbackErrors === 0; i++) await new Promise((r) => setTimeout(r, 10))
    // The rejection is still caught and counted; the pending promise is not.
    expect(manager.stats().callbackErrors).toBe(1)
  })
})

describe('main identity generations', () => {
  it('setMainQuotaAccountIdentity bumps the identity generation only on a change', () => {
    const manager = make({ now: () => T0 })
    expect(manager.getMainQuotaIdentityGeneration()).toBe(0)
    expect(manager.setMainQuotaAccountIdentity('main-a')).toBeUndefined()
    expect(manager.getMainQuotaIdentityGeneration()).toBe(1)
    expect(manager.setMainQuotaAccountIdentity('main-a')).toBeUndefined()
    expect(manager.getMainQuotaIdentityGeneration()).toBe(1)
    manager.setMainQuotaAccountIdentity('main-a', false)
    expect(manager.getMainQuotaIdentityGeneration()).toBe(2)
    manager.setMainQuotaAccountIdentity('main-a', false, true)
    expect(manager.getMainQuotaIdentityGeneration()).toBe(3)
    expect(manager.getMainQuotaErrorGeneration()).toBe(1)
    expect(manager.getMainQuotaErrorClearedAt()).toBe(T0)
  })

  it("a new identity clears the previous identity's backoff and returns the new error generation", async () => {
    const manager = make({ now: () => T0, fetchImpl: async () => new Response('x', { status: 429 }) })
    manager.setMainQuotaAccountIdentity('main-a')
    await rejectionOf(manager.refreshMain('main-a', 'tok-a'))
    expect(manager.isBackedOff()).toBe(true)
    expect(manager.setMainQuotaAccountIdentity('main-b')).toBe(2)
    expect(manager.isBackedOff()).toBe(false)
  })

  it('strict identity: getMain serves only the bound, stamped identity; clearMain unbinds', async () => {
    const manager = make({ now: () => T0, fetchImpl: async () => usage() })
    manager.setMainQuotaAccountIdentity('main-a')
    await manager.refreshMain('main-a', 'tok-a')
    expect(manager.getMain('main-a')).not.toBeNull()
    expect(manager.getMain()).toBeNull()
    expect(manager.getMain('main-b')).toBeNull()
    manager.clearMain()
    expect(manager.getMain('main-a')).toBeNull()
    expect(manager.isMainStale()).toBe(true)
  })

  it("refreshMain(undefined, token) takes undefined as an identity of its own, as the plugin's manager does", async () => {
    const requests: Array<string | undefined> = []
    const manager = make({
      now: () => T0,
      fetchQuotaSnapshot: async ({ accountId }) => {
        requests.push(accountId)
        return snapshot(30)
      },
    })
    manager.setMainQuotaAccountIdentity('main-a', false)
    await manager.refreshMain('main-a', '')
    expect(manager.getMain('main-a')).not.toBeNull()
    const generation = manager.getMainQuotaIdentityGeneration()

    // With a generation: the bound identity is not `undefined`, so nothing is sent.
    const moved = await rejectionOf(manager.refreshMain(undefined, '', generation))
    expect(moved.message).toBe('Main quota identity changed before refresh')
    expect(requests).toEqual(['main-a'])

    // Without one: the identity is unbound and its entry dropped, then the poll is made for nobody.
    const quota = await manager.refreshMain(undefined, '')
    expect(manager.getMainQuotaIdentityGeneration()).toBe(generation + 1)
    expect(requests).toEqual(['main-a', undefined])
    expect(quota.accountIdentity).toBeUndefined()
    expect(manager.getMain('main-a')).toBeNull()
    expect(manager.getMain()?.quota.five_hour?.usedPercent).toBe(30)
  })

  it('a refresh bound to an identity generation that moved on rejects without a request', async () => {
    let polls = 0
    const manager = make({
      now: () => T0,
      fetchImpl: async () => {
        polls += 1
        return usage()
      },
    })
    manager.setMainQuotaAccountIdentity('main-a')
    const generation = manager.getMainQuotaIdentityGeneration()
    manager.setMainQuotaAccountIdentity('main-b')
    const error = await rejectionOf(manager.refreshMain('main-a', 'tok-a', generation))
    expect(error.message).toBe('Main quota identity changed before refresh')
    expect(error.code).toBe('QUOTA_IDENTITY_CHANGED')
    expect(polls).toBe(0)
    await manager.refreshMain('main-b', 'tok-b', manager.getMainQuotaIdentityGeneration())
    expect(polls).toBe(1)
  })

  it('clearMainBackoff clears the backoff here and in the shared state file', async () => {
    const statePath = join(tempDir(), 'state.json')
    let now = T0
    const options: QuotaManagerOptions = {
      statePath,
      now: () => now,
      fetchImpl: async () => new Response('x', { status: 429 }),
      storage: { mainAccountId: 'main-a' },
    }
    const first = make(options)
    expect(first.clearMainBackoff()).toBeUndefined()
    await rejectionOf(first.refreshMain('main-a', 'tok-a'))
    expect(first.isBackedOff()).toBe(true)
    // Another process started now would adopt the backoff from the file.
    const running = make(options)
    const asking = make(options)
    expect(running.isBackedOff()).toBe(true)
    expect(asking.isBackedOff()).toBe(true)
    now += SECOND
    expect(first.clearMainBackoff()).toBe(2)
    expect(first.isBackedOff()).toBe(false)
    await first.close()
    // A process started from then on reads the clear from the state file...
    expect(make(options).isBackedOff()).toBe(false)
    // ...a running one that asks sees it within a moment (it looks at the file again, in the
    // background, at most once a second while it is backed off)...
    expect(asking.isBackedOff()).toBe(true)
    await vi.waitFor(() => expect(asking.isBackedOff()).toBe(false), { timeout: 5_000, interval: 10 })
    // ...and a running one also from the generations the plugin persists (updateStorage).
    running.updateStorage({
      mainAccountId: 'main-a',
      quota: { mainQuotaErrorGeneration: 2, mainQuotaErrorClearedAt: first.getMainQuotaErrorClearedAt() },
    })
    expect(running.isBackedOff()).toBe(false)
  })

  it("a clear in the plugin's own store (its reset command) reaches the shared state file too", async () => {
    const statePath = join(tempDir(), 'state.json')
    let now = T0
    const options: QuotaManagerOptions = {
      statePath,
      now: () => now,
      fetchImpl: async () => new Response('x', { status: 429 }),
      storage: { mainAccountId: 'main-a' },
    }
    const first = make(options)
    await rejectionOf(first.refreshMain('main-a', 'tok-a'))
    const armed = first.getLastApiError()
    now += SECOND
    // The plugin's store: its transport recorded the error, then its reset command cleared it.
    first.updateStorage({
      mainAccountId: 'main-a',
      quota: { mainQuotaErrorGeneration: first.getMainQuotaErrorGeneration() + 1, mainQuotaErrorClearedAt: now },
    })
    expect(first.isBackedOff()).toBe(false)
    await first.close()
    // Neither store keeps the backoff: a process that reads the state file (and the plugin's
    // store still holding the old error) is not backed off.
    const next = make({ ...options, storage: { mainAccountId: 'main-a', quota: { mainLastQuotaApiError: armed } } })
    expect(next.isBackedOff()).toBe(false)
  })
})

describe('changed signatures', () => {
  it("refreshAllFallbacks: the resolver's answer only; without one, access only before expires; API-key accounts ignored", async () => {
    const tokens: string[] = []
    const manager = make({
      now: () => T0,
      fetchImpl: async (_url, init) => {
        tokens.push(init.headers.Authorization)
        return usage()
      },
    })
    await manager.refreshAllFallbacks([
      { id: 'live', access: 'tok-live', expires: T0 + MINUTE },
      { id: 'expired', access: 'tok-expired', expires: T0 - 1 },
      { id: 'no-expiry', access: 'tok-no-expiry' },
      { id: 'key', type: 'api', apiKey: 'sk-api' },
    ])
    expect(tokens).toEqual(['Bearer tok-live'])
    tokens.length = 0
    await manager.refreshAllFallbacks(
      [
        { id: 'resolved', access: 'tok-ignored', expires: T0 + MINUTE },
        { id: 'unresolved', access: 'tok-unused', expires: T0 + MINUTE },
      ],
      (account) => (account.id === 'resolved' ? 'tok-resolved' : undefined),
    )
    expect(tokens).toEqual(['Bearer tok-resolved'])
  })

  it('isFallbackStale binds the login first; pushFallbackFromHeaders takes { authLineageId }', () => {
    const manager = make({ now: () => T0 })
    const headers = { 'anthropic-ratelimit-unified-5h-utilization': '0.2', 'anthropic-ratelimit-unified-7d-utilization': '0.3' }
    expect(manager.pushFallbackFromHeaders('a', headers, { authLineageId: 'login-1' })).not.toBeNull()
    expect(manager.isFallbackStale('a', undefined, undefined, { authLineageId: 'login-1' })).toBe(false)
    expect(manager.isFallbackStale('a', undefined, undefined, { authLineageId: 'login-2' })).toBe(true)
    expect(manager.getFallback('a')).toBeNull()
  })

  it('after close(), calls reject with "QuotaManager is closed", bad arguments too', async () => {
    const manager = make({ now: () => T0, fetchImpl: async () => usage() })
    await manager.close()
    const closed = await rejectionOf(manager.refreshMain('alice', 'tok'))
    expect(closed.message).toBe('QuotaManager is closed')
    expect(closed.code).toBe('QUOTA_CLOSED')
    const bad = (manager.refreshFallback as unknown as (a: unknown, b: unknown) => Promise<unknown>)(42, 'tok')
    expect(bad).toBeInstanceOf(Promise)
    expect(await thrownBy(() => bad)).toBeInstanceOf(TypeError)
  })
})

describe('results', () => {
  it('snapshots carry fieldSources: where each present field came from', async () => {
    const manager = make({ now: () => T0, fetchImpl: async () => usage() })
    const headers = {
      'anthropic-ratelimit-unified-5h-utilization': '0.2',
      'anthropic-ratelimit-unified-7d-utilization': '0.3',
      'anthropic-ratelimit-unified-fallback': 'available',
    }
    const pushed = manager.pushMainFromHeaders('alice', headers)
    expect(pushed?.quota.fieldSources).toEqual({ five_hour: 'headers', seven_day: 'headers', fallbackAdvised: 'headers' })
    const polled = await manager.refreshMain('alice', 'tok')
    expect(polled.fieldSources).toMatchObject({ five_hour: 'poll', seven_day: 'poll', scoped: 'poll' })
  })
})

describe('no raw token as an identity (issue 11 item 3)', () => {
  it('pushMainFromHeaders, setMain, seedMainFromStorage and refreshMain(token, token) keep only its fingerprint', async () => {
    const statePath = join(tempDir(), 'state.json')
    const token = 'sk-ant-oat01-secret-token-value'
    const seenToken = 'opaque-token-used-before'
    const identities: Array<string | undefined> = []
    const manager = make({
      statePath,
      now: () => T0,
      fetchImpl: async () => usage(),
      onMainQuotaFetched: (quota) => {
        identities.push(quota.accountIdentity)
      },
    })
    const headers = { 'anthropic-ratelimit-unified-5h-utilization': '0.2', 'anthropic-ratelimit-unified-7d-utilization': '0.3' }
    expect(manager.pushMainFromHeaders(token, headers)?.quota.accountIdentity).toBe(`token:${tokenFingerprint(token)}`)
    manager.setMain(token, { quota: snapshot(), checkedAt: T0, refreshAfter: T0 + MINUTE })
    manager.seedMainFromStorage({ quota: { mainQuota: snapshot(), mainQuotaCheckedAt: T0 } }, token)
    await manager.refreshMain(token, token)
    await manager.refreshMain('alice', seenToken)
    await manager.refreshMain(seenToken, seenToken)
    await manager.close()
    expect(identities).toHaveLength(3)
    for (const identity of identities) {
      expect(identity).not.toContain(token)
      expect(identity).not.toContain(seenToken)
    }
    // A manager started from storage that names the main account by a token.
    const seeded = make({
      statePath,
      now: () => T0,
      fetchImpl: async () => usage(),
      storage: { mainAccountId: token, quota: { mainQuota: { ...snapshot(), accountIdentity: token }, mainQuotaCheckedAt: T0 } },
    })
    expect(seeded.getMain(token)?.quota.accountIdentity).toBe(`token:${tokenFingerprint(token)}`)
    await seeded.refreshMain(token, token)
    await seeded.close()
    const file = readFileSync(statePath, 'utf8')
    expect(file).not.toContain(token)
    expect(file).not.toContain(seenToken)
    expect(file).toContain(`main:token:${tokenFingerprint(token)}`)
  })

  it('a token handed to refreshAllFallbacks is a token from the moment the call returns, though its list is read off the thread', async () => {
    const token = 'opaque-fallback-token'
    const manager = make({ statePath: null, now: () => T0, fetchImpl: async () => usage() })
    const headers = { 'anthropic-ratelimit-unified-5h-utilization': '0.2' }
    // Kept by the facade before the call: it must not survive it.
    expect(manager.getMain(token)).toBeNull()
    const done = manager.refreshAllFallbacks([{ id: 'f', access: token, expires: T0 + MINUTE }])
    expect(manager.pushMainFromHeaders(token, headers)?.quota.accountIdentity).toBe(`token:${tokenFingerprint(token)}`)
    expect(manager.getMain(token)?.quota.accountIdentity).toBe(`token:${tokenFingerprint(token)}`)
    await done
    await manager.close()
  })
})
