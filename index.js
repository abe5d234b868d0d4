// The entry point: a hand-written facade over the generated binding, answering the plugin's
// per-request reads from kept answers while the change counter stays put (README.md#development).
'use strict'

const { AsyncLocalStorage } = require('node:async_hooks')
const { isProxy } = require('node:util').types
const binding = require('./binding.js')

const Native = binding.QuotaManager
const MAX_REQUEST_COUNT = 9e15
/** Where external buffers are refused, a counter that never matches: every read goes native. */
const NEVER_CURRENT = new Int32Array(2)

/** Answers kept while the change counter holds still, by key (fallbackStaleFrom's: id, model). */
function keptAnswers() {
  return { main: new Map(), mainStaleFrom: new Map(), fallback: new Map(), fallbackStaleFrom: new Map(), everyN: undefined }
}

/** Each ManualClock's time in shared memory (the clock hands it out once), or null if it cannot be shared. */
const clockTimes = new WeakMap()

/** The largest time JavaScript dates can hold (the host's `now` beyond it goes native). */
const MAX_TIME_MS = 8.64e15

const isEnumerable = Object.prototype.propertyIsEnumerable

/**
 * Whether JSON.stringify may write this object as something else than its properties: a Proxy
 * (its traps may answer a read and JSON's own-key walk differently), toJSON, or not an object.
 */
function rewrittenByJson(value) {
  return typeof value !== 'object' || isProxy(value) || typeof value.toJSON === 'function'
}

/** An object whose fields `ownField` reads as JSON.stringify does (its prototype checked first). */
function isPlainObject(value) {
  if (typeof value !== 'object' || value === null || isProxy(value)) return false
  const proto = Object.getPrototypeOf(value)
  return (proto === Object.prototype || proto === null) && typeof value.toJSON !== 'function'
}

function isPlainArray(value) {
  return Array.isArray(value) && !rewrittenByJson(value)
}

/** A field as JSON.stringify (and so the native method) reads it: own and enumerable, else absent. */
function ownField(object, key) {
  return isEnumerable.call(object, key) ? object[key] : undefined
}

/** The fields of an account's compact row, in the order the core reads them. */
const ROW = Native._accountFields()
const FIELDS = ROW.length
const ID_AT = ROW.indexOf('id')
const TYPE_AT = ROW.indexOf('type')

/**
 * The list as the binding's compact rows (README.md#account-lists): the ROW fields' values per
 * account, null for those this call does not use; a seeding (given `quotas`) sends a bound on each
 * snapshot's `checkedAt`, the snapshot going to `quotas`. Null when the list or an account is not
 * plain, or a getter throws: the native method then reads the list whole.
 */
function compactAccounts(accounts, quotas, resolving = false) {
  if (!isPlainArray(accounts)) return null
  const flat = []
  try {
    for (let i = 0; i < accounts.length; i++) {
      const account = accounts[i]
      if (!isPlainObject(account)) return null
      for (const field of ROW) flat.push(rowValue(account, field, quotas, i, resolving))
    }
    return flat
  } catch {
    return null
  }
}

function rowValue(account, field, quotas, index, resolving) {
  switch (field) {
    case 'access': {
      // A seeding and a resolver's refresh check only its type (10,000 tokens: most of the text).
      const access = ownField(account, field)
      return (quotas !== undefined || resolving) && typeof access === 'string' ? null : access
    }
    case 'expires':
      return quotas !== undefined ? null : ownField(account, field)
    case 'lastQuotaRefreshError':
      return quotas !== undefined ? ownField(account, field) : null
    case 'quota': {
      if (quotas === undefined) return null
      // Read once: the snapshot sent, if the core asks for it, is the one bounded here.
      const quota = ownField(account, field)
      quotas[index] = quota
      return quotaCheckedAtBound(quota)
    }
    default:
      return ownField(account, field)
  }
}

/** JSON text, or null when the value has none (a BigInt, a cycle). */
function jsonOrNull(value, replacer) {
  try {
    return JSON.stringify(value, replacer)
  } catch {
    return null
  }
}

const withoutBigInts = (_, value) => (typeof value === 'bigint' ? undefined : value)

/**
 * The snapshots the core asked for, as a JSON array; what has no JSON form is junk
 * (README.md#account-lists), never an error: throwing would leave the seeding half done.
 */
