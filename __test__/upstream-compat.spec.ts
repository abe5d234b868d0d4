// The plugin's own QuotaManager suite, ported (issue 9, docs/compat.md#upstream-tests).
//
// Source: cortexkit/anthropic-auth, packages/opencode/src/tests/quota-manager.test.ts (bun:test),
// in its newest revision (72 tests; the fork coleleavitt/anthropic-auth at 0677fd0c holds it).
// Every upstream test has exactly one test here, in the same order and under the same describe
// blocks; each title starts with the upstream title in quotes. The tests are rewritten, not
// copied, against this package's public API only. After them: the three scenarios of
// packages/core/src/tests/quota-native-transport.test.ts and the tests of the fork
// iceteaSA/anthropic-auth about main requests per token and persisted main freshness.
//
// Where this package deliberately behaves better than the TypeScript QuotaManager, the test is
// kept but asserts the better behaviour, and its title names the item of the README section
// "Differences from the TypeScript QuotaManager" it demonstrates:
//   - "Waits for another process's refresh": a refresh that finds another process polling the
//     same route waits for it and joins its result instead of rejecting with
//     "Quota refresh is already in progress".
//   - "Backoff jitter": each backoff step is lengthened by up to 10 % (never past the 15 min cap),
//     so a deadline is checked against its jittered bound instead of the exact ladder step.
//   - "One request per token, one result per account": requests with different tokens for one
//     main identity are separate, but the second, waiting on the route lock, is answered by the
//     first one's fresh result instead of polling again.
//   - "Only the snapshot's own fields": keys outside the snapshot shape (a legacy snapshot's
//     `quotas`, `expires`) are not kept.
//
// Each test runs with a fresh temporary directory that holds both the shared state file (passed
// as `statePath`) and the plugin's auth file (`OPENCODE_ANTHROPIC_AUTH_FILE`, as upstream sets
// it), so no test touches ~/.config or another test's state.
//
// The upstream tests use an injected `fetchImpl` and a `now` clock function, the plugin's
// `setMainQuotaAccountIdentity` / generation API and the 3-argument refresh signatures (docs/compat.md:
// host options, callbacks, main identity, signatures). Where upstream holds the plugin's own file lock (`acquireRefreshFileLock`), this port
// has a real second process hold this package's route lock by polling a slow local endpoint.

import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest'

import { QuotaManager, tokenFingerprint } from '../index.js'
import type { AccountStorage, QuotaManagerOptions, QuotaSnapshot } from '../index.js'
import { startCountingServer, type CountingServer } from './helpers/fallback-harness.js'
import { killAll, refresh, startWorker, until } from './helpers/mp-children.js'

/** Where polls would go without the injected fetch: nothing listens there. */
const NOWHERE = 'http://127.0.0.1:9/api/oauth/usage'
const SECOND = 1_000
const MINUTE = 60 * SECOND
/** The first backoff step (60 s) at its longest: default jitter lengthens it by up to 10 %. */
const FIRST_STEP_MAX = 66 * SECOND
/** The second step (120 s) at its longest. */
const SECOND_STEP_MAX = 132 * SECOND

type FetchInit = { method?: string; headers?: Record<string, string> }
type FetchLike = (url: string, init?: FetchInit) => Promise<Response>

/** A usage body like the endpoint's: 25 % of the 5-hour window, 50 % of the 7-day one. */
function quotaResponse(at: number): Response {
  return new Response(
    JSON.stringify({
      five_hour: { utilization: 25, resets_at: new Date(at + 60 * MINUTE).toISOString() },
      seven_day: { utilization: 50 },
    }),
    { status: 200 },
  )
}

function utilizationResponse(percent: number, at: number): Response {
  return new Response(
    JSON.stringify({
      five_hour: { utilization: percent, resets_at: new Date(at + 60 * MINUTE).toISOString() },
      seven_day: { utilization: percent, resets_at: new Date(at + 24 * 60 * MINUTE).toISOString() },
    }),
    { status: 200 },
  )
}

const rateLimited = (): Response => new Response('rate limited', { status: 429 })

/** The bearer token a fetch was made with. */
function bearerOf(init: FetchInit | undefined): string {
  return new Headers(init?.headers).get('authorization') ?? ''
}

/**
 * Waits for a poll the test controls to reach the injected fetch, failing fast (instead of at the
 * suite's 30 s timeout) when the manager never calls it.
 */
async function within<T>(promise: Promise<T>, what: string, ms = 5_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** A refresh awaited later in the test: a rejection before then is not an unhandled one. */
function later<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => {})
  return promise
}

/** A promise plus the function that settles it, for polls the test releases by hand. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((done) => {
    resolve = done
  })
  return { promise, resolve }
}

/**
 * Storage objects shaped like the plugin's (with `version`, `accounts`, `main`, `mainQuotaToken`
 * and legacy snapshot fields): the behaviour under test is the seeding, not the static type, which
 * __test__/typecheck/plugin-call-sites.ts covers.
 */
function pluginStorage(storage: object): AccountStorage {
  return storage as AccountStorage
}

/** A legacy persisted main snapshot: no windows, only fields this package does not know. */
function legacyQuota(): QuotaSnapshot {
  return { quotas: [], expires: new Date(2_000_000).toISOString() } as unknown as QuotaSnapshot
}

