// Shared helpers for the fallback, header and routing specs.
import { afterEach } from 'vitest'
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { createHash } from 'node:crypto'
import { QuotaManager, ManualClock } from '../../index.js'
import type { QuotaError, QuotaManagerOptions, QuotaSnapshot, QuotaApiError } from '../../index.js'
import { startUsageSimulator, usageBody } from '../../simulator/index.js'
import type { UsageSimulator } from '../../simulator/index.js'

export const SECOND = 1_000
export const MINUTE = 60 * SECOND
/** A whole second near the real present, so the simulator's default reset times lie ahead. */
export const T0 = Math.floor(Date.now() / 1000) * 1000

export const sha16 = (token: string): string => createHash('sha256').update(token).digest('hex').slice(0, 16)

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `condition` every 5 ms until it holds; fails naming `what` after `timeoutMs`. */
export async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

/** Everything a test needs, torn down by `close`. */
export interface Harness {
  sim: UsageSimulator
  clock: ManualClock
  manager: QuotaManager
  events: RecordedEvents
  close(): Promise<void>
}

export interface RecordedEvents {
  mainFetched: Array<{ quota: QuotaSnapshot; checkedAt: number; fingerprint: string; fetchStartedAt: number }>
  mainErrors: QuotaApiError[]
  fallbackFetched: Array<{ accountId: string; quota: QuotaSnapshot; checkedAt: number; fetchStartedAt: number }>
  fallbackErrors: Array<{ accountId: string; error: QuotaApiError }>
}

export function recordingCallbacks(
  events: RecordedEvents,
): Pick<QuotaManagerOptions, 'onMainQuotaFetched' | 'onApiError' | 'onFallbackQuotaFetched' | 'onFallbackApiError'> {
  return {
    onMainQuotaFetched: (quota, checkedAt, fingerprint, fetchStartedAt) => {
      events.mainFetched.push({ quota, checkedAt, fingerprint, fetchStartedAt })
    },
    onApiError: (error) => {
      events.mainErrors.push(error)
    },
    onFallbackQuotaFetched: (accountId, quota, checkedAt, fetchStartedAt) => {
      events.fallbackFetched.push({ accountId, quota, checkedAt, fetchStartedAt })
    },
    onFallbackApiError: (accountId, error) => {
      events.fallbackErrors.push({ accountId, error })
    },
  }
}

/** A simulator, a ManualClock at T0 and an in-memory manager with exact backoff and no pacing. */
export async function harness(options: QuotaManagerOptions = {}, simDelayMs = 0): Promise<Harness> {
  const sim = await startUsageSimulator({ delayMs: simDelayMs })
  const clock = new ManualClock(T0)
  const events: RecordedEvents = { mainFetched: [], mainErrors: [], fallbackFetched: [], fallbackErrors: [] }
  const manager = new QuotaManager({
    statePath: null,
    usageUrl: sim.url,
    apiCallGapMs: 0,
    clock,
    backoff: { jitter: 0 },
    ...recordingCallbacks(events),
    ...options,
  })
  return {
    sim,
    clock,
    manager,
    events,
    async close() {
      await manager.close()
      await sim.close()
    },
  }
}

/** What a call threw, synchronously or as a rejection. */
export async function failureOf(call: () => unknown): Promise<unknown> {
  try {
    await call()
  } catch (error) {
    return error
  }
  throw new Error('expected the call to throw or reject')
}

export function asQuotaError(value: unknown): QuotaError {
  if (!(value instanceof Error) || typeof (value as Error & { code?: unknown }).code !== 'string') {
    throw new Error(`expected a QuotaError, got ${String(value)}`)
  }
  return value as QuotaError
}

/** Forces a value of the wrong type through a typed parameter (bad-input tests only). */
export function junk<T>(value: unknown): T {
  return value as T
}

export interface ServedRequest {
  token: string
  startedAt: number
  endedAt: number
}

export interface Answer {
  status?: number
  body?: unknown
  headers?: Record<string, string>
  delayMs?: number
}

/**
 * A usage endpoint that records how many requests it serves at once, and answers each request
 * by its token.
 */
export interface CountingServer {
  url: string
  served: ServedRequest[]
  readonly maxInFlight: number
  close(): Promise<void>
}

export async function startCountingServer(answer: (token: string) => Answer): Promise<CountingServer> {
  let inFlight = 0
  let maxInFlight = 0
  const served: ServedRequest[] = []
  const sockets = new Set<import('node:net').Socket>()
  const server = http.createServer((req, res) => {
    const auth = req.headers.authorization ?? ''
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : ''
    const startedAt = Date.now()
    inFlight += 1
    maxInFlight = Math.max(maxInFlight, inFlight)
    const reply = answer(token)
    const send = (): void => {
      const status = reply.status ?? 200
      const body =
        reply.body === undefined
          ? status === 200
            ? JSON.stringify(usageBody())
            : `{"type":"error","error":{"type":"rate_limit_error","message":"status ${status}"}}`
          : typeof reply.body === 'string'
            ? reply.body
            : JSON.stringify(reply.body)
      inFlight -= 1
      served.push({ token, startedAt, endedAt: Date.now() })
      res.writeHead(status, { 'content-type': 'application/json', ...reply.headers })
      res.end(body)
    }
    setTimeout(send, reply.delayMs ?? 0)
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/api/oauth/usage`,
    served,
    get maxInFlight() {
      return maxInFlight
    },
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** Requests the simulator received with this token. */
export function requestsWith(sim: UsageSimulator, token: string): number {
  const fp = sha16(token)
  return sim.log.filter((entry) => entry.tokenFingerprint === fp).length
}

/**
 * Per-test cleanup for a spec file: `setup()` makes a harness that is closed after the test, and
 * `onCleanup` registers anything else to undo then (last registered, first run).
 */
export function perTestHarness(): {
  setup: (options?: QuotaManagerOptions, simDelayMs?: number) => Promise<Harness>
  onCleanup: (cleanup: () => Promise<void>) => void
} {
  const cleanups: Array<() => Promise<void>> = []
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.()
  })
  return {
    setup: async (options = {}, simDelayMs = 0) => {
      const h = await harness(options, simDelayMs)
      cleanups.push(() => h.close())
      return h
    },
    onCleanup: (cleanup) => {
      cleanups.push(cleanup)
    },
  }
}