function snapshotsJson(quotas, wanted) {
  const picked = Array.from(wanted, (index) => quotas[index])
  return jsonOrNull(picked) ?? `[${picked.map((quota) => jsonOrNull(quota, withoutBigInts) ?? 'null').join(',')}]`
}

/**
 * A window's `checkedAt` when a number, -1 without one, else NaN: unreadable (an inherited one,
 * left out by JSON, only raises the bound).
 */
function windowCheckedAt(window) {
  if (window === undefined || window === null) return -1
  if (rewrittenByJson(window)) return NaN
  const at = window.checkedAt
  if (at === undefined || at === null) return -1
  return typeof at === 'number' ? at : NaN
}

/**
 * A number no `checkedAt` of the snapshot exceeds (its own, its windows': the core dates it by
 * the latest), -1 without any; null when it cannot tell (the snapshot is sent, the core decides).
 */
function quotaCheckedAtBound(quota) {
  if (quota === undefined || quota === null) return -1
  if (rewrittenByJson(quota)) return null
  let bound = Math.max(windowCheckedAt(quota), windowCheckedAt(quota.five_hour), windowCheckedAt(quota.seven_day))
  const scoped = quota.scoped
  if (scoped !== undefined && scoped !== null) {
    if (!isPlainArray(scoped)) return null
    for (let i = 0; i < scoped.length; i++) {
      const window = scoped[i]
      // Items that are not objects are dropped by the core.
      if (typeof window === 'object') bound = Math.max(bound, windowCheckedAt(window))
    }
  }
  // NaN: unreadable; Infinity has no JSON form: either way "cannot tell".
  return Number.isFinite(bound) ? bound : null
}

/**
 * The host transport's poll running in this async context: { owner, kind, accountId, refused }.
 * A call from inside it back into the route it polls is refused (docs/endpoint.md#host-transports).
 */
const runningPoll = new AsyncLocalStorage()
function reentrantCall(message) {
  return Object.assign(new Error(message), { code: 'QUOTA_REENTRANT_CALL' })
}

/** Options as given, with a plain object's fetchQuotaSnapshot run inside `runningPoll`. */
function withPollContext(options, owner) {
  if (!isPlainObject(options) || typeof options.fetchQuotaSnapshot !== 'function') return options
  const fetchQuotaSnapshot = options.fetchQuotaSnapshot
  return { ...options, fetchQuotaSnapshot: (request) => runPoll(fetchQuotaSnapshot, request, owner) }
}

async function runPoll(fetchQuotaSnapshot, request, owner) {
  const poll = { owner, kind: request.kind, accountId: request.accountId, refused: false }
  try {
    return await runningPoll.run(poll, fetchQuotaSnapshot, request)
  } catch (error) {
    if (!poll.refused) throw error
    const reason = error !== null && typeof error === 'object' && 'message' in error ? error.message : error
    throw reentrantCall(
      `fetchQuotaSnapshot failed after calling the manager back for the ${poll.kind} route it was polling: ${String(reason)}`,
    )
  }
}

/** The promise `start` returns, or one rejected with what it threw: promise-returning methods never throw. */
function rejecting(start) {
  try {
    return start()
  } catch (error) {
    return Promise.reject(error)
  }
}

/** Writes every state-file manager's unsaved state at exit (docs/state-file.md#write-behind). */
function flushAtExit() {
  const flush = () => Native._flushUnsaved()
  process.on('exit', flush)
  const windows = process.platform === 'win32'
  for (const signal of windows ? ['SIGINT', 'SIGBREAK', 'SIGHUP'] : ['SIGINT', 'SIGTERM']) {
    const onSignal = () => {
      flush()
      if (process.listenerCount(signal) > 1) return
      process.removeListener(signal, onSignal)
      process.kill(process.pid, windows ? 'SIGTERM' : signal)
    }
    process.prependListener(signal, onSignal)
  }
  // One more turn for a loop run dry, to deliver a late signal (every other time: it ends here).
  let turnGiven = false
  process.on('beforeExit', () => {
    turnGiven = !turnGiven
    if (turnGiven) setImmediate(() => {})
  })
}

