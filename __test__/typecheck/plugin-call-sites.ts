// Typecheck fixture (issue 9): every call the OpenCode Anthropic auth plugin makes on its
// QuotaManager today, with the plugin's own argument shapes, against this package's index.d.ts.
// Compiled, never run: `npm run typecheck:plugin` (tsc --strict --exactOptionalPropertyTypes).
//
// The plugin (cortexkit/anthropic-auth) calls its QuotaManager from packages/opencode/src/index.ts
// and packages/core/src/accounts.ts; the reference list is docs/compat.md. The plugin's
// account and storage types are restated below in this file's own words, with the same shapes,
// so that "only the import line changes" is checked against what the plugin really passes: its
// `AccountStorage` (with `version`, `accounts`, `main`, `mainQuotaToken`, error generations), its
// `FallbackAccount` union (OAuth and API-key accounts) and its `AccountOperationError`.
//
// The one line a maintainer changes is the import below.

import {
  QuotaManager,
  evaluateQuota,
  tokenFingerprint,
  type FallbackAccount,
  type OAuthFallbackAccount,
  type QuotaEntry,
  type QuotaManagerOptions,
  type QuotaRefreshResult,
  type QuotaSnapshot,
} from '../../index.js'

// ---------------------------------------------------------------------------------------------
// The plugin's data shapes (packages/core/src/accounts.ts), restated.
// ---------------------------------------------------------------------------------------------

type PluginQuotaWindowName = 'five_hour' | 'seven_day'

type PluginOperationError = {
  message: string
  checkedAt: number
  nextRetryAt?: number
  retryCount?: number
  accountIdentity?: string
  tokenHash?: string
  status?: number
  permanent?: boolean
}

type PluginQuotaWindow = { usedPercent: number; remainingPercent: number; resetsAt?: string; checkedAt: number }

type PluginScopedWindow = PluginQuotaWindow & { id: string; title: string; modelId?: string; modelName: string }

type PluginMoney = { amountMinor: number; currency: string; exponent: number }

type PluginQuotaSnapshot = Partial<Record<PluginQuotaWindowName, PluginQuotaWindow>> & {
  accountIdentity?: string
  scoped?: PluginScopedWindow[]
  extraUsage?: { used: PluginMoney; limit: PluginMoney; utilizationPercent?: number; severity?: string; exhausted: boolean }
  bindingWindow?: string
  bindingWindowSource?: 'poll' | 'headers'
  fallbackAdvised?: boolean
  source?: 'poll' | 'headers'
  checkedAt?: number
}

type PluginAccountBase = { id: string; label?: string; enabled?: boolean; addedAt?: number; lastUsed?: number }

type PluginOAuthAccount = PluginAccountBase & {
  type: 'oauth'
  authLineageId?: string
  access?: string
  refresh: string
  expires?: number
  lastRefreshedAt?: number
  lastRefreshError?: PluginOperationError
  lastQuotaRefreshError?: PluginOperationError
  quota?: PluginQuotaSnapshot
}

type PluginApiKeyAccount = PluginAccountBase & {
  type: 'api'
  apiKey?: string
  baseURL: string
  authHeader?: 'authorization-bearer' | 'x-api-key'
}

type PluginFallbackAccount = PluginOAuthAccount | PluginApiKeyAccount

type PluginAccountStorage = {
  version: 1
  mainAccountId?: string
  main?: { type: 'opencode'; provider: 'anthropic' }
  quota?: {
    enabled?: boolean
    checkIntervalMinutes?: number
    refreshEveryNRequests?: number
    minimumRemaining?: Partial<Record<PluginQuotaWindowName | '5h' | '1w', number>>
    failClosedOnUnknownQuota?: boolean
    showToasts?: boolean
    mainQuota?: PluginQuotaSnapshot
    mainQuotaCheckedAt?: number
    mainQuotaToken?: string
    mainLastQuotaApiError?: PluginOperationError
    mainQuotaErrorGeneration?: number
    mainQuotaErrorClearedAt?: number
  }
  accounts: PluginFallbackAccount[]
}

const isOAuthAccount = (account: PluginFallbackAccount): account is PluginOAuthAccount => account.type === 'oauth'

// ---------------------------------------------------------------------------------------------
// What the plugin has around its calls.
// ---------------------------------------------------------------------------------------------

