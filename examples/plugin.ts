// The OpenCode Anthropic auth plugin's earlier wiring of its QuotaManager (callbacks and header
// pushes), with this package in its place: persistence through the plugin's own storage (error
// generations included), the identity binding of the main account, request-bound refreshes,
// header harvests, fallback routing and fail-closed answers. The plugin's helpers are declared,
// not implemented. Its wiring of today (a transport that persists, entries handed over with
// setMain, the barrel's named re-export) is in __test__/typecheck/plugin-wiring.ts and the
// README's "Adopting it in the plugin".
import {
  QuotaManager,
  evaluateQuota,
  type AccountStorage,
  type FallbackAccount,
  type OAuthFallbackAccount,
  type QuotaPolicy,
  type QuotaSnapshot,
} from '../index.js'

// ----- the plugin's side ------------------------------------------------------------------------

declare const accountStoragePath: string
declare function loadAccounts(path: string): Promise<(AccountStorage & { accounts: FallbackAccount[] }) | null>
declare function saveAccountState(storage: AccountStorage, path: string, scope: object): Promise<void>
/** Asks the credential vault for the account behind a main access token (its quota key). */
declare function resolveQuotaKey(accessToken: string): Promise<string | undefined>
/** Polls through the vault when the plugin holds no token itself. */
declare function fetchQuotaViaVault(route: string): Promise<QuotaSnapshot>
declare const initialStorage: (AccountStorage & { accounts: FallbackAccount[] }) | null

const isOAuth = (account: FallbackAccount): account is OAuthFallbackAccount => account.type !== 'api'

// ----- construction -----------------------------------------------------------------------------

// The default state file lives beside OPENCODE_ANTHROPIC_AUTH_FILE when that is set, else in the
// OpenCode config dir; every OpenCode process on the machine shares it.
export const quotaManager = new QuotaManager({
  storage: initialStorage,
  // Optional: a host transport. Without it the package polls the usage endpoint itself.
  fetchQuotaSnapshot: async ({ kind, accountId }) => {
    const route = kind === 'main' ? 'main' : accountId
    if (!route) throw new Error('quota request has no account identity')
    return fetchQuotaViaVault(route)
  },
  // Called before the refresh settles, not awaited: these take the plugin's file locks.
  onMainQuotaFetched: async (quota, checkedAt, tokenFingerprint, fetchStartedAt, errorGeneration, errorClearedAt) => {
    const storage = await loadAccounts(accountStoragePath)
    if (!storage) return
    const q = (storage.quota ??= {})
    // Another process wrote a newer result meanwhile: adopt it instead of overwriting it.
    if ((q.mainQuotaCheckedAt ?? 0) >= fetchStartedAt) {
      quotaManager.seedMainFromStorage(storage, mainQuotaKey)
      return
    }
    q.mainQuota = quota
    q.mainQuotaCheckedAt = checkedAt
    q.mainQuotaToken = tokenFingerprint
    delete q.mainLastQuotaApiError
    q.mainQuotaErrorGeneration = errorGeneration
    if (errorClearedAt !== undefined) {
      q.mainQuotaErrorClearedAt = Math.max(q.mainQuotaErrorClearedAt ?? 0, errorClearedAt)
    }
    await saveAccountState(storage, accountStoragePath, { mainQuota: true })
  },
  onApiError: async (error, errorGeneration) => {
    const storage = await loadAccounts(accountStoragePath)
    if (!storage) return
    const q = (storage.quota ??= {})
    q.mainLastQuotaApiError = error
    q.mainQuotaErrorGeneration = errorGeneration
    await saveAccountState(storage, accountStoragePath, { mainQuota: true })
  },
  onFallbackQuotaFetched: async (accountId, quota) => {
    const storage = await loadAccounts(accountStoragePath)
    const account = storage?.accounts.find((a) => a.id === accountId)
    if (!storage || !account || !isOAuth(account)) return
    account.quota = quota
    delete account.lastQuotaRefreshError
    await saveAccountState(storage, accountStoragePath, { accounts: [accountId] })
  },
  onFallbackApiError: async (accountId, error) => {
    const storage = await loadAccounts(accountStoragePath)
    const account = storage?.accounts.find((a) => a.id === accountId)
    if (!storage || !account || !isOAuth(account)) return
    account.lastQuotaRefreshError = error
    await saveAccountState(storage, accountStoragePath, { accounts: [accountId] })
  },
})
quotaManager.seedFallbacksFromAccounts(initialStorage?.accounts ?? []) // API-key accounts are ignored

