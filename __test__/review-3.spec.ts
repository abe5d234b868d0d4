// Issue 19, the second adversarial review: a token in a host transport's error or snapshot, an
// enumerable Object.prototype property, a host calling the manager back from inside its own poll,
// and `status --state` on a FIFO or an oversized file. (Signals: hardening.spec.ts; account
// lists: account-lists.spec.ts; Redis: redis.spec.ts.) Runs under Node and Bun.
import { execFile, execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

import { afterEach, describe, expect, it } from 'vitest'

import { QuotaManager } from '../index.js'
import type { QuotaApiError, QuotaManagerOptions, QuotaSnapshot } from '../index.js'
import { rejectionOf } from './helpers/main-helpers.js'

const T0 = Date.UTC(2026, 8, 14, 2, 10, 0)
const TOKEN = 'sk-ant-oat01-review3-' + 'x7Q'.repeat(12)

const dirs: string[] = []
const managers: QuotaManager[] = []

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'aqm-review3-'))
  dirs.push(dir)
  return dir
}

function make(options: QuotaManagerOptions): QuotaManager {
  const manager = new QuotaManager({ apiCallGapMs: 0, now: () => T0, backoff: { jitter: 0 }, ...options })
  managers.push(manager)
  return manager
}

afterEach(async () => {
  await Promise.allSettled(managers.splice(0).map((m) => m.close()))
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

const snapshot = (percent: number, extra: Partial<QuotaSnapshot> = {}): QuotaSnapshot => ({
  five_hour: { usedPercent: percent, remainingPercent: 100 - percent, checkedAt: T0 },
  ...extra,
})

describe('a token in what a host transport hands back never reaches the file, onApiError or the rejection', () => {
  const transports: Array<[string, (reject: Error) => Partial<QuotaManagerOptions>]> = [
    ['fetchQuotaSnapshot', (error) => ({ fetchQuotaSnapshot: async () => Promise.reject(error) })],
    ['fetchImpl', (error) => ({ fetchImpl: async () => Promise.reject(error) })],
  ]
  for (const [name, transport] of transports) {
    it(`${name} rejecting with the token in its message`, async () => {
      const statePath = join(tempDir(), 'state.json')
      const errors: QuotaApiError[] = []
      const rejection = Object.assign(new Error(`upstream 429 for Bearer ${TOKEN} (headers: {"authorization":"Bearer ${TOKEN}"})`), {
        status: 429,
      })
      const manager = make({ statePath, onApiError: (error) => void errors.push(error), ...transport(rejection) })
      const error = await rejectionOf(manager.refreshMain('alice', TOKEN))
      await manager.close()
      expect(error.message).not.toContain(TOKEN)
      expect(error.message).toContain('Bearer [redacted]')
      expect(errors).toHaveLength(1)
      expect(errors[0].message).not.toContain(TOKEN)
      expect(manager.getLastApiError()?.message).not.toContain(TOKEN)
      const file = readFileSync(statePath, 'utf8')
      expect(file).not.toContain(TOKEN)
      expect(file).not.toContain(TOKEN.slice(0, 24))
      expect(file).toContain('[redacted]')
    })
  }

  it("fetchQuotaSnapshot resolving with the token in a snapshot's strings", async () => {
    const statePath = join(tempDir(), 'state.json')
    const fetched: QuotaSnapshot[] = []
    const manager = make({
      statePath,
      onMainQuotaFetched: (quota) => void fetched.push(quota),
      fetchQuotaSnapshot: async () =>
        snapshot(12, {
          scoped: [
            {
              id: 'claude-weekly-scoped-fable',
              title: `Fable ${TOKEN}`,
              modelName: TOKEN,
              usedPercent: 3,
              remainingPercent: 97,
              checkedAt: T0,
            },
          ],
        }),
    })
    const quota = await manager.refreshMain('alice', TOKEN)
    await manager.close()
    expect(JSON.stringify(quota)).not.toContain(TOKEN)
    expect(quota.scoped?.[0].title).toBe('Fable [redacted]')
    expect(quota.scoped?.[0].modelName).toBe('[redacted]')
    expect(JSON.stringify(fetched)).not.toContain(TOKEN)
    expect(readFileSync(statePath, 'utf8')).not.toContain(TOKEN)
  })
})

describe('an enumerable Object.prototype property', () => {
  it('is not an option given: construction succeeds, and an own unknown key is still refused', () => {
    const proto = Object.prototype as Record<string, unknown>
    proto.extend = () => undefined
    try {
      expect(() => make({ statePath: null })).not.toThrow()
      expect(() => make({ statePath: null, backoff: { jitter: 0 } })).not.toThrow()
      expect(() => new QuotaManager({ statePath: null, extend: 1 } as QuotaManagerOptions)).toThrow(/options\.extend is not a known option/)
    } finally {
      delete proto.extend
    }
  })
})

describe('a host calling the manager back from inside its fetchQuotaSnapshot', () => {
  it('refreshMain for the route being polled is refused at once, and no backoff is armed', async () => {
    let polls = 0
    let inner: unknown
    let reenter = true
    const errors: QuotaApiError[] = []
    const manager: QuotaManager = make({
      statePath: null,
      requestTimeoutMs: 60_000,
      onApiError: (error) => void errors.push(error),
      fetchQuotaSnapshot: async () => {
        polls++
        if (reenter) {
          inner = await rejectionOf(manager.refreshMain('alice', TOKEN))
          throw inner
        }
        return snapshot(30)
      },
    })
    const outer = await rejectionOf(manager.refreshMain('alice', TOKEN))
    expect(inner).toMatchObject({ code: 'QUOTA_REENTRANT_CALL' })
    expect((inner as Error).message).toContain('refreshMain() was called from inside fetchQuotaSnapshot')
    expect(outer.code).toBe('QUOTA_REENTRANT_CALL')
    expect(manager.isBackedOff()).toBe(false)
    expect(manager.getLastApiError()).toBeUndefined()
    expect(errors).toEqual([])
    // Outside a poll, the same call polls as ever.
    reenter = false
    expect((await manager.refreshMain('alice', TOKEN)).five_hour?.usedPercent).toBe(30)
    expect(polls).toBe(2)
  })

  it('close() is refused at once too; another route is not refused', async () => {
    let closeRefusal: unknown
    let fallback: QuotaSnapshot | undefined
    const manager: QuotaManager = make({
      statePath: null,
      requestTimeoutMs: 60_000,
      fetchQuotaSnapshot: async (request) => {
        if (request.kind === 'main') {
          closeRefusal = await rejectionOf(manager.close())
          fallback = await manager.refreshFallback('fb-1', 'fb-token')
        }
        return snapshot(request.kind === 'main' ? 40 : 20)
      },
    })
    expect((await manager.refreshMain('alice', TOKEN)).five_hour?.usedPercent).toBe(40)
    expect(closeRefusal).toMatchObject({ code: 'QUOTA_REENTRANT_CALL' })
    expect(fallback?.five_hour?.usedPercent).toBe(20)
    // Not closed by the refused call.
    expect(manager.getMain('alice')?.quota.five_hour?.usedPercent).toBe(40)
  })

  it('refreshFallback for the fallback being polled is refused at once', async () => {
    let inner: unknown
    const manager: QuotaManager = make({
      statePath: null,
      requestTimeoutMs: 60_000,
      fetchQuotaSnapshot: async () => {
        inner = await rejectionOf(manager.refreshFallbackWithMetadata('fb-1', 'fb-token'))
        return snapshot(15)
      },
    })
    expect((await manager.refreshFallback('fb-1', 'fb-token')).five_hour?.usedPercent).toBe(15)
    expect(inner).toMatchObject({ code: 'QUOTA_REENTRANT_CALL' })
    expect(manager.isFallbackBackedOff('fb-1')).toBe(false)
  })
})

describe('status --state reads only a regular file, of bounded size', () => {
  const bin = resolve(__dirname, '..', 'bin', 'anthropic-quota-manager.js')
  const cli = (...args: string[]): Promise<{ code: number; stderr: string }> =>
    new Promise((done) => {
      execFile(process.execPath, [bin, ...args], { timeout: 20_000 }, (error, _stdout, stderr) => {
        done({ code: error ? Number(error.code ?? 1) : 0, stderr })
      })
    })

  it.skipIf(process.platform === 'win32')('a FIFO exits 1 at once instead of waiting for a writer', async () => {
    const fifo = join(tempDir(), 'state.json')
    execFileSync('mkfifo', [fifo])
    const run = await cli('status', '--state', fifo)
    expect(run.code).toBe(1)
    expect(run.stderr).toContain('not a regular file')
  })

  it('a file over 16 MiB exits 1 without reading it', async () => {
    const big = join(tempDir(), 'state.json')
    writeFileSync(big, Buffer.alloc(16 * 1024 * 1024 + 1, 0x20))
    const run = await cli('status', '--state', big)
    expect(run.code).toBe(1)
    expect(run.stderr).toContain('more than the 16777216')
  })
})
