// The cross-process route lock, with two managers in this process sharing one state file. An OS
// lock (flock) belongs to the open file description, so two managers in one process contend for
// a route exactly as two processes do, without the cost of spawning children.
//
// Covers what no other spec pins down: `lockTimeoutMs` is enforced, a lock waiter adopts the
// winner's result only when it is still fresh by its own clock, and callbacks run after the
// route lock is released.
import { afterEach, describe, expect, it } from 'vitest'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { ManualClock } from '../index.js'
import { Harness, MINUTE, T0, expectCode, rejectionOf } from './helpers/main-helpers.js'

const h = new Harness()
const dirs: string[] = []
afterEach(async () => {
  await h.cleanup()
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
})

const TOKEN = 'sk-ant-oat01-route-lock-token'

function statePath(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-lock-'))
  dirs.push(dir)
  return path.join(dir, 'state.json')
}

async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

describe('lockTimeoutMs', () => {
  it('a waiter gives up after lockTimeoutMs with QUOTA_TIMEOUT, sends nothing, and counts it', async () => {
    const sim = await h.simulator()
    sim.replyOnce({ stall: true }) // the holder's request never gets an answer
    const file = statePath()
    const { manager: holder } = h.manager(sim, { statePath: file, requestTimeoutMs: 60_000 })
    const { manager: waiter } = h.manager(sim, { statePath: file, lockTimeoutMs: 300 })
    const held = holder.refreshMain('alice', TOKEN).catch((error: unknown) => error)
    await until(() => sim.requests === 1, "the holder's request")

    // Without the timeout the waiter would wait for the holder (60 s here): the test's own
    // timeout would end it instead of a QUOTA_TIMEOUT.
    const error = await rejectionOf(waiter.refreshMain('alice', TOKEN))
    expectCode(error, 'QUOTA_TIMEOUT')
    expect(error.message).toContain('300 ms')
    expect(waiter.stats()).toMatchObject({ lockWaits: 1, lockTimeouts: 1, apiCalls: 0 })
    expect(sim.requests).toBe(1)
    // A timed-out wait is not a failure of the endpoint: no backoff is armed.
    expect(waiter.isBackedOff()).toBe(false)
    expect(waiter.getLastApiError()).toBeUndefined()
    await sim.close() // ends the holder's request
    await held
  })

  it('the wait is not cut short: a holder that finishes within lockTimeoutMs serves the waiter', async () => {
    const sim = await h.simulator({ delayMs: 400 })
    const file = statePath()
    const { manager: holder } = h.manager(sim, { statePath: file })
    const { manager: waiter } = h.manager(sim, { statePath: file, lockTimeoutMs: 10_000 })
    const held = holder.refreshMain('alice', TOKEN)
    await until(() => sim.requests === 1, "the holder's request")
    const served = await waiter.refreshMainWithMetadata('alice', TOKEN)
    const quota = await held
    expect(served).toEqual({ quota, fetched: false })
    expect(waiter.stats()).toMatchObject({ lockWaits: 1, lockTimeouts: 0, apiCalls: 0, joinedOtherProcess: 1 })
    expect(sim.requests).toBe(1)
  })
})

