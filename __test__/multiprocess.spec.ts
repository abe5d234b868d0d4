// Multi-process behaviour (docs/single-flight.md, docs/state-file.md): real `node` children share one state file and the
// per-route OS locks, against the local usage simulator running in this (the vitest) process.
//
// Each child runs __test__/fixtures/mp-*.cjs. The worker fixture loads the addon and builds its
// manager first, then waits for a command line on stdin: the `refresh` command written to every
// child in one tight loop is the "go" signal, so the children's refreshes really overlap.

import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, onTestFinished } from 'vitest'

import { startUsageSimulator, type UsageSimulator } from '../simulator/index.js'
import {
  Child,
  FIXTURES,
  filesUnder,
  killAll,
  readJson,
  refresh,
  removeTempDirs,
  report,
  sleep,
  startWorker,
  tempDir,
  until,
  type CallerResult,
  type RefreshReport,
  type WorkerOptions,
} from './helpers/mp-children.js'

/** The state file as the tests look at it (only the fields they check). */
interface StateFileShape {
  version: number
  routes: Record<
    string,
    {
      entry?: {
        checkedAt: number
        refreshAfter: number
        quota: { checkedAt?: number; five_hour?: { usedPercent: number; checkedAt: number } }
      }
      tokenFingerprint?: string
      backoff?: { attempts: number; nextRetryAt?: number }
    }
  >
}

/** Reads the state file and checks its envelope: schema version 1 and a `routes` object. */
function readState(path: string): StateFileShape {
  const parsed = readJson(path) as StateFileShape
  expect(parsed.version, `state file version in ${path}`).toBe(1)
  expect(parsed.routes !== null && typeof parsed.routes === 'object' && !Array.isArray(parsed.routes), `routes object in ${path}`).toBe(
    true,
  )
  return parsed
}

const TOKEN = 'sk-ant-oat01-mp-main-' + randomBytes(12).toString('hex')

let sim: UsageSimulator

beforeAll(async () => {
  sim = await startUsageSimulator()
})

afterAll(async () => {
  await sim.close()
})

beforeEach(() => {
  sim.reset()
})

afterEach(async () => {
  await killAll()
  removeTempDirs()
})

function options(statePath: string | null, extra: Partial<WorkerOptions> = {}): WorkerOptions {
  return { statePath, usageUrl: sim.url, lockTimeoutMs: 20_000, ...extra }
}

function startWorkers(count: number, opts: WorkerOptions): Promise<Child[]> {
  return Promise.all(Array.from({ length: count }, () => startWorker(opts)))
}

/** Writes the refresh command to every child back to back (the "go"), then collects answers. */
async function fireAll(children: Child[], command: Record<string, unknown>, timeoutMs = 30_000): Promise<RefreshReport[]> {
  const ids = children.map((child) => child.post({ cmd: 'refresh', ...command }))
  return Promise.all(children.map((child, i) => child.answer<RefreshReport>(ids[i], timeoutMs)))
}

const allResults = (reports: RefreshReport[]): CallerResult[] => reports.flatMap((r) => r.results)
const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0)

