// An OpenCode plugin that routes Anthropic model requests by quota with anthropic-quota-manager:
// before each model request it asks whether the main account (the OpenCode `anthropic` login)
// still has quota, polling the usage endpoint when that answer is due; when main has none it
// routes to the first fallback account that has; it sends the request with that account's token,
// and feeds the response's `anthropic-ratelimit-unified-*` headers back as free quota.
//
// However many OpenCode processes run this, the usage endpoint sees one call per account per
// freshness window: the manager shares its cache, locks and backoff through a state file.
//
// Load it from `opencode.json` (see "Try it in OpenCode" in the package README):
//
//   { "plugin": [["file:///path/to/index.ts", { "accountsFile": "/path/to/accounts.json" }]] }

import { readFile } from 'node:fs/promises'

import type { Plugin } from '@opencode-ai/plugin'
import { QuotaManager, evaluateQuota, type QuotaManagerOptions, type QuotaPolicy, type QuotaSnapshot } from 'anthropic-quota-manager'

/** The plugin's options: the second element of its entry in the `plugin` list. */
export interface QuotaRoutingOptions {
  /** The usage endpoint (default Anthropic's): point it at a local mock to try the plugin offline. */
  usageUrl?: string
  /** The shared state file (default: beside OpenCode's config). */
  statePath?: string
  /** The freshness window in minutes (default 5). */
  checkIntervalMinutes?: number
  /** A JSON file `{ "accounts": [{ "id", "access", "expires"? }] }` of fallback logins. */
  accountsFile?: string
  /** Answer a request with a 429 when no account is known to have quota (default `true`). */
  failClosedOnUnknownQuota?: boolean
}

interface FallbackLogin {
  id: string
  access: string
  expires?: number
}

/** The account a model request goes out on. */
interface Route {
  account: string
  token: string
  isMain: boolean
}

/** The main account's name in the quota state: the OpenCode login. */
const MAIN = 'main'

export const QuotaRoutingPlugin: Plugin = async (_input, options) => {
  const settings = (options ?? {}) as QuotaRoutingOptions
  const managerOptions: QuotaManagerOptions = {}
  if (settings.usageUrl !== undefined) managerOptions.usageUrl = settings.usageUrl
  if (settings.statePath !== undefined) managerOptions.statePath = settings.statePath
  if (settings.checkIntervalMinutes !== undefined) managerOptions.checkIntervalMinutes = settings.checkIntervalMinutes
  const quota = new QuotaManager(managerOptions)
  const policy: QuotaPolicy = { failClosedOnUnknownQuota: settings.failClosedOnUnknownQuota ?? true }
  const passes = (snapshot: QuotaSnapshot | undefined, model: string | undefined): boolean => evaluateQuota(snapshot, policy, model).passes

  async function fallbackLogins(): Promise<FallbackLogin[]> {
    if (!settings.accountsFile) return []
    try {
      const parsed = JSON.parse(await readFile(settings.accountsFile, 'utf8')) as { accounts?: FallbackLogin[] }
      const now = Date.now()
      return (parsed.accounts ?? []).filter((a) => a.access && (a.expires === undefined || a.expires > now))
    } catch {
      return []
    }
  }

  /** Main when it has quota, else the first fallback that has, else main or a fail-closed 429. */
  async function pickRoute(mainToken: string, model: string | undefined): Promise<Route | Response> {
    if (quota.isMainStale(model)) {
      // A failure is recorded and backed off by the manager (shared by every process); the
      // route is then decided on the last known quota.
      await quota.refreshMain(MAIN, mainToken).catch(() => undefined)
    }
    const main: Route = { account: MAIN, token: mainToken, isMain: true }
    if (passes(quota.getMain(MAIN)?.quota, model)) return main
    for (const login of await fallbackLogins()) {
      if (quota.isFallbackStale(login.id, login.access, model)) {
        await quota.refreshFallback(login.id, login.access).catch(() => undefined)
      }
      if (passes(quota.getFallback(login.id)?.quota, model)) {
        return { account: login.id, token: login.access, isMain: false }
      }
    }
    const refusal = quota.failClosedResponse()
    if (refusal) return new Response(refusal.body, { status: refusal.status, headers: refusal.headers })
    return main
  }

  /** Quota for free: every response (429s included) carries the account's windows. */
  function harvest(route: Route, response: Response): void {
    const headers = Object.fromEntries(response.headers)
    try {
      if (route.isMain) quota.pushMainFromHeaders(MAIN, headers)
      else quota.pushFallbackFromHeaders(route.account, headers)
    } catch {
      // A response without quota headers (a proxy's error page) carries nothing to keep.
    }
  }

  return {
    auth: {
      provider: 'anthropic',
      async loader(getAuth) {
        const auth = await getAuth()
        if (auth.type !== 'oauth') return {}
        return {
          // The SDK must not send an API key: the token goes in `authorization` below.
          apiKey: '',
          async fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
            const current = await getAuth()
            const mainToken = current.type === 'oauth' ? current.access : auth.access
            const model = modelOf(init?.body)
            const route = await pickRoute(mainToken, model)
            if (route instanceof Response) return route
            const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined))
            headers.delete('x-api-key')
            headers.set('authorization', `Bearer ${route.token}`)
            headers.set('anthropic-beta', withOAuthBeta(headers.get('anthropic-beta')))
            const response = await fetch(input, { ...init, headers })
            harvest(route, response)
            return response
          },
        }
      },
      methods: [],
    },
    // OpenCode is done with this instance: let the last quota writes finish.
    async dispose() {
      await quota.close()
    },
  }
}

function modelOf(body: BodyInit | null | undefined): string | undefined {
  if (typeof body !== 'string') return undefined
  try {
    const parsed = JSON.parse(body) as { model?: unknown }
    return typeof parsed.model === 'string' ? parsed.model : undefined
  } catch {
    return undefined
  }
}

function withOAuthBeta(betas: string | null): string {
  const list = (betas ?? '')
    .split(',')
    .map((b) => b.trim())
    .filter(Boolean)
  if (!list.includes('oauth-2025-04-20')) list.push('oauth-2025-04-20')
  return list.join(',')
}