declare function loadAccounts(path: string): Promise<PluginAccountStorage | null>
declare function saveAccountState(storage: PluginAccountStorage, path: string, scope: object): Promise<void>
declare function fetchOAuthQuotaSnapshot(options: { accessToken: string }): Promise<PluginQuotaSnapshot>
declare function fetchScopedQuota(routeId: string): Promise<PluginQuotaSnapshot>
declare const accountStoragePath: string
declare const initialStorage: PluginAccountStorage | null
declare let mainQuotaAccountId: string | undefined
declare const served: { accountId: string; authLineageId: string | undefined }
declare const incoming: PluginQuotaSnapshot
declare const responseHeaders: Record<string, string>
declare const mainAccessToken: string
declare const modelId: string | undefined

// ---------------------------------------------------------------------------------------------
// Construction (packages/opencode/src/index.ts): a host transport and the 6- and 2-argument
// callbacks, all async (their promises are not awaited by the manager).
// ---------------------------------------------------------------------------------------------

const quotaManager = new QuotaManager({
  storage: initialStorage,
  fetchQuotaSnapshot: async (request) => {
    const kind: 'main' | 'fallback' = request.kind
    const routeId = kind === 'main' ? 'main' : request.accountId
    if (!routeId) throw new Error('quota request has no account identity')
    if (request.accessToken === '') return fetchScopedQuota(routeId)
    return fetchOAuthQuotaSnapshot({ accessToken: request.accessToken })
  },
  onMainQuotaFetched: async (quota, checkedAt, fingerprint, fetchStartedAt, quotaErrorGeneration, quotaErrorClearedAt) => {
    const storage = await loadAccounts(accountStoragePath)
    if (!storage) return
    if ((storage.quota?.mainQuotaCheckedAt ?? 0) >= fetchStartedAt) {
      quotaManager.seedMainFromStorage(storage, mainQuotaAccountId)
      return
    }
    storage.quota = storage.quota ?? {}
    storage.quota.mainQuota = quota
    storage.quota.mainQuotaCheckedAt = checkedAt
    storage.quota.mainQuotaToken = fingerprint
    delete storage.quota.mainLastQuotaApiError
    storage.quota.mainQuotaErrorGeneration = quotaErrorGeneration
    if (quotaErrorClearedAt !== undefined) storage.quota.mainQuotaErrorClearedAt = quotaErrorClearedAt
    await saveAccountState(storage, accountStoragePath, { mainQuota: true })
  },
  onApiError: async (error, quotaErrorGeneration) => {
    const storage = await loadAccounts(accountStoragePath)
    if (!storage) return
    storage.quota = storage.quota ?? {}
    storage.quota.mainLastQuotaApiError = error
    storage.quota.mainQuotaErrorGeneration = quotaErrorGeneration
    await saveAccountState(storage, accountStoragePath, { mainQuota: true })
  },
  onFallbackQuotaFetched: async (accountId, quota, _checkedAt, fetchStartedAt) => {
    const storage = await loadAccounts(accountStoragePath)
    const account = storage?.accounts.find(
      (candidate): candidate is PluginOAuthAccount => candidate.id === accountId && isOAuthAccount(candidate),
    )
    if (!storage || !account) return
    if ((account.quota?.checkedAt ?? 0) >= fetchStartedAt) {
      quotaManager.seedFallbacksFromAccounts(storage.accounts.filter(isOAuthAccount))
      return
    }
    account.quota = quota
    delete account.lastQuotaRefreshError
    await saveAccountState(storage, accountStoragePath, { accounts: [accountId] })
  },
  onFallbackApiError: async (accountId: string, error: NonNullable<PluginOAuthAccount['lastQuotaRefreshError']>) => {
    const storage = await loadAccounts(accountStoragePath)
    const account = storage?.accounts.find((candidate) => candidate.id === accountId)
    if (!storage || !account || !isOAuthAccount(account)) return
    account.lastQuotaRefreshError = error
    await saveAccountState(storage, accountStoragePath, { accounts: [accountId] })
  },
})

// The plugin's tests construct it with an injected fetch and clock, and `storage: null`.
declare const fetchMock: unknown
let testNow = 1_000_000
const testManager = new QuotaManager({ storage: null, fetchImpl: fetchMock as typeof fetch, now: () => testNow })
const realFetchManager = new QuotaManager({ storage: null, fetchImpl: fetch })
testNow += 1
// Hosts that want the old awaited callbacks.
const awaitingManager = new QuotaManager({ storage: null, awaitCallbacks: true })
const options: QuotaManagerOptions = { storage: null, now: Date.now }
new QuotaManager(options)