describe('cross-process deduplication', () => {
  it('8 processes × 50 concurrent callers send exactly one request, 20 rounds in a row', async () => {
    const ROUNDS = 20
    const PROCESSES = 8
    const CALLERS = 50
    const DELAY = 300
    const requestsPerRound: number[] = []
    for (let round = 0; round < ROUNDS; round++) {
      sim.reset()
      sim.reply({ status: 200, delayMs: DELAY })
      const statePath = join(tempDir(), 'state.json')
      const children = await startWorkers(PROCESSES, options(statePath))
      const reports = await fireAll(children, { callers: CALLERS, identity: 'alice', token: TOKEN })
      requestsPerRound.push(sim.requests)

      const results = allResults(reports)
      expect(results).toHaveLength(PROCESSES * CALLERS)
      const rejected = results.filter((r) => !r.ok)
      expect(rejected, `round ${round}: rejections ${JSON.stringify(rejected.slice(0, 3))}`).toEqual([])
      const checkedAts = new Set(results.map((r) => r.checkedAt))
      expect(checkedAts.size, `round ${round}: distinct snapshots`).toBe(1)
      expect(typeof [...checkedAts][0]).toBe('number')

      // The processes really overlapped: every one started before the single answer came back.
      const answeredAt = sim.log[0].at + DELAY
      expect(Math.max(...reports.map((r) => r.startedAt))).toBeLessThan(answeredAt)
      // Exactly one process sent it; every other one was served by its result.
      expect(sum(reports.map((r) => r.stats.apiCalls))).toBe(1)
      for (const r of reports.filter((r) => r.stats.apiCalls === 0)) {
        expect(r.stats.joinedOtherProcess).toBeGreaterThanOrEqual(1)
        expect(r.stats.lockTimeouts).toBe(0)
      }
      // ... and the shared file holds that snapshot.
      const state = readState(statePath)
      expect(state.routes['main:alice']?.entry?.checkedAt).toBe([...checkedAts][0])

      await killAll()
    }
    expect(requestsPerRound).toEqual(Array(ROUNDS).fill(1))
  }, 90_000)

  it('a 429 in one process backs off all 8: one request, then no more from anyone (10 rounds)', async () => {
    const ROUNDS = 10
    for (let round = 0; round < ROUNDS; round++) {
      sim.reset()
      sim.reply({ status: 429, delayMs: 300 }) // no Retry-After
      const statePath = join(tempDir(), 'state.json')
      const children = await startWorkers(8, options(statePath))

      const first = await fireAll(children, { callers: 50, identity: 'alice', token: TOKEN })
      expect(sim.requests, `round ${round}: first wave`).toBe(1)
      const firstResults = allResults(first)
      expect(firstResults.every((r) => !r.ok)).toBe(true)
      // The requesting process's callers see the HTTP error; everyone else the shared backoff.
      const httpErrors = firstResults.filter((r) => r.code === 'QUOTA_HTTP_ERROR')
      expect(httpErrors.length).toBeLessThanOrEqual(50)
      for (const r of httpErrors) expect(r.status).toBe(429)
      for (const r of firstResults.filter((r) => r.code !== 'QUOTA_HTTP_ERROR')) expect(r.code).toBe('QUOTA_BACKED_OFF')

      const reports = await Promise.all(children.map((child) => report(child)))
      expect(reports.map((r) => r.backedOff)).toEqual(Array(8).fill(true))

      const second = await fireAll(children, { callers: 50, identity: 'alice', token: TOKEN })
      expect(sim.requests, `round ${round}: second wave`).toBe(1)
      const secondResults = allResults(second)
      expect(secondResults).toHaveLength(400)
      expect(new Set(secondResults.map((r) => r.code))).toEqual(new Set(['QUOTA_BACKED_OFF']))

      // The backoff is in the shared file too, so a process started now honours it as soon as
      // it is told its account is alice (before that, alice's route may be another account's).
      const state = readState(statePath)
      expect(state.routes['main:alice']?.backoff?.attempts).toBe(1)
      const late = await startWorker(options(statePath))
      expect((await report(late)).backedOff).toBe(false)
      const lateWave = await refresh(late, { callers: 5, identity: 'alice', token: TOKEN })
      expect(lateWave.results.map((r) => r.code)).toEqual(Array(5).fill('QUOTA_BACKED_OFF'))
      expect(lateWave.backedOff).toBe(true)
      expect(sim.requests).toBe(1)
      await killAll()
    }
  }, 60_000)
})

