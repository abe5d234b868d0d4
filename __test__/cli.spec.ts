import { execFile } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { QuotaManager, parseRouteKey } from '../index.js'
import { startUsageSimulator, type UsageSimulator } from '../simulator/index.js'

const root = path.resolve(__dirname, '..')
const bin = path.join(root, 'bin', 'anthropic-quota-manager.js')

interface Run {
  code: number
  stdout: string
  stderr: string
}

/** Runs the CLI asynchronously (the simulator lives in this process and must keep answering). */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { cwd: root, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

const oneLine = (text: string) => text.trimEnd().split('\n').length === 1

let dir: string
let statePath: string
let sim: UsageSimulator

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-cli-'))
  statePath = path.join(dir, 'anthropic-quota-state.json')
  sim = await startUsageSimulator()
  // A state file written by a real QuotaManager: a fresh main route, a fallback, and a
  // backed-off main route with a last error.
  const manager = new QuotaManager({ statePath, usageUrl: sim.url })
  await manager.refreshMain('me@example.com', 'token-main')
  await manager.refreshFallback('alice', 'token-alice')
  await manager.close()
  const failing = new QuotaManager({ statePath, usageUrl: sim.url })
  sim.replyOnce({ status: 429, headers: { 'retry-after': '600' } })
  await expect(failing.refreshMain('team@example.com', 'token-team')).rejects.toMatchObject({ code: 'QUOTA_HTTP_ERROR' })
  await failing.close()
})