// ---------------------------------------------------------------------------------------------
// Main identity binding (index.ts: reconcileMainQuotaAccountIdentity and the identity resolver).
// ---------------------------------------------------------------------------------------------

async function reconcileMainQuotaAccountIdentity(
  accessToken: string,
  quotaKey: string | undefined,
  providerIdentityChanged: boolean,
): Promise<void> {
  mainQuotaAccountId = quotaKey
  const clearedGeneration: number | undefined = quotaManager.setMainQuotaAccountIdentity(
    quotaKey,
    accessToken.startsWith('sk-ant-oat'),
    providerIdentityChanged,
  )
  quotaManager.setMainQuotaAccountIdentity(quotaKey)
  if (quotaKey === undefined) return
  const storage = await loadAccounts(accountStoragePath)
  if (!storage) return
  storage.quota = storage.quota ?? {}
  storage.quota.mainQuotaErrorGeneration = Math.max(
    storage.quota.mainQuotaErrorGeneration ?? 0,
    clearedGeneration ?? quotaManager.getMainQuotaErrorGeneration(),
  )
  storage.quota.mainQuotaErrorClearedAt = Math.max(
    storage.quota.mainQuotaErrorClearedAt ?? 0,
    quotaManager.getMainQuotaErrorClearedAt() ?? Date.now(),
  )
  if (accessToken.startsWith('sk-ant-oat') && !providerIdentityChanged) quotaManager.clearMain()
  await saveAccountState(storage, accountStoragePath, { mainQuota: true })
}

const identityGeneration: number = quotaManager.getMainQuotaIdentityGeneration()
const clearedBackoff: number | undefined = quotaManager.clearMainBackoff()
const tokenless: boolean = quotaManager.canFetchWithoutAccessToken()

// ---------------------------------------------------------------------------------------------
// Main route: refreshes with an identity that may be unresolved, request-bound generations,
// an empty token through the host transport, and the caught fire-and-forget form.
// ---------------------------------------------------------------------------------------------

async function refreshPrimeMainQuota(credential: { accessToken: string }): Promise<{ quota: QuotaSnapshot; fresh: boolean }> {
  const result: QuotaRefreshResult = await quotaManager.refreshMainWithMetadata(mainQuotaAccountId, credential.accessToken)
  return { quota: result.quota, fresh: result.fetched }
}

async function refreshMainForRequest(generation: number): Promise<PluginQuotaSnapshot> {
  const quota: PluginQuotaSnapshot = await quotaManager.refreshMain(mainQuotaAccountId, mainAccessToken, generation)
  await quotaManager.refreshMainWithMetadata(mainQuotaAccountId, mainAccessToken, generation)
  await quotaManager.refreshMain(undefined, '')
  await quotaManager.refreshMain(mainAccessToken)
  return quota
}

void quotaManager.refreshMain(mainQuotaAccountId, mainAccessToken).catch(() => {})
quotaManager.refreshMainInBackground(mainAccessToken)

const mainEntry: QuotaEntry | null = quotaManager.getMain(mainQuotaAccountId)
const unboundEntry: QuotaEntry | null = quotaManager.getMain()
const mainStale: boolean = quotaManager.isMainStale(modelId)
const due: boolean = quotaManager.needsRefresh(12, modelId) || quotaManager.shouldRefreshOnRequestCount(12)
const mainBackedOff: boolean = quotaManager.isBackedOff()
const lastError = quotaManager.getLastApiError()
const lastErrorAt: number | undefined = lastError?.checkedAt
quotaManager.setMain(mainQuotaAccountId, { quota: { checkedAt: 1 }, checkedAt: 1, refreshAfter: 2 })

// Header harvest after each /v1/messages response: main by identity, fallbacks by lineage.
function harvest(): void {
  const entry =
    served.accountId === 'main'
      ? quotaManager.pushMainFromHeaders(mainQuotaAccountId, incoming)
      : quotaManager.pushFallbackFromHeaders(served.accountId, incoming, { authLineageId: served.authLineageId })
  if (!entry) return
  const checkedAt: number = entry.checkedAt
  void checkedAt
  quotaManager.pushMainFromHeaders(mainQuotaAccountId, responseHeaders)
}

// ---------------------------------------------------------------------------------------------
// Fallback routes (accounts.ts and index.ts).
// ---------------------------------------------------------------------------------------------