describe('a holder that dies', () => {
  it('a SIGKILLed lock holder frees the route lock: the waiting process succeeds within 1 s of the kill', async () => {
    for (let round = 0; round < 3; round++) {
      sim.reset()
      sim.replyOnce({ stall: true }) // the holder's request never gets an answer
      sim.reply({ status: 200 })
      const statePath = join(tempDir(), 'state.json')
      const opts = options(statePath, { lockTimeoutMs: 60_000, requestTimeoutMs: 60_000 })
      const [holder, waiter] = await startWorkers(2, opts)

      const holderCall = holder.post({ cmd: 'refresh', callers: 1, identity: 'alice', token: TOKEN })
      await until(() => sim.requests === 1, 10_000, "the holder's request")
      const waiterCall = waiter.post({ cmd: 'refresh', callers: 3, identity: 'alice', token: TOKEN })
      await until(async () => (await report(waiter)).stats.lockWaits >= 1, 10_000, 'the waiter to wait on the lock')
      await sleep(150)
      expect(sim.requests).toBe(1) // still waiting, not fetching

      const killedAt = performance.now()
      holder.kill('SIGKILL')
      const answer = await waiter.answer<RefreshReport>(waiterCall, 20_000)
      const took = performance.now() - killedAt

      expect(answer.results.map((r) => r.ok)).toEqual([true, true, true])
      expect(took, `round ${round}: ms from SIGKILL to the waiter's result`).toBeLessThan(1_000)
      expect(sim.requests).toBe(2)
      expect(answer.stats.apiCalls).toBe(1)
      expect(answer.stats.lockTimeouts).toBe(0)
      const exit = await holder.exited
      expect(exit.signal).toBe('SIGKILL')
      expect(holder.messages.some((m) => m.id === holderCall)).toBe(false)
      expect(readState(statePath).routes['main:alice']?.entry?.checkedAt).toBe(answer.results[0].checkedAt)
      await killAll()
    }
  }, 60_000)

  it('a writer SIGKILLed mid-write (200 times) never leaves a torn or lost state file', async () => {
    const ITERATIONS = 200
    const LANES = 2 // independent state files, to use both cores; each lane kills its own writer
    const START = 1_700_000_000_000
    // The store's temporary files: `.<state file name>.<random>.tmp` beside the state file.
    const isTempFile = (name: string): boolean => name.startsWith('.state.json.') && name.endsWith('.tmp')
    const seen = { killedWhileWriting: 0, killedBetweenWrites: 0, maxWritesBeforeKill: 0 }
    const problems: string[] = []

    const lane = async (laneIndex: number, iterations: number): Promise<void> => {
      const dir = tempDir()
      const statePath = join(dir, 'state.json')
      let acknowledged: number | undefined // newest checkedAt a writer said had landed
      let abandoned: string[] = [] // temporary files the previous killed writer left behind
      for (let i = 0; i < iterations; i++) {
        const first = START + (laneIndex * iterations + i) * 1_000_000
        const child = new Child(join(FIXTURES, 'mp-writer.cjs'), [statePath, String(first)])
        await child.waitFor((m) => typeof m.wrote === 'number', 20_000, 'the first write')
        // That write ran under the state lock and must have removed what the last kill left.
        const survivors = abandoned.filter((name) => existsSync(join(dir, name)))
        if (survivors.length > 0)
          problems.push(`lane ${laneIndex} iteration ${i}: abandoned temporary files not cleaned up: ${survivors.join(', ')}`)
        await sleep(Math.random() * 25)
        child.kill('SIGKILL')
        const exit = await child.exited
        // The writer loops forever: anything but our SIGKILL means it died on its own.
        if (exit.signal !== 'SIGKILL')
          problems.push(`lane ${laneIndex} iteration ${i}: writer ended by ${JSON.stringify(exit)}: ${child.stderr.slice(0, 300)}`)
        const writes = child.messages.filter((m) => typeof m.checkedAt === 'number')
        const last = writes[writes.length - 1]
        if (typeof last?.checkedAt === 'number') acknowledged = last.checkedAt
        seen.maxWritesBeforeKill = Math.max(seen.maxWritesBeforeKill, writes.length)
        abandoned = readdirSync(dir).filter(isTempFile)
        if (abandoned.length > 0) seen.killedWhileWriting++
        else seen.killedBetweenWrites++

        // What a reader finds now: a whole file, old or new, never older than acknowledged.
        let text: string
        try {
          text = readFileSync(statePath, 'utf8')
        } catch (error) {
          problems.push(`lane ${laneIndex} iteration ${i}: state file missing after a write was acknowledged (${String(error)})`)
          continue
        }
        let state: StateFileShape
        try {
          state = JSON.parse(text) as StateFileShape
        } catch {
          problems.push(`lane ${laneIndex} iteration ${i}: torn file: ${JSON.stringify(text.slice(0, 120))}`)
          continue
        }
        const entry = state.routes?.['main:alice']?.entry
        const checkedAt = entry?.checkedAt
        if (state.version !== 1 || typeof checkedAt !== 'number') {
          problems.push(`lane ${laneIndex} iteration ${i}: unexpected content ${text.slice(0, 200)}`)
          continue
        }
        // The content belongs to one write: every field agrees with its checkedAt.
        if (
          entry?.quota.checkedAt !== checkedAt ||
          entry?.quota.five_hour?.usedPercent !== checkedAt % 100 ||
          entry?.refreshAfter !== checkedAt + 300_000
        ) {
          problems.push(`lane ${laneIndex} iteration ${i}: mixed content ${JSON.stringify(entry)}`)
        }
        if (acknowledged !== undefined && checkedAt < acknowledged) {
          problems.push(`lane ${laneIndex} iteration ${i}: acknowledged write ${acknowledged} lost, file has ${checkedAt}`)
        }
        if (checkedAt > first + 1_000_000) problems.push(`lane ${laneIndex} iteration ${i}: impossible value ${checkedAt}`)
      }
      // Only the last kill's leftovers may remain (a write removes older ones), and no reader
      // ever found an unreadable file to set aside.
      const names = readdirSync(dir)
      const leftovers = names.filter(isTempFile)
      if (leftovers.some((name) => !abandoned.includes(name)))
        problems.push(`lane ${laneIndex}: temporary files left: ${leftovers.join(', ')}`)
      const quarantined = names.filter((name) => name.includes('.corrupt-'))
      if (quarantined.length > 0) problems.push(`lane ${laneIndex}: files set aside: ${quarantined.join(', ')}`)
    }

    await Promise.all(Array.from({ length: LANES }, (_, i) => lane(i, ITERATIONS / LANES)))
    expect(problems).toEqual([])
    // How often a kill landed between creating the temporary file and renaming it: evidence the
    // loop does hit writes in progress (it varies from run to run, so it is reported, not asserted).
    console.info(`mid-write kill loop: ${JSON.stringify(seen)}`)
  }, 90_000)
})

