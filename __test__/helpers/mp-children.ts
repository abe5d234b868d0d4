// Child-process plumbing for the multi-process tests: spawn `node` on a fixture script, talk to
// it in JSON lines, and make sure every child is gone when a test ends.

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

import type { QuotaStats, QuotaEntry } from '../../index.js'

export const FIXTURES = resolve(__dirname, '..', 'fixtures')
export const WORKER = join(FIXTURES, 'mp-worker.cjs')

/** What a JSON line from a child looks like (every field optional: we check what we use). */
export interface ChildMessage {
  id?: number | null
  event?: string
  ok?: boolean
  code?: string
  path?: string
  message?: string
  [key: string]: unknown
}

export interface CallerResult {
  ok: boolean
  checkedAt?: number
  source?: string
  /** With `metadata: true`: whether this caller's refresh sent the request. */
  fetched?: boolean
  code?: string
  path?: string
  status?: number
  message?: string
  at: number
}

export interface StateReport {
  stats: QuotaStats
  backedOff: boolean
  main: QuotaEntry | null
}

export interface RefreshReport extends StateReport {
  startedAt: number
  endedAt: number
  results: CallerResult[]
}

export interface WorkerOptions {
  statePath: string | null
  usageUrl: string
  lockTimeoutMs?: number
  requestTimeoutMs?: number
  apiCallGapMs?: number
  redis?: { url: string; keyPrefix?: string }
  backoff?: { initialMs?: number; maxMs?: number; nonTransientMs?: number; jitter?: number }
}

const live = new Set<Child>()

/** A running child: its JSON lines, its stderr, and its exit. */
export class Child {
  readonly proc: ChildProcessWithoutNullStreams
  readonly messages: ChildMessage[] = []
  stdout = ''
  stderr = ''
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  private buffered = ''
  private listeners = new Set<() => void>()
  private nextId = 1

  constructor(script: string, args: string[] = [], env: NodeJS.ProcessEnv = {}) {
    this.proc = spawn(process.execPath, [script, ...args], {
      cwd: resolve(__dirname, '..', '..'),
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    live.add(this)
    this.proc.stdout.setEncoding('utf8')
    this.proc.stderr.setEncoding('utf8')
    this.proc.stdout.on('data', (chunk: string) => {
      this.stdout += chunk
      this.buffered += chunk
      let newline = this.buffered.indexOf('\n')
      while (newline >= 0) {
        const line = this.buffered.slice(0, newline).trim()
        this.buffered = this.buffered.slice(newline + 1)
        if (line) {
          try {
            this.messages.push(JSON.parse(line) as ChildMessage)
          } catch {
            this.messages.push({ event: 'unparsable', message: line })
          }
        }
        newline = this.buffered.indexOf('\n')
      }
      this.notify()
    })
    this.proc.stderr.on('data', (chunk: string) => {
      this.stderr += chunk
    })
    // A killed child makes writes to its stdin fail with EPIPE: that is expected, not an error.
    this.proc.stdin.on('error', () => {})
    this.exited = new Promise((done) => {
      this.proc.on('exit', (code, signal) => {
        live.delete(this)
        done({ code, signal })
        this.notify()
      })
    })
  }

  get pid(): number {
    return this.proc.pid ?? -1
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  private notify(): void {
    // A copy: a listener may unsubscribe while it is being notified.
    // oxlint-disable-next-line unicorn/no-useless-spread
    for (const listener of [...this.listeners]) listener()
  }

  /** Resolves with the first message (already received or future) that matches. */
  waitFor(match: (message: ChildMessage) => boolean, timeoutMs = 20_000, what = 'a message'): Promise<ChildMessage> {
    return new Promise((resolvePromise, reject) => {
      const check = (): boolean => {
        const found = this.messages.find(match)
        if (found) {
          cleanup()
          resolvePromise(found)
          return true
        }
        if (!this.alive && this.buffered === '') {
          cleanup()
          reject(new Error(`child ${this.pid} exited while waiting for ${what}; stderr: ${this.stderr.slice(-2000)}`))
          return true
        }
        return false
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} from child ${this.pid}; stderr: ${this.stderr.slice(-2000)}`))
      }, timeoutMs)
      const cleanup = (): void => {
        clearTimeout(timer)
        this.listeners.delete(listener)
      }
      const listener = (): void => {
        check()
      }
      this.listeners.add(listener)
      check()
    })
  }

  /** Writes a command without waiting for its answer; returns the command's id. */
  post(command: Record<string, unknown>): number {
    const id = this.nextId++
    this.proc.stdin.write(JSON.stringify({ ...command, id }) + '\n')
    return id
  }

  /** The answer to command `id`. Throws when the child answered with an error. */
  async answer<T>(id: number, timeoutMs = 20_000): Promise<T> {
    const message = await this.waitFor((m) => m.id === id, timeoutMs, `the answer to command ${id}`)
    if (message.ok !== true) {
      throw new Error(`child ${this.pid} failed command ${id}: ${message.code ?? ''} ${message.message ?? ''}`)
    }
    return message as unknown as T
  }

  request<T>(command: Record<string, unknown>, timeoutMs = 20_000): Promise<T> {
    return this.answer<T>(this.post(command), timeoutMs)
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) this.proc.kill(signal)
  }
}

/** Starts the worker fixture and constructs its manager. */
export async function startWorker(options: WorkerOptions): Promise<Child> {
  const child = new Child(WORKER)
  await child.waitFor((m) => m.event === 'loaded', 20_000, 'the addon to load')
  await child.request({ cmd: 'init', options })
  return child
}

export function refresh(child: Child, command: Record<string, unknown>, timeoutMs = 30_000): Promise<RefreshReport> {
  return child.request<RefreshReport>({ cmd: 'refresh', ...command }, timeoutMs)
}

export function report(child: Child): Promise<StateReport> {
  return child.request<StateReport>({ cmd: 'stats' })
}

/** SIGKILLs every child still running and waits for them to be gone. */
export async function killAll(): Promise<void> {
  const children = [...live]
  for (const child of children) child.kill('SIGKILL')
  await Promise.all(children.map((child) => child.exited))
}

/** A fresh temporary directory; removed by `removeTempDirs`. */
const temps: string[] = []
export function tempDir(prefix = 'aqm-mp-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  temps.push(dir)
  return dir
}

export function removeTempDirs(): void {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true })
}

/** Every regular file under `dir`, recursively. */
export function filesUnder(dir: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(dir)) {
    const full = join(dir, name)
    const info = statSync(full)
    if (info.isDirectory()) out.push(...filesUnder(full))
    else if (info.isFile()) out.push(full)
  }
  return out
}

export function readJson(path: string): unknown {
  return JSON.parse(readFileSync(path, 'utf8'))
}

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms))

/** Polls `condition` every few milliseconds until it holds, or fails after `timeoutMs`. */
export async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await condition()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(5)
  }
}
