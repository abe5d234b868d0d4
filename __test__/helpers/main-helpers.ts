// Shared helpers for the main-route, error and exit specs.
import { QuotaManager, ManualClock } from '../../index.js'
import type { QuotaError, QuotaErrorCode, QuotaManagerOptions } from '../../index.js'
import { startUsageSimulator } from '../../simulator/index.js'
import type { UsageSimulator } from '../../simulator/index.js'

/** Mon, 14 Sep 2026 02:10:00 GMT: a whole second, so HTTP dates round-trip exactly. */
export const T0 = Date.UTC(2026, 8, 14, 2, 10, 0)
export const SECOND = 1_000
export const MINUTE = 60 * SECOND

const QUOTA_CODES: readonly string[] = [
  'QUOTA_BACKED_OFF',
  'QUOTA_HTTP_ERROR',
  'QUOTA_AUTH_ERROR',
  'QUOTA_NETWORK_ERROR',
  'QUOTA_TRANSPORT_ERROR',
  'QUOTA_TIMEOUT',
  'QUOTA_BAD_RESPONSE',
  'QUOTA_CLOSED',
  'QUOTA_STATE_ERROR',
  'QUOTA_IDENTITY_CHANGED',
  'QUOTA_REENTRANT_CALL',
]

export function isQuotaError(value: unknown): value is QuotaError {
  if (!(value instanceof Error)) return false
  const code: unknown = (value as Error & { code?: unknown }).code
  return typeof code === 'string' && QUOTA_CODES.includes(code)
}

/** Awaits a promise that must reject, and returns the rejection as a QuotaError (or fails). */
export async function rejectionOf(promise: Promise<unknown>): Promise<QuotaError> {
  let settled: { ok: true; value: unknown } | { ok: false; error: unknown }
  try {
    settled = { ok: true, value: await promise }
  } catch (error) {
    settled = { ok: false, error }
  }
  if (settled.ok) {
    throw new Error(`expected a rejection, got ${JSON.stringify(settled.value)}`)
  }
  if (!isQuotaError(settled.error)) {
    throw new Error(`expected an Error with a QUOTA_* code, got ${String(settled.error)}`)
  }
  return settled.error
}

/** What a call threw, synchronously or as a rejection. */
export async function thrownBy(call: () => unknown): Promise<unknown> {
  try {
    await call()
  } catch (error) {
    return error
  }
  throw new Error('expected the call to throw or reject')
}

export function expectCode(error: QuotaError, code: QuotaErrorCode): void {
  if (error.code !== code) {
    throw new Error(`expected code ${code}, got ${error.code}: ${error.message}`)
  }
}

/** Tracks managers and simulators so afterEach can close them all. */
export class Harness {
  private managers: QuotaManager[] = []
  private simulators: UsageSimulator[] = []

  async simulator(options?: { delayMs?: number }): Promise<UsageSimulator> {
    const sim = await startUsageSimulator(options)
    this.simulators.push(sim)
    return sim
  }

  /** A memory-only manager on a frozen ManualClock at T0 with exact backoff and no pacing. */
  manager(sim: UsageSimulator | null, options: QuotaManagerOptions = {}): { manager: QuotaManager; clock: ManualClock } {
    const clock = options.clock ?? new ManualClock(T0)
    const manager = new QuotaManager({
      statePath: null,
      apiCallGapMs: 0,
      backoff: { jitter: 0 },
      ...(sim ? { usageUrl: sim.url } : {}),
      ...options,
      clock,
    })
    this.managers.push(manager)
    return { manager, clock }
  }

  track(manager: QuotaManager): QuotaManager {
    this.managers.push(manager)
    return manager
  }

  async cleanup(): Promise<void> {
    const managers = this.managers.splice(0)
    const simulators = this.simulators.splice(0)
    // Close simulators first so a stalled request cannot hold a manager's close() up.
    await Promise.all(simulators.map((s) => s.close()))
    await Promise.all(managers.map((m) => m.close().catch(() => undefined)))
  }
}

/** A TCP port nobody listens on (listen, note it, close). */
export async function freePort(): Promise<number> {
  const net = await import('node:net')
  return new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        reject(new Error('no port'))
        return
      }
      const port = address.port
      server.close(() => resolve(port))
    })
  })
}