describe('concurrent writers', () => {
  it('two processes writing different routes for 5 s lose no route\u2019s last write', async () => {
    // 5 s: each process completes hundreds of locked read-modify-write rounds in that time
    // (asserted below), far more interleavings than needed to expose an unlocked merge.
    const statePath = join(tempDir(), 'state.json')
    const IDS = 3
    const hammer = (prefix: string): Child => new Child(join(FIXTURES, 'mp-hammer.cjs'), [statePath, prefix, String(IDS), '5000'])
    const children = [hammer('a'), hammer('b')]
    const outcomes = await Promise.all(
      children.map(async (child) => {
        const done = await child.waitFor((m) => typeof m.final === 'object', 30_000, 'the final report')
        const exit = await child.exited
        expect(exit.code, child.stderr).toBe(0)
        return done as unknown as { final: Record<string, number>; rounds: number; longWrites: number }
      }),
    )
    const state = readState(statePath)
    const expected: Record<string, number> = {}
    console.info(`hammer: ${JSON.stringify(outcomes.map((o) => ({ rounds: o.rounds, longWrites: o.longWrites })))}`)
    for (const outcome of outcomes) {
      expect(outcome.rounds).toBeGreaterThanOrEqual(50)
      Object.assign(expected, outcome.final)
    }
    // Every route either process wrote is in the file with its last value, and nothing else is.
    const actual: Record<string, number | undefined> = {}
    for (const [route, slot] of Object.entries(state.routes)) actual[route.replace(/^fallback:/, '')] = slot.entry?.checkedAt
    expect(actual).toEqual(expected)
  }, 60_000)
})

describe('callers of one synchronous run', () => {
  it('a call made before the first was answered shares its request, even one already done', async () => {
    // Two calls in one synchronous run of JS are concurrent, whatever the OS does between them:
    // the thread stalled long enough for the first request to end must not make a second one.
    const own = await startUsageSimulator()
    onTestFinished(() => own.close())
    const child = await startWorker(options(join(tempDir(), 'state.json'), { apiCallGapMs: 0, usageUrl: own.url }))

    const both = await refresh(child, { callers: 2, identity: 'alice', token: TOKEN, stallMs: 300 })
    expect(both.results.every((r) => r.ok)).toBe(true)
    expect(own.requests).toBe(1)
    expect(both.results[1].checkedAt).toBe(both.results[0].checkedAt)
    expect(both.stats.apiCalls).toBe(1)
    expect(both.stats.joinedInFlight).toBe(1)

    // Once answered, a refresh is a new request.
    await refresh(child, { callers: 1, identity: 'alice', token: TOKEN })
    expect(own.requests).toBe(2)
  })
})

