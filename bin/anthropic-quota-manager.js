#!/usr/bin/env node
'use strict'
// anthropic-quota-manager: look at (and refresh) the machine-wide quota state file.
//
//   anthropic-quota-manager status  [--json] [--state PATH | --redis URL [--key-prefix P]]
//   anthropic-quota-manager refresh --token-env NAME [--state PATH] [--url URL] [--identity ID] [--json]
//
// `status` reads the state file as it is, without taking any lock and without changing it (a
// corrupt file is reported, never moved aside). `refresh` goes through a QuotaManager, so it obeys
// the shared refresh lock, pacing and backoff exactly like every other process on the machine.
//
// Exit codes: 0 success; 1 the state file is missing or corrupt, or the refresh failed; 2 usage
// error (unknown command or flag, missing flag value).
//
// Required as a module, it exports the pieces the demo reuses (readState, buildStatus,
// renderStatus, bar, formatDuration, defaultStatePath).

const fs = require('node:fs')
const path = require('node:path')

const PROGRAM = 'anthropic-quota-manager'
const STATE_FILE_NAME = 'anthropic-quota-state.json'
/** Version of the `--json` output shape (bumped only on an incompatible change). */
const JSON_SCHEMA = 1
const WIDTH = 80

// ----- helpers ---------------------------------------------------------------------------------

/** The library's own default (the same rule the manager uses), or a clear error without HOME. */
function defaultStatePath() {
  const statePath = require('../index.js').defaultStatePath()
  if (statePath === null) throw new CliError('no default state file: set HOME or OPENCODE_CONFIG_DIR, or pass --state PATH', 2)
  return statePath
}

/** The library's reading of a state-file route key: `{ kind: 'main' | 'fallback', id }`, or null. */
function parseRouteKey(key) {
  return require('../index.js').parseRouteKey(key)
}

/** `[████░░░░]` for a 0..100 percentage. */
function bar(percent, width = 20) {
  const p = Number.isFinite(percent) ? Math.min(100, Math.max(0, percent)) : 0
  const filled = Math.round((p / 100) * width)
  return '[' + '█'.repeat(filled) + '░'.repeat(width - filled) + ']'
}

/** A short human duration: `45s`, `4m 12s`, `2h 10m`, `3d 4h`. */
function ago(ms) {
  return ms >= 0 ? `${formatDuration(ms)} ago` : `${formatDuration(-ms)} in the future`
}

function formatDuration(ms) {
  if (!Number.isFinite(ms)) return '?'
  const sign = ms < 0 ? '-' : ''
  let s = Math.round(Math.abs(ms) / 1000)
  const d = Math.floor(s / 86400)
  s -= d * 86400
  const h = Math.floor(s / 3600)
  s -= h * 3600
  const m = Math.floor(s / 60)
  s -= m * 60
  if (d > 0) return `${sign}${d}d ${h}h`
  if (h > 0) return `${sign}${h}h ${m}m`
  if (m > 0) return `${sign}${m}m ${String(s).padStart(2, '0')}s`
  return `${sign}${s}s`
}

// C0 and C1 controls, DEL, line/paragraph separators and bidirectional overrides: a state file
// is shared, writable data, and these would let it move the cursor, recolour or rewrite the
// terminal, or reorder what the user reads.
// oxlint-disable-next-line no-control-regex -- matching control characters is the point
const UNSAFE_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g

