// A real `redis-server` for the Redis shared-store tests: 127.0.0.1, a random free port, no
// persistence, its own temp dir. When redis-server is not installed, `redisServerMissing()`
// says why (the spec skips loudly); under CI (`CI` set) that is a failure instead, because
// `.ci/run` installs it (scripts/ci-redis.sh).

import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** `null` when redis-server runs here; otherwise why the Redis tests cannot run. */
export function redisServerMissing(): string | null {
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (probe.error === undefined && probe.status === 0) return null
  const why = 'redis-server is not installed (apt-get install redis-server, or bash scripts/ci-redis.sh)'
  if (process.env.CI) throw new Error(`${why}: CI must run the Redis tests`)
  return why
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

/** One command through redis-cli (installed with redis-server); its reply as text. */
export function redisCommand(port: number, args: string[], timeoutMs = 2_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: timeoutMs, encoding: 'utf8' }, (error, stdout) => {
      if (error) reject(error)
      else resolve(stdout.trim())
    })
  })
}

export class RedisServer {
  private proc: ChildProcess | undefined
  private readonly dir = mkdtempSync(join(tmpdir(), 'aqm-redis-'))

  private constructor(readonly port: number) {}

  static async start(): Promise<RedisServer> {
    const server = new RedisServer(await freePort())
    await server.run()
    return server
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/`
  }

  private async run(): Promise<void> {
    this.proc = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir],
      {
        stdio: 'ignore',
      },
    )
    for (let i = 0; i < 500; i++) {
      try {
        if ((await redisCommand(this.port, ['PING'], 500)) === 'PONG') return
      } catch {
        // not up yet
      }
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    throw new Error(`redis-server did not answer on ${this.port}`)
  }

  command(...args: string[]): Promise<string> {
    return redisCommand(this.port, args)
  }

  /** SIGKILL, as a crash or an OOM kill would. */
  async kill(): Promise<void> {
    const proc = this.proc
    this.proc = undefined
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
    const gone = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill('SIGKILL')
    await gone
  }

  /** The same port again, empty (no persistence). */
  async restart(): Promise<void> {
    await this.kill()
    await this.run()
  }

  async stop(): Promise<void> {
    await this.kill()
    rmSync(this.dir, { recursive: true, force: true })
  }
}