describe('a damaged state file', () => {
  const cases: Array<[string, Buffer]> = [
    ['truncated JSON', Buffer.from('{"version": 1, "routes": {"main:alice": {"entry": {"checkedAt": 17')],
    ['random bytes', Buffer.concat([Buffer.from([0xff, 0xfe, 0x00]), randomBytes(509)])],
  ]

  for (const [name, content] of cases) {
    it(`${name}: set aside byte-for-byte, reported, and the manager keeps working`, async () => {
      sim.reply({ status: 200 })
      const dir = tempDir()
      const statePath = join(dir, 'state.json')
      writeFileSync(statePath, content)
      const child = await startWorker(options(statePath, { apiCallGapMs: 0 }))

      const before = await report(child)
      expect(before.stats.stateFileQuarantines).toBeGreaterThanOrEqual(1)
      const aside = readdirSync(dir).filter((f) => f.startsWith('state.json.corrupt-'))
      expect(aside).toHaveLength(1)
      expect(aside[0]).toMatch(/^state\.json\.corrupt-\S+$/)
      expect(readFileSync(join(dir, aside[0])).equals(content)).toBe(true)
      await until(() => child.stderr.includes('.corrupt-'), 5_000, 'the stderr warning')
      expect(child.stderr).toContain(aside[0])

      const answer = await refresh(child, { callers: 1, identity: 'alice', token: TOKEN })
      expect(answer.results[0].ok).toBe(true)
      expect(sim.requests).toBe(1)
      const state = readState(statePath)
      expect(state.version).toBe(1)
      expect(state.routes['main:alice']?.entry?.checkedAt).toBe(answer.results[0].checkedAt)
      // The damaged data was never overwritten.
      expect(readFileSync(join(dir, aside[0])).equals(content)).toBe(true)
      await child.request({ cmd: 'exit' })
      expect((await child.exited).code).toBe(0)
    })
  }

  it("a newer schema version (a newer build's file) is left untouched, reported once, and the manager works in memory", async () => {
    // A simulator of its own: the request count below is this child's alone, whatever a child
    // of an earlier test may still send on its way out.
    const own = await startUsageSimulator()
    onTestFinished(() => own.close())
    const dir = tempDir()
    const statePath = join(dir, 'state.json')
    const content = Buffer.from('{"version": 99, "routes": {"main:alice": {"fromTheFuture": true}}}')
    writeFileSync(statePath, content)
    const child = await startWorker(options(statePath, { apiCallGapMs: 0, usageUrl: own.url }))

    const first = await refresh(child, { callers: 2, identity: 'alice', token: TOKEN })
    expect(first.results.every((r) => r.ok)).toBe(true)
    await child.request({ cmd: 'pushMain', identity: 'alice', headers: { 'anthropic-ratelimit-unified-5h-utilization': '0.5' } })
    const second = await refresh(child, { callers: 1, identity: 'bob', token: TOKEN })
    expect(second.results[0].ok).toBe(true)
    // On failure, say which request was extra: the times and token of each, and how the
    // child counted its callers (two callers of one request: joinedInFlight 1).
    const requestLog = own.log.map((r) => ({ at: r.at, tokenFingerprint: r.tokenFingerprint }))
    const childStats = { first: first.stats, second: second.stats }
    expect(own.requests, JSON.stringify({ requestLog, childStats })).toBe(2)
    expect(first.stats.joinedInFlight).toBe(1)
    await child.request({ cmd: 'close' })
    const after = await report(child)
    expect(after.stats.stateFileQuarantines).toBe(0)
    expect(after.stats.stateErrors).toBe(0)
    expect(after.stats.stateFileNewerSchema).toBeGreaterThanOrEqual(1)
    expect(readFileSync(statePath).equals(content)).toBe(true)
    expect(readdirSync(dir).filter((f) => f.includes('.corrupt-'))).toEqual([])
    await until(() => child.stderr.includes('newer version'), 5_000, 'the stderr report')
    expect(child.stderr.match(/newer version/g)).toHaveLength(1)
    await child.request({ cmd: 'exit' })
    expect((await child.exited).code).toBe(0)
    expect(readFileSync(statePath).equals(content)).toBe(true)
  })

  it('a file damaged by someone else while a manager runs is set aside at the next write', async () => {
    sim.reply({ status: 200 })
    const dir = tempDir()
    const statePath = join(dir, 'state.json')
    const child = await startWorker(options(statePath, { apiCallGapMs: 0 }))
    await refresh(child, { callers: 1, identity: 'alice', token: TOKEN })
    const garbage = Buffer.from('{"version": 1, "routes": {"main:alice"')
    writeFileSync(statePath, garbage)

    const answer = await refresh(child, { callers: 1, identity: 'alice', token: TOKEN })
    expect(answer.results[0].ok).toBe(true)
    expect(answer.stats.stateFileQuarantines).toBeGreaterThanOrEqual(1)
    const aside = readdirSync(dir).filter((f) => f.startsWith('state.json.corrupt-'))
    expect(aside).toHaveLength(1)
    expect(readFileSync(join(dir, aside[0])).equals(garbage)).toBe(true)
    expect(readState(statePath).routes['main:alice']?.entry?.checkedAt).toBe(answer.results[0].checkedAt)
    await until(() => child.stderr.includes(aside[0]), 5_000, 'the stderr warning')
  })
})

