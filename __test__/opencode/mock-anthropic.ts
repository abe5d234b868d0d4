// A mock of the two Anthropic endpoints the OpenCode plugin example talks to, on 127.0.0.1:
// `POST /v1/messages` streams a short answer (server-sent events, as the Messages API does) with
// `anthropic-ratelimit-unified-*` headers, and `GET /api/oauth/usage` answers the usage poll.
// Both record which access token called them.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

import { rateLimitHeaders, usageBody } from '../../simulator/index.js'

/** What the usage endpoint answers a token with. */
export interface UsageAnswer {
  status: number
  body: unknown
  headers?: Record<string, string>
}

export interface MockAnthropicOptions {
  /** The usage endpoint's answer for a token. */
  usage: (token: string) => UsageAnswer
  /** The rate-limit headers of a model response sent with a token (fractions, 0..1). */
  rateLimits: (token: string) => { fiveHour: number; sevenDay: number }
}

export const ANSWER_TEXT = 'Quota-routed hello from the mock.'

export interface MockAnthropic {
  /** `provider.anthropic.options.baseURL` for OpenCode. */
  baseURL: string
  /** The plugin's `usageUrl`. */
  usageUrl: string
  /** The token of each usage call, in order. */
  readonly usageCalls: string[]
  /** The token of each model request, in order. */
  readonly messageTokens: string[]
  usageCallsFor(token: string): number
  close(): Promise<void>
}

function bearer(request: IncomingMessage): string {
  const header = request.headers.authorization ?? ''
  return header.startsWith('Bearer ') ? header.slice('Bearer '.length) : `(none; x-api-key: ${String(request.headers['x-api-key'] ?? '')})`
}

function sse(response: ServerResponse, event: string, data: unknown): void {
  response.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
}

function streamAnswer(response: ServerResponse, model: string): void {
  sse(response, 'message_start', {
    type: 'message_start',
    message: {
      id: 'msg_mock',
      type: 'message',
      role: 'assistant',
      model,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: { input_tokens: 12, output_tokens: 1 },
    },
  })
  sse(response, 'content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })
  sse(response, 'content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: ANSWER_TEXT } })
  sse(response, 'content_block_stop', { type: 'content_block_stop', index: 0 })
  sse(response, 'message_delta', {
    type: 'message_delta',
    delta: { stop_reason: 'end_turn', stop_sequence: null },
    usage: { output_tokens: 8 },
  })
  sse(response, 'message_stop', { type: 'message_stop' })
  response.end()
}

export async function startMockAnthropic(options: MockAnthropicOptions): Promise<MockAnthropic> {
  const usageCalls: string[] = []
  const messageTokens: string[] = []
  const server = createServer((request, response) => {
    const path = (request.url ?? '').split('?')[0]
    const token = bearer(request)
    if (request.method === 'GET' && path === '/api/oauth/usage') {
      usageCalls.push(token)
      const answer = options.usage(token)
      response.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers })
      response.end(JSON.stringify(answer.body))
      return
    }
    if (request.method === 'POST' && path === '/v1/messages') {
      let body = ''
      request.setEncoding('utf8')
      request.on('data', (chunk: string) => {
        body += chunk
      })
      request.on('end', () => {
        messageTokens.push(token)
        let model = 'claude-sonnet-4-5'
        try {
          model = (JSON.parse(body) as { model?: string }).model ?? model
        } catch {
          // the default model name will do
        }
        const limits = options.rateLimits(token)
        response.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          ...rateLimitHeaders({ fiveHour: limits.fiveHour, sevenDay: limits.sevenDay }),
        })
        streamAnswer(response, model)
      })
      return
    }
    response.writeHead(404, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ type: 'error', error: { type: 'not_found_error', message: `no ${request.method} ${path} here` } }))
  })
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done))
  const { port } = server.address() as AddressInfo
  const origin = `http://127.0.0.1:${port}`
  return {
    baseURL: `${origin}/v1`,
    usageUrl: `${origin}/api/oauth/usage`,
    usageCalls,
    messageTokens,
    usageCallsFor: (token) => usageCalls.filter((t) => t === token).length,
    close: () =>
      new Promise<void>((done) => {
        server.closeAllConnections()
        server.close(() => done())
      }),
  }
}

/** A usage body with the 5-hour window at `fiveHour` percent (100: exhausted until its reset). */
export function usageAnswer(fiveHour: number): UsageAnswer {
  return { status: 200, body: usageBody({ fiveHour, sevenDay: 30, scoped: [] }) }
}