afterAll(async () => {
  await sim.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

describe('parseRouteKey (the route keys the CLI reads)', () => {
  it('reads main and fallback keys as the manager writes them, and nothing else', () => {
    expect(parseRouteKey('main:alice')).toEqual({ kind: 'main', id: 'alice' })
    expect(parseRouteKey('main:token:0123456789abcdef')).toEqual({ kind: 'main', id: 'token:0123456789abcdef' })
    expect(parseRouteKey('fallback:fb:1')).toEqual({ kind: 'fallback', id: 'fb:1' })
    expect(parseRouteKey('other:x')).toBeNull()
    expect(parseRouteKey('Main:alice')).toBeNull()
    expect(() => parseRouteKey(42 as unknown as string)).toThrow(TypeError)
  })
})

describe('anthropic-quota-manager status', () => {
  it('prints every route with bars, resets, scoped windows, source, age and backoff in 80 columns', async () => {
    const before = fs.readdirSync(dir).sort()
    const mtime = fs.statSync(statePath).mtimeMs
    const run = await cli(['status', '--state', statePath])
    expect(run.code).toBe(0)
    expect(run.stderr).toBe('')
    const out = run.stdout
    expect(out).toContain(`Quota state: ${statePath}`)
    expect(out).toContain('3 routes')
    expect(out).toContain('main:me@example.com')
    expect(out).toContain('main:team@example.com')
    expect(out).toContain('fallback:alice')
    expect(out).toMatch(/5h +\[█+░+\] +9% used +91% left +resets in \dh/)
    expect(out).toMatch(/7d +\[█+░+\] +68% used +32% left +resets in \dd/)
    expect(out).toMatch(/Fable only +\[█+░+\] +22% used/)
    expect(out).toMatch(/source +poll, \d+s ago \(fresh for \dm \d\ds\) · token [0-9a-f]{16}/)
    expect(out).toMatch(/backoff +(10m 00s|9m \d\ds) left \(failure 1 in a row, Retry-After 10m 00s\)/)
    expect(out).toMatch(/last error +Claude quota check failed: 429/)
    expect(out).toContain('backoff     none')
    // main routes first, then fallbacks
    expect(out.indexOf('main:team@example.com')).toBeLessThan(out.indexOf('fallback:alice'))
    for (const line of out.split('\n')) {
      if (!line.startsWith('Quota state:')) expect([...line].length, line).toBeLessThanOrEqual(80)
    }
    // no token in the output; nothing in the directory changed (no lock, no rewrite)
    expect(out).not.toMatch(/token-(main|alice|team)/)
    expect(fs.readdirSync(dir).sort()).toEqual(before)
    expect(fs.statSync(statePath).mtimeMs).toBe(mtime)
  })

  it('--json prints the documented stable shape', async () => {
    const run = await cli(['status', '--json', '--state', statePath])
    expect(run.code).toBe(0)
    const doc = JSON.parse(run.stdout)
    expect(Object.keys(doc)).toEqual(['schema', 'statePath', 'now', 'routes', 'skippedRecords'])
    expect(doc.schema).toBe(1)
    expect(doc.statePath).toBe(statePath)
    expect(doc.routes.map((r: { key: string }) => r.key)).toEqual(['main:me@example.com', 'main:team@example.com', 'fallback:alice'])
    const [me, team, alice] = doc.routes
    expect(Object.keys(me)).toEqual([
      'key',
      'kind',
      'id',
      'fiveHour',
      'sevenDay',
      'scoped',
      'source',
      'status',
      'checkedAt',
      'ageMs',
      'refreshAfter',
      'stale',
      'tokenFingerprint',
      'lastAttemptAt',
      'backoff',
    ])
    expect(me).toMatchObject({ kind: 'main', id: 'me@example.com', source: 'poll', stale: false })
    expect(me.fiveHour).toMatchObject({ usedPercent: 9, remainingPercent: 91 })
    expect(Object.keys(me.fiveHour)).toEqual(['usedPercent', 'remainingPercent', 'resetsAt', 'resetsInMs', 'checkedAt'])
    expect(me.sevenDay).toMatchObject({ usedPercent: 68, remainingPercent: 32 })
    expect(me.scoped[0]).toMatchObject({ title: 'Fable only', modelName: 'Fable', modelId: 'claude-fable-5-1', usedPercent: 22 })
    expect(me.tokenFingerprint).toMatch(/^[0-9a-f]{16}$/)
    expect(me.backoff).toEqual({ active: false, attempts: 0, nextRetryAt: null, remainingMs: 0, lastError: null })
    expect(team).toMatchObject({ kind: 'main', fiveHour: null, sevenDay: null, scoped: [], checkedAt: null, stale: true })
    expect(team.backoff).toMatchObject({ active: true, attempts: 1, lastError: { status: 429, retryAfterMs: 600_000 } })
    expect(team.backoff.remainingMs).toBeGreaterThan(500_000)
    expect(alice).toMatchObject({ kind: 'fallback', id: 'alice', source: 'poll' })
  })

  it('uses the library default path: $OPENCODE_CONFIG_DIR, else $XDG_CONFIG_HOME/opencode, else ~/.config/opencode', async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-cli-home-'))
    try {
      const place = (p: string) => {
        fs.mkdirSync(path.dirname(p), { recursive: true })
        fs.copyFileSync(statePath, p)
        return p
      }
      const viaHome = place(path.join(home, '.config', 'opencode', 'anthropic-quota-state.json'))
      const viaXdg = place(path.join(home, 'xdg', 'opencode', 'anthropic-quota-state.json'))
      const viaOc = place(path.join(home, 'oc', 'anthropic-quota-state.json'))
      const base = { HOME: home, OPENCODE_CONFIG_DIR: '', XDG_CONFIG_HOME: '' }
      expect((await cli(['status'], base)).stdout).toContain(`Quota state: ${viaHome}`)
      expect((await cli(['status'], { ...base, XDG_CONFIG_HOME: path.join(home, 'xdg') })).stdout).toContain(`Quota state: ${viaXdg}`)
      const oc = await cli(['status'], { ...base, XDG_CONFIG_HOME: path.join(home, 'xdg'), OPENCODE_CONFIG_DIR: path.join(home, 'oc') })
      expect(oc.stdout).toContain(`Quota state: ${viaOc}`)
    } finally {
      fs.rmSync(home, { recursive: true, force: true })
    }
  })

  it('a missing state file is a one-line error and exit 1', async () => {
    const missing = path.join(dir, 'nope', 'state.json')
    const run = await cli(['status', '--state', missing])
    expect(run.code).toBe(1)
    expect(run.stdout).toBe('')
    expect(oneLine(run.stderr)).toBe(true)
    expect(run.stderr).toContain(`no state file at ${missing}`)
    expect(fs.existsSync(path.dirname(missing))).toBe(false)
  })

  it('a corrupt state file is a one-line error and exit 1, and the file is left alone', async () => {
    for (const content of ['{"version": 1, "rou', '{"version": 0, "routes": {}}', '[1,2]', '{"version":1,"routes":[]}']) {
      const corrupt = path.join(dir, 'corrupt.json')
      fs.writeFileSync(corrupt, content)
      for (const flags of [[], ['--json']]) {
        const run = await cli(['status', ...flags, '--state', corrupt])
        expect(run.code, content).toBe(1)
        expect(run.stdout).toBe('')
        expect(oneLine(run.stderr)).toBe(true)
        expect(run.stderr).toContain(`corrupt state file ${corrupt}`)
      }
      expect(fs.readFileSync(corrupt, 'utf8')).toBe(content)
    }
    expect(fs.readdirSync(dir).some((name) => name.includes('.corrupt-'))).toBe(false)
  })

  it('escapes control characters from the state file in human output', async () => {
    const hostile = path.join(dir, 'hostile.json')
    const esc = '\u001b[2J\u001b]0;pwned\u0007'
    const now = Date.now()
    const window = { usedPercent: 50, remainingPercent: 50, checkedAt: now }
    fs.writeFileSync(
      hostile,
      JSON.stringify({
        version: 1,
        routes: {
          [`main:evil${esc}\u009b31m\u202e`]: {
            entry: {
              checkedAt: now,
              refreshAfter: now + 60_000,
              quota: {
                five_hour: window,
                scoped: [{ ...window, id: 'x', title: `Fable${esc} only`, modelName: 'Fable' }],
                source: `poll${esc}`,
              },
            },
            tokenFingerprint: `abc${esc}`,
            backoff: { attempts: 1, lastError: { message: `boom\r${esc}\u007f`, checkedAt: now } },
          },
        },
      }),
    )
    const run = await cli(['status', '--state', hostile])
    expect(run.code, run.stderr).toBe(0)
    // No raw control, C1 or bidi-override character reaches the terminal (newlines separate lines).
    // oxlint-disable-next-line no-control-regex -- matching control characters is the point
    expect(run.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/)
    expect(run.stdout).toContain('main:evil\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202e')
    expect(run.stdout).toContain('Fable\\x1b[…') // a label is cut to 11 columns
    expect(run.stdout).toContain('poll\\x1b[2J')
    expect(run.stdout).toMatch(/last error +boom \\x1b\[2J/)
    // --json stays exact data (JSON escapes the C0 controls itself).
    const json = await cli(['status', '--json', '--state', hostile])
    expect(JSON.parse(json.stdout).routes[0].key).toBe(`main:evil${esc}\u009b31m\u202e`)
  })

  it('a state file of a newer schema is named as such, exit 1, and left alone', async () => {
    const newer = path.join(dir, 'newer.json')
    const content = '{"version": 99, "routes": {}}'
    fs.writeFileSync(newer, content)
    const run = await cli(['status', '--state', newer])
    expect(run.code).toBe(1)
    expect(oneLine(run.stderr)).toBe(true)
    expect(run.stderr).toContain(`state file ${newer} was written by a newer version (schema 99)`)
    expect(fs.readFileSync(newer, 'utf8')).toBe(content)
  })

  it('an unknown flag, a missing value or an unknown command is a one-line error and exit 2', async () => {
    for (const args of [['status', '--bogus'], ['status', '--state'], ['status', 'extra'], ['refresh', '--nope'], ['frobnicate']]) {
      const run = await cli(args)
      expect(run.code, args.join(' ')).toBe(2)
      expect(run.stdout).toBe('')
      expect(oneLine(run.stderr), run.stderr).toBe(true)
      expect(run.stderr).toMatch(/^anthropic-quota-manager: /)
    }
  })

  it('--help works for the program and each command', async () => {
    for (const [args, words] of [
      [['--help'], ['status', 'refresh']],
      [
        ['status', '--help'],
        ['--json', '--state', 'WITHOUT taking a refresh lock'],
      ],
      [
        ['refresh', '-h'],
        ['--token-env', '--url', '--state'],
      ],
    ] as const) {
      const run = await cli([...args])
      expect(run.code).toBe(0)
      expect(run.stdout).toMatch(/^Usage: anthropic-quota-manager/)
      for (const word of words) expect(run.stdout).toContain(word)
      for (const line of run.stdout.split('\n')) expect(line.length).toBeLessThanOrEqual(80)
    }
  })
})

describe('anthropic-quota-manager refresh', () => {
  it('sends one usage request through a QuotaManager and prints the status; a second run within the window sends none', async () => {
    const state = path.join(dir, 'refresh.json')
    const env = { CLI_TEST_TOKEN: 'token-cli' }
    const before = sim.requests
    const first = await cli(['refresh', '--token-env', 'CLI_TEST_TOKEN', '--state', state, '--url', sim.url], env)
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain('refreshed (one usage request sent)')
    expect(first.stdout).toContain(`Quota state: ${state}`)
    expect(first.stdout).toMatch(/5h +\[/)
    expect(sim.requests - before).toBe(1)
    const second = await cli(['refresh', '--token-env', 'CLI_TEST_TOKEN', '--state', state, '--url', sim.url, '--json'], env)
    expect(second.code).toBe(0)
    const doc = JSON.parse(second.stdout)
    // A process started later within the freshness window (issue 17): the first run's result
    // answers it, on the same route, with no request.
    expect(doc.refresh).toMatchObject({ ok: true, fetched: false })
    expect(doc.status.routes).toHaveLength(1)
    expect(sim.requests - before).toBe(1)
    const third = await cli(['refresh', '--token-env', 'CLI_TEST_TOKEN', '--state', state, '--url', sim.url], env)
    expect(third.stdout).toContain('answered from the state file (no request)')
    expect(sim.requests - before).toBe(1)
    expect(fs.readFileSync(state, 'utf8')).not.toContain('token-cli')
  })

  it('joins the main route of the state file whose token fingerprint matches', async () => {
    const before = sim.requests
    const run = await cli(['refresh', '--token-env', 'CLI_TEST_TOKEN', '--state', statePath, '--url', sim.url, '--json'], {
      CLI_TEST_TOKEN: 'token-main',
    })
    expect(run.code).toBe(0)
    const doc = JSON.parse(run.stdout)
    // That route's record is fresh: it answers, with no request (issue 17).
    expect(doc.refresh).toMatchObject({ ok: true, fetched: false, identity: 'me@example.com' })
    expect(doc.status.routes.filter((r: { kind: string }) => r.kind === 'main')).toHaveLength(2)
    expect(sim.requests).toBe(before)
  })

  it('obeys the shared backoff: a backed-off route sends nothing and exits 1 with a one-line error', async () => {
    const before = sim.requests
    const run = await cli(['refresh', '--token-env', 'T', '--identity', 'team@example.com', '--state', statePath, '--url', sim.url], {
      T: 'token-team',
    })
    expect(run.code).toBe(1)
    expect(oneLine(run.stderr)).toBe(true)
    expect(run.stderr).toContain('QUOTA_BACKED_OFF')
    expect(run.stdout).toContain('main:team@example.com')
    expect(sim.requests).toBe(before)
  })

  it('requires --token-env and a non-empty variable', async () => {
    const missingFlag = await cli(['refresh', '--state', statePath])
    expect(missingFlag.code).toBe(2)
    expect(missingFlag.stderr).toContain('--token-env NAME is required')
    const emptyVar = await cli(['refresh', '--token-env', 'CLI_TEST_UNSET_VAR', '--state', statePath], { CLI_TEST_UNSET_VAR: '' })
    expect(emptyVar.code).toBe(1)
    expect(oneLine(emptyVar.stderr)).toBe(true)
    expect(emptyVar.stderr).toContain('CLI_TEST_UNSET_VAR is unset or empty')
  })
})