describe('a lock waiter and the winner’s result', () => {
  /**
   * The holder polls on a clock at T0; the waiter, on its own clock `waiterAhead` ms later,
   * refreshes while the holder's request runs (so it waits on the route lock), then reads what
   * the holder wrote.
   */
  async function waitBehindHolder(waiterAhead: number) {
    const sim = await h.simulator({ delayMs: 300 })
    const file = statePath()
    const { manager: holder } = h.manager(sim, { statePath: file, clock: new ManualClock(T0) })
    const { manager: waiter } = h.manager(sim, { statePath: file, clock: new ManualClock(T0 + waiterAhead) })
    const held = holder.refreshMain('alice', TOKEN)
    await until(() => sim.requests === 1, "the holder's request")
    const result = await waiter.refreshMainWithMetadata('alice', TOKEN)
    await held
    return { sim, waiter, result }
  }

  it('adopts a result that is fresh by its own clock (1 min old, interval 5 min)', async () => {
    const { sim, waiter, result } = await waitBehindHolder(MINUTE)
    expect(result.fetched).toBe(false)
    expect(result.quota.checkedAt).toBe(T0)
    expect(sim.requests).toBe(1)
    expect(waiter.stats()).toMatchObject({ lockWaits: 1, joinedOtherProcess: 1, apiCalls: 0 })
  })

  it('does not adopt a result that is already stale by its own clock (10 min old): it polls itself', async () => {
    const { sim, waiter, result } = await waitBehindHolder(10 * MINUTE)
    expect(result.fetched).toBe(true)
    expect(result.quota.checkedAt).toBe(T0 + 10 * MINUTE)
    expect(sim.requests).toBe(2)
    expect(waiter.stats()).toMatchObject({ lockWaits: 1, joinedOtherProcess: 0, apiCalls: 1 })
    expect(waiter.getMain('alice')?.checkedAt).toBe(T0 + 10 * MINUTE)
  })
})

describe('callbacks and the route lock', () => {
  it('onMainQuotaFetched runs after the route lock is released: a refresh of the same route from it does not wait', async () => {
    const sim = await h.simulator()
    const file = statePath()
    const clock = new ManualClock(T0)
    // Short enough that a callback run under the lock makes the inner refresh time out (the
    // outer refresh waits for its callback for up to 5 s, so that would not deadlock for good).
    const { manager: other } = h.manager(sim, { statePath: file, clock, lockTimeoutMs: 1_000 })
    const inner: Array<{ ok: boolean; code?: string; fetched?: boolean }> = []
    // awaitCallbacks: the outer refresh waits for the callback, so a callback run under the lock
    // would show here (callbacks are not awaited by default: docs/compat.md#callbacks).
    const { manager } = h.manager(sim, {
      statePath: file,
      clock,
      awaitCallbacks: true,
      onMainQuotaFetched: async () => {
        try {
          const result = await other.refreshMainWithMetadata('alice', TOKEN)
          inner.push({ ok: true, fetched: result.fetched })
        } catch (error) {
          inner.push({ ok: false, code: (error as { code?: string }).code })
        }
      },
    })
    await manager.refreshMain('alice', TOKEN)
    // The callback (and so the inner refresh) finished before the outer refresh resolved.
    expect(inner).toEqual([{ ok: true, fetched: false }])
    expect(other.stats()).toMatchObject({ lockWaits: 0, lockTimeouts: 0, apiCalls: 0, joinedOtherProcess: 1 })
    expect(manager.stats().callbackErrors).toBe(0)
    expect(sim.requests).toBe(1)
  })

  it('onApiError runs after the route lock is released too', async () => {
    const sim = await h.simulator()
    sim.reply({ status: 429 })
    const file = statePath()
    const clock = new ManualClock(T0)
    const { manager: other } = h.manager(sim, { statePath: file, clock, lockTimeoutMs: 1_000 })
    const inner: Array<{ ok: boolean; code?: string }> = []
    const { manager } = h.manager(sim, {
      statePath: file,
      clock,
      awaitCallbacks: true,
      onApiError: async () => {
        try {
          await other.refreshMain('alice', TOKEN)
          inner.push({ ok: true })
        } catch (error) {
          inner.push({ ok: false, code: (error as { code?: string }).code })
        }
      },
    })
    expectCode(await rejectionOf(manager.refreshMain('alice', TOKEN)), 'QUOTA_HTTP_ERROR')
    // The other manager took the free lock at once and found the shared backoff.
    expect(inner).toEqual([{ ok: false, code: 'QUOTA_BACKED_OFF' }])
    expect(other.stats()).toMatchObject({ lockWaits: 0, lockTimeouts: 0, apiCalls: 0 })
    expect(sim.requests).toBe(1)
  })
})