describe('QuotaManager (upstream quota-manager.test.ts)', () => {
  let now: number
  let dir: string
  let statePath: string
  let managers: QuotaManager[]
  let servers: CountingServer[]

  beforeEach(() => {
    now = 1_000_000
    dir = mkdtempSync(join(tmpdir(), 'aqm-upstream-'))
    statePath = join(dir, 'anthropic-quota-state.json')
    managers = []
    servers = []
    process.env.OPENCODE_ANTHROPIC_AUTH_FILE = join(dir, 'anthropic-auth.json')
  })

  afterEach(async () => {
    await killAll()
    await Promise.allSettled(managers.map((manager) => manager.close()))
    await Promise.allSettled(servers.map((server) => server.close()))
    delete process.env.OPENCODE_ANTHROPIC_AUTH_FILE
    rmSync(dir, { recursive: true, force: true })
  })

  /** A manager on this test's state file and clock; closed after the test. */
  function make(options: QuotaManagerOptions = {}): QuotaManager {
    // usageUrl: a closed local port, so a build that ignores `fetchImpl` never reaches the network.
    const manager = new QuotaManager({ storage: null, statePath, usageUrl: NOWHERE, now: () => now, ...options })
    managers.push(manager)
    return manager
  }

  /** The upstream `createQM(fetchImpl?)`. */
  function createQM(fetchImpl?: FetchLike): QuotaManager {
    return make(fetchImpl ? { fetchImpl } : {})
  }

  test('upstream "reload keeps a newer in-memory backoff than a persisted clear"', () => {
    const localError = {
      message: 'newer local quota error',
      checkedAt: 2_000,
      nextRetryAt: 2_000_000,
      retryCount: 1,
      accountIdentity: 'account-a',
    }
    const qm = make({
      storage: pluginStorage({
        quota: { mainLastQuotaApiError: localError, mainQuotaErrorGeneration: 1, mainQuotaErrorClearedAt: 1_000 },
      }),
    })

    // Another process wrote a clear at 1 500, before our error at 2 000, with a newer generation.
    qm.updateStorage(
      pluginStorage({
        quota: { mainLastQuotaApiError: undefined, mainQuotaErrorGeneration: 2, mainQuotaErrorClearedAt: 1_500 },
      }),
    )

    expect(qm.isBackedOff()).toBe(true)
    expect(qm.getLastApiError()?.checkedAt).toBe(2_000)
  })

  test('upstream "reload clear marker cannot clear a newer error at the same generation"', () => {
    const localError = {
      message: 'newer local quota error',
      checkedAt: 2_000,
      nextRetryAt: 2_000_000,
      retryCount: 1,
      accountIdentity: 'account-a',
    }
    const qm = make({
      storage: pluginStorage({
        quota: { mainLastQuotaApiError: localError, mainQuotaErrorGeneration: 2, mainQuotaErrorClearedAt: 1_000 },
      }),
    })

    qm.updateStorage(
      pluginStorage({
        quota: { mainLastQuotaApiError: undefined, mainQuotaErrorGeneration: 2, mainQuotaErrorClearedAt: 1_500 },
      }),
    )

    expect(qm.isBackedOff()).toBe(true)
    expect(qm.getLastApiError()?.checkedAt).toBe(2_000)
  })

  describe('model-scoped staleness', () => {
    test('upstream "treats a stale matching Fable window as stale even when standard windows are fresh"', () => {
      const qm = createQM()
      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback-1',
          type: 'oauth',
          access: 'fallback-token',
          refresh: 'fallback-refresh',
          expires: now + MINUTE,
          quota: {
            checkedAt: now,
            five_hour: { usedPercent: 0, remainingPercent: 100, checkedAt: now },
            seven_day: { usedPercent: 0, remainingPercent: 100, checkedAt: now },
            scoped: [
              {
                id: 'claude-weekly-scoped-fable',
                title: 'Fable only',
                modelName: 'Fable',
                usedPercent: 100,
                remainingPercent: 0,
                checkedAt: now - 6 * MINUTE,
              },
            ],
          },
        },
      ])

      // Fresh for any model but Fable; the 6-minute-old Fable window makes Fable requests due.
      expect(qm.isFallbackStale('fallback-1', 'fallback-token')).toBe(false)
      expect(qm.isFallbackStale('fallback-1', 'fallback-token', 'claude-fable-5')).toBe(true)
    })
  })

  describe('cross-process quota locks', () => {
    /** Another process polling a slow endpoint, so it holds the route's lock for a while. */
    async function anotherProcessPolling(command: Record<string, unknown>) {
      const server = await startCountingServer(() => ({ delayMs: 1_500 }))
      servers.push(server)
      const child = await startWorker({ statePath, usageUrl: server.url, apiCallGapMs: 0 })
      const childRefresh = refresh(child, command)
      await until(() => server.maxInFlight >= 1, 10_000, "the other process's poll to start")
      return { server, childRefresh }
    }

    test(
      'upstream "a confirmed main retarget cannot return the previous account cache on lock collision"' +
        ' — inverted, README Differences: "Waits for another process\'s refresh": it waits, then joins' +
        " the new account's result (never the previous account's cache) instead of rejecting",
      async () => {
        now = Date.now()
        let fetchCalls = 0
        const qm = createQM(async () => {
          fetchCalls += 1
          return quotaResponse(now)
        })
        qm.setMain('account-a', {
          quota: { accountIdentity: 'account-a', checkedAt: now },
          refreshAfter: now + MINUTE,
          checkedAt: now,
        })
        qm.setMainQuotaAccountIdentity('account-b')
        const { childRefresh } = await anotherProcessPolling({ identity: 'account-b', token: 'account-b-token' })

        const result = await qm.refreshMainWithMetadata('account-b', 'account-b-token')

        expect(result.fetched).toBe(false)
        expect(result.quota.accountIdentity).toBe('account-b')
        expect(result.quota.five_hour).toBeDefined()
        expect(fetchCalls).toBe(0)
        expect(qm.getMain('account-b')?.quota.accountIdentity).toBe('account-b')
        expect(qm.getMain('account-a')).toBeNull()
        expect((await childRefresh).results[0]?.ok).toBe(true)
      },
    )

    test('upstream "a request-bound refresh cannot retarget after the main identity changes"', async () => {
      let apiCalls = 0
      const qm = createQM(async () => {
        apiCalls += 1
        return new Response('{}', { status: 200 })
      })
      qm.setMainQuotaAccountIdentity('account-a')
      const requestGeneration = qm.getMainQuotaIdentityGeneration()
      qm.setMainQuotaAccountIdentity('account-b')

      await expect(qm.refreshMain('account-a', 'account-a-token', requestGeneration)).rejects.toThrow(
        'Main quota identity changed before refresh',
      )
      expect(apiCalls).toBe(0)
      expect(qm.getMain('account-b')).toBeNull()
    })

    test(
      'upstream "fallback quota refresh does not call the API while another process holds the account lock"' +
        ' — inverted, README Differences: "Waits for another process\'s refresh": no API call, and the' +
        ' caller gets the other process\'s result instead of "Quota refresh is already in progress"',
      async () => {
        now = Date.now()
        let fetchCalls = 0
        const qm = createQM(async () => {
          fetchCalls += 1
          return quotaResponse(now)
        })
        const { childRefresh } = await anotherProcessPolling({ fallbackId: 'fallback-1', token: 'child-token' })

        const result = await qm.refreshFallbackWithMetadata('fallback-1', 'fallback-token', undefined)

        expect(fetchCalls).toBe(0)
        expect(result.fetched).toBe(false)
        expect(result.quota.five_hour).toBeDefined()
        expect(qm.stats().lockWaits).toBeGreaterThanOrEqual(1)
        expect((await childRefresh).results[0]?.ok).toBe(true)
      },
    )
  })

  describe('backoff', () => {
    test(
      'upstream "fallback refresh metadata distinguishes cached backoff from a network fetch"' +
        ' (README Differences: "Backoff jitter": the retry is checked past the jittered 66 s bound)',
      async () => {
        let fetchCalls = 0
        const qm = createQM(async () => {
          fetchCalls += 1
          return fetchCalls === 1 ? rateLimited() : quotaResponse(now)
        })
        const cachedQuota = { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } }
        qm.setFallback('fallback-1', { quota: cachedQuota, refreshAfter: now, checkedAt: now }, undefined)

        await expect(qm.refreshFallback('fallback-1', 'fallback-token', undefined)).rejects.toThrow('429')
        const cached = await qm.refreshFallbackWithMetadata('fallback-1', 'fallback-token', undefined)
        expect(cached).toEqual({ quota: cachedQuota, fetched: false })

        now += FIRST_STEP_MAX + SECOND
        const fetched = await qm.refreshFallbackWithMetadata('fallback-1', 'fallback-token', undefined)
        expect(fetched.fetched).toBe(true)
        expect(fetchCalls).toBe(2)
      },
    )

    test(
      'upstream "main refresh metadata also distinguishes cached backoff from a network fetch"' +
        ' (README Differences: "Backoff jitter": the retry is checked past the jittered 66 s bound)',
      async () => {
        let fetchCalls = 0
        const qm = createQM(async () => {
          fetchCalls += 1
          return fetchCalls === 1 ? rateLimited() : quotaResponse(now)
        })
        const cachedQuota = { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } }
        qm.setMain('main-account', { quota: cachedQuota, refreshAfter: now, checkedAt: now })

        await expect(qm.refreshMain('main-account', 'main-token')).rejects.toThrow('429')
        const cached = await qm.refreshMainWithMetadata('main-account', 'main-token')
        expect(cached).toEqual({ quota: cachedQuota, fetched: false })

        now += FIRST_STEP_MAX + SECOND
        const fetched = await qm.refreshMainWithMetadata('main-account', 'main-token')
        expect(fetched.fetched).toBe(true)
        expect(fetchCalls).toBe(2)
      },
    )

    test('upstream "seeds an active persisted fallback 429 backoff before polling"', async () => {
      const fetchMock = vi.fn(async (): Promise<Response> => {
        throw new Error('persisted fallback backoff must prevent a quota poll')
      })
      const qm = make({ storage: pluginStorage({ quota: { checkIntervalMinutes: 5 } }), fetchImpl: fetchMock })
      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback-persisted-backoff',
          type: 'oauth',
          access: 'fallback-token',
          refresh: 'fallback-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now - 2 * SECOND } },
          lastQuotaRefreshError: {
            message: 'Claude quota check failed: 429 — rate limited',
            checkedAt: now - SECOND,
            nextRetryAt: now + MINUTE,
            retryCount: 1,
            accountIdentity: 'fallback-persisted-backoff',
          },
        },
      ])

      expect(qm.isFallbackBackedOff('fallback-persisted-backoff')).toBe(true)
      await expect(qm.refreshFallbackWithMetadata('fallback-persisted-backoff', 'fallback-token', undefined)).resolves.toMatchObject({
        fetched: false,
      })
      expect(fetchMock).not.toHaveBeenCalled()
    })

    test(
      'upstream "first 429 backs off for 60s" — inverted, README Differences: "Backoff jitter":' + ' 60 s lengthened by at most 10 %',
      async () => {
        const qm = createQM(async () => rateLimited())
        const failedAt = now

        await qm.refreshMain('token').catch(() => {})

        const deadline = qm.getLastApiError()?.nextRetryAt ?? 0
        expect(deadline - failedAt).toBeGreaterThanOrEqual(60 * SECOND)
        expect(deadline - failedAt).toBeLessThanOrEqual(FIRST_STEP_MAX)
        expect(qm.isBackedOff()).toBe(true)
        now = failedAt + 59 * SECOND
        expect(qm.isBackedOff()).toBe(true)
        now = failedAt + FIRST_STEP_MAX + SECOND
        expect(qm.isBackedOff()).toBe(false)
      },
    )

    test('upstream "legacy main quota backoff survives ordinary access-token rotation"', async () => {
      const fetchMock = vi.fn(async (): Promise<Response> => {
        throw new Error('quota fetch should be blocked by backoff')
      })
      const qm = make({
        fetchImpl: fetchMock,
        storage: pluginStorage({
          version: 1,
          mainAccountId: 'main-account',
          main: { type: 'opencode', provider: 'anthropic' },
          accounts: [],
          quota: {
            // Written before errors carried an identity.
            mainLastQuotaApiError: {
              message: 'legacy quota failure',
              checkedAt: now - SECOND,
              nextRetryAt: now + MINUTE,
              retryCount: 1,
            },
          },
        }),
      })

      expect(qm.isBackedOff()).toBe(true)
      await expect(qm.refreshMain('main-account', 'rotated-access-token')).rejects.toThrow('rate-limited')
      expect(fetchMock).not.toHaveBeenCalled()
    })

    test('upstream "fallback 429 does NOT back off main or fire onApiError"', async () => {
      let apiErrorCount = 0
      const qm = make({
        fetchImpl: async () => rateLimited(),
        onApiError: () => {
          apiErrorCount += 1
        },
      })

      await qm.refreshFallback('fallback-1', 'fallback-token', undefined).catch(() => {})

      expect(qm.isFallbackBackedOff('fallback-1')).toBe(true)
      expect(qm.isBackedOff()).toBe(false)
      expect(apiErrorCount).toBe(0)
      expect(qm.getLastApiError()).toBeUndefined()
      expect(qm.isFallbackBackedOff('fallback-2')).toBe(false)
    })

    test('upstream "fallback quota backoff survives access-token rotation"', async () => {
      const seenTokens: string[] = []
      const qm = createQM(async (_url, init) => {
        const bearer = bearerOf(init)
        seenTokens.push(bearer)
        return bearer === 'Bearer old-token' ? rateLimited() : quotaResponse(now)
      })

      await expect(qm.refreshFallback('fallback-1', 'old-token', undefined)).rejects.toThrow('429')
      expect(qm.isFallbackBackedOff('fallback-1')).toBe(true)

      // A rotated token is the same account: the route stays backed off and nothing is sent.
      now += 1_100
      await expect(qm.refreshFallback('fallback-1', 'new-token', undefined)).rejects.toThrow('rate-limited')
      expect(seenTokens).toEqual(['Bearer old-token'])
    })

    test('upstream "main 429 does NOT back off a fallback account"', async () => {
      const qm = createQM(async () => rateLimited())

      await qm.refreshMain('main-token').catch(() => {})

      expect(qm.isBackedOff()).toBe(true)
      expect(qm.isFallbackBackedOff('fallback-1')).toBe(false)
    })

    test('upstream "401 does not arm backoff (auth error, caller retries)"', async () => {
      const qm = createQM(async () => new Response('unauthorized', { status: 401 }))

      await qm.refreshMain('token').catch(() => {})

      expect(qm.isBackedOff()).toBe(false)
      expect(qm.getLastApiError()).toBeUndefined()
    })

    test('upstream "403 does not arm backoff (account/org policy error)"', async () => {
      let apiErrorCount = 0
      const qm = make({
        fetchImpl: async () => new Response('org policy', { status: 403 }),
        onApiError: () => {
          apiErrorCount += 1
        },
      })

      await expect(qm.refreshMain('token')).rejects.toThrow('403')
      expect(qm.isBackedOff()).toBe(false)
      expect(qm.getLastApiError()).toBeUndefined()
      expect(apiErrorCount).toBe(0)

      await expect(qm.refreshFallback('fallback-1', 'fallback-token', undefined)).rejects.toThrow('403')
      expect(qm.isFallbackBackedOff('fallback-1')).toBe(false)
    })

    test(
      'upstream "repeated 429s escalate backoff exponentially" (README Differences: "Backoff jitter":' +
        ' each step is checked against its jittered bound)',
      async () => {
        const qm = createQM(async () => rateLimited())

        await qm.refreshMain('token').catch(() => {})
        expect(qm.isBackedOff()).toBe(true)

        now += FIRST_STEP_MAX + SECOND
        expect(qm.isBackedOff()).toBe(false)

        // The second failure in a row doubles the step to 120 s.
        const secondFailureAt = now
        await qm.refreshMain('token').catch(() => {})
        now = secondFailureAt + 119 * SECOND
        expect(qm.isBackedOff()).toBe(true)
        now = secondFailureAt + SECOND_STEP_MAX + SECOND
        expect(qm.isBackedOff()).toBe(false)
      },
    )

    test('upstream "backoff caps at 15 minutes"', async () => {
      const qm = createQM(async () => rateLimited())

      for (let i = 0; i < 8; i++) {
        await qm.refreshMain('token').catch(() => {})
        now += 16 * MINUTE
      }

      // Jitter never lengthens a step past the cap.
      await qm.refreshMain('token').catch(() => {})
      now += 14 * MINUTE
      expect(qm.isBackedOff()).toBe(true)
      now += 2 * MINUTE
      expect(qm.isBackedOff()).toBe(false)
    })

    test(
      'upstream "successful fetch resets backoff" (README Differences: "Backoff jitter": each step is' +
        ' checked against its jittered bound)',
      async () => {
        let failNext = true
        const qm = createQM(async () => (failNext ? rateLimited() : quotaResponse(now)))

        await qm.refreshMain('token').catch(() => {})
        expect(qm.isBackedOff()).toBe(true)

        now += FIRST_STEP_MAX + SECOND
        failNext = false
        await qm.refreshMain('token')
        expect(qm.isBackedOff()).toBe(false)

        // The next failure starts the ladder again at 60 s.
        failNext = true
        now += 1_100
        const failedAt = now
        await qm.refreshMain('token').catch(() => {})
        now = failedAt + 59 * SECOND
        expect(qm.isBackedOff()).toBe(true)
        now = failedAt + FIRST_STEP_MAX + SECOND
        expect(qm.isBackedOff()).toBe(false)
      },
    )

    test('upstream "getLastApiError exposes backoff state"', async () => {
      const qm = createQM(async () => rateLimited())
      expect(qm.getLastApiError()).toBeUndefined()

      await qm.refreshMain('token').catch(() => {})

      const error = qm.getLastApiError()
      expect(error).toBeDefined()
      expect(error?.retryCount).toBe(1)
      expect(error?.nextRetryAt).toBeGreaterThan(now)
    })

    test('upstream "500 errors also trigger backoff"', async () => {
      const qm = createQM(async () => new Response('internal error', { status: 500 }))

      await qm.refreshMain('token').catch(() => {})

      expect(qm.isBackedOff()).toBe(true)
    })

    test('upstream "returns cached quota during backoff"', async () => {
      let failNext = false
      const qm = createQM(async () => (failNext ? rateLimited() : quotaResponse(now)))

      expect(await qm.refreshMain('main-account', 'token')).toBeDefined()

      failNext = true
      now += 1_100
      await qm.refreshMain('main-account', 'token').catch(() => {})

      expect(qm.getMain('main-account')).not.toBeNull()
    })
  })

  /** Two logins of one fallback slot, as the plugin's accounts carry them. */
  function twoLogins() {
    const accountA = {
      id: 'fallback-1',
      type: 'oauth' as const,
      access: 'fallback-a',
      refresh: 'refresh-a',
      expires: now + MINUTE,
      authLineageId: 'lineage-a',
      quota: { checkedAt: now, five_hour: { usedPercent: 10, remainingPercent: 90, checkedAt: now } },
    }
    const accountB = {
      ...accountA,
      access: 'fallback-b',
      authLineageId: 'lineage-b',
      quota: { checkedAt: now, five_hour: { usedPercent: 20, remainingPercent: 80, checkedAt: now } },
    }
    return { accountA, accountB }
  }

  test('upstream "authoritative fallback lineage rebind clears the old cache"', () => {
    const qm = createQM()
    const { accountA, accountB } = twoLogins()

    qm.seedFallbacksFromAccounts([accountA])
    qm.seedFallbacksFromAccounts([accountB]) // the lineage changed: the slot is cleared
    qm.seedFallbacksFromAccounts([accountB]) // now the new login's quota is adopted

    expect(qm.getFallback('fallback-1', accountB)?.quota.five_hour?.usedPercent).toBe(20)
  })

  test('upstream "stale fallback observation is discarded without rebinding the cache"', () => {
    const qm = createQM()
    const { accountA, accountB } = twoLogins()
    qm.seedFallbacksFromAccounts([accountA])
    qm.seedFallbacksFromAccounts([accountB])
    qm.seedFallbacksFromAccounts([accountB])

    const lateObservation = {
      five_hour: { usedPercent: 95, remainingPercent: 5, checkedAt: now + 1 },
      checkedAt: now + 1,
    }
    expect(qm.pushFallbackFromHeaders('fallback-1', lateObservation, accountA)).toBeNull()
    expect(qm.getFallback('fallback-1', accountB)?.quota.five_hour?.usedPercent).toBe(20)
  })

  describe('persistence', () => {
    test('upstream "seeds legacy main quota without trusting its unbound timestamp"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: {
          version: 1,
          accounts: [],
          quota: { mainQuota: legacyQuota(), mainQuotaCheckedAt: 900_000 },
        },
      })

      const main = qm.getMain()
      expect(main).not.toBeNull()
      expect(main?.checkedAt).toBe(0)
    })

    test('upstream "getMain(mainAccountId) rejects a cached entry from a different identity"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({
          version: 1,
          accounts: [],
          mainAccountId: 'main-a',
          quota: { mainQuota: { ...legacyQuota(), accountIdentity: 'main-a' }, mainQuotaCheckedAt: 900_000 },
        }),
      })

      expect(qm.getMain('main-a')).not.toBeNull()
      expect(qm.getMain('main-b')).toBeNull()
    })

    test('upstream "updateStorage seeds main quota written by another process"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({ version: 1, accounts: [], quota: { checkIntervalMinutes: 5 } }),
      })
      expect(qm.getMain('main-token')).toBeNull()

      const written = () =>
        pluginStorage({
          version: 1,
          accounts: [],
          quota: {
            checkIntervalMinutes: 5,
            mainQuota: { five_hour: { usedPercent: 12, remainingPercent: 88, checkedAt: 999_000 } },
            mainQuotaCheckedAt: 999_000,
            mainQuotaToken: tokenFingerprint('main-token'),
          },
        })
      qm.updateStorage(written())
      qm.seedMainFromStorage(written(), 'main-token')

      expect(qm.getMain('main-token')?.quota.five_hour?.usedPercent).toBe(12)
    })

    test('upstream "seedFallbacksFromAccounts binds persisted fallback quota to account id across token rotation"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({ version: 1, accounts: [], quota: { checkIntervalMinutes: 5 } }),
      })

      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback-1',
          type: 'oauth',
          access: 'old-fallback-token',
          refresh: 'refresh-token',
          expires: 2_000_000,
          quota: {
            five_hour: { usedPercent: 10, remainingPercent: 90, checkedAt: 900_000 },
            seven_day: { usedPercent: 20, remainingPercent: 80, checkedAt: 900_000 },
          },
        },
      ])
      expect(qm.getFallback('fallback-1')).not.toBeNull()

      // The same account after a token refresh, persisted without a quota yet.
      qm.seedFallbacksFromAccounts([
        { id: 'fallback-1', type: 'oauth', access: 'new-fallback-token', refresh: 'refresh-token', expires: 2_000_000 },
      ])
      expect(qm.getFallback('fallback-1')?.quota.five_hour?.remainingPercent).toBe(90)
    })

    test('upstream "credential replacement clears fallback quota and quota backoff for the labelled slot"', async () => {
      const qm = createQM(async () => rateLimited())
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])

      await expect(qm.refreshFallback('work', 'old-access', { authLineageId: 'old-login' })).rejects.toThrow('429')
      expect(qm.isFallbackBackedOff('work')).toBe(true)

      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])

      expect(qm.getFallback('work')).toBeNull()
      expect(qm.isFallbackBackedOff('work')).toBe(false)
    })

    test('upstream "legacy fallback re-login clears quota and quota backoff"', async () => {
      const qm = createQM(async () => rateLimited())
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          access: 'legacy-access',
          refresh: 'legacy-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])
      await expect(qm.refreshFallback('work', 'legacy-access', undefined)).rejects.toThrow('429')

      // The first lineage id ever seen for a slot that had none is a new login.
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])

      expect(qm.getFallback('work')).toBeNull()
      expect(qm.isFallbackBackedOff('work')).toBe(false)
    })

    test('upstream "legacy fallback re-login starts a new quota poll"', async () => {
      let fetchCalls = 0
      const oldPollEntered = deferred<void>()
      const oldPoll = deferred<Response>()
      const qm = createQM(async () => {
        fetchCalls += 1
        if (fetchCalls === 1) {
          oldPollEntered.resolve()
          return oldPoll.promise
        }
        return quotaResponse(now)
      })
      qm.seedFallbacksFromAccounts([
        { id: 'work', type: 'oauth', access: 'legacy-access', refresh: 'legacy-refresh', expires: now + MINUTE },
      ])

      const priorPoll = later(qm.refreshFallback('work', 'legacy-access', undefined))
      await within(oldPollEntered.promise, 'the poll to reach the injected fetch')
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])
      const replacementPoll = later(qm.refreshFallback('work', 'replacement-access', { authLineageId: 'replacement-login' }))
      oldPoll.resolve(quotaResponse(now))

      await priorPoll
      await replacementPoll
      expect(fetchCalls).toBe(2)
    })

    test('upstream "credential replacement does not reseed a persisted prior-login quota"', () => {
      const qm = createQM()
      const quota = { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } }
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota,
        },
      ])

      // The replacement still carries the old login's persisted quota: it must not be adopted.
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
          quota,
        },
      ])

      expect(qm.getFallback('work')).toBeNull()
    })

    test('upstream "credential replacement starts a new fallback poll instead of joining the prior login"', async () => {
      let fetchCalls = 0
      const oldPollEntered = deferred<void>()
      const oldPoll = deferred<Response>()
      const qm = createQM(async () => {
        fetchCalls += 1
        if (fetchCalls === 1) {
          oldPollEntered.resolve()
          return oldPoll.promise
        }
        return new Response(JSON.stringify({ five_hour: { utilization: 10, resets_at: new Date(now + 60 * MINUTE).toISOString() } }), {
          status: 200,
        })
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
        },
      ])

      const priorPoll = later(qm.refreshFallback('work', 'old-access', { authLineageId: 'old-login' }))
      await within(oldPollEntered.promise, 'the poll to reach the injected fetch')
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])
      const replacementPoll = later(qm.refreshFallback('work', 'replacement-access', { authLineageId: 'replacement-login' }))
      now += SECOND
      // The old login's answer (90 % used) arrives last and must not land in the slot.
      oldPoll.resolve(
        new Response(JSON.stringify({ five_hour: { utilization: 90, resets_at: new Date(now + 60 * MINUTE).toISOString() } }), {
          status: 200,
        }),
      )

      await priorPoll
      const replacement = await replacementPoll
      expect(fetchCalls).toBe(2)
      expect(replacement.five_hour?.remainingPercent).toBe(90)
      expect(qm.getFallback('work')?.quota.five_hour?.remainingPercent).toBe(90)
    })

    test('upstream "replacement-lineage refresh does not join an unseeded prior-login poll"', async () => {
      let fetchCalls = 0
      const oldPollEntered = deferred<void>()
      const oldPoll = deferred<Response>()
      const qm = createQM(async () => {
        fetchCalls += 1
        if (fetchCalls === 1) {
          oldPollEntered.resolve()
          return oldPoll.promise
        }
        return quotaResponse(now)
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
        },
      ])

      const priorPoll = later(qm.refreshFallback('work', 'old-access', { authLineageId: 'old-login' }))
      await within(oldPollEntered.promise, 'the poll to reach the injected fetch')
      // No reseed: the refresh itself carries the new lineage.
      const replacementPoll = later(qm.refreshFallback('work', 'replacement-access', { authLineageId: 'replacement-login' }))
      now += SECOND
      oldPoll.resolve(quotaResponse(now))

      await priorPoll
      await replacementPoll
      expect(fetchCalls).toBe(2)
    })

    test('upstream "replacement-lineage refresh clears prior-login quota backoff before reading it"', async () => {
      let fetchCalls = 0
      const qm = createQM(async () => {
        fetchCalls += 1
        return fetchCalls === 1 ? rateLimited() : quotaResponse(now)
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])

      await expect(qm.refreshFallback('work', 'old-access', { authLineageId: 'old-login' })).rejects.toThrow('429')
      now += SECOND

      const replacement = await qm.refreshFallbackWithMetadata('work', 'replacement-access', {
        authLineageId: 'replacement-login',
      })

      expect(replacement.fetched).toBe(true)
      expect(qm.isFallbackBackedOff('work')).toBe(false)
      expect(fetchCalls).toBe(2)
    })

    test('upstream "ordinary lineage-preserving rotation retains fallback quota and backoff"', async () => {
      let fetchCalls = 0
      const qm = createQM(async () => {
        fetchCalls += 1
        return rateLimited()
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])

      await expect(qm.refreshFallback('work', 'old-access', { authLineageId: 'stable-login' })).rejects.toThrow('429')
      now += SECOND

      const rotated = await qm.refreshFallbackWithMetadata('work', 'rotated-access', { authLineageId: 'stable-login' })

      expect(rotated.fetched).toBe(false)
      expect(rotated.quota.five_hour?.remainingPercent).toBe(75)
      expect(qm.isFallbackBackedOff('work')).toBe(true)
      expect(fetchCalls).toBe(1)
    })

    test('upstream "ordinary lineage-preserving rotation retains an in-flight fallback poll"', async () => {
      let fetchCalls = 0
      const pollEntered = deferred<void>()
      const poll = deferred<Response>()
      const qm = createQM(async () => {
        fetchCalls += 1
        pollEntered.resolve()
        return poll.promise
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
        },
      ])

      const priorPoll = later(qm.refreshFallback('work', 'old-access', { authLineageId: 'stable-login' }))
      await within(pollEntered.promise, 'the poll to reach the injected fetch')
      const rotatedPoll = later(qm.refreshFallback('work', 'rotated-access', { authLineageId: 'stable-login' }))
      poll.resolve(quotaResponse(now))

      expect(await rotatedPoll).toEqual(await priorPoll)
      expect(fetchCalls).toBe(1)
    })

    test('upstream "replacement under a new fallback id removes the departed slot cache"', () => {
      const qm = createQM()
      qm.seedFallbacksFromAccounts([
        {
          id: 'old-plugin-id',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])

      qm.seedFallbacksFromAccounts([
        {
          id: 'new-plugin-id',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])

      expect(qm.getFallback('old-plugin-id')).toBeNull()
    })

    test('upstream "ordinary fallback token rotation preserves quota and quota backoff"', async () => {
      const qm = createQM(async () => rateLimited())
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: { five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now } },
        },
      ])
      await expect(qm.refreshFallback('work', 'old-access', { authLineageId: 'stable-login' })).rejects.toThrow('429')

      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'rotated-access',
          refresh: 'rotated-refresh',
          expires: now + MINUTE,
        },
      ])

      expect(qm.getFallback('work')?.quota.five_hour?.remainingPercent).toBe(75)
      expect(qm.isFallbackBackedOff('work')).toBe(true)
    })

    test('upstream "ordinary fallback token rotation preserves an in-flight quota poll"', async () => {
      let fetchCalls = 0
      const pollEntered = deferred<void>()
      const poll = deferred<Response>()
      const qm = createQM(async () => {
        fetchCalls += 1
        pollEntered.resolve()
        return poll.promise
      })
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
        },
      ])

      const priorPoll = later(qm.refreshFallback('work', 'old-access', { authLineageId: 'stable-login' }))
      await within(pollEntered.promise, 'the poll to reach the injected fetch')
      qm.seedFallbacksFromAccounts([
        {
          id: 'work',
          type: 'oauth',
          authLineageId: 'stable-login',
          access: 'rotated-access',
          refresh: 'rotated-refresh',
          expires: now + MINUTE,
        },
      ])
      const rotatedPoll = later(qm.refreshFallback('work', 'rotated-access', { authLineageId: 'stable-login' }))
      poll.resolve(quotaResponse(now))

      expect(await rotatedPoll).toEqual(await priorPoll)
      expect(fetchCalls).toBe(1)
    })

    test('upstream "seedFallbacksFromAccounts preserves freshness for scoped-only quota"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({ version: 1, accounts: [], quota: { checkIntervalMinutes: 5 } }),
      })

      qm.seedFallbacksFromAccounts([
        {
          id: 'scoped-only',
          type: 'oauth',
          access: 'fallback-token',
          refresh: 'refresh-token',
          expires: 2_000_000,
          quota: {
            scoped: [
              {
                id: 'claude-weekly-scoped-fable',
                title: 'Fable only',
                modelName: 'Fable',
                usedPercent: 10,
                remainingPercent: 90,
                checkedAt: 999_000,
              },
            ],
          },
        },
      ])

      // With no standard window and no checkedAt, the scoped window dates the entry.
      expect(qm.getFallback('scoped-only')?.checkedAt).toBe(999_000)
      expect(qm.isFallbackStale('scoped-only', 'fallback-token', 'claude-fable-5')).toBe(false)
    })

    test('upstream "seedFallbacksFromAccounts updates older in-memory quota from disk"', () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({ version: 1, accounts: [], quota: { checkIntervalMinutes: 5 } }),
      })
      qm.setFallback(
        'fallback-1',
        {
          quota: { five_hour: { usedPercent: 90, remainingPercent: 10, checkedAt: 900_000 } },
          refreshAfter: 900_000,
          checkedAt: 900_000,
        },
        undefined,
      )

      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback-1',
          type: 'oauth',
          access: 'fallback-token',
          refresh: 'refresh-token',
          expires: 2_000_000,
          quota: { five_hour: { usedPercent: 12, remainingPercent: 88, checkedAt: 999_000 } },
        },
      ])

      expect(qm.getFallback('fallback-1')?.checkedAt).toBe(999_000)
      expect(qm.getFallback('fallback-1')?.quota.five_hour?.usedPercent).toBe(12)
    })

    test('upstream "drops persisted main seed during backoff when the token changed"', async () => {
      const qm = make({
        now: () => 1_000_000,
        storage: pluginStorage({
          version: 1,
          accounts: [],
          quota: {
            mainQuota: legacyQuota(),
            mainQuotaCheckedAt: 900_000,
            mainQuotaToken: 'old-account-fingerprint',
            mainLastQuotaApiError: {
              message: 'Claude quota check failed: 429 — rate limited',
              checkedAt: 999_000,
              nextRetryAt: 1_030_000,
              retryCount: 1,
            },
          },
        }),
      })

      expect(qm.getMain()).not.toBeNull()
      expect(qm.isBackedOff()).toBe(true)

      // Another account's token: the seed is not served to it, and the unbound slot is retargeted.
      await expect(qm.refreshMain('different-account-token')).rejects.toThrow()
      expect(qm.getMain()).toBeNull()
    })

    test(
      'upstream "keeps persisted main seed during backoff when the identity matches" (README Differences:' +
        ' "Only the snapshot\'s own fields": the legacy `quotas` and `expires` keys are not kept)',
      async () => {
        const fetchMock = vi.fn(async () => quotaResponse(now))
        const qm = make({
          now: () => 1_000_000,
          fetchImpl: fetchMock,
          storage: pluginStorage({
            version: 1,
            accounts: [],
            mainAccountId: 'main-a',
            quota: {
              mainQuota: { ...legacyQuota(), accountIdentity: 'main-a' },
              mainQuotaCheckedAt: 900_000,
              mainLastQuotaApiError: {
                message: 'Claude quota check failed: 429 — rate limited',
                checkedAt: 999_000,
                nextRetryAt: 1_030_000,
                retryCount: 1,
              },
            },
          }),
        })

        // Same identity, rotated token, backed off: the seed is served, nothing is sent.
        const result = await qm.refreshMain('main-a', 'rotated-access-token')
        expect(result).toEqual({ accountIdentity: 'main-a' })
        expect(qm.getMain('main-a')).not.toBeNull()
        expect(fetchMock).not.toHaveBeenCalled()
      },
    )

    test('upstream "calls onMainQuotaFetched after successful fetch"', async () => {
      let seen: { quota: QuotaSnapshot; checkedAt: number } | null = null
      const qm = make({
        fetchImpl: async () => quotaResponse(now),
        onMainQuotaFetched: (quota, checkedAt) => {
          seen = { quota, checkedAt }
        },
      })

      await qm.refreshMain('token')

      // Called before the refresh settles (not awaited, but already run).
      expect(seen).not.toBeNull()
      expect(seen!.checkedAt).toBe(now)
    })

    test('upstream "seeds backoff state from persisted storage"', () => {
      const qm = make({
        storage: pluginStorage({
          version: 1,
          accounts: [],
          quota: {
            mainLastQuotaApiError: {
              message: 'Claude quota check failed: 429 — rate limited',
              checkedAt: now - 30 * SECOND,
              nextRetryAt: now + 30 * SECOND,
              retryCount: 1,
            },
          },
        }),
      })

      expect(qm.isBackedOff()).toBe(true)
    })

    test('upstream "ignores expired persisted backoff"', () => {
      const qm = make({
        storage: pluginStorage({
          version: 1,
          accounts: [],
          quota: {
            mainLastQuotaApiError: {
              message: 'old error',
              checkedAt: now - 2 * MINUTE,
              nextRetryAt: now - MINUTE,
              retryCount: 1,
            },
          },
        }),
      })

      expect(qm.isBackedOff()).toBe(false)
    })

    test('upstream "calls onApiError callback on failure"', async () => {
      let seen: { retryCount?: number | undefined; nextRetryAt?: number | undefined } | null = null
      const qm = make({
        fetchImpl: async () => rateLimited(),
        onApiError: (error) => {
          seen = error
        },
      })

      await qm.refreshMain('token').catch(() => {})

      expect(seen).not.toBeNull()
      expect(seen!.retryCount).toBe(1)
      expect(seen!.nextRetryAt).toBeGreaterThan(now)
    })
  })

  describe('refreshMain dedup (identity-keyed)', () => {
    test(
      'upstream "rotated access tokens under one main identity use separate in-flight fetches"' +
        ' (README Differences: "One request per token, one result per account": two requests, and' +
        " the second is answered by the first one's fresh result instead of a second poll)",
      async () => {
        let fetchCalls = 0
        const qm = createQM(async () => {
          fetchCalls += 1
          return quotaResponse(now)
        })

        const [quotaA, quotaB] = await Promise.all([
          qm.refreshMainWithMetadata('main-account', 'access-token-a'),
          qm.refreshMainWithMetadata('main-account', 'access-token-b'),
        ])

        expect(quotaA.quota).toEqual(quotaB.quota)
        // Separate requests: the second did not join the first one ...
        expect(qm.stats().joinedInFlight).toBe(0)
        // ... and whichever took the route first answered the other with the account's quota: one poll.
        expect([quotaA.fetched, quotaB.fetched].sort()).toEqual([false, true])
        expect(qm.stats().joinedOtherProcess).toBe(1)
        expect(fetchCalls).toBe(1)
      },
    )

    test('upstream "concurrent different-token refreshMain: each gets its own quota"', async () => {
      let callCount = 0
      const fetchMock = vi.fn(async () => {
        callCount += 1
        return utilizationResponse(callCount * 10, now)
      })
      const qm = make({ fetchImpl: fetchMock })
      const tokenA = 'access-token-aaaaaaaa'
      const tokenB = 'access-token-bbbbbbbb'
      expect(tokenFingerprint(tokenA)).not.toBe(tokenFingerprint(tokenB))

      const [quotaA, quotaB] = await Promise.all([qm.refreshMain(tokenA), qm.refreshMain(tokenB)])

      expect(quotaA.five_hour).toBeDefined()
      expect(quotaB.five_hour).toBeDefined()
      expect(fetchMock).toHaveBeenCalledTimes(2)
      expect(quotaA.five_hour?.usedPercent).not.toBe(quotaB.five_hour?.usedPercent)
    })

    test('upstream "same-token concurrent refreshMain deduplicates (one API call)"', async () => {
      const fetchMock = vi.fn(async () => utilizationResponse(42, now))
      const qm = make({ fetchImpl: fetchMock })
      const token = 'access-token-same'

      const [quota1, quota2] = await Promise.all([qm.refreshMain(token), qm.refreshMain(token)])

      expect(quota1).toEqual(quota2)
      expect(fetchMock).toHaveBeenCalledTimes(1)
    })

    test('upstream "pre-fix failure proof: different tokens each trigger own fetch with correct quota"', async () => {
      const fetchedTokens: string[] = []
      let callCount = 0
      const fetchMock = vi.fn(async (_url: string, init?: FetchInit) => {
        callCount += 1
        // The headers arrive as a plain object (docs/compat.md#host-options).
        fetchedTokens.push((init?.headers?.Authorization ?? '').replace('Bearer ', ''))
        return utilizationResponse(callCount * 10, now)
      })
      const qm = make({ fetchImpl: fetchMock })
      const tokenA = 'token-aaaa'
      const tokenB = 'token-bbbb'
      expect(tokenFingerprint(tokenA)).not.toBe(tokenFingerprint(tokenB))

      const [quotaA, quotaB] = await Promise.all([qm.refreshMain(tokenA), qm.refreshMain(tokenB)])

      expect(fetchMock).toHaveBeenCalledTimes(2)
      expect(fetchedTokens).toHaveLength(2)
      expect(fetchedTokens).toContain(tokenA)
      expect(fetchedTokens).toContain(tokenB)
      expect(quotaA.five_hour).toBeDefined()
      expect(quotaB.five_hour).toBeDefined()
      expect(quotaA.five_hour?.usedPercent).not.toBe(quotaB.five_hour?.usedPercent)
    })
  })

  describe('main identity cache seeding', () => {
    const persistedQuota = {
      five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: 900_000 },
      checkedAt: 900_000,
    }

    test('upstream "does not share a cached entry with a different main identity"', () => {
      const qm = make({
        storage: pluginStorage({
          version: 1,
          accounts: [],
          mainAccountId: 'main-a',
          quota: { mainQuota: { ...persistedQuota, accountIdentity: 'main-a' }, mainQuotaCheckedAt: 900_000 },
        }),
      })

      expect(qm.getMain('main-a')).not.toBeNull()
      expect(qm.getMain('main-b')).toBeNull()
    })

    test('upstream "adopts legacy persisted quota without an account identity"', () => {
      const qm = make({
        storage: pluginStorage({
          version: 1,
          accounts: [],
          mainAccountId: 'main-a',
          quota: { mainQuota: persistedQuota, mainQuotaCheckedAt: 900_000 },
        }),
      })

      expect(qm.getMain('main-a')).not.toBeNull()
      expect(qm.getMain('main-a')?.quota.accountIdentity).toBe('main-a')
    })

    test('upstream "missing main identity leaves quota unknown without changing credentials"', () => {
      const storage = {
        version: 1,
        mainAccountId: 'main-a',
        main: { type: 'opencode', provider: 'anthropic' },
        accounts: [{ id: 'fallback-a', type: 'oauth', access: 'fallback-access', refresh: 'fallback-refresh' }],
        quota: { mainQuota: { ...persistedQuota, accountIdentity: 'main-a' }, mainQuotaCheckedAt: 900_000 },
      }
      const qm = make({ storage: pluginStorage(storage) })

      qm.seedMainFromStorage(pluginStorage(storage), undefined)

      expect(qm.getMain()).toBeNull()
      expect(storage.accounts[0]?.access).toBe('fallback-access')
    })
  })

  describe('header pushes', () => {
    function headerSnapshot(checkedAt = now): QuotaSnapshot {
      return {
        five_hour: { usedPercent: 78, remainingPercent: 22, checkedAt },
        seven_day: { usedPercent: 40, remainingPercent: 60, checkedAt },
        bindingWindow: 'five_hour',
        bindingWindowSource: 'headers',
        fallbackAdvised: true,
        source: 'headers',
        checkedAt,
      }
    }

    const fableWindow = (usedPercent: number, checkedAt: number) => ({
      id: 'claude-weekly-scoped-fable',
      title: 'Fable only',
      modelName: 'Fable',
      usedPercent,
      remainingPercent: 100 - usedPercent,
      checkedAt,
    })

    test('upstream "header push always replaces main five_hour and seven_day regardless of cached checkedAt"', () => {
      const qm = createQM()
      const later = now + 10 * SECOND
      qm.setMain('token', {
        quota: {
          five_hour: { usedPercent: 1, remainingPercent: 99, checkedAt: later },
          seven_day: { usedPercent: 2, remainingPercent: 98, checkedAt: later },
          checkedAt: later,
        },
        checkedAt: later,
        refreshAfter: now + 20 * SECOND,
      })

      const pushed = qm.pushMainFromHeaders('main-account', headerSnapshot())

      expect(pushed?.quota.five_hour?.usedPercent).toBe(78)
      expect(pushed?.quota.seven_day?.usedPercent).toBe(40)
    })

    test('upstream "header push preserves a non-empty scoped poll snapshot"', () => {
      const qm = createQM()
      const scoped = [fableWindow(15, 100)]
      qm.setMain('token', { quota: { scoped, checkedAt: 100, source: 'poll' }, checkedAt: 100, refreshAfter: 200 })

      expect(qm.pushMainFromHeaders('token', headerSnapshot())?.quota.scoped).toEqual(scoped)
    })

    test('upstream "header push preserves present empty scoped array"', () => {
      const qm = createQM()
      qm.setMain('token', { quota: { scoped: [], checkedAt: 100, source: 'poll' }, checkedAt: 100, refreshAfter: 200 })

      const pushed = qm.pushMainFromHeaders('token', headerSnapshot())

      expect(pushed !== null && 'scoped' in pushed.quota).toBe(true)
      expect(pushed?.quota.scoped).toEqual([])
    })

    test('upstream "a header-only main entry stays due for its first usage poll"', () => {
      const qm = createQM()
      qm.pushMainFromHeaders('token', headerSnapshot())

      // Headers never carry the model-scoped windows: without a poll the entry would never learn them.
      expect(qm.isMainStale()).toBe(true)

      qm.setMain('token', { quota: { scoped: [], checkedAt: now, source: 'poll' }, checkedAt: now, refreshAfter: now + MINUTE })
      qm.pushMainFromHeaders('token', headerSnapshot())
      expect(qm.isMainStale()).toBe(false)
    })

    test('upstream "a failed first usage poll does not re-arm header-only staleness until the next interval"', async () => {
      let usageCalls = 0
      const qm = createQM(async () => {
        usageCalls += 1
        return new Response('{"error":{"type":"permission_error"}}', { status: 403 })
      })
      qm.pushMainFromHeaders('token', headerSnapshot())
      expect(qm.isMainStale()).toBe(true)

      await qm.refreshMain('token', 'access-token').catch(() => {})
      expect(usageCalls).toBe(1)
      // A 403 arms no backoff: the header-only rule must not turn every request into a poll.
      qm.pushMainFromHeaders('token', headerSnapshot())
      expect(qm.isMainStale()).toBe(false)

      now += 5 * MINUTE
      qm.pushMainFromHeaders('token', headerSnapshot())
      expect(qm.isMainStale()).toBe(true)
    })

    test(
      '(this package) a poll attempt by another process counts for the header-only rule: one poll per interval' +
        ' between them (README Differences: "One state file shared by every process")',
      async () => {
        let usageCalls = 0
        const forbidden = async (): Promise<Response> => {
          usageCalls += 1
          return new Response('{"error":{"type":"permission_error"}}', { status: 403 })
        }
        const first = createQM(forbidden)
        const second = createQM(forbidden)
        first.pushMainFromHeaders('token', headerSnapshot())
        second.pushMainFromHeaders('token', headerSnapshot())
        expect(second.isMainStale()).toBe(true)

        await first.refreshMain('token', 'access-token').catch(() => {})
        expect(usageCalls).toBe(1)
        // The second process still thinks a poll is owed; asked for one, it finds the first
        // process's attempt under the route lock and answers from its cache.
        const served = await second.refreshMainWithMetadata('token', 'access-token')
        expect(served.fetched).toBe(false)
        expect(usageCalls).toBe(1)
        expect(second.isMainStale()).toBe(false)
        // A process started now knows the attempt from the state file.
        await first.close()
        const third = createQM(forbidden)
        third.pushMainFromHeaders('token', headerSnapshot())
        expect(third.isMainStale()).toBe(false)

        now += 5 * MINUTE
        expect(second.isMainStale()).toBe(true)
      },
    )

    test('upstream "header push never introduces poll-owned scoped data"', () => {
      const qm = createQM()
      const incoming: QuotaSnapshot = {
        ...headerSnapshot(),
        scoped: [{ id: 'header-scope', title: 'Header scope', modelName: 'Fable', usedPercent: 1, remainingPercent: 99, checkedAt: now }],
        extraUsage: {
          used: { amountMinor: 1, currency: 'USD', exponent: 2 },
          limit: { amountMinor: 100, currency: 'USD', exponent: 2 },
          exhausted: false,
        },
      }

      const pushed = qm.pushMainFromHeaders('token', incoming)

      expect(pushed).not.toBeNull()
      expect('scoped' in pushed!.quota).toBe(false)
      expect(pushed!.quota.scoped).toBeUndefined()
      expect('extraUsage' in pushed!.quota).toBe(false)
      expect(pushed!.quota.extraUsage).toBeUndefined()
    })

    test('upstream "header push preserves extraUsage and poll bindingWindow"', () => {
      const qm = createQM()
      const extraUsage = {
        used: { amountMinor: 10035, currency: 'USD', exponent: 2 },
        limit: { amountMinor: 10000, currency: 'USD', exponent: 2 },
        exhausted: true,
      }
      qm.setMain('token', {
        quota: {
          extraUsage,
          bindingWindow: 'claude-weekly-scoped-fable',
          bindingWindowSource: 'poll',
          checkedAt: 100,
          source: 'poll',
        },
        checkedAt: 100,
        refreshAfter: 200,
      })

      const pushed = qm.pushMainFromHeaders('token', headerSnapshot())

      expect(pushed?.quota.extraUsage).toEqual(extraUsage)
      expect(pushed?.quota.bindingWindow).toBe('claude-weekly-scoped-fable')
      expect(pushed?.quota.bindingWindowSource).toBe('poll')
    })

    test('upstream "cache seeding restores poll-owned fields before a newer header harvest"', () => {
      const qm = createQM()
      const scoped = [fableWindow(55, 100)]
      const extraUsage = {
        used: { amountMinor: 1261, currency: 'USD', exponent: 2 },
        limit: { amountMinor: 10000, currency: 'USD', exponent: 2 },
        utilizationPercent: 12.61,
        severity: 'normal',
        exhausted: false,
      }
      qm.setMain('main-account', {
        quota: { ...headerSnapshot(200), bindingWindow: 'claude-weekly-scoped-fable', bindingWindowSource: 'poll' },
        checkedAt: 200,
        refreshAfter: 300,
      })

      // An older persisted poll brings back what only polls know; the newer header windows stay.
      qm.seedMainFromStorage(
        pluginStorage({
          version: 1,
          mainAccountId: 'main-account',
          accounts: [],
          quota: {
            mainQuota: {
              source: 'poll',
              checkedAt: 100,
              scoped,
              extraUsage,
              bindingWindow: 'claude-weekly-scoped-fable',
              bindingWindowSource: 'poll',
            },
            mainQuotaCheckedAt: 100,
          },
        }),
        'main-account',
      )

      const pushed = qm.pushMainFromHeaders('main-account', headerSnapshot(300))

      expect(pushed?.quota.scoped).toEqual(scoped)
      expect(pushed?.quota.extraUsage).toEqual(extraUsage)
      expect(pushed?.quota.bindingWindow).toBe('claude-weekly-scoped-fable')
      expect(pushed?.quota.bindingWindowSource).toBe('poll')
    })

    test('upstream "poll completion preserves newer header windows while adding scoped limits"', async () => {
      const pollStarted = deferred<void>()
      const poll = deferred<Response>()
      const qm = createQM(async () => {
        pollStarted.resolve()
        return poll.promise
      })
      const refreshing = later(qm.refreshMain('token'))

      await within(pollStarted.promise, 'the poll to reach the injected fetch')
      qm.pushMainFromHeaders('token', headerSnapshot(now + SECOND))
      poll.resolve(
        Response.json({
          five_hour: { utilization: 25 },
          seven_day: { utilization: 50 },
          limits: [
            {
              kind: 'weekly_scoped',
              group: 'weekly',
              percent: 15,
              scope: { model: { id: null, display_name: 'Fable' } },
            },
          ],
        }),
      )
      await refreshing

      const quota = qm.getMain('token')?.quota
      expect(quota?.five_hour?.usedPercent).toBe(78)
      expect(quota?.seven_day?.usedPercent).toBe(40)
      expect(quota?.scoped?.[0]).toMatchObject({ modelName: 'Fable', usedPercent: 15 })
    })

    test('upstream "fallback header push updates only the named account"', () => {
      const qm = createQM()
      qm.setFallback('other', { quota: { checkedAt: 100 }, checkedAt: 100, refreshAfter: 200 }, undefined)

      qm.pushFallbackFromHeaders('target', headerSnapshot(), undefined)

      expect(qm.getFallback('target')?.quota.five_hour?.usedPercent).toBe(78)
      expect(qm.getFallback('other')?.quota.checkedAt).toBe(100)
    })

    test('upstream "clears a header cache written before its first seed when the login lineage changes"', () => {
      const qm = createQM()

      qm.pushFallbackFromHeaders('fallback', headerSnapshot(), { authLineageId: 'first-login' })
      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback',
          type: 'oauth',
          authLineageId: 'replacement-login',
          access: 'replacement-access',
          refresh: 'replacement-refresh',
          expires: now + MINUTE,
        },
      ])

      expect(qm.getFallback('fallback')).toBeNull()
    })

    test('upstream "replacement-lineage header push discards the stale observation"', () => {
      const qm = createQM()
      qm.seedFallbacksFromAccounts([
        {
          id: 'fallback',
          type: 'oauth',
          authLineageId: 'old-login',
          access: 'old-access',
          refresh: 'old-refresh',
          expires: now + MINUTE,
          quota: {
            scoped: [
              {
                id: 'old-login-scope',
                title: 'Old login scope',
                modelName: 'Old login',
                usedPercent: 90,
                remainingPercent: 10,
                checkedAt: now,
              },
            ],
            source: 'poll',
            checkedAt: now,
          },
        },
      ])

      const pushed = qm.pushFallbackFromHeaders('fallback', headerSnapshot(), { authLineageId: 'replacement-login' })

      expect(pushed).toBeNull()
      expect(qm.getFallback('fallback')?.quota.scoped).toEqual([expect.objectContaining({ id: 'old-login-scope' })])
    })

    test('upstream "header push binds main to account identity and fallback to account id"', () => {
      const qm = createQM()

      qm.pushMainFromHeaders('main-account', headerSnapshot())
      qm.pushFallbackFromHeaders('fallback', headerSnapshot(), undefined)

      expect(qm.getMain('different-account')).toBeNull()
      expect(qm.getFallback('fallback')).not.toBeNull()
    })

    test('upstream "header checkedAt moves refreshAfter through getQuotaNextRefreshAt"', () => {
      const qm = createQM()

      const pushed = qm.pushMainFromHeaders('token', headerSnapshot(now + 5 * SECOND))

      expect(pushed?.checkedAt).toBe(now + 5 * SECOND)
      expect(pushed?.refreshAfter).toBeGreaterThan(pushed?.checkedAt ?? Infinity)
    })

    test('upstream "partial header push stays due at the oldest preserved window staleness point"', () => {
      const intervalMs = 5 * MINUTE
      const qm = make({ storage: pluginStorage({ version: 1, accounts: [], quota: { enabled: true } }) })
      const oldCheck = now - intervalMs + SECOND
      qm.setMain('token', {
        quota: {
          seven_day: { usedPercent: 40, remainingPercent: 60, checkedAt: oldCheck },
          source: 'poll',
          checkedAt: oldCheck,
        },
        checkedAt: oldCheck,
        refreshAfter: now + SECOND,
      })

      const pushed = qm.pushMainFromHeaders('token', {
        five_hour: { usedPercent: 78, remainingPercent: 22, checkedAt: now },
        source: 'headers',
        checkedAt: now,
      })

      // The 7-day window was not in the headers: it keeps its age, and the entry is due with it.
      expect(pushed?.quota.seven_day?.checkedAt).toBe(oldCheck)
      expect(pushed?.refreshAfter).toBe(now + SECOND)
    })

    test('upstream "header pushes stay due at the oldest preserved scoped window staleness point"', () => {
      const intervalMs = 5 * MINUTE
      const qm = make({ storage: pluginStorage({ version: 1, accounts: [], quota: { enabled: true } }) })
      const oldCheck = now - intervalMs + SECOND
      qm.setMain('token', {
        quota: { scoped: [fableWindow(70, oldCheck)], source: 'poll', checkedAt: oldCheck },
        checkedAt: oldCheck,
        refreshAfter: now + SECOND,
      })

      const pushed = qm.pushMainFromHeaders('token', headerSnapshot())

      expect(pushed?.quota.scoped?.[0]?.checkedAt).toBe(oldCheck)
      expect(pushed?.refreshAfter).toBe(now + SECOND)
    })

    test('upstream "legacy unbound main quota is not merged into a newly bound header push"', () => {
      const qm = make({
        storage: pluginStorage({
          version: 1,
          accounts: [],
          quota: {
            mainQuota: {
              scoped: [
                {
                  id: 'legacy-scope',
                  title: 'Legacy scope',
                  modelName: 'Legacy',
                  usedPercent: 90,
                  remainingPercent: 10,
                  checkedAt: now - SECOND,
                },
              ],
              source: 'poll',
              checkedAt: now - SECOND,
            },
            mainQuotaCheckedAt: now - SECOND,
          },
        }),
      })

      const pushed = qm.pushMainFromHeaders('new-token', headerSnapshot())

      expect(pushed?.quota.scoped).toBeUndefined()
      expect(pushed?.quota.five_hour?.usedPercent).toBe(78)
    })
  })
})

