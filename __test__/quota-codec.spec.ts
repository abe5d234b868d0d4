// Every snapshot the package hands out must pass the plugin's strict quota codec
// (cortexkit/anthropic-auth, packages/core/src/native-quota-codec.ts, `isNativeOAuthQuotaSnapshot`):
// the plugin stores the quota it gets from the manager through that codec, which refuses any key
// outside the snapshot shape. The rule is restated below in this file's own words, and run over
// every shape the package produces: polls (HTTP and a host transport), header pushes (raw headers
// and snapshots), `parseQuotaHeaders`, polls merged with newer headers, host-set entries,
// seeded entries, another process's result read from the state file, and the callbacks.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { afterEach, beforeEach, describe, expect, test } from 'vitest'

import { parseQuotaHeaders, QuotaManager } from '../index.js'
import type { QuotaEntry, QuotaManagerOptions, QuotaSnapshot } from '../index.js'

// ----- the codec's rule, restated ----------------------------------------------------------

type Json = Record<string, unknown>

const FIELD_NAMES = ['five_hour', 'seven_day', 'scoped', 'extraUsage', 'bindingWindow', 'fallbackAdvised']
const SNAPSHOT_KEYS = [
  'five_hour',
  'seven_day',
  'scoped',
  'checkedAt',
  'accountIdentity',
  'extraUsage',
  'bindingWindow',
  'bindingWindowSource',
  'fieldSources',
  'fallbackAdvised',
  'source',
]

const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value)
const isFiniteNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value)
const isTime = (value: unknown) => isFiniteNumber(value) && value >= 0
/** A non-empty string without surrounding whitespace. */
const isTrimmedText = (value: unknown) => typeof value === 'string' && value !== '' && value.trim() === value
const isSource = (value: unknown) => value === 'poll' || value === 'headers'
const absentOr = (value: Json, key: string, check: (field: unknown) => boolean) => value[key] === undefined || check(value[key])

/** Every required key present, and no key outside required + optional. */
function hasExactly(value: Json, required: string[], optional: string[] = []): boolean {
  const allowed = new Set([...required, ...optional])
  return required.every((key) => Object.hasOwn(value, key)) && Object.keys(value).every((key) => allowed.has(key))
}

function isMoney(value: unknown): boolean {
  return (
    isObject(value) &&
    hasExactly(value, ['amountMinor', 'currency', 'exponent']) &&
    isFiniteNumber(value.amountMinor) &&
    isTrimmedText(value.currency) &&
    /^[A-Za-z]{3}$/.test(value.currency as string) &&
    Number.isInteger(value.exponent) &&
    (value.exponent as number) >= 0 &&
    (value.exponent as number) <= 20
  )
}

function isExtraUsage(value: unknown): boolean {
  return (
    isObject(value) &&
    hasExactly(value, ['used', 'limit', 'exhausted'], ['utilizationPercent', 'severity']) &&
    isMoney(value.used) &&
    isMoney(value.limit) &&
    typeof value.exhausted === 'boolean' &&
    absentOr(value, 'utilizationPercent', isFiniteNumber) &&
    absentOr(value, 'severity', (severity) => typeof severity === 'string')
  )
}

function isWindow(value: unknown, scoped: boolean): boolean {
  const base = ['usedPercent', 'remainingPercent', 'checkedAt']
  if (!isObject(value)) return false
  const shape = scoped
    ? hasExactly(value, [...base, 'id', 'title', 'modelName'], ['resetsAt', 'modelId'])
    : hasExactly(value, base, ['resetsAt'])
  return (
    shape &&
    isFiniteNumber(value.usedPercent) &&
    isFiniteNumber(value.remainingPercent) &&
    isTime(value.checkedAt) &&
    absentOr(value, 'resetsAt', (reset) => typeof reset === 'string') &&
    (!scoped ||
      (isTrimmedText(value.id) &&
        isTrimmedText(value.title) &&
        isTrimmedText(value.modelName) &&
        absentOr(value, 'modelId', isTrimmedText)))
  )
}

/** Whether the plugin's codec would take this value as an `OAuthQuotaSnapshot`. */
function passesPluginCodec(value: unknown): boolean {
  if (!isObject(value) || !hasExactly(value, [], SNAPSHOT_KEYS)) return false
  const sources = value.fieldSources
  return (
    absentOr(value, 'checkedAt', isTime) &&
    absentOr(value, 'accountIdentity', isTrimmedText) &&
    absentOr(value, 'extraUsage', isExtraUsage) &&
    absentOr(value, 'bindingWindow', isTrimmedText) &&
    absentOr(value, 'bindingWindowSource', isSource) &&
    (sources === undefined || (isObject(sources) && hasExactly(sources, [], FIELD_NAMES) && Object.values(sources).every(isSource))) &&
    absentOr(value, 'fallbackAdvised', (advised) => typeof advised === 'boolean') &&
    absentOr(value, 'source', isSource) &&
    absentOr(value, 'five_hour', (window) => isWindow(window, false)) &&
    absentOr(value, 'seven_day', (window) => isWindow(window, false)) &&
    absentOr(
      value,
      'scoped',
      (list) =>
        Array.isArray(list) &&
        list.every((window) => isWindow(window, true)) &&
        new Set(list.map((window: Json) => window.id)).size === list.length,
    )
  )
}

