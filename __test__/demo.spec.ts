import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

import { startUsageSimulator } from '../simulator/index.js'

const root = path.resolve(__dirname, '..')
const demo = path.join(root, 'examples', 'demo.mjs')

interface Run {
  code: number | null
  stdout: string
  stderr: string
  ms: number
}

function runDemo(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [demo, ...args], { cwd: root, env })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr, ms: performance.now() - started }))
  })
}

const homes: string[] = []
afterAll(() => {
  for (const home of homes) fs.rmSync(home, { recursive: true, force: true })
})

/** An environment without any token and with a throwaway HOME, so ~/.config can be checked. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): { env: NodeJS.ProcessEnv; home: string } {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-demo-home-'))
  homes.push(home)
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home }
  delete env.ANTHROPIC_OAUTH_TOKEN
  delete env.ANTHROPIC_QUOTA_DEMO_REAL
  delete env.ANTHROPIC_QUOTA_DEMO_USAGE_URL
  delete env.OPENCODE_CONFIG_DIR
  delete env.XDG_CONFIG_HOME
  return { env: { ...env, ...extra }, home }
}

describe('npm start (examples/demo.mjs)', () => {
  it('runs offline against the simulator, exits 0 in under 30 s and tells the story', async () => {
    const { env, home } = cleanEnv()
    const run = await runDemo(['--clean'], env)
    expect(run.stderr).toBe('')
    expect(run.code).toBe(0)
    expect(run.ms).toBeLessThan(30_000)
    const out = run.stdout

    // (1) single flight across processes: one request for every caller
    expect(out).toMatch(/the simulator received 1 request; 1000 of 1000 callers served/)
    // (2) shared backoff and the ladder in simulated time
    expect(out).toMatch(/→ 1 request\. The state file now holds the backoff: attempt 1/)
    expect(out).toMatch(/A process started afterwards: 20 callers served from cache, 0 requests/)
    for (const rung of ['1m 00s', '2m 00s', '4m 00s', '8m 00s', '15m 00s', '50m 00s']) expect(out).toContain(rung)
    expect(out).toMatch(/Retry-After: 3000 \(longer\)\s+7\s+50m 00s/)
    expect(out).toMatch(/the callers inside the\s+windows sent 0/)
    // (3) header harvest without a request
    expect(out).toMatch(/source "headers", the poll-only Fable window kept; 0 requests sent/)
    // (4) routing and the fail-closed answer
    expect(out).toMatch(/route to fallback bob/)
    expect(out).toMatch(/HTTP 429 {2}retry-after: 1[12]\d/)
    expect(out).toContain('reason: "unknown"')
    // (5) the state file in a temp dir, and stats()
    const statePath = /state file {6}(\S+)/.exec(out)?.[1]
    expect(statePath).toBeDefined()
    expect(path.resolve(statePath!).startsWith(path.resolve(os.tmpdir()))).toBe(true)
    expect(out).toContain('apiCalls')
    expect(out).toContain('servedDuringBackoff')
    expect(out).not.toContain('!! a token was found')
    // --clean removed it; nothing was written under HOME
    expect(fs.existsSync(path.dirname(statePath!))).toBe(false)
    expect(fs.existsSync(path.join(home, '.config'))).toBe(false)
  })

  it('--real without ANTHROPIC_OAUTH_TOKEN says so and exits 2, sending nothing', async () => {
    const { env } = cleanEnv()
    for (const [args, extra] of [
      [['--real'], {}],
      [[], { ANTHROPIC_QUOTA_DEMO_REAL: '1' }],
    ] as const) {
      const run = await runDemo([...args], { ...env, ...extra })
      expect(run.code).toBe(2)
      expect(run.stderr).toContain('ANTHROPIC_OAUTH_TOKEN is not set, so nothing was sent')
    }
  })

  it('--real with a token makes one request for all callers (endpoint overridden to a local simulator)', async () => {
    const sim = await startUsageSimulator({ delayMs: 100 })
    try {
      const { env } = cleanEnv({ ANTHROPIC_OAUTH_TOKEN: 'sk-ant-oat-demo-test', ANTHROPIC_QUOTA_DEMO_USAGE_URL: sim.url })
      const run = await runDemo(['--real', '--clean'], env)
      expect(run.code).toBe(0)
      expect(sim.requests).toBe(1)
      expect(run.stdout).toContain('→ 1 request to the endpoint for 150 callers')
      expect(run.stdout).not.toContain('sk-ant-oat-demo-test')
    } finally {
      await sim.close()
    }
  })
})
