// The promise in its real host (issue 17): real OpenCode (`opencode-ai`, pinned, from npm) runs
// the plugin example `examples/opencode-plugin/index.ts` against a mock Anthropic API on
// 127.0.0.1. Several `opencode run` processes, some at once and some one after another within
// the freshness window, must together send one usage call per account, route every model
// request to the right account's token, and each exit by itself with status 0.
//
// Run by `.ci/run` (`npm run test:opencode`); not part of `npm test`, because it installs
// OpenCode (about 150 MB, cached in `.ci-cache/`) and takes a few minutes.
//
// Learnt on the way: `opencode run` takes its project directory from `PWD`; a fresh HOME makes
// the first run set itself up, and several first runs at once race there, so the HOME is warmed
// up by one run first; each run makes two model requests (a title and the answer).

import { execFileSync, spawn } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ANSWER_TEXT, startMockAnthropic, usageAnswer, type MockAnthropic, type MockAnthropicOptions } from './mock-anthropic.js'

const OPENCODE_VERSION = '1.18.33'
const REPO = resolve(__dirname, '..', '..')
const CACHE = join(REPO, '.ci-cache', 'opencode')
const PLUGIN_SOURCE = join(REPO, 'examples', 'opencode-plugin', 'index.ts')
const MODEL = 'claude-sonnet-4-5'
/** Processes per scenario: this many at once, then this many one after another. */
const AT_ONCE = 3
const ONE_AFTER_ANOTHER = 3
/** A run that has not exited by itself by then has hung. */
const RUN_TIMEOUT_MS = 90_000

const MAIN_TOKEN = 'sk-ant-oat01-e2e-main-token'
const FALLBACK_TOKEN = 'sk-ant-oat01-e2e-fallback-token'

/**
 * Installs the pinned OpenCode, and the plugin API types of the same release, into `.ci-cache/`
 * once; the path of the `opencode` command.
 */
function installOpenCode(): string {
  const packages = [`opencode-ai@${OPENCODE_VERSION}`, `@opencode-ai/plugin@${OPENCODE_VERSION}`]
  const stamp = join(CACHE, `.installed-${packages.join('+').replaceAll('/', '_')}`)
  if (!existsSync(stamp)) {
    rmSync(CACHE, { recursive: true, force: true })
    mkdirSync(CACHE, { recursive: true })
    execFileSync(
      'npm',
      ['install', '--prefix', CACHE, '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--loglevel=error', ...packages],
      {
        stdio: 'inherit',
        timeout: 300_000,
      },
    )
    writeFileSync(stamp, '')
  }
  return join(CACHE, 'node_modules', '.bin', 'opencode')
}

let opencode: string
let root: string
let home: string

/** The environment of every OpenCode process: an isolated HOME, nothing from ours but PATH. */
function environment(project: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    LANG: 'C.UTF-8',
    TMPDIR: join(root, 'tmp'),
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CACHE_HOME: join(home, '.cache'),
    XDG_STATE_HOME: join(home, '.local', 'state'),
    PWD: project,
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    OPENCODE_DISABLE_DEFAULT_PLUGINS: '1',
    OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
    OPENCODE_DISABLE_CLAUDE_CODE: '1',
    OPENCODE_DISABLE_SHARE: '1',
  }
}

interface PluginSettings {
  usageUrl: string
  statePath: string
  accountsFile: string
  failClosedOnUnknownQuota?: boolean
}