/** Asserts the rule, naming what was refused. */
function expectCodecPasses(what: string, quota: QuotaSnapshot | null | undefined): void {
  expect(quota, what).toBeTruthy()
  expect(passesPluginCodec(quota), `${what}: ${JSON.stringify(quota)}`).toBe(true)
}

describe('the restated codec rule', () => {
  const window = { usedPercent: 10, remainingPercent: 90, checkedAt: 1 }
  test('takes the full snapshot shape', () => {
    expect(
      passesPluginCodec({
        five_hour: { ...window, resetsAt: '2026-09-14T02:10:00Z' },
        seven_day: window,
        scoped: [{ ...window, id: 'a', title: 'Fable only', modelName: 'Fable', modelId: 'claude-fable' }],
        extraUsage: {
          used: { amountMinor: 1, currency: 'USD', exponent: 2 },
          limit: { amountMinor: 9, currency: 'USD', exponent: 2 },
          exhausted: false,
          severity: 'normal',
        },
        bindingWindow: 'five_hour',
        bindingWindowSource: 'poll',
        fieldSources: { five_hour: 'poll', fallbackAdvised: 'headers' },
        fallbackAdvised: false,
        source: 'poll',
        checkedAt: 1,
        accountIdentity: 'main',
      }),
    ).toBe(true)
  })

  test.each([
    ['a status key', { five_hour: window, status: 'allowed' }],
    ['an unknown window key', { five_hour: { ...window, extra: 1 } }],
    ['a window without checkedAt', { five_hour: { usedPercent: 1, remainingPercent: 99 } }],
    ['a padded identity', { accountIdentity: ' main ' }],
    [
      'duplicate scoped ids',
      {
        scoped: [
          { ...window, id: 'a', title: 't', modelName: 'm' },
          { ...window, id: 'a', title: 't', modelName: 'm' },
        ],
      },
    ],
    ['an unknown field source', { fieldSources: { status: 'poll' } }],
    ['a negative checkedAt', { checkedAt: -1 }],
  ])('refuses %s', (_, value) => {
    expect(passesPluginCodec(value)).toBe(false)
  })
})

// ----- every shape the package hands out ---------------------------------------------------

const NOW = 1_789_351_000_000
const FULL_BODY = {
  five_hour: { utilization: 9, resets_at: '2026-09-14T02:10:00Z' },
  seven_day: { utilization: 68, resets_at: '2026-09-19T09:00:00Z' },
  seven_day_opus: null,
  limits: [
    { kind: 'session', group: 'session', percent: 9, is_active: false },
    { kind: 'weekly_all', group: 'weekly', percent: 68, is_active: false },
    {
      kind: 'weekly_scoped',
      group: 'weekly',
      percent: 22,
      is_active: true,
      resets_at: '2026-09-18T00:00:00Z',
      scope: { model: { id: 'claude-fable-5-1', display_name: 'Fable' } },
    },
  ],
  extra_usage: { is_enabled: true, monthly_limit: 10000, used_credits: 1261, utilization: 12.61 },
  spend: { severity: 'normal', limit: { amount_minor: 10000, currency: 'USD', exponent: 2 } },
}
const HEADERS = {
  'anthropic-ratelimit-unified-5h-utilization': '0.3',
  'anthropic-ratelimit-unified-5h-reset': '1789351800',
  'anthropic-ratelimit-unified-7d-utilization': '0.7',
  'anthropic-ratelimit-unified-7d-reset': '1789808400',
  'anthropic-ratelimit-unified-fallback': 'available',
  'anthropic-ratelimit-unified-representative-claim': 'seven_day',
  'anthropic-ratelimit-unified-status': 'allowed_warning',
  'anthropic-ratelimit-unified-5h-status': 'allowed',
  'anthropic-ratelimit-unified-7d-status': 'allowed_warning',
  'anthropic-ratelimit-unified-reset': '1789808400',
}