/** `text` with every unsafe character shown as a visible `\xNN` / `\uNNNN` escape. */
function escapeControls(text) {
  return String(text).replace(UNSAFE_CHARS, (c) => {
    const code = c.charCodeAt(0)
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`
  })
}

function fit(text, width) {
  const s = escapeControls(String(text).replace(/[\r\n\t]+/g, ' '))
  return s.length <= width ? s : s.slice(0, Math.max(0, width - 1)) + '…'
}

const finite = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null)
const str = (v) => (typeof v === 'string' ? v : null)
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v)

class CliError extends Error {
  constructor(message, exitCode) {
    super(message)
    this.exitCode = exitCode
  }
}

// ----- reading the state file ------------------------------------------------------------------

/**
 * Reads and checks the state file without any lock. Throws a CliError (exit 1) when it is
 * missing, unreadable or not a version-1 state file.
 */
function readState(statePath) {
  let text
  try {
    text = readRegularFile(statePath)
  } catch (error) {
    if (error instanceof CliError) throw error
    if (error.code === 'ENOENT') throw new CliError(`no state file at ${statePath}`, 1)
    throw new CliError(`cannot read state file ${statePath}: ${error.message}`, 1)
  }
  let doc
  try {
    doc = JSON.parse(text)
  } catch (error) {
    throw new CliError(`corrupt state file ${statePath}: not JSON (${error.message})`, 1)
  }
  if (!isObject(doc)) throw new CliError(`corrupt state file ${statePath}: not a JSON object`, 1)
  if (Number.isInteger(doc.version) && doc.version > 1) {
    // Another (newer) build of the package owns this file; the library leaves it alone too.
    throw new CliError(`state file ${statePath} was written by a newer version (schema ${doc.version}); this tool reads schema 1`, 1)
  }
  if (doc.version !== 1) {
    throw new CliError(`corrupt state file ${statePath}: schema version ${JSON.stringify(doc.version)}, expected 1`, 1)
  }
  if (doc.routes !== undefined && !isObject(doc.routes)) {
    throw new CliError(`corrupt state file ${statePath}: "routes" is not an object`, 1)
  }
  return doc
}

/**
 * Largest state file `status` reads: parsing costs many times the file's size in memory (10,000
 * routes take about 6 MiB).
 */
const MAX_STATE_FILE_BYTES = 16 * 1024 * 1024

/**
 * A regular file's text, at most MAX_STATE_FILE_BYTES. Opened without blocking (a FIFO would
 * wait forever for a writer) and checked on the open descriptor, so what is read is what was
 * checked.
 */
function readRegularFile(filePath) {
  const fd = fs.openSync(filePath, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0))
  try {
    const stat = fs.fstatSync(fd)
    if (!stat.isFile()) throw new CliError(`cannot read state file ${filePath}: not a regular file`, 1)
    if (stat.size > MAX_STATE_FILE_BYTES) {
      throw new CliError(`cannot read state file ${filePath}: ${stat.size} bytes, more than the ${MAX_STATE_FILE_BYTES} this tool reads`, 1)
    }
    // Read to the end, but never past the bound (the file may grow while it is read).
    const buffer = Buffer.alloc(MAX_STATE_FILE_BYTES + 1)
    let length = 0
    for (;;) {
      const read = fs.readSync(fd, buffer, length, buffer.length - length, null)
      if (read === 0) break
      length += read
      if (length > MAX_STATE_FILE_BYTES)
        throw new CliError(`cannot read state file ${filePath}: it grew past the ${MAX_STATE_FILE_BYTES} bytes this tool reads`, 1)
    }
    return buffer.toString('utf8', 0, length)
  } finally {
    fs.closeSync(fd)
  }
}

function windowView(w, now) {
  if (!isObject(w)) return null
  const used = finite(w.usedPercent)
  if (used === null) return null
  const resetsAt = str(w.resetsAt)
  const resetMs = resetsAt ? Date.parse(resetsAt) : NaN
  return {
    usedPercent: used,
    remainingPercent: finite(w.remainingPercent) ?? 100 - used,
    resetsAt,
    resetsInMs: Number.isFinite(resetMs) ? resetMs - now : null,
    checkedAt: finite(w.checkedAt),
  }
}

function routeView(key, record, now) {
  const colon = key.indexOf(':')
  const route = parseRouteKey(key)
  const kind = route ? route.kind : 'other'
  const entry = isObject(record.entry) ? record.entry : null
  const quota = entry && isObject(entry.quota) ? entry.quota : {}
  const checkedAt = entry ? finite(entry.checkedAt) : null
  const refreshAfter = entry ? finite(entry.refreshAfter) : null
  const backoff = isObject(record.backoff) ? record.backoff : {}
  const nextRetryAt = finite(backoff.nextRetryAt)
  const lastError = isObject(backoff.lastError) ? backoff.lastError : null
  return {
    key,
    kind,
    id: route ? route.id : colon >= 0 ? key.slice(colon + 1) : key,
    fiveHour: windowView(quota.five_hour, now),
    sevenDay: windowView(quota.seven_day, now),
    scoped: Array.isArray(quota.scoped)
      ? quota.scoped.filter(isObject).map((w) => ({
          id: str(w.id),
          title: str(w.title),
          modelName: str(w.modelName),
          modelId: str(w.modelId),
          ...windowView(w, now),
        }))
      : [],
    source: str(quota.source),
    status: str(quota.status),
    checkedAt,
    ageMs: checkedAt === null ? null : now - checkedAt,
    refreshAfter,
    stale: refreshAfter === null || now >= refreshAfter,
    tokenFingerprint: str(record.tokenFingerprint),
    lastAttemptAt: finite(record.lastAttemptAt),
    backoff: {
      active: nextRetryAt !== null && now < nextRetryAt,
      attempts: finite(backoff.attempts) ?? 0,
      nextRetryAt,
      remainingMs: nextRetryAt !== null && now < nextRetryAt ? nextRetryAt - now : 0,
      lastError: lastError
        ? {
            message: str(lastError.message) ?? '',
            status: finite(lastError.status),
            retryAfterMs: finite(lastError.retryAfterMs),
            checkedAt: finite(lastError.checkedAt),
          }
        : null,
    },
  }
}

/** The `--json` document; its shape is documented in CLI.md and is stable (`schema`). */
function buildStatus(doc, statePath, now = Date.now()) {
  const routes = isObject(doc.routes) ? doc.routes : {}
  const keys = Object.keys(routes).sort((a, b) => {
    const rank = (k) => ({ main: 0, fallback: 1 })[parseRouteKey(k)?.kind] ?? 2
    return rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0)
  })
  const views = []
  let skipped = 0
  for (const key of keys) {
    if (isObject(routes[key])) views.push(routeView(key, routes[key], now))
    else skipped++
  }
  const view = { schema: JSON_SCHEMA, statePath, now, routes: views, skippedRecords: skipped }
  // Redis only: the keys under the route prefix that hold no route record.
  if (Array.isArray(doc.skipped)) view.skippedKeys = doc.skipped.map((k) => ({ key: String(k.key), reason: String(k.reason) }))
  return view
}

function windowLine(label, w) {
  const resets = w.resetsInMs === null ? '' : w.resetsInMs > 0 ? `resets in ${formatDuration(w.resetsInMs)}` : 'reset passed'
  const used = `${Math.round(w.usedPercent)}% used`.padStart(9)
  const left = `${Math.round(w.remainingPercent)}% left`.padStart(9)
  return fit(`  ${fit(label, 11).padEnd(11)} ${bar(w.usedPercent)} ${used}  ${left}  ${resets}`.trimEnd(), WIDTH)
}

/** Human output, at most 80 columns a line. */
function renderStatus(status) {
  const lines = []
  lines.push(`Quota state: ${escapeControls(status.statePath)}`) // a path is never cut
  const n = status.routes.length
  lines.push(`${n} route${n === 1 ? '' : 's'} · read ${new Date(status.now).toISOString()} (no lock taken)`)
  if (status.skippedRecords > 0) lines.push(`(${status.skippedRecords} unreadable route record(s) skipped)`)
  for (const skipped of status.skippedKeys ?? []) lines.push(fit(`(skipped ${escapeControls(skipped.key)}: ${skipped.reason})`, WIDTH))
  if (n === 0) lines.push('', 'No routes recorded yet.')
  for (const r of status.routes) {
    lines.push('', fit(r.key, WIDTH))
    if (r.fiveHour) lines.push(windowLine('5h', r.fiveHour))
    else lines.push('  5h          unknown')
    if (r.sevenDay) lines.push(windowLine('7d', r.sevenDay))
    else lines.push('  7d          unknown')
    for (const w of r.scoped) if (w.usedPercent !== undefined) lines.push(windowLine(w.title ?? w.modelName ?? w.id ?? 'scoped', w))
    if (r.checkedAt !== null) {
      const freshness = r.stale ? 'due now' : `fresh for ${formatDuration(r.refreshAfter - status.now)}`
      const token = r.tokenFingerprint ? ` · token ${r.tokenFingerprint}` : ''
      lines.push(fit(`  source      ${r.source ?? '?'}, ${ago(r.ageMs)} (${freshness})${token}`, WIDTH))
    } else {
      lines.push('  source      nothing cached')
    }
    const b = r.backoff
    if (b.active) {
      const asked = b.lastError && b.lastError.retryAfterMs ? `, Retry-After ${formatDuration(b.lastError.retryAfterMs)}` : ''
      lines.push(fit(`  backoff     ${formatDuration(b.remainingMs)} left (failure ${b.attempts} in a row${asked})`, WIDTH))
    } else if (b.attempts > 0) {
      lines.push(fit(`  backoff     over; ${b.attempts} failure${b.attempts === 1 ? '' : 's'} in a row (next failure escalates)`, WIDTH))
    } else {
      lines.push('  backoff     none')
    }
    if (b.lastError && b.lastError.message) {
      const when = b.lastError.checkedAt !== null ? ` (${ago(status.now - b.lastError.checkedAt)})` : ''
      lines.push(fit(`  last error  ${b.lastError.message}`, WIDTH - when.length) + when)
    }
  }
  return lines.join('\n')
}

// ----- command line ----------------------------------------------------------------------------

const HELP = {
  main: `Usage: ${PROGRAM} <command> [flags]

Commands:
  status    print every route of the shared quota state file (no lock taken)
  refresh   refresh the main route once through a QuotaManager, then status

Run '${PROGRAM} <command> --help' for a command's flags.
Exit codes: 0 ok, 1 missing/corrupt state file or failed refresh, 2 usage error.`,
  status: `Usage: ${PROGRAM} status [--json] [--state PATH]
       ${PROGRAM} status [--json] --redis URL [--key-prefix P]

Reads the shared state file WITHOUT taking a refresh lock and prints each route:
5h / 7d used and remaining with a bar, time to reset, scoped (per-model)
windows, where the data came from and its age, the backoff left and the last
error.

  --json        machine-readable output (stable shape documented in CLI.md,
                "schema": ${JSON_SCHEMA})
  --state PATH  state file (default: $OPENCODE_CONFIG_DIR, else
                $XDG_CONFIG_HOME/opencode, else ~/.config/opencode,
                file ${STATE_FILE_NAME})
  --redis URL   read the Redis shared store instead (the manager's \`redis\`
                option; redis:// or rediss://); no lock taken either
  --key-prefix P  the store's key prefix (default anthropic-quota:)
  -h, --help    this help`,
  refresh: `Usage: ${PROGRAM} refresh --token-env NAME [--state PATH]
         [--url URL] [--identity ID] [--json]

Refreshes the main route once through a QuotaManager, then prints the status.
It obeys the shared refresh lock, pacing and backoff: a backed-off route, or one
another process refreshed within the freshness window, is answered from the
state file without a request. Otherwise one usage request is sent.

  --token-env NAME  environment variable holding the OAuth access token
                    (never printed or written; only its fingerprint)
  --state PATH      state file (default: the library's default path)
  --url URL         usage endpoint
                    (default https://api.anthropic.com/api/oauth/usage)
  --identity ID     main account identity (default: the main route in the state
                    file whose token fingerprint matches, else one derived from
                    the token)
  --json            print {"refresh": {...}, "status": {...}} as JSON
  -h, --help        this help`,
}

function parseFlags(command, argv, spec) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '-h' || arg === '--help') {
      out.help = true
      continue
    }
    if (!arg.startsWith('--')) throw new CliError(`${command}: unexpected argument '${arg}' (see --help)`, 2)
    const eq = arg.indexOf('=')
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2)
    if (!(name in spec)) throw new CliError(`${command}: unknown flag --${name} (see --help)`, 2)
    if (spec[name] === 'boolean') {
      if (eq >= 0) throw new CliError(`${command}: --${name} takes no value`, 2)
      out[name] = true
    } else {
      let value
      if (eq >= 0) value = arg.slice(eq + 1)
      else {
        value = argv[++i]
        if (value === undefined || value.startsWith('--')) throw new CliError(`${command}: --${name} needs a value`, 2)
      }
      if (value === '') throw new CliError(`${command}: --${name} needs a value`, 2)
      out[name] = value
    }
  }
  return out
}

function print(text) {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n')
}

async function status(argv) {
  const flags = parseFlags('status', argv, { json: 'boolean', state: 'string', redis: 'string', 'key-prefix': 'string' })
  if (flags.help) return print(HELP.status)
  if (flags.redis !== undefined && flags.state !== undefined) throw new CliError('status: --state and --redis exclude each other', 2)
  if (flags['key-prefix'] !== undefined && flags.redis === undefined) throw new CliError('status: --key-prefix needs --redis URL', 2)
  let doc
  let source
  if (flags.redis !== undefined) {
    ;({ doc, source } = await readRedis(flags.redis, flags['key-prefix']))
  } else {
    source = path.resolve(flags.state ?? defaultStatePath())
    doc = readState(source)
  }
  const view = buildStatus(doc, source)
  print(flags.json ? JSON.stringify(view, null, 2) : renderStatus(view))
}

/** What the Redis shared store holds, in the state file's shape; `source` names it without credentials. */
async function readRedis(url, keyPrefix) {
  const prefix = keyPrefix ?? 'anthropic-quota:'
  const source = `${url.replace(/\/\/[^/@]*@/, '//')} (keys ${prefix}route:*)`
  try {
    return { doc: await require('../index.js').readRedisState(url, prefix), source }
  } catch (error) {
    throw new CliError(`cannot read the Redis shared store ${source}: ${error.message}`, error.code === 'QUOTA_STATE_ERROR' ? 1 : 2)
  }
}

async function refresh(argv) {
  const flags = parseFlags('refresh', argv, { 'token-env': 'string', state: 'string', url: 'string', identity: 'string', json: 'boolean' })
  if (flags.help) return print(HELP.refresh)
  if (!flags['token-env']) throw new CliError(`refresh: --token-env NAME is required (see --help)`, 2)
  const name = flags['token-env']
  const token = process.env[name]
  if (!token || token.trim() === '') throw new CliError(`refresh: environment variable ${name} is unset or empty`, 1)
  const statePath = path.resolve(flags.state ?? defaultStatePath())

  const { QuotaManager, parseRouteKey, tokenFingerprint } = require('../index.js')
  let identity = flags.identity
  if (!identity) {
    // Share the plugin's route (and its lock) when the file already has a main route for this token.
    try {
      const routes = readState(statePath).routes ?? {}
      const fp = tokenFingerprint(token)
      const matches = Object.keys(routes).filter(
        (k) => parseRouteKey(k)?.kind === 'main' && isObject(routes[k]) && routes[k].tokenFingerprint === fp,
      )
      if (matches.length === 1) identity = parseRouteKey(matches[0]).id
    } catch {
      // no usable file yet: the manager creates (or sets aside) it
    }
  }
  let manager
  try {
    manager = new QuotaManager({ statePath, ...(flags.url ? { usageUrl: flags.url } : {}) })
  } catch (error) {
    throw new CliError(`refresh: ${error.message}`, 2)
  }
  const result = { identity: identity ?? null, fetched: false, ok: true, error: null }
  try {
    const answer = identity ? await manager.refreshMainWithMetadata(identity, token) : await manager.refreshMainWithMetadata(token)
    result.fetched = answer.fetched
    if (!identity) result.identity = answer.quota.accountIdentity ?? null
  } catch (error) {
    result.ok = false
    result.error = {
      code: error.code ?? 'ERROR',
      message: String(error.message),
      status: error.status ?? null,
      nextRetryAt: error.nextRetryAt ?? null,
    }
  } finally {
    await manager.close()
  }
  const doc = buildStatus(readState(statePath), statePath)
  if (flags.json) {
    print(JSON.stringify({ refresh: result, status: doc }, null, 2))
  } else {
    const who = result.identity ? `main:${result.identity}` : 'main route'
    if (result.ok)
      print(fit(`${who}: ${result.fetched ? 'refreshed (one usage request sent)' : 'answered from the state file (no request)'}`, WIDTH))
    else process.stderr.write(fit(`${PROGRAM}: refresh: ${who}: ${result.error.code}: ${result.error.message}`, WIDTH) + '\n')
    print('\n' + renderStatus(doc))
  }
  if (!result.ok) process.exitCode = 1
}

async function main(argv = process.argv.slice(2)) {
  try {
    const [command, ...rest] = argv
    if (command === undefined) {
      process.stderr.write(HELP.main + '\n')
      process.exitCode = 2
      return
    }
    if (command === '-h' || command === '--help' || command === 'help') return print(HELP.main)
    if (command === '--version' || command === '-v') return print(require('../package.json').version)
    if (command === 'status') return await status(rest)
    if (command === 'refresh') return await refresh(rest)
    throw new CliError(`unknown command '${command}' (see --help)`, 2)
  } catch (error) {
    if (error instanceof CliError) {
      process.stderr.write(`${PROGRAM}: ${error.message}\n`)
      process.exitCode = error.exitCode
    } else {
      process.stderr.write(`${PROGRAM}: ${error && error.message ? error.message : String(error)}\n`)
      process.exitCode = 1
    }
  }
}

module.exports = { defaultStatePath, readState, buildStatus, renderStatus, bar, formatDuration, fit, escapeControls, main, JSON_SCHEMA }

if (require.main === module) main()
