// Issue 17: a process started later, within the freshness window, polls nothing when it names
// the account, however it names it. One real `node` child polls and exits; a second one, started
// afterwards, asks for the same account and must be answered with the first one's result
// (`fetched: false`), with no request to the usage endpoint. Through the shared state file, and
// through Redis (hosts with a state file each, so only Redis is shared; and processes of one
// machine sharing both).
//
// The same pair naming *another* account must still poll: a record is adopted only by the route
// it belongs to (`main:<id>`, `main:token:<fingerprint>`, `fallback:<id>`).

import { randomBytes } from 'node:crypto'
import { join } from 'node:path'

import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'

import { startUsageSimulator, type UsageSimulator } from '../simulator/index.js'
import {
  killAll,
  refresh,
  removeTempDirs,
  report,
  startWorker,
  tempDir,
  until,
  type Child,
  type RefreshReport,
  type WorkerOptions,
} from './helpers/mp-children.js'
import { RedisServer, redisServerMissing } from './helpers/redis-server.js'

const redisMissing = redisServerMissing()
if (redisMissing) console.warn(`\n!!! SKIPPED the Redis half of __test__/later-process.spec.ts: ${redisMissing}\n`)

const MAIN_TOKEN = 'sk-ant-oat01-later-main-' + randomBytes(12).toString('hex')
const OTHER_TOKEN = 'sk-ant-oat01-later-other-' + randomBytes(12).toString('hex')
const FALLBACK_TOKEN = 'sk-ant-oat01-later-fb-' + randomBytes(12).toString('hex')

let sim: UsageSimulator
let redis: RedisServer | undefined

beforeAll(async () => {
  sim = await startUsageSimulator()
  if (!redisMissing) redis = await RedisServer.start()
})

afterAll(async () => {
  await sim.close()
  await redis?.stop()
})

beforeEach(() => {
  sim.reset()
})

afterEach(async () => {
  await killAll()
  removeTempDirs()
})

/** How the two processes share: one state file, or one Redis with a state file each. */
interface Store {
  name: string
  skip: boolean
  /** Options for the processes of one test: call once per test, then once per process. */
  processes(): () => WorkerOptions
}

const STORES: Store[] = [
  {
    name: 'the state file',
    skip: false,
    processes() {
      const statePath = join(tempDir(), 'state.json')
      return () => ({ statePath, usageUrl: sim.url, lockTimeoutMs: 20_000 })
    },
  },
  {
    name: 'Redis (a state file per host)',
    skip: redisMissing !== null,
    processes() {
      const keyPrefix = `aqm-later-${randomBytes(4).toString('hex')}:`
      return () => ({
        statePath: join(tempDir(), 'state.json'),
        usageUrl: sim.url,
        lockTimeoutMs: 20_000,
        redis: { url: redis?.url ?? '', keyPrefix },
      })
    },
  },
  {
    // Processes of one machine with Redis configured: the later one also finds the record in
    // the state file it seeds from, and must still take it, from Redis, without a request.
    name: 'Redis (hosts of one machine, one state file)',
    skip: redisMissing !== null,
    processes() {
      const keyPrefix = `aqm-later-${randomBytes(4).toString('hex')}:`
      const statePath = join(tempDir(), 'state.json')
      return () => ({ statePath, usageUrl: sim.url, lockTimeoutMs: 20_000, redis: { url: redis?.url ?? '', keyPrefix } })
    },
  },
]

/** One refresh call in `child`, with its metadata; its single caller's outcome. */
async function refreshOnce(child: Child, command: Record<string, unknown>): Promise<RefreshReport['results'][number]> {
  const answer = await refresh(child, { callers: 1, metadata: true, ...command })
  expect(answer.results).toHaveLength(1)
  return answer.results[0]!
}

/** The first process: polls once, closes (its writes are done) and exits. */
async function firstProcessPolls(options: () => WorkerOptions, command: Record<string, unknown>): Promise<number> {
  const first = await startWorker(options())
  const polled = await refreshOnce(first, command)
  expect(polled).toMatchObject({ ok: true, fetched: true, source: 'poll' })
  await first.request({ cmd: 'close' })
  first.kill()
  await first.exited
  expect(sim.requests).toBe(1)
  return polled.checkedAt!
}

/** How a later process names the account, before and in its refresh. */
interface Naming {
  name: string
  /** What the first process calls to poll. */
  first: Record<string, unknown>
  /** What the later process does before refreshing (binding, seeding). */
  prepare?: (child: Child) => Promise<unknown>
  /** The later process's refresh. */
  later: Record<string, unknown>
}