describe('every snapshot the package hands out passes the plugin codec', () => {
  let dir: string
  let managers: QuotaManager[]
  let now: number

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'aqm-codec-'))
    managers = []
    now = NOW
  })

  afterEach(async () => {
    await Promise.allSettled(managers.map((manager) => manager.close()))
    rmSync(dir, { recursive: true, force: true })
  })

  function make(options: QuotaManagerOptions = {}): QuotaManager {
    const manager = new QuotaManager({
      storage: null,
      statePath: join(dir, 'state.json'),
      usageUrl: 'http://127.0.0.1:9/api/oauth/usage',
      apiCallGapMs: 0,
      now: () => now,
      fetchImpl: async () => Response.json(FULL_BODY),
      ...options,
    })
    managers.push(manager)
    return manager
  }

  test('polls over fetch, main and fallback, their cache entries and callbacks', async () => {
    const announced: QuotaSnapshot[] = []
    const manager = make({
      onMainQuotaFetched: (quota) => void announced.push(quota),
      onFallbackQuotaFetched: (_, quota) => void announced.push(quota),
    })
    expectCodecPasses('refreshMain', await manager.refreshMain('main', 'main-token'))
    expectCodecPasses('refreshMainWithMetadata', (await manager.refreshMainWithMetadata('main', 'main-token')).quota)
    expectCodecPasses('getMain', manager.getMain('main')?.quota)
    expectCodecPasses('refreshFallback', await manager.refreshFallback('fb', 'fb-token'))
    expectCodecPasses('getFallback', manager.getFallback('fb')?.quota)
    expectCodecPasses('getAllFallbacks', manager.getAllFallbacks().get('fb')?.quota)
    expect(announced.length).toBeGreaterThanOrEqual(2)
    for (const quota of announced) expectCodecPasses('a fetched callback', quota)
  })

  test('polls through a host transport, with an answer carrying junk keys', async () => {
    const manager = make({
      fetchQuotaSnapshot: async ({ accountId }) =>
        ({
          accountIdentity: accountId,
          checkedAt: now,
          scoped: [],
          five_hour: { usedPercent: 5, remainingPercent: 95, checkedAt: now, junk: true },
          status: 'allowed',
          legacy: 1,
        }) as unknown as QuotaSnapshot,
    })
    expectCodecPasses('transport main poll', await manager.refreshMain('main', ''))
    expectCodecPasses('transport fallback poll', await manager.refreshFallback('fb', ''))
  })

  test('header pushes (raw headers with statuses, and snapshots) and parseQuotaHeaders', () => {
    const manager = make()
    expectCodecPasses('parseQuotaHeaders', parseQuotaHeaders(HEADERS, now))
    expectCodecPasses('pushMainFromHeaders (headers)', manager.pushMainFromHeaders('main', HEADERS)?.quota)
    expectCodecPasses('pushMainFromHeaders (Headers)', manager.pushMainFromHeaders('main', new Headers(HEADERS))?.quota)
    const parsed = parseQuotaHeaders(HEADERS, now + 1)
    expectCodecPasses('pushMainFromHeaders (snapshot)', manager.pushMainFromHeaders('main', parsed as QuotaSnapshot)?.quota)
    expectCodecPasses('pushFallbackFromHeaders', manager.pushFallbackFromHeaders('fb', HEADERS, { authLineageId: 'l1' })?.quota)
    expectCodecPasses('getMain after pushes', manager.getMain('main')?.quota)
  })

  test('a poll merged with newer headers, and headers merged into a poll', async () => {
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    const manager = make({
      fetchImpl: async () => {
        await gate
        return Response.json(FULL_BODY)
      },
    })
    const poll = manager.refreshMain('main', 'main-token')
    now += 1_000
    manager.pushMainFromHeaders('main', HEADERS)
    release()
    expectCodecPasses('poll completing under newer headers', await poll)
    now += 1_000
    expectCodecPasses('headers over a poll', manager.pushMainFromHeaders('main', HEADERS)?.quota)
  })

  test('host-set entries come back deep-equal, and seeded ones pass', () => {
    const manager = make()
    const hostQuota: QuotaSnapshot = {
      five_hour: { usedPercent: 25, remainingPercent: 75, checkedAt: now },
      scoped: [
        { id: 'claude-weekly-scoped-fable', title: 'Fable only', modelName: 'Fable', usedPercent: 3, remainingPercent: 97, checkedAt: now },
      ],
      source: 'headers',
      checkedAt: now,
      accountIdentity: 'main',
    }
    const entry: QuotaEntry = { quota: hostQuota, checkedAt: now, refreshAfter: now + 60_000 }
    manager.setMain('main', entry)
    manager.setFallback('fb', entry, { authLineageId: 'l1' })
    expect(manager.getMain('main')).toEqual(entry)
    expect(manager.getFallback('fb')).toEqual(entry)
    expect(manager.getAllFallbacks().get('fb')).toEqual(entry)

    const seeded = make({
      storage: {
        version: 1,
        accounts: [],
        mainAccountId: 'main',
        quota: { mainQuota: { ...hostQuota, status: 'allowed', quotas: [] } as unknown as QuotaSnapshot, mainQuotaCheckedAt: now },
      },
    })
    expectCodecPasses('seeded main', seeded.getMain('main')?.quota)
    seeded.seedFallbacksFromAccounts([{ id: 'fb2', quota: { ...hostQuota, status: 'x' } as unknown as QuotaSnapshot }])
    expectCodecPasses('seeded fallback', seeded.getFallback('fb2')?.quota)
  })

  test("another process's result, read from the shared state file", async () => {
    const writer = make()
    await writer.refreshMain('main', 'main-token')
    writer.pushFallbackFromHeaders('fb', HEADERS)
    await writer.close()
    const reader = make({ fetchImpl: async () => Response.json(FULL_BODY) })
    expectCodecPasses('main read from the state file', (await reader.refreshMainWithMetadata('main', 'main-token')).quota)
    expectCodecPasses('fallback read from the state file', reader.getFallback('fb')?.quota)
  })
})
