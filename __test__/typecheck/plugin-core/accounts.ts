// The plugin core's own account types (cortexkit/anthropic-auth, packages/core/src/accounts.ts),
// restated with the same names as there: several are also names this package exports
// (`AccountStorage`, `QuotaMoney`), which is why the barrel beside it re-exports the package by
// name rather than with `export *` (that would clash: TS2308).

export type QuotaMoney = { amountMinor: number; currency: string; exponent: number }

export type OAuthQuotaWindow = { usedPercent: number; remainingPercent: number; resetsAt?: string; checkedAt: number }

export type OAuthQuotaSnapshot = {
  five_hour?: OAuthQuotaWindow
  seven_day?: OAuthQuotaWindow
  scoped?: Array<OAuthQuotaWindow & { id: string; title: string; modelId?: string; modelName: string }>
  extraUsage?: { used: QuotaMoney; limit: QuotaMoney; utilizationPercent?: number; severity?: string; exhausted: boolean }
  bindingWindow?: string
  bindingWindowSource?: 'poll' | 'headers'
  fieldSources?: Partial<
    Record<'five_hour' | 'seven_day' | 'scoped' | 'extraUsage' | 'bindingWindow' | 'fallbackAdvised', 'poll' | 'headers'>
  >
  fallbackAdvised?: boolean
  source?: 'poll' | 'headers'
  checkedAt?: number
  accountIdentity?: string
}

export type AccountOperationError = {
  message: string
  checkedAt: number
  nextRetryAt?: number
  retryCount?: number
  accountIdentity?: string
  status?: number
}

export type OAuthAccount = {
  id: string
  type: 'oauth'
  label?: string
  enabled?: boolean
  access?: string
  refresh: string
  expires?: number
  authLineageId?: string
  accountIdentity?: string
  quota?: OAuthQuotaSnapshot
  lastQuotaRefreshError?: AccountOperationError
}

export type ApiKeyAccount = { id: string; type: 'api'; label?: string; enabled?: boolean; key: string }

export type AccountStorage = {
  version: 1
  mainAccountId?: string
  main?: { type: 'opencode' | 'native'; provider: 'anthropic'; profile?: { accountIdentity?: string } }
  accounts: Array<OAuthAccount | ApiKeyAccount>
  routing?: { mode?: 'main-first' | 'fallback-first' }
  quota?: {
    enabled?: boolean
    checkIntervalMinutes?: number
    refreshEveryNRequests?: number
    failClosedOnUnknownQuota?: boolean
    mainQuota?: OAuthQuotaSnapshot
    mainQuotaCheckedAt?: number
    mainQuotaToken?: string
    mainLastQuotaApiError?: AccountOperationError
    mainQuotaErrorGeneration?: number
    mainQuotaErrorClearedAt?: number
    killswitch?: { enabled?: boolean }
  }
}

export function isOAuthAccount(account: OAuthAccount | ApiKeyAccount): account is OAuthAccount {
  return account.type === 'oauth'
}
