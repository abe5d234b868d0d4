export interface SimulatorAnswer {
  status?: number
  /** An object is sent as JSON; a string as it is. Default: a realistic usage body (200) or an error body. */
  body?: unknown
  headers?: Record<string, string>
  delayMs?: number
  /** Accept the request and never answer. */
  stall?: boolean
}

export interface LoggedRequest {
  at: number
  tokenFingerprint: string
  userAgent?: string
  beta?: string
  accept?: string
  path?: string
}

export interface UsageSimulator {
  url: string
  port: number
  readonly requests: number
  log: LoggedRequest[]
  reply(answer: SimulatorAnswer): void
  replyOnce(answer: SimulatorAnswer): void
  reset(): void
  close(): Promise<void>
}

export interface ScopedLimit {
  id: string
  name: string
  percent: number
  resetsAt?: string
}

export interface UsageBodyOptions {
  fiveHour?: number | null
  sevenDay?: number | null
  fiveHourResetsAt?: string
  sevenDayResetsAt?: string
  scoped?: ScopedLimit[]
  active?: string
  extraUsage?: { usedCredits: number; monthlyLimit: number } | null
}

export interface RateLimitHeaderOptions {
  fiveHour?: number
  sevenDay?: number
  fiveHourReset?: number
  sevenDayReset?: number
  status?: string
  claim?: string
  fallback?: string
}

export declare function startUsageSimulator(options?: { port?: number; delayMs?: number }): Promise<UsageSimulator>
export declare function usageBody(options?: UsageBodyOptions): Record<string, unknown>
export declare function rateLimitHeaders(options?: RateLimitHeaderOptions): Record<string, string>
export declare function fingerprint(token: string): string