async function fallbackCalls(storage: PluginAccountStorage, target: PluginOAuthAccount): Promise<void> {
  // The whole union goes in; API-key accounts are ignored.
  quotaManager.seedFallbacksFromAccounts(storage.accounts)
  quotaManager.seedFallbacksFromAccounts(storage.accounts.filter(isOAuthAccount))
  await quotaManager.refreshAllFallbacks(storage.accounts)
  await quotaManager.refreshAllFallbacks(storage.accounts.filter(isOAuthAccount), (account) =>
    account.expires !== undefined && account.expires > Date.now() ? account.access : undefined,
  )
  await quotaManager.refreshAllFallbacks(
    storage.accounts.filter((account) => account.enabled !== false && isOAuthAccount(account) && account.access),
  )

  const quota: PluginQuotaSnapshot = await quotaManager.refreshFallback(target.id, target.access ?? '', target)
  target.quota = quota
  await quotaManager.refreshFallback(target.id, target.access ?? '', undefined)
  await quotaManager.refreshFallback(target.id, '', { authLineageId: target.authLineageId })
  const withMetadata: QuotaRefreshResult = await quotaManager.refreshFallbackWithMetadata(target.id, 'token', {
    authLineageId: 'replacement-login',
  })
  void withMetadata
  void quotaManager.refreshFallback(target.id, target.access ?? '', target).catch(() => {})

  const stale: boolean =
    quotaManager.isFallbackStale(target.id, undefined, modelId, target) ||
    quotaManager.isFallbackStale(target.id, target.access) ||
    quotaManager.isFallbackStale(target.id, undefined, modelId, { authLineageId: served.authLineageId })
  void stale
  const backedOff: boolean = quotaManager.isFallbackBackedOff(target.id)
  void backedOff
  const fallbackEntry: QuotaEntry | null = quotaManager.getFallback(target.id, target)
  quotaManager.getFallback(target.id)
  quotaManager.setFallback(target.id, { quota: { checkedAt: 1 }, checkedAt: 1, refreshAfter: 2 }, undefined)
  quotaManager.setFallback(target.id, { quota: { checkedAt: 1 }, checkedAt: 1, refreshAfter: 2 }, target)
  quotaManager.clearFallback(target.id)
  const all: Map<string, QuotaEntry> = quotaManager.getAllFallbacks()
  void fallbackEntry
  void all
}

// ---------------------------------------------------------------------------------------------
// Storage reloads, errors, policy and shutdown.
// ---------------------------------------------------------------------------------------------

async function afterDiskLoad(): Promise<void> {
  const storage = await loadAccounts(accountStoragePath)
  quotaManager.updateStorage(storage)
  quotaManager.seedMainFromStorage(storage, mainQuotaAccountId)
  quotaManager.seedMainFromStorage(storage)
}

async function readFailure(): Promise<number | undefined> {
  try {
    await quotaManager.refreshMain(mainQuotaAccountId, mainAccessToken)
    return undefined
  } catch (error) {
    // The plugin reads Retry-After in seconds from the rejection.
    const retryAfter = (error as { retryAfter?: number }).retryAfter
    return retryAfter
  }
}

const policy = evaluateQuota(mainEntry?.quota, { minimumRemaining: initialStorage?.quota?.minimumRemaining })
const fingerprint: string = tokenFingerprint(mainAccessToken)
// The package's names for the plugin's account union and its OAuth member.
const oauthAccount: OAuthFallbackAccount = { id: 'a', type: 'oauth', refresh: 'r', access: 'x', expires: 1 }
const apiAccount: FallbackAccount = { id: 'b', type: 'api', baseURL: 'https://example.invalid' }
const pluginAccountAsPackageAccount: FallbackAccount = initialStorage!.accounts[0]!
void quotaManager.close()

void [
  reconcileMainQuotaAccountIdentity,
  refreshPrimeMainQuota,
  refreshMainForRequest,
  harvest,
  fallbackCalls,
  afterDiskLoad,
  readFailure,
  testManager,
  realFetchManager,
  awaitingManager,
  identityGeneration,
  clearedBackoff,
  tokenless,
  unboundEntry,
  mainStale,
  due,
  mainBackedOff,
  lastErrorAt,
  policy,
  fingerprint,
  oauthAccount,
  apiAccount,
  pluginAccountAsPackageAccount,
]