class QuotaManager extends Native {
  #changes = NEVER_CURRENT
  /** The core's time now, as the native entry would see it (sampling the host's `now`); NaN: ask natively. */
  #time = Date.now
  /** The core's time as last sampled, without sampling again. */
  #read = Date.now
  /** The host's `now` option is sampled at every entry. */
  #samplesNow = false
  /** The counter value the kept answers were computed at. */
  #version = NaN
  #kept = keptAnswers()
  /** Per shape (refreshMain, refreshMainWithMetadata): the last call, its promise and the counter then. */
  #refreshed = [null, null]
  /** The last settled seeding: { flat, epoch, rowsAreAccounts } (see #changedSinceSettled). */
  #settled = null
  /** What marks this manager's polls in `runningPoll`. */
  #owner

  constructor(options) {
    const owner = {}
    super(withPollContext(options, owner))
    this.#owner = owner
    if (this.statePath !== null && Native._listenForExit()) flushAtExit()
    if (!this.#useClockOf(options)) return
    const changes = this._changeCounter()
    if (changes !== null) this.#changes = changes
  }

  refreshMain(mainAccountId, accessToken, expectedIdentityGeneration) {
    return this.#refreshMain(false, mainAccountId, accessToken, expectedIdentityGeneration)
  }

  refreshMainWithMetadata(mainAccountId, accessToken, expectedIdentityGeneration) {
    return this.#refreshMain(true, mainAccountId, accessToken, expectedIdentityGeneration)
  }

  refreshFallback(accountId, accessToken, account) {
    return this.#refreshFallback(false, accountId, accessToken, account)
  }

  refreshFallbackWithMetadata(accountId, accessToken, account) {
    return this.#refreshFallback(true, accountId, accessToken, account)
  }

  #refreshFallback(withMetadata, accountId, accessToken, account) {
    const refused = this.#refusedReentry(withMetadata ? 'refreshFallbackWithMetadata' : 'refreshFallback', 'fallback', accountId)
    return refused ?? rejecting(() => super.refreshFallback(accountId, accessToken, account, withMetadata))
  }

  /** A rejected promise when called from inside this manager's poll of the route (close: any). */
  #refusedReentry(method, kind, id) {
    const poll = runningPoll.getStore()
    if (poll === undefined || poll.owner !== this.#owner) return undefined
    if (kind !== undefined && (poll.kind !== kind || (poll.accountId != null && id !== poll.accountId))) return undefined
    poll.refused = true
    const route = poll.accountId == null ? poll.kind : `${poll.kind} route ${poll.accountId}`
    return Promise.reject(
      reentrantCall(`${method}() was called from inside fetchQuotaSnapshot while it polls the ${route}: it would wait for itself`),
    )
  }

  close() {
    return this.#refusedReentry('close') ?? super.close()
  }

