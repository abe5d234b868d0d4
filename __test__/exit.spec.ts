// A host process must exit on its own: nothing the manager keeps (weak callbacks, the runtime,
// pooled connections) may hold Node's event loop open. vitest kills its own workers, so this is
// only observable from a child `node` process.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { spawn, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import type { ChildProcess } from 'node:child_process'
import * as path from 'node:path'
import { startUsageSimulator } from '../simulator/index.js'
import type { UsageSimulator } from '../simulator/index.js'

const FIXTURE = path.join(__dirname, 'fixtures', 'main-exit-child.cjs')
const EXIT_DEADLINE_MS = 2_000

let sim: UsageSimulator
const children: ChildProcess[] = []

beforeAll(async () => {
  sim = await startUsageSimulator()
})
afterAll(async () => {
  await sim.close()
})
afterEach(() => {
  sim.reset()
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
})

interface ChildReport {
  outcomes: string[]
  events: string[]
  callbackErrors: number
}

interface ChildResult {
  exited: boolean
  code: number | null
  signal: NodeJS.Signals | null
  elapsedMs: number
  stdout: string
  stderr: string
}

/** Runs the fixture; resolves when it exits or when the deadline passes (then `exited` is false). */
function runChild(mode: string): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const child = spawn(process.execPath, [FIXTURE, sim.url, mode], { stdio: ['ignore', 'pipe', 'pipe'] })
    children.push(child)
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
    })
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString()
    })
    const timer = setTimeout(() => {
      resolve({ exited: false, code: null, signal: null, elapsedMs: Date.now() - started, stdout, stderr })
      child.kill('SIGKILL')
    }, EXIT_DEADLINE_MS)
    child.once('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ exited: true, code, signal, elapsedMs: Date.now() - started, stdout, stderr })
    })
  })
}

function report(result: ChildResult): ChildReport {
  const line = result.stdout.trim().split('\n').pop() ?? ''
  return JSON.parse(line) as ChildReport
}

function expectCleanExit(result: ChildResult): void {
  if (!result.exited) {
    throw new Error(`child did not exit within ${EXIT_DEADLINE_MS} ms; stdout=${result.stdout} stderr=${result.stderr}`)
  }
  expect(result.signal).toBeNull()
  expect(result.code, result.stderr).toBe(0)
}

describe('a host process exits by itself', () => {
  it('after a refresh with callbacks, a ManualClock and close()', async () => {
    const result = await runChild('close')
    expectCleanExit(result)
    const { outcomes, events } = report(result)
    expect(outcomes).toEqual(['ok:9'])
    expect(events).toEqual([`fetched:9:${Date.UTC(2026, 8, 14, 2, 10, 0)}:16`])
    expect(sim.requests).toBe(1)
  })

  it('without ever calling close()', async () => {
    const result = await runChild('no-close')
    expectCleanExit(result)
    const { outcomes, events } = report(result)
    expect(outcomes).toEqual(['ok:9'])
    expect(events).toHaveLength(1)
    expect(sim.requests).toBe(1)
  })

  it('without close() after a 429 armed backoff and fired onApiError', async () => {
    sim.reply({ status: 429, headers: { 'retry-after': '3600' } })
    const result = await runChild('error-no-close')
    expectCleanExit(result)
    const { outcomes, events } = report(result)
    expect(outcomes).toEqual(['rejected:QUOTA_HTTP_ERROR'])
    expect(events).toEqual(['apiError:429'])
  })

  it('without close() while backed off, after a background refresh that had nothing to do', async () => {
    sim.reply({ status: 503 })
    const result = await runChild('backed-off-no-close')
    expectCleanExit(result)
    const { outcomes } = report(result)
    expect(outcomes).toEqual(['rejected:QUOTA_HTTP_ERROR', 'rejected:QUOTA_BACKED_OFF'])
    expect(sim.requests).toBe(1)
  })

  it('an async onMainQuotaFetched that rejects is counted, not an unhandled rejection that kills the host', async () => {
    const result = await runChild('async-callback-rejects')
    expectCleanExit(result)
    expect(result.stderr).not.toMatch(/UnhandledPromiseRejection|unhandled/i)
    const { outcomes, events, callbackErrors } = report(result)
    expect(outcomes).toEqual(['ok:9'])
    expect(events).toEqual(['async-callback-ran'])
    expect(callbackErrors).toBe(1)
  })
})

describe('state written at exit', () => {
  for (const ending of ['process.exit(0)', '/* falls off the end */']) {
    it(`header pushes still waiting to be written reach the state file when the host exits: ${ending}`, () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-exit-'))
      try {
        const statePath = path.join(dir, 'state.json')
        const script = `
          const { QuotaManager } = require(${JSON.stringify(path.join(__dirname, '..'))})
          const manager = new QuotaManager({ statePath: ${JSON.stringify(statePath)} })
          manager.pushMainFromHeaders('alice', { 'anthropic-ratelimit-unified-5h-utilization': '0.42' })
          ${ending}
        `
        const child = spawnSync(process.execPath, ['-e', script], { timeout: EXIT_DEADLINE_MS * 5 })
        expect(child.status).toBe(0)
        const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
        expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
      } finally {
        fs.rmSync(dir, { recursive: true, force: true })
      }
    })
  }
})
