// The README's plugin wiring, kept here so `npm run typecheck` proves it compiles against the
// generated types. Not run by the demo.
import {
  QuotaManager,
  evaluateQuota,
  type AccountStorage,
  type FallbackAccount,
  type QuotaPolicy,
} from '../index.js'

declare const storage: AccountStorage
declare function saveStorage(s: AccountStorage): Promise<void>
declare const fallbacks: FallbackAccount[]
declare function saveFallback(id: string, patch: Partial<FallbackAccount>): Promise<void>

export const quota = new QuotaManager({
  storage,
  onMainQuotaFetched: (snapshot, checkedAt) => {
    storage.quota = { ...storage.quota, mainQuota: snapshot, mainQuotaCheckedAt: checkedAt }
    void saveStorage(storage)
  },
  onApiError: (error) => {
    storage.quota = { ...storage.quota, mainLastQuotaApiError: error }
    void saveStorage(storage)
  },
  onFallbackQuotaFetched: (id, snapshot) => void saveFallback(id, { quota: snapshot }),
  onFallbackApiError: (id, error) => void saveFallback(id, { lastQuotaRefreshError: error }),
})
quota.seedFallbacksFromAccounts(fallbacks)

let requestCount = 0

export async function pickAccount(mainId: string, mainToken: string, model: string) {
  requestCount += 1
  if (quota.needsRefresh(requestCount, model)) quota.refreshMainInBackground(mainToken)

  const policy: QuotaPolicy = {
    minimumRemaining: storage.quota?.minimumRemaining,
    failClosedOnUnknownQuota: storage.quota?.failClosedOnUnknownQuota,
  }
  const main = quota.getMain(mainId)?.quota
  if (evaluateQuota(main, policy, model).passes) return { account: 'main' as const }

  await quota.refreshAllFallbacks(fallbacks)
  for (const account of fallbacks) {
    const entry = quota.getFallback(account.id, account)
    if (entry && evaluateQuota(entry.quota, policy, model).passes) return { account: account.id }
  }

  const answer = quota.failClosedResponse()
  if (answer) {
    return { response: new Response(answer.body, { status: answer.status, headers: answer.headers }) }
  }
  return { account: 'main' as const }
}

export function harvest(mainId: string, response: Response) {
  quota.pushMainFromHeaders(mainId, Object.fromEntries(response.headers))
}