/** A project directory loading the plugin example as a user would: a file and `opencode.json`. */
function makeProject(name: string, mock: MockAnthropic, failClosedOnUnknownQuota?: boolean): { dir: string; statePath: string } {
  const dir = join(root, name)
  mkdirSync(join(dir, 'plugins'), { recursive: true })
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true })
  // What `npm install anthropic-quota-manager` (and, for the editor, `npm install -D
  // @opencode-ai/plugin @types/node`) gives the project.
  symlinkSync(REPO, join(dir, 'node_modules', 'anthropic-quota-manager'), 'dir')
  symlinkSync(join(CACHE, 'node_modules', '@opencode-ai'), join(dir, 'node_modules', '@opencode-ai'), 'dir')
  symlinkSync(join(REPO, 'node_modules', '@types', 'node'), join(dir, 'node_modules', '@types', 'node'), 'dir')
  copyFileSync(PLUGIN_SOURCE, join(dir, 'plugins', 'quota-routing.ts'))
  const accountsFile = join(dir, 'accounts.json')
  writeFileSync(accountsFile, JSON.stringify({ accounts: [{ id: 'fb-1', access: FALLBACK_TOKEN, expires: Date.now() + 36e5 }] }))
  const statePath = join(dir, 'quota-state', 'anthropic-quota-state.json')
  const settings: PluginSettings = { usageUrl: mock.usageUrl, statePath, accountsFile }
  if (failClosedOnUnknownQuota !== undefined) settings.failClosedOnUnknownQuota = failClosedOnUnknownQuota
  const config = {
    $schema: 'https://opencode.ai/config.json',
    model: `anthropic/${MODEL}`,
    small_model: `anthropic/${MODEL}`,
    autoupdate: false,
    share: 'disabled',
    plugin: [[pathToFileURL(join(dir, 'plugins', 'quota-routing.ts')).href, settings]],
    provider: {
      anthropic: {
        options: { baseURL: mock.baseURL },
        models: { [MODEL]: { name: 'Claude Sonnet 4.5 (mock)', limit: { context: 200_000, output: 64_000 } } },
      },
    },
  }
  writeFileSync(join(dir, 'opencode.json'), JSON.stringify(config, null, 2))
  return { dir, statePath }
}

interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** One `opencode run`, which must exit by itself. */
function runOpenCode(project: string, prompt = 'Say hello.'): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(opencode, ['run', prompt], { cwd: project, env: environment(project), stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      fail(new Error(`opencode run did not exit within ${RUN_TIMEOUT_MS} ms; stderr: ${stderr.slice(-2000)}`))
    }, RUN_TIMEOUT_MS)
    child.on('error', fail)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      done({ code, signal, stdout, stderr })
    })
  })
}

/** Some processes at once, then some one after another, all within the freshness window. */
async function runProcesses(project: string): Promise<Run[]> {
  const runs = await Promise.all(Array.from({ length: AT_ONCE }, () => runOpenCode(project)))
  for (let i = 0; i < ONE_AFTER_ANOTHER; i++) runs.push(await runOpenCode(project))
  return runs
}

function expectEveryRunAnswered(runs: Run[]): void {
  for (const [index, run] of runs.entries()) {
    const why = `run ${index + 1}: exit ${run.code} ${run.signal ?? ''}; stderr: ${run.stderr.slice(-1500)}`
    expect({ code: run.code, signal: run.signal }, why).toEqual({ code: 0, signal: null })
    expect(run.stdout, why).toContain(ANSWER_TEXT)
  }
}

async function withMock<T>(options: MockAnthropicOptions, body: (mock: MockAnthropic) => Promise<T>): Promise<T> {
  const mock = await startMockAnthropic(options)
  try {
    return await body(mock)
  } finally {
    await mock.close()
  }
}

const quotaLeft = { fiveHour: 0.1, sevenDay: 0.3 }

beforeAll(async () => {
  opencode = installOpenCode()
  root = mkdtempSync(join(tmpdir(), 'aqm-opencode-'))
  home = join(root, 'home')
  mkdirSync(join(root, 'tmp'), { recursive: true })
  const authDir = join(home, '.local', 'share', 'opencode')
  mkdirSync(authDir, { recursive: true })
  // The OpenCode login of the main account, as `opencode auth login` would store it.
  writeFileSync(
    join(authDir, 'auth.json'),
    JSON.stringify({ anthropic: { type: 'oauth', access: MAIN_TOKEN, refresh: 'refresh-main', expires: Date.now() + 10 * 36e5 } }),
    { mode: 0o600 },
  )
  // The first run of a fresh HOME sets OpenCode up; concurrent first runs would race there.
  await withMock({ usage: () => usageAnswer(10), rateLimits: () => quotaLeft }, async (mock) => {
    const warm = makeProject('warm-up', mock)
    expectEveryRunAnswered([await runOpenCode(warm.dir)])
  })
}, 300_000)

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true })
})

