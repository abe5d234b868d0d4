// Windows' console signals (run under Wine by scripts/ci-platforms.sh): SIGINT (Ctrl+C), SIGBREAK
// (Ctrl+Break) and SIGHUP (the console closes) flush what is still waiting to be written and then
// end the process, as they would without this package. Windows cannot send a console signal to
// one process from another, so the child delivers it to its own listeners (`process.emit`, what
// Node does when the console event arrives). The POSIX side is in hardening.spec.ts ("signals").
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

import { afterAll, describe, expect, it } from 'vitest'

const ROOT = path.join(__dirname, '..')
const dirs: string[] = []

afterAll(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
})

// The child: one manager with a header push waiting (writes are coalesced for 250 ms), then the
// signal; a timer that must never run, since the signal ends the process first.
const CHILD = `
const { QuotaManager } = require(process.argv[1])
const [signal, statePath] = process.argv.slice(2)
const say = (m) => process.stdout.write(JSON.stringify(m) + '\\n')
const manager = new QuotaManager({ statePath })
manager.pushMainFromHeaders('alice', { 'anthropic-ratelimit-unified-5h-utilization': '0.42' })
const counts = {}
for (const s of ['SIGINT', 'SIGBREAK', 'SIGHUP', 'SIGTERM']) counts[s] = process.listenerCount(s)
say({ counts })
process.emit(signal, signal)
setTimeout(() => say({ timerRan: true }), 400)
`

interface Run {
  code: number | null
  lines: Array<Record<string, unknown>>
  stderr: string
}

function run(signal: string, statePath: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', CHILD, ROOT, signal, statePath], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
    child.once('error', reject)
    child.once('exit', (code) => {
      clearTimeout(timer)
      const lines = stdout
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      resolve({ code, lines, stderr })
    })
  })
}

describe.runIf(process.platform === 'win32')('console signals on Windows', () => {
  for (const signal of ['SIGINT', 'SIGBREAK', 'SIGHUP']) {
    it(`${signal}: the waiting header push reaches the state file, then the process ends`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aqm-winsig-'))
      dirs.push(dir)
      const statePath = path.join(dir, 'state.json')
      const result = await run(signal, statePath)
      expect(result.lines[0], result.stderr).toEqual({ counts: { SIGINT: 1, SIGBREAK: 1, SIGHUP: 1, SIGTERM: 0 } })
      expect(
        result.lines.some((l) => l.timerRan),
        result.stderr,
      ).toBe(false)
      expect(result.code, result.stderr).not.toBe(0)
      const state = JSON.parse(fs.readFileSync(statePath, 'utf8'))
      expect(state.routes['main:alice'].entry.quota.five_hour.usedPercent).toBe(42)
    }, 30_000)
  }
})