// ----- identity binding of the main account -----------------------------------------------------

/**
 * Persists a cleared main backoff (its error generation and cleared-at), so other processes
 * drop the error at their next `updateStorage` instead of resurrecting it.
 */
async function persistMainClear(errorGeneration: number): Promise<void> {
  const storage = await loadAccounts(accountStoragePath)
  if (!storage) return
  const q = (storage.quota ??= {})
  delete q.mainLastQuotaApiError
  q.mainQuotaErrorGeneration = Math.max(q.mainQuotaErrorGeneration ?? 0, errorGeneration)
  q.mainQuotaErrorClearedAt = Math.max(q.mainQuotaErrorClearedAt ?? 0, quotaManager.getMainQuotaErrorClearedAt() ?? Date.now())
  await saveAccountState(storage, accountStoragePath, { mainQuota: true })
}

let mainQuotaKey: string | undefined
let boundAccessToken: string | undefined

/**
 * Binds the main quota to the account behind the current main token. OAuth tokens
 * (`sk-ant-oat…`) bind strictly: the cache is shown only for that exact account. When another
 * identity's backoff was cleared, the new error generation is persisted so other processes do not
 * resurrect the old error.
 */
export async function bindMainIdentity(accessToken: string, providerChanged: boolean): Promise<number> {
  if (accessToken !== boundAccessToken) {
    boundAccessToken = accessToken
    mainQuotaKey = await resolveQuotaKey(accessToken)
    const cleared = quotaManager.setMainQuotaAccountIdentity(mainQuotaKey, accessToken.startsWith('sk-ant-oat'), providerChanged)
    if (cleared !== undefined) await persistMainClear(cleared)
  }
  // The generation a request-bound refresh must still match when it starts.
  return quotaManager.getMainQuotaIdentityGeneration()
}

// ----- the request path -------------------------------------------------------------------------

let requestCount = 0

export async function pickAccount(accessToken: string, model: string, storage: AccountStorage & { accounts: FallbackAccount[] }) {
  requestCount += 1
  const generation = await bindMainIdentity(accessToken, false)
  quotaManager.updateStorage(storage) // another process may have written fresher quota

  if (quotaManager.needsRefresh(requestCount, model)) {
    // Request-bound: rejects ("Main quota identity changed before refresh") instead of polling
    // for an account this request no longer uses. Errors are recorded; nobody needs to await.
    void quotaManager.refreshMain(mainQuotaKey, accessToken, generation).catch(() => {})
  }

  // The plugin's policy fails closed on unknown quota, as evaluateQuota does by default.
  const policy: QuotaPolicy = {
    minimumRemaining: storage.quota?.minimumRemaining,
    failClosedOnUnknownQuota: storage.quota?.failClosedOnUnknownQuota,
  }
  if (evaluateQuota(quotaManager.getMain(mainQuotaKey)?.quota, policy, model).passes) {
    return { account: 'main' as const }
  }

  // Only due accounts are polled; an account's `access` counts only while `expires` is ahead.
  await quotaManager.refreshAllFallbacks(storage.accounts)
  for (const account of storage.accounts.filter(isOAuth)) {
    if (account.enabled === false) continue
    const entry = quotaManager.getFallback(account.id, account)
    if (entry && evaluateQuota(entry.quota, policy, model).passes) return { account: account.id }
  }

  const answer = quotaManager.failClosedResponse()
  if (answer) return { response: new Response(answer.body, { status: answer.status, headers: answer.headers }) }
  return { account: 'main' as const }
}

/** After every /v1/messages response (429s included): quota for free, no usage call. */
export function harvest(served: { accountId: string; authLineageId: string | undefined }, response: Response): void {
  const headers = Object.fromEntries(response.headers)
  const entry =
    served.accountId === 'main'
      ? quotaManager.pushMainFromHeaders(mainQuotaKey, headers)
      : quotaManager.pushFallbackFromHeaders(served.accountId, headers, { authLineageId: served.authLineageId })
  if (!entry) return // no quota headers, or an observation from a replaced login
}

/** Logging out of the main account, or a manual "retry now". */
export function forgetMain(): void {
  quotaManager.clearMain()
}
export async function retryMainNow(): Promise<void> {
  // Clears it here and in the shared state file; persisting the generation clears it in the
  // running processes too.
  const cleared = quotaManager.clearMainBackoff()
  if (cleared !== undefined) await persistMainClear(cleared)
}