describe(`real OpenCode ${OPENCODE_VERSION} with the plugin example`, () => {
  it(`the example compiles under tsc --strict against @opencode-ai/plugin ${OPENCODE_VERSION}`, async () => {
    await withMock({ usage: () => usageAnswer(10), rateLimits: () => quotaLeft }, async (mock) => {
      const project = makeProject('typecheck', mock)
      const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc')
      const args = [
        '--noEmit',
        '--strict',
        '--target',
        'es2022',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--skipLibCheck',
        '--types',
        'node',
      ]
      try {
        execFileSync(process.execPath, [tsc, ...args, join('plugins', 'quota-routing.ts')], {
          cwd: project.dir,
          encoding: 'utf8',
          stdio: 'pipe',
        })
      } catch (error) {
        throw new Error(`tsc: ${String((error as { stdout?: string }).stdout ?? error)}`, { cause: error })
      }
    })
  })

  it('main has quota: one usage call in all, every request on the main token', async () => {
    await withMock({ usage: () => usageAnswer(10), rateLimits: () => quotaLeft }, async (mock) => {
      const project = makeProject('main-has-quota', mock)
      const runs = await runProcesses(project.dir)
      expectEveryRunAnswered(runs)
      console.log(
        `[opencode e2e] main has quota: usage calls main=${mock.usageCallsFor(MAIN_TOKEN)} fallback=${mock.usageCallsFor(FALLBACK_TOKEN)}, model requests ${mock.messageTokens.length}`,
      )
      expect(mock.usageCalls).toEqual([MAIN_TOKEN])
      expect(mock.messageTokens.length).toBe(2 * runs.length)
      expect(new Set(mock.messageTokens)).toEqual(new Set([MAIN_TOKEN]))
    })
  })

  it('main exhausted: one usage call for main, one for the fallback, every request on the fallback token', async () => {
    const usage = (token: string) => usageAnswer(token === MAIN_TOKEN ? 100 : 10)
    const rateLimits = (token: string) => (token === MAIN_TOKEN ? { fiveHour: 1, sevenDay: 0.9 } : quotaLeft)
    await withMock({ usage, rateLimits }, async (mock) => {
      const project = makeProject('main-exhausted', mock)
      const runs = await runProcesses(project.dir)
      expectEveryRunAnswered(runs)
      console.log(
        `[opencode e2e] main exhausted: usage calls main=${mock.usageCallsFor(MAIN_TOKEN)} fallback=${mock.usageCallsFor(FALLBACK_TOKEN)}, model requests ${mock.messageTokens.length}`,
      )
      expect(mock.usageCallsFor(MAIN_TOKEN)).toBe(1)
      expect(mock.usageCallsFor(FALLBACK_TOKEN)).toBe(1)
      expect(mock.usageCalls).toHaveLength(2)
      expect(mock.messageTokens.length).toBe(2 * runs.length)
      expect(new Set(mock.messageTokens)).toEqual(new Set([FALLBACK_TOKEN]))
    })
  })

  it('the usage endpoint answers 429: one call in all, every process backed off and still answering', async () => {
    const usage = () => ({
      status: 429,
      body: { type: 'error', error: { type: 'rate_limit_error', message: 'slow down' } },
      headers: { 'retry-after': '0' },
    })
    await withMock({ usage, rateLimits: () => quotaLeft }, async (mock) => {
      // Unknown quota routes to main (the plugin's `failClosedOnUnknownQuota: false`).
      const project = makeProject('usage-429', mock, false)
      const runs = await runProcesses(project.dir)
      expectEveryRunAnswered(runs)
      console.log(
        `[opencode e2e] usage 429: usage calls main=${mock.usageCallsFor(MAIN_TOKEN)} fallback=${mock.usageCallsFor(FALLBACK_TOKEN)}, model requests ${mock.messageTokens.length}`,
      )
      expect(mock.usageCalls).toEqual([MAIN_TOKEN])
      expect(new Set(mock.messageTokens)).toEqual(new Set([MAIN_TOKEN]))
      // The backoff every process obeyed is the shared one, armed once.
      const state = JSON.parse(readFileSync(project.statePath, 'utf8')) as {
        routes: Record<string, { backoff?: { attempts: number; nextRetryAt?: number } }>
      }
      const backoff = state.routes['main:main']?.backoff
      expect(backoff?.attempts).toBe(1)
      expect(backoff?.nextRetryAt).toBeGreaterThan(Date.now())
    })
  })
})
