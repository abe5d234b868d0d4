// Issue 11, the binding's part and the runtime behaviour: close() after the running calls,
// a stopped lock holder, identity switches against a 429, Headers and Map objects, signals,
// and the host's process.env for the transport.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { QuotaManager, ManualClock, evaluateQuota, parseQuotaHeaders } from '../index.js'
import type { QuotaApiError } from '../index.js'
import { startUsageSimulator } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'

const FIXTURE = path.join(__dirname, 'fixtures', 'hardening-child.cjs')
const T0 = Date.UTC(2026, 8, 14, 2, 10, 0)
const HEADERS = { 'anthropic-ratelimit-unified-5h-utilization': '0.42', 'anthropic-ratelimit-unified-7d-utilization': '0.1' }

let sim: UsageSimulator
const children: ChildProcess[] = []
const managers: QuotaManager[] = []
const dirs: string[] = []

beforeAll(async () => {
  sim = await startUsageSimulator()
})
afterAll(async () => {
  await sim.close()
})
afterEach(async () => {
  sim.reset()
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-(child.pid ?? 0), 'SIGKILL')
      } catch {
        child.kill('SIGKILL')
      }
    }
  }
  await Promise.all(managers.splice(0).map((m) => m.close().catch(() => undefined)))
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
})

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quota-hardening-'))
  dirs.push(dir)
  return dir
}

function track(manager: QuotaManager): QuotaManager {
  managers.push(manager)
  return manager
}

interface Run {
  exited: boolean
  code: number | null
  signal: NodeJS.Signals | null
  lines: Array<Record<string, unknown>>
  stderr: string
}

/** Runs the fixture; resolves at its exit, or at the deadline with `exited: false`. */
function runChild(args: string[], deadlineMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FIXTURE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    children.push(child)
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const lines = (): Array<Record<string, unknown>> =>
      stdout
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as Record<string, unknown>)
    const timer = setTimeout(() => {
      resolve({ exited: false, code: null, signal: null, lines: lines(), stderr })
      child.kill('SIGKILL')
    }, deadlineMs)
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ exited: true, code, signal, lines: lines(), stderr })
    })
  })
}

/** Holds `<statePath>.lock` in a stopped process (as Ctrl-Z during a write would). */
async function stoppedLockHolder(statePath: string): Promise<ChildProcess> {
  const holder = spawn('flock', [`${statePath}.lock`, '-c', 'echo locked; exec sleep 600'], {
    stdio: ['ignore', 'pipe', 'ignore'],
    detached: true,
  })
  children.push(holder)
  await new Promise<void>((resolve, reject) => {
    holder.once('error', reject)
    holder.stdout?.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('locked')) resolve()
    })
  })
  process.kill(-(holder.pid ?? 0), 'SIGSTOP')
  return holder
}

describe('close() and the running calls', () => {
  it('`await close()` resolves after every running call has settled (400 rounds)', async () => {
    sim.reply({ status: 200, delayMs: 5 })
    let unsettledAtClose = 0
    for (let round = 0; round < 400; round++) {
      const manager = new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0 })
      let settled = false
      const before = sim.requests
      const call = manager.refreshMain('alice', `tok-${round}`).then(
        () => (settled = true),
        () => (settled = true),
      )
      while (sim.requests === before) await new Promise((r) => setTimeout(r, 1))
      await manager.close()
      if (!settled) unsettledAtClose++
      await call
    }
    expect(unsettledAtClose).toBe(0)
  }, 60_000)
})

describe('a stopped process holding the state-file lock', () => {
  // The lock holder is stopped with SIGSTOP, which Windows does not have.
  for (const withClose of [false, true]) {
    it.skipIf(process.platform === 'win32')(
      `refreshMain settles and the process exits${withClose ? ' after close()' : ' by itself'}`,
      async () => {
        sim.reply({ status: 200 })
        const statePath = path.join(tempDir(), 'state.json')
        await stoppedLockHolder(statePath)
        const run = await runChild(['locked', statePath, sim.url, withClose ? 'close' : ''], 15_000)
        expect(
          run.lines.some((l) => l.settled === true),
          JSON.stringify(run),
        ).toBe(true)
        expect(run.exited, JSON.stringify(run)).toBe(true)
        expect(run.code, run.stderr).toBe(0)
        if (withClose) expect(run.lines.some((l) => l.closed === true)).toBe(true)
        expect(sim.requests).toBe(1)
      },
      20_000,
    )
  }
})

describe('an identity switch while a request runs', () => {
  it('refreshMain(token) then pushMainFromHeaders(token, h) against a 429: backoff armed, onApiError once, no hammering', async () => {
    sim.reply({ status: 429, delayMs: 80 })
    const errors: QuotaApiError[] = []
    const clock = new ManualClock(T0)
    const manager = track(
      new QuotaManager({
        statePath: null,
        usageUrl: sim.url,
        apiCallGapMs: 0,
        clock,
        backoff: { jitter: 0 },
        onApiError: (e) => void errors.push(e),
      }),
    )
    const token = 'sk-ant-oat01-switching-token'
    for (let i = 0; i < 10; i++) {
      const polled = manager.refreshMain(token).catch((e: Error & { code?: string }) => e.code)
      manager.pushMainFromHeaders(token, HEADERS)
      await polled
      clock.advance(1_000)
    }
    expect(sim.requests).toBe(1)
    expect(errors).toHaveLength(1)
    expect(errors[0].status).toBe(429)
    await manager.refreshMain(token).catch(() => undefined)
    expect(manager.isBackedOff()).toBe(true)
    expect(sim.requests).toBe(1)
  })
})