  /**
   * The last call's promise for a like call while it would join the same request
   * (docs/single-flight.md#in-one-process); not with a `now` option, which every entry samples.
   */
  #refreshMain(withMetadata, id, token, generation) {
    const refused = this.#refusedReentry(withMetadata ? 'refreshMainWithMetadata' : 'refreshMain', 'main', id)
    if (refused !== undefined) return refused
    const shape = withMetadata ? 1 : 0
    const kept = this.#refreshed[shape]
    if (kept !== null && id === kept.id && token === kept.token && generation === undefined && this.#stillJoins(kept)) {
      Atomics.add(this.#changes, 1, 1)
      return kept.promise
    }
    const promise = rejecting(() => super.refreshMain(id, token, generation, withMetadata))
    const keep = this.#keepable(id) && !this.#samplesNow && generation === undefined && typeof token === 'string'
    const version = Atomics.load(this.#changes, 0)
    const flight = keep ? this._mainJoinable() : 0
    this.#refreshed[shape] = flight === 0 ? null : { version, flight, id, token, promise }
    return promise
  }

  #stillJoins(kept) {
    const version = Atomics.load(this.#changes, 0)
    if (version === kept.version) return true
    if (this._mainJoinable() !== kept.flight) return false
    kept.version = version
    return true
  }

  /** In two halves (src/account_lists.rs); settled rows are not sent (README.md#account-lists). */
  seedFallbacksFromAccounts(accounts) {
    const quotas = []
    const flat = compactAccounts(accounts, quotas)
    const changed = flat === null ? null : this.#changedSinceSettled(flat)
    if (changed !== null && changed.length === 0) return
    this.#settled = null
    const rows = changed === null ? flat : changed.flatMap((index) => flat.slice(index * FIELDS, (index + 1) * FIELDS))
    const compact = rows === null ? null : jsonOrNull(rows)
    if (compact === null) return super.seedFallbacksFromAccounts(accounts)
    const [plan, wanted, planned, rowsAreAccounts] = this._planFallbackSeeding(compact, changed === null ? null : Uint32Array.from(changed))
    const epoch = wanted.length === 0 ? planned : this._applyFallbackSeeding(plan, snapshotsJson(quotas, wanted))
    // Changed rows of rows that were accounts of their own still are (same ids and types).
    if (epoch >= 0) this.#settled = { flat, epoch, rowsAreAccounts: changed === null ? rowsAreAccounts : true }
  }

  /**
   * The indices of the rows that differ from the last settled seeding's, when seeding only those
   * is the same as seeding the list: its epoch holds, the same ids sit in the same places, each
   * row is an account of its own and no type changed. Empty: nothing to do. Null: seed the list.
   */
  #changedSinceSettled(flat) {
    const settled = this.#settled
    if (settled === null || settled.flat.length !== flat.length || this._fallbackEpoch() !== settled.epoch) return null
    const before = settled.flat
    const changed = []
    for (let at = 0; at < flat.length; at += FIELDS) {
      if (before[at + ID_AT] !== flat[at + ID_AT] || before[at + TYPE_AT] !== flat[at + TYPE_AT]) return null
      for (let field = 0; field < FIELDS; field++) {
        if (before[at + field] !== flat[at + field]) {
          changed.push(at / FIELDS)
          break
        }
      }
    }
    return changed.length > 0 && !settled.rowsAreAccounts ? null : changed
  }

  refreshAllFallbacks(accounts, resolveAccessToken) {
    const resolving = resolveAccessToken != null
    const flat = !resolving || typeof resolveAccessToken === 'function' ? compactAccounts(accounts, undefined, resolving) : null
    const compact = flat === null ? null : jsonOrNull(flat)
    return rejecting(() =>
      compact === null
        ? super.refreshAllFallbacks(accounts, resolveAccessToken)
        : this._refreshAllFallbacksFrom(compact, accounts, resolveAccessToken),
    )
  }

  getAllFallbacks() {
    return new Map(super.getAllFallbacks())
  }

