'use strict'
// A usage-endpoint simulator on 127.0.0.1: answers like Anthropic's OAuth usage endpoint, and can
// be told to answer 429 with Retry-After, 5xx, junk, or to stall. Used by the demo, the tests and
// the benchmarks; it never talks to the network.

const http = require('node:http')
const crypto = require('node:crypto')

/** A realistic usage body (docs/endpoint.md#response-body shape). Percentages 0..100. */
function usageBody({
  fiveHour = 9,
  sevenDay = 68,
  fiveHourResetsAt = new Date(Date.now() + 2 * 3600e3).toISOString(),
  sevenDayResetsAt = new Date(Date.now() + 4 * 86400e3).toISOString(),
  scoped = [{ id: 'claude-fable-5-1', name: 'Fable', percent: 22 }],
  active = 'session',
  extraUsage = { usedCredits: 1261, monthlyLimit: 10000 },
} = {}) {
  const limits = [
    { kind: 'session', group: 'session', percent: fiveHour, is_active: active === 'session' },
    { kind: 'weekly_all', group: 'weekly', percent: sevenDay, is_active: active === 'weekly_all' },
    ...scoped.map((s) => ({
      kind: 'weekly_scoped',
      group: 'weekly',
      percent: s.percent,
      is_active: active === s.id,
      resets_at: s.resetsAt ?? sevenDayResetsAt,
      scope: { model: { id: s.id, display_name: s.name } },
    })),
  ]
  return {
    five_hour: fiveHour == null ? null : { utilization: fiveHour, resets_at: fiveHourResetsAt },
    seven_day: sevenDay == null ? null : { utilization: sevenDay, resets_at: sevenDayResetsAt },
    seven_day_opus: null,
    limits,
    extra_usage: extraUsage && {
      is_enabled: true,
      monthly_limit: extraUsage.monthlyLimit,
      used_credits: extraUsage.usedCredits,
      utilization: (100 * extraUsage.usedCredits) / extraUsage.monthlyLimit,
    },
    spend: { severity: 'normal', limit: { amount_minor: 10000, currency: 'USD', exponent: 2 } },
  }
}

/** `anthropic-ratelimit-unified-*` headers as a /v1/messages response carries them. */
function rateLimitHeaders({
  fiveHour = 0.12,
  sevenDay = 0.7,
  fiveHourReset,
  sevenDayReset,
  status = 'allowed',
  claim = 'five_hour',
  fallback,
} = {}) {
  const now = Math.floor(Date.now() / 1000)
  const headers = {
    'anthropic-ratelimit-unified-status': status,
    'anthropic-ratelimit-unified-5h-utilization': String(fiveHour),
    'anthropic-ratelimit-unified-5h-reset': String(fiveHourReset ?? now + 7200),
    'anthropic-ratelimit-unified-7d-utilization': String(sevenDay),
    'anthropic-ratelimit-unified-7d-reset': String(sevenDayReset ?? now + 4 * 86400),
    'anthropic-ratelimit-unified-representative-claim': claim,
  }
  if (fallback) headers['anthropic-ratelimit-unified-fallback'] = fallback
  return headers
}

const fingerprint = (token) => crypto.createHash('sha256').update(token).digest('hex').slice(0, 16)

/**
 * Starts the simulator. `reply` sets how every later request is answered; `replyOnce` queues
 * answers used first. An answer: `{ status, body, headers, delayMs, stall }` where `body` is an
 * object (sent as JSON) or a string (sent as is).
 */
async function startUsageSimulator({ port = 0, delayMs = 0 } = {}) {
  let standing = { status: 200, delayMs }
  const queue = []
  const log = []
  const sockets = new Set()

  const server = http.createServer((req, res) => {
    const auth = req.headers.authorization ?? ''
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : ''
    log.push({
      at: Date.now(),
      tokenFingerprint: fingerprint(token),
      userAgent: req.headers['user-agent'],
      beta: req.headers['anthropic-beta'],
      accept: req.headers.accept,
      path: req.url,
    })
    const answer = queue.length > 0 ? queue.shift() : standing
    if (answer.stall) return // never answer: the client's timeout must end it
    const send = () => {
      const status = answer.status ?? 200
      const body =
        answer.body === undefined
          ? status === 200
            ? JSON.stringify(usageBody())
            : `{"type":"error","error":{"type":"rate_limit_error","message":"status ${status}"}}`
          : typeof answer.body === 'string'
            ? answer.body
            : JSON.stringify(answer.body)
      res.writeHead(status, { 'content-type': 'application/json', ...answer.headers })
      res.end(body)
    }
    const wait = answer.delayMs ?? standing.delayMs ?? 0
    if (wait > 0) setTimeout(send, wait)
    else send()
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  const address = server.address()

  return {
    url: `http://127.0.0.1:${address.port}/api/oauth/usage`,
    port: address.port,
    /** Requests received so far. */
    get requests() {
      return log.length
    },
    log,
    reply(answer) {
      standing = { delayMs, ...answer }
    },
    replyOnce(answer) {
      queue.push(answer)
    },
    reset() {
      standing = { status: 200, delayMs }
      queue.length = 0
      log.length = 0
    },
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(() => resolve()))
    },
  }
}

module.exports = { startUsageSimulator, usageBody, rateLimitHeaders, fingerprint }