// The plugin's packages/core/src/tests/quota-native-transport.test.ts: a child process whose
// manager has only a host transport (or none) makes a tokenless poll through it, never a direct
// fetch, and writes nothing outside its own directory.
describe('native quota transport (upstream quota-native-transport.test.ts)', () => {
  const child = join(__dirname, 'fixtures', 'native-transport-child.cjs')

  function runChild(root: string, scenario: string): Promise<{ exit: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      execFile(process.execPath, [child, root, scenario], { timeout: 20_000 }, (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number') reject(error)
        else resolve({ exit: error ? Number(error.code) : 0, stdout, stderr })
      })
    })
  }

  for (const scenario of ['main', 'fallback', 'missing']) {
    test(`upstream "native quota ${scenario} transport authorizes without legacy custody flags only when a callback owns dispatch"`, async () => {
      const root = mkdtempSync(join(tmpdir(), 'aqm-native-transport-'))
      try {
        const { exit, stdout, stderr } = await runChild(root, scenario)
        expect(exit).toBe(0)
        expect(stderr).toBe('')
        expect(JSON.parse(stdout)).toEqual({
          fetched: scenario !== 'missing',
          tokenless: scenario !== 'missing',
          calls: scenario === 'missing' ? [] : [{ kind: scenario, accountId: `synthetic-${scenario}`, accessToken: '' }],
        })
      } finally {
        rmSync(root, { recursive: true, force: true })
      }
    })
  }
})