describe('secrets and unusable state', () => {
  it('no token reaches any file in the state directory, nor the output', async () => {
    const tokens = {
      identified: 'sk-ant-oat01-identified-' + randomBytes(16).toString('hex'),
      oneArg: 'sk-ant-oat01-onearg-' + randomBytes(16).toString('hex'),
      fallback: 'sk-ant-oat01-fallback-' + randomBytes(16).toString('hex'),
      failing: 'sk-ant-oat01-failing-' + randomBytes(16).toString('hex'),
    }
    const dir = tempDir()
    const statePath = join(dir, 'state.json')
    sim.reply({ status: 200 })
    const child = await startWorker(options(statePath, { apiCallGapMs: 0 }))
    const second = await startWorker(options(statePath, { apiCallGapMs: 0 }))

    expect((await refresh(child, { callers: 2, identity: 'alice', token: tokens.identified })).results[0].ok).toBe(true)
    expect((await refresh(child, { callers: 2, oneArg: true, token: tokens.oneArg })).results[0].ok).toBe(true)
    expect((await refresh(child, { callers: 1, fallbackId: 'fb-1', token: tokens.fallback })).results[0].ok).toBe(true)
    // A server (or proxy) that echoes the bearer token in its error body: the error message is
    // persisted as the route's last error, so the token must be redacted from it.
    sim.reply({ status: 429, body: `{"type":"error","error":{"message":"rate limited for Bearer ${tokens.failing}"}}` })
    const failed = await refresh(child, { callers: 1, fallbackId: 'fb-2', token: tokens.failing })
    expect(failed.results[0].code).toBe('QUOTA_HTTP_ERROR')
    expect(failed.results[0].message).not.toContain(tokens.failing)
    sim.reply({ status: 200 })
    // A second process joins and persists too (its own write path).
    await refresh(second, { callers: 1, oneArg: true, token: tokens.oneArg })
    await child.request({ cmd: 'pushMain', identity: 'alice', headers: { 'anthropic-ratelimit-unified-5h-utilization': '0.5' } })
    await child.request({ cmd: 'close' })
    await second.request({ cmd: 'close' })
    await child.request({ cmd: 'exit' })
    await second.request({ cmd: 'exit' })
    await Promise.all([child.exited, second.exited])

    const files = filesUnder(dir)
    expect(files).toContain(statePath)
    expect(files.some((f) => f.includes('.locks'))).toBe(true) // the route locks were written too
    // The state file names the one-argument identity by fingerprint, never by token.
    const stateText = readFileSync(statePath, 'utf8')
    expect(Object.keys(readState(statePath).routes).sort().join(' ')).toMatch(/fallback:fb-1/)
    for (const [label, token] of Object.entries(tokens)) {
      for (const file of files) {
        expect(file.includes(token), `${label} token in a file name: ${file}`).toBe(false)
        expect(readFileSync(file).includes(Buffer.from(token)), `${label} token in ${file}`).toBe(false)
      }
      expect(stateText.includes(token)).toBe(false)
      expect(child.stdout.includes(token) || child.stderr.includes(token), `${label} token logged`).toBe(false)
      expect(second.stdout.includes(token) || second.stderr.includes(token), `${label} token logged`).toBe(false)
    }
  })

  it('a state directory under a regular file: reported once, and refreshes keep working in memory with single flight', async () => {
    sim.reply({ status: 200, delayMs: 100 })
    const dir = tempDir()
    const blocker = join(dir, 'blocker')
    writeFileSync(blocker, 'not a directory')
    const statePath = join(blocker, 'state.json')
    const child = await startWorker(options(statePath, { apiCallGapMs: 0 }))

    const answer = await refresh(child, { callers: 3, identity: 'alice', token: TOKEN })
    for (const result of answer.results) expect(result.ok).toBe(true)
    expect(sim.requests).toBe(1) // one request for three callers: single flight holds in memory
    expect(answer.stats.stateErrors).toBeGreaterThanOrEqual(1)
    const again = await refresh(child, { callers: 1, identity: 'bob', token: TOKEN })
    expect(again.results[0].ok).toBe(true)
    expect(sim.requests).toBe(2)
    await until(() => child.stderr.includes(blocker), 5_000, 'the stderr report')
    // Reported once, however many reads and writes failed.
    expect(child.stderr.match(/cannot be used/g)).toHaveLength(1)
    expect(readFileSync(blocker, 'utf8')).toBe('not a directory')
    await child.request({ cmd: 'close' })
    await child.request({ cmd: 'exit' })
    const exit = await child.exited
    expect(exit).toEqual({ code: 0, signal: null })
  })
})