  /**
   * Reads time from the clock the core reads: the system clock (Date.now is the same wall clock
   * in ms), a ManualClock's time in place, or the host's `now` sampled here and stored where the
   * core reads it, as every native entry does. False when it cannot: nothing is kept then.
   */
  #useClockOf(options) {
    if (options === null || typeof options !== 'object') return true
    if (typeof options.now === 'function') {
      const sample = this._sharedNow()
      if (sample === null) return false
      const now = options.now
      this.#samplesNow = true
      this.#read = () => Number(Atomics.load(sample, 0))
      this.#time = () => {
        const ms = now()
        // Anything else goes native, which reports it.
        if (typeof ms !== 'number' || !(Math.abs(ms) <= MAX_TIME_MS)) return NaN
        const whole = Math.trunc(ms)
        Atomics.store(sample, 0, BigInt(whole))
        return whole
      }
      return true
    }
    const clock = options.clock
    if (clock instanceof binding.ManualClock) {
      if (!clockTimes.has(clock)) clockTimes.set(clock, clock._sharedTime())
      const time = clockTimes.get(clock)
      if (time === null) return false
      this.#read = this.#time = () => Number(Atomics.load(time, 0))
    }
    return true
  }

  /** Where to keep an answer about to be asked: the counter is read before asking. */
  #keep() {
    const version = Atomics.load(this.#changes, 0)
    if (version !== this.#version) {
      this.#kept = keptAnswers()
      this.#version = version
    }
    return this.#kept
  }

  #remember(answers, key, answer) {
    answers.set(key, answer)
    return answer
  }

  /** With the host's `now`: sampled (and stored where the core reads it), and a usable time. */
  #sampled() {
    return this.#time() === this.#read()
  }

  #keepable(key) {
    return this.#changes !== NEVER_CURRENT && (key === undefined || typeof key === 'string')
  }

  getMain(mainAccountId) {
    if (Atomics.load(this.#changes, 0) === this.#version) {
      const view = this.#kept.main.get(mainAccountId)
      if (view !== undefined && (!this.#samplesNow || this.#sampled())) return view
    }
    if (!this.#keepable(mainAccountId)) return super.getMain(mainAccountId)
    return this.#remember(this.#keep().main, mainAccountId, super.getMain(mainAccountId))
  }

  isMainStale(modelId) {
    if (Atomics.load(this.#changes, 0) === this.#version) {
      const from = this.#kept.mainStaleFrom.get(modelId)
      if (from !== undefined) {
        const now = this.#time()
        if (now === now) return now >= from
      }
    }
    if (!this.#keepable(modelId)) return super.isMainStale(modelId)
    // Native: it samples the host's `now` (when given) as isMainStale would; read after it.
    const from = this.#remember(this.#keep().mainStaleFrom, modelId, this._mainStaleFrom(modelId))
    return this.#read() >= from
  }

  /** With an account (its login is bound first, which may change the cache), always native. */
  getFallback(accountId, account) {
    if (account !== undefined && account !== null) return super.getFallback(accountId, account)
    if (Atomics.load(this.#changes, 0) === this.#version) {
      const view = this.#kept.fallback.get(accountId)
      if (view !== undefined && (!this.#samplesNow || this.#sampled())) return view
    }
    if (typeof accountId !== 'string' || !this.#keepable()) return super.getFallback(accountId)
    return this.#remember(this.#keep().fallback, accountId, super.getFallback(accountId))
  }

  /** With an account (its login is bound first) or a token that is not a string, always native. */
  isFallbackStale(accountId, accessToken, modelId, account) {
    if (
      (account !== undefined && account !== null) ||
      (accessToken !== undefined && accessToken !== null && typeof accessToken !== 'string')
    ) {
      return super.isFallbackStale(accountId, accessToken, modelId, account)
    }
    if (Atomics.load(this.#changes, 0) === this.#version) {
      const from = this.#kept.fallbackStaleFrom.get(accountId)?.get(modelId)
      if (from !== undefined) {
        const now = this.#time()
        if (now === now) return now >= from
      }
    }
    if (typeof accountId !== 'string' || !this.#keepable(modelId)) return super.isFallbackStale(accountId, accessToken, modelId)
    const byId = this.#keep().fallbackStaleFrom
    let kept = byId.get(accountId)
    if (kept === undefined) byId.set(accountId, (kept = new Map()))
    // Native: it checks the id and the model, and samples the host's `now`, as isFallbackStale would.
    const from = this.#remember(kept, modelId, this._fallbackStaleFrom(accountId, modelId))
    return this.#read() >= from
  }

  needsRefresh(requestCount, modelId) {
    if (typeof requestCount !== 'number' || !(requestCount >= 0 && requestCount <= MAX_REQUEST_COUNT) || this.#changes === NEVER_CURRENT) {
      return super.needsRefresh(requestCount, modelId)
    }
    if (this.isMainStale(modelId)) return true
    const count = Math.trunc(requestCount)
    if (count === 0) return false
    let everyN = this.#kept.everyN
    if (everyN === undefined || Atomics.load(this.#changes, 0) !== this.#version) {
      everyN = this.#keep().everyN = this._refreshEveryN()
    }
    return everyN > 0 && count % everyN === 0
  }
}

// Named one by one so that Node's ESM import of this CommonJS file sees every name (its static
// export detection cannot follow a spread); __test__/facade.spec.ts checks none is missing.
module.exports.__napiBindingTarget = binding.__napiBindingTarget
module.exports.ManualClock = binding.ManualClock
module.exports.QuotaManager = QuotaManager
module.exports.defaultStatePath = binding.defaultStatePath
module.exports.evaluateQuota = binding.evaluateQuota
module.exports.parseQuotaHeaders = binding.parseQuotaHeaders
module.exports.parseRetryAfter = binding.parseRetryAfter
module.exports.parseRouteKey = binding.parseRouteKey
module.exports.readRedisState = (url, keyPrefix) => rejecting(() => binding.readRedisState(url, keyPrefix))
module.exports.tokenFingerprint = binding.tokenFingerprint