// The fork iceteaSA/anthropic-auth, packages/core/src/tests/quota-manager.test.ts: main requests
// per token, and persisted main snapshots dated by their own times.
describe('main requests and persisted main freshness (fork iceteaSA/anthropic-auth)', () => {
  let dir: string
  let managers: QuotaManager[]

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'aqm-fork-'))
    managers = []
  })

  afterEach(async () => {
    await Promise.allSettled(managers.map((manager) => manager.close()))
    rmSync(dir, { recursive: true, force: true })
  })

  function make(options: QuotaManagerOptions): QuotaManager {
    const manager = new QuotaManager({ storage: null, statePath: join(dir, 'state.json'), usageUrl: NOWHERE, ...options })
    managers.push(manager)
    return manager
  }

  const usageBody = {
    five_hour: { utilization: 4 },
    seven_day: { utilization: 13 },
    extra_usage: { is_enabled: false, monthly_limit: null, used_credits: null },
    spend: null,
  }

  test(
    'upstream "a completed older main request does not clear a newer in-flight refresh" (README Differences:' +
      ' "One request per token, one result per account": token-a\'s request fails with a 401, which is' +
      ' no answer for token-b, so token-b polls itself, as both do upstream)',
    async () => {
      const firstStarted = deferred<void>()
      const releaseFirst = deferred<void>()
      const secondStarted = deferred<void>()
      const releaseSecond = deferred<void>()
      let fetches = 0
      const manager = make({
        fetchImpl: async () => {
          fetches += 1
          if (fetches === 1) {
            firstStarted.resolve()
            await releaseFirst.promise
            return new Response('token revoked', { status: 401 })
          }
          if (fetches === 2) {
            secondStarted.resolve()
            await releaseSecond.promise
          }
          return Response.json(usageBody)
        },
        apiCallGapMs: 0,
      })

      const first = later(manager.refreshMainWithMetadata('main', 'token-a'))
      await within(firstStarted.promise, 'the first poll')
      const second = manager.refreshMainWithMetadata('main', 'token-b')
      releaseFirst.resolve()
      await within(secondStarted.promise, 'the second poll')
      // token-a's request is over: had it cleared token-b's, this call would start a third.
      const joinedSecond = manager.refreshMainWithMetadata('main', 'token-b')
      releaseSecond.resolve()

      await expect(first).rejects.toThrow('401')
      const [secondResult, joinedResult] = await Promise.all([second, joinedSecond])
      expect(joinedResult).toEqual(secondResult)
      expect(secondResult.fetched).toBe(true)
      expect(fetches).toBe(2)
      expect(manager.stats().joinedInFlight).toBe(1)
    },
  )

  test(
    'a completed older main request answers a newer one of another token with its fresh result' +
      ' (README Differences: "One request per token, one result per account")',
    async () => {
      const firstStarted = deferred<void>()
      const releaseFirst = deferred<void>()
      let fetches = 0
      const manager = make({
        fetchImpl: async () => {
          fetches += 1
          if (fetches === 1) {
            firstStarted.resolve()
            await releaseFirst.promise
          }
          return Response.json(usageBody)
        },
        apiCallGapMs: 0,
      })

      const first = manager.refreshMainWithMetadata('main', 'token-a')
      await within(firstStarted.promise, 'the first poll')
      const second = manager.refreshMainWithMetadata('main', 'token-b')
      releaseFirst.resolve()

      const [firstResult, secondResult] = await Promise.all([first, second])
      expect(firstResult.fetched).toBe(true)
      expect(secondResult).toEqual({ quota: firstResult.quota, fetched: false })
      expect(fetches).toBe(1)
      expect(manager.stats().joinedInFlight).toBe(0)
    },
  )

  test('upstream "an unbound future timestamp cannot replace a newer in-memory main snapshot"', () => {
    const manager = make({ now: () => 1_000 })
    manager.setMain('account-a', {
      quota: { accountIdentity: 'account-a', checkedAt: 200, five_hour: { usedPercent: 20, remainingPercent: 80, checkedAt: 200 } },
      checkedAt: 200,
      refreshAfter: 500,
    })

    manager.seedMainFromStorage(
      {
        version: 1,
        accounts: [],
        mainAccountId: 'account-a',
        quota: {
          mainQuota: { accountIdentity: 'account-a', checkedAt: 100, five_hour: { usedPercent: 80, remainingPercent: 20, checkedAt: 100 } },
          mainQuotaCheckedAt: 900,
        },
      },
      'account-a',
    )

    expect(manager.getMain('account-a')).toMatchObject({ checkedAt: 200, quota: { five_hour: { usedPercent: 20 } } })
  })
})
