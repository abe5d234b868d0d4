// Typecheck fixture (issue 18): the plugin's wiring as of its newest entry point
// (cortexkit/anthropic-auth, packages/opencode/src/index.ts and native-account-runtime.ts),
// through its core package's barrel (./plugin-core/index.ts), whose only change is the line
// that re-exports the manager. Compiled, never run: `npm run typecheck:plugin`.
//
// What the plugin does today: it builds the manager with `storage` and `fetchQuotaSnapshot`
// only (its transport persists quota and errors in its own account store), stores a header
// observation in that store first and then hands the stored entry over with `setMain` /
// `setFallback`, compares `getMain(key)` / `getAllFallbacks().get(id)` with `===` to clean up,
// and passes main keys that can be `undefined`.

import {
  QuotaManager,
  isOAuthAccount,
  type AccountStorage,
  type OAuthAccount,
  type OAuthQuotaSnapshot,
  type QuotaEntry,
} from './plugin-core/index.js'

// ----- what the plugin has around its calls --------------------------------------------------

declare const storage: AccountStorage
declare const nativeAccounts: {
  /** Persists the quota (or the error) in the plugin's own store; rejects with status/retryAfter/code. */
  fetchQuota(routeId: string): Promise<OAuthQuotaSnapshot>
  publish(accountId: string, quota: OAuthQuotaSnapshot): Promise<boolean>
  read(): Promise<{ accounts: Array<{ id: string; quota?: OAuthQuotaSnapshot }>; policyStorage: AccountStorage }>
}
declare function mergeForPersistence(stored: OAuthQuotaSnapshot | undefined, incoming: OAuthQuotaSnapshot): OAuthQuotaSnapshot
declare function normalizeQuotaHeaders(headers: Headers): OAuthQuotaSnapshot
declare function nextRefreshAt(quota: OAuthQuotaSnapshot, storage: AccountStorage, checkedAt: number): number

// ----- construction: storage and the transport, nothing else ----------------------------------

const quotaManager = new QuotaManager({
  storage,
  fetchQuotaSnapshot: async (request) => nativeAccounts.fetchQuota(request.accountId ?? 'main'),
})

// The plugin's whole storage object, as its tests write it, needs no cast.
new QuotaManager({
  storage: {
    version: 1,
    mainAccountId: 'main-account',
    main: { type: 'opencode', provider: 'anthropic' },
    accounts: [],
    quota: { checkIntervalMinutes: 5, mainQuotaErrorGeneration: 1 },
  },
  now: () => Date.now(),
})

// ----- the header harvest: persist first, then hand the stored entry over ---------------------

type Served = { accountId: string; mainQuotaKey: string | undefined; authLineageId: string | undefined }

async function persistPushedQuota(served: Served, entry: QuotaEntry, previous: QuotaEntry | null | undefined): Promise<QuotaEntry | null> {
  const snapshot = await nativeAccounts.read()
  const account = snapshot.accounts.find((candidate) => candidate.id === served.accountId)
  const quota = mergeForPersistence(account?.quota, entry.quota)
  if (!(await nativeAccounts.publish(served.accountId, quota))) {
    // Clean up only what this observation's predecessor left, compared by identity.
    if (served.accountId === 'main') {
      if (quotaManager.getMain(served.mainQuotaKey) === previous) quotaManager.clearMain()
    } else if (quotaManager.getAllFallbacks().get(served.accountId) === previous) {
      quotaManager.clearFallback(served.accountId)
    }
    return null
  }
  return { ...entry, quota, refreshAfter: nextRefreshAt(quota, snapshot.policyStorage, entry.checkedAt) }
}

function harvestQuotaHeaders(headers: Headers, served: Served, generation: number): void {
  if (served.accountId === 'main' && quotaManager.getMainQuotaIdentityGeneration() !== generation) return
  const incoming = normalizeQuotaHeaders(headers)
  const previous =
    served.accountId === 'main' ? quotaManager.getMain(served.mainQuotaKey) : quotaManager.getAllFallbacks().get(served.accountId)
  const checkedAt = incoming.checkedAt ?? Date.now()
  void (async () => {
    const entry = await persistPushedQuota(served, { quota: incoming, checkedAt, refreshAfter: checkedAt }, previous)
    if (entry === null) return
    if (served.accountId === 'main') quotaManager.setMain(served.mainQuotaKey, entry)
    else quotaManager.setFallback(served.accountId, entry, { authLineageId: served.authLineageId })
    const five: number | undefined = entry.quota.five_hour?.usedPercent
    void five
  })().catch(() => {})
}

// ----- polls: tokenless through the transport, keys that may be undefined ---------------------

async function refreshMainQuota(key: string | undefined, generation: number): Promise<OAuthQuotaSnapshot> {
  if (quotaManager.isMainStale('claude-fable-5') || quotaManager.needsRefresh(12, 'claude-fable-5')) {
    return quotaManager.refreshMain(key, '', generation)
  }
  return quotaManager.getMain(key)?.quota ?? (await quotaManager.refreshMain(undefined, ''))
}

async function refreshFallbackQuotas(): Promise<void> {
  for (const account of storage.accounts) {
    if (!isOAuthAccount(account) || account.enabled === false) continue
    const stored: OAuthAccount = account
    try {
      await quotaManager.refreshFallback(stored.id, '', stored)
    } catch {
      // The transport already recorded the failure in the plugin's store.
    }
  }
}

function resetBackoff(): number | undefined {
  return quotaManager.clearMainBackoff()
}

export { harvestQuotaHeaders, refreshFallbackQuotas, refreshMainQuota, resetBackoff }