const NAMINGS: Naming[] = [
  {
    name: "main by id, no identity bound: refreshMain('alice', token)",
    first: { identity: 'alice', token: MAIN_TOKEN },
    later: { identity: 'alice', token: MAIN_TOKEN },
  },
  {
    name: "main by id, identity bound first: setMainQuotaAccountIdentity('alice')",
    first: { identity: 'alice', token: MAIN_TOKEN },
    prepare: (child) => child.request({ cmd: 'bindMain', identity: 'alice' }),
    later: { identity: 'alice', token: MAIN_TOKEN },
  },
  {
    name: 'main by token: refreshMain(token)',
    first: { oneArg: true, token: MAIN_TOKEN },
    later: { oneArg: true, token: MAIN_TOKEN },
  },
  {
    name: "fallback by id, not seeded: refreshFallback('fb-1', token)",
    first: { fallbackId: 'fb-1', token: FALLBACK_TOKEN },
    later: { fallbackId: 'fb-1', token: FALLBACK_TOKEN },
  },
  {
    name: 'fallback by id, seeded first from the host account list',
    first: { fallbackId: 'fb-1', token: FALLBACK_TOKEN },
    prepare: (child) => child.request({ cmd: 'seedFallbacks', accounts: [{ id: 'fb-1', type: 'oauth', enabled: true }] }),
    later: { fallbackId: 'fb-1', token: FALLBACK_TOKEN },
  },
]

for (const store of STORES) {
  describe.skipIf(store.skip)(`a process started later polls nothing, through ${store.name}`, () => {
    for (const naming of NAMINGS) {
      it(naming.name, async () => {
        const options = store.processes()
        const checkedAt = await firstProcessPolls(options, naming.first)

        const later = await startWorker(options())
        await naming.prepare?.(later)
        const served = await refreshOnce(later, naming.later)

        expect(served).toMatchObject({ ok: true, fetched: false, source: 'poll', checkedAt })
        expect(sim.requests, 'no second request').toBe(1)
        const { stats } = await report(later)
        expect(stats.apiCalls).toBe(0)
        expect(stats.joinedOtherProcess).toBe(1)
      })
    }

    it('background refresh: refreshMainInBackground(token)', async () => {
      const options = store.processes()
      await firstProcessPolls(options, { oneArg: true, token: MAIN_TOKEN })

      const later = await startWorker(options())
      await later.request({ cmd: 'background', token: MAIN_TOKEN })
      await until(async () => (await report(later)).stats.joinedOtherProcess === 1, 10_000, 'the background refresh to adopt the result')

      expect(sim.requests, 'no second request').toBe(1)
      expect((await report(later)).stats.apiCalls).toBe(0)
    })

    it('a second refresh in the later process asks for a newer result, as in the first process', async () => {
      const options = store.processes()
      await firstProcessPolls(options, { identity: 'alice', token: MAIN_TOKEN })

      const later = await startWorker(options())
      expect(await refreshOnce(later, { identity: 'alice', token: MAIN_TOKEN })).toMatchObject({ ok: true, fetched: false })
      // The adopted result has answered a refresh: from then on it is this process's own
      // knowledge, and an explicit refresh polls for a newer one (pacing allowing).
      await new Promise((done) => setTimeout(done, 1_100))
      expect(await refreshOnce(later, { identity: 'alice', token: MAIN_TOKEN })).toMatchObject({ ok: true, fetched: true })
      expect(sim.requests).toBe(2)
    })

    describe("never another account's record", () => {
      it('main: another id polls for itself', async () => {
        const options = store.processes()
        await firstProcessPolls(options, { identity: 'alice', token: MAIN_TOKEN })
        const later = await startWorker(options())
        expect(await refreshOnce(later, { identity: 'bob', token: OTHER_TOKEN })).toMatchObject({ ok: true, fetched: true })
        expect(sim.requests).toBe(2)
      })

      it('main: another token polls for itself', async () => {
        const options = store.processes()
        await firstProcessPolls(options, { oneArg: true, token: MAIN_TOKEN })
        const later = await startWorker(options())
        expect(await refreshOnce(later, { oneArg: true, token: OTHER_TOKEN })).toMatchObject({ ok: true, fetched: true })
        expect(sim.requests).toBe(2)
      })

      it('main by token does not take the record of an account named by id', async () => {
        const options = store.processes()
        await firstProcessPolls(options, { identity: 'alice', token: MAIN_TOKEN })
        const later = await startWorker(options())
        expect(await refreshOnce(later, { oneArg: true, token: MAIN_TOKEN })).toMatchObject({ ok: true, fetched: true })
        expect(sim.requests).toBe(2)
      })

      it('fallback: another id polls for itself', async () => {
        const options = store.processes()
        await firstProcessPolls(options, { fallbackId: 'fb-1', token: FALLBACK_TOKEN })
        const later = await startWorker(options())
        expect(await refreshOnce(later, { fallbackId: 'fb-2', token: OTHER_TOKEN })).toMatchObject({ ok: true, fetched: true })
        expect(sim.requests).toBe(2)
      })
    })
  })
}