describe('stats across two processes', () => {
  /** A fetches (slowly) for `holderCallers`; B fires `waiterCallers` while A holds the lock. */
  async function twoProcessRun(holderCallers: number, waiterCallers: number): Promise<[RefreshReport, RefreshReport]> {
    sim.reply({ status: 200, delayMs: 500 })
    const statePath = join(tempDir(), 'state.json')
    const [a, b] = await startWorkers(2, options(statePath))
    const aCall = a.post({ cmd: 'refresh', callers: holderCallers, identity: 'alice', token: TOKEN })
    await until(() => sim.requests === 1, 10_000, "A's request")
    const bCall = b.post({ cmd: 'refresh', callers: waiterCallers, identity: 'alice', token: TOKEN })
    const [ra, rb] = await Promise.all([a.answer<RefreshReport>(aCall), b.answer<RefreshReport>(bCall)])
    expect(sim.requests).toBe(1)
    const checkedAt = ra.results[0].checkedAt
    expect([...ra.results, ...rb.results].every((r) => r.ok && r.checkedAt === checkedAt)).toBe(true)
    return [ra, rb]
  }

  it('one waiting caller: the counters of both processes are exact', async () => {
    const [a, b] = await twoProcessRun(3, 1)
    expect(a.stats).toMatchObject({
      apiCalls: 1,
      joinedInFlight: 2,
      joinedOtherProcess: 0,
      servedDuringBackoff: 0,
      lockWaits: 0,
      lockTimeouts: 0,
      stateWrites: 1,
      callbackErrors: 0,
      stateFileQuarantines: 0,
      stateErrors: 0,
    })
    expect(b.stats).toMatchObject({
      apiCalls: 0,
      joinedInFlight: 0,
      joinedOtherProcess: 1,
      servedDuringBackoff: 0,
      lockWaits: 1,
      lockTimeouts: 0,
      stateWrites: 0,
      callbackErrors: 0,
      stateFileQuarantines: 0,
      stateErrors: 0,
    })
  })

  it('several waiting callers: joinedOtherProcess counts every caller served by the other process', async () => {
    const [a, b] = await twoProcessRun(2, 4)
    expect(a.stats).toMatchObject({ apiCalls: 1, joinedInFlight: 1, joinedOtherProcess: 0, lockWaits: 0 })
    // B sent nothing and waited once; all 4 of its callers got A's result.
    expect(b.stats.apiCalls).toBe(0)
    expect(b.stats.lockWaits).toBe(1)
    expect(b.stats.lockTimeouts).toBe(0)
    expect(b.stats.joinedOtherProcess).toBe(4)
  })
})