describe('a token that cannot be a header', () => {
  it('a token with CR/LF rejects with a TypeError (ERR_INVALID_ARG_VALUE), sends nothing and arms no backoff', async () => {
    const errors: unknown[] = []
    const manager = track(new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0, onApiError: (e) => void errors.push(e) }))
    const error = await manager.refreshMain('alice', 'tok\r\nX-Evil: 1').catch((e: unknown) => e)
    expect(error).toBeInstanceOf(TypeError)
    expect((error as { code?: string }).code).toBe('ERR_INVALID_ARG_VALUE')
    expect(sim.requests).toBe(0)
    expect(manager.isBackedOff()).toBe(false)
    expect(errors).toEqual([])
  })
})

describe('headers as Headers and Map objects', () => {
  it('pushMainFromHeaders and pushFallbackFromHeaders read a Headers and a Map', () => {
    const manager = track(new QuotaManager({ statePath: null, usageUrl: sim.url }))
    // index.d.ts still names only plain objects (the types are another change's); cast.
    const fromHeaders = manager.pushMainFromHeaders('alice', new Headers(HEADERS) as unknown as Record<string, string>)
    expect(fromHeaders?.quota.five_hour?.usedPercent).toBe(42)
    const fromMap = manager.pushFallbackFromHeaders('fb-1', new Map(Object.entries(HEADERS)) as unknown as Record<string, string>)
    expect(fromMap?.quota.five_hour?.usedPercent).toBe(42)
    expect(parseQuotaHeaders(new Headers(HEADERS) as unknown as Record<string, string>)?.five_hour?.usedPercent).toBe(42)
  })

  it('other non-objects are TypeErrors, and so is a policy that is not an object', () => {
    const manager = track(new QuotaManager({ statePath: null, usageUrl: sim.url }))
    for (const bad of [42, 'x', true]) {
      expect(() => manager.pushMainFromHeaders('alice', bad as unknown as Record<string, string>)).toThrow(TypeError)
    }
    expect(() => evaluateQuota(null, 42 as never)).toThrow(TypeError)
    expect(() => evaluateQuota(null, 'strict' as never)).toThrow(/policy/)
    // A plain object is a policy: unknown quota fails closed by default (docs/routing.md#policy), open on request.
    expect(evaluateQuota(null, {}).passes).toBe(false)
    expect(evaluateQuota(null, { failClosedOnUnknownQuota: false }).passes).toBe(true)
  })
})

describe('signals', () => {
  // POSIX signals sent to a child process: Windows has no SIGTERM to send.
  const signalTest = it.skipIf(process.platform === 'win32')
  signalTest('a header push waiting to be written reaches the file when SIGTERM ends a host with no handler', async () => {
    const statePath = path.join(tempDir(), 'state.json')
    const run = await runChild(['signal', statePath, sim.url], 10_000)
    expect(run.exited).toBe(true)
    expect(run.signal).toBe('SIGTERM') // the default action still ends the process
    expect(run.lines.some((l) => l.timerRan)).toBe(false)
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
    expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
  })

  signalTest('a host with its own SIGTERM handler keeps control, and the push is still written', async () => {
    const statePath = path.join(tempDir(), 'state.json')
    const run = await runChild(['signal', statePath, sim.url, 'handler'], 10_000)
    expect(run.exited).toBe(true)
    expect(run.signal).toBeNull()
    expect(run.code, run.stderr).toBe(0)
    expect(run.lines.some((l) => l.handled)).toBe(true)
    expect(run.lines.some((l) => l.stillRunning)).toBe(true)
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
    expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
  })

  signalTest("a host's once listener, added before the manager, decides: its async cleanup runs and it exits as it chooses", async () => {
    const statePath = path.join(tempDir(), 'state.json')
    const run = await runChild(['signal', statePath, sim.url, 'once-before'], 10_000)
    expect(run.exited).toBe(true)
    expect(run.signal).toBeNull()
    expect(run.code, run.stderr).toBe(0)
    expect(run.lines.some((l) => l.cleanedUp)).toBe(true)
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
    expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
  })

  signalTest('a SIGTERM caught as the event loop ends still ends the process by the signal', async () => {
    const statePath = path.join(tempDir(), 'state.json')
    const run = await runChild(['signal', statePath, sim.url, 'at-end'], 10_000)
    expect(run.exited).toBe(true)
    expect(run.code).toBeNull()
    expect(run.signal).toBe('SIGTERM')
    const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
    expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
  })
})

describe("the transport reads the host's process.env", () => {
  it('an unreadable SSL_CERT_FILE set in process.env is reported once, and the managers still build', async () => {
    const dir = tempDir()
    const run = await runChild(['env', path.join(dir, 'state.json'), sim.url], 10_000)
    expect(run.code, run.stderr).toBe(0)
    expect(run.lines.some((l) => l.built === 2)).toBe(true)
    expect(run.stderr.split('no-such-ca.pem').length - 1).toBe(1)
  })

  it('a plain http usageUrl to another host, or one with credentials, is a TypeError naming usageUrl', () => {
    expect(() => new QuotaManager({ statePath: null, usageUrl: 'http://example.com/usage' })).toThrow(TypeError)
    expect(() => new QuotaManager({ statePath: null, usageUrl: 'http://example.com/usage' })).toThrow(/usageUrl/)
    expect(() => new QuotaManager({ statePath: null, usageUrl: 'https://user:pass@example.com/usage' })).toThrow(/usageUrl/)
  })
})
