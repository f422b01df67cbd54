// Starts a real, throwaway Postgres server for a test or benchmark: its own data dir and free port,
// run as the `postgres` user when we are root (Postgres refuses to run as root).

import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface PostgresServer {
  readonly url: string
  readonly port: number
  stop (): Promise<void>
  /** Stops the server without removing its data (for outage tests); start() brings it back on the same port. */
  pause (): Promise<void>
  start (): Promise<void>
}

function binDir (): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const versions = readdirSync(root).filter(v => existsSync(join(root, v, 'bin', 'pg_ctl'))).sort((a, b) => Number(b) - Number(a))
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin')
}

/** Why Postgres cannot be started here, or undefined when it can. Tests print this when they skip. */
export function postgresUnavailable (): string | undefined {
  if (binDir() === undefined) return 'PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)'
  if (process.getuid?.() === 0 && spawnSync('id', ['postgres']).status !== 0) return 'running as root but there is no postgres user to run the server as'
  return undefined
}

// A server started as a child needs its port before it starts. A port the kernel hands out for port 0 can
// be handed to a parallel test again before the child binds it, so pick below the ephemeral range
// (32768+), where only explicit binds land, and check the port is free.
const PORT_RANGE_START = 20_000
const PORT_RANGE_SIZE = 10_000

export async function freePort (): Promise<number> {
  for (;;) {
    const port = PORT_RANGE_START + Math.floor(Math.random() * PORT_RANGE_SIZE)
    const free = await new Promise<boolean>(resolve => {
      const s = createServer()
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
    })
    if (free) return port
  }
}

function asPostgres (cmd: string, args: string[]): void {
  const root = process.getuid?.() === 0
  const [file, argv] = root ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]
  execFileSync(file, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
}

export async function startPostgres (opts: { settings?: Record<string, string> } = {}): Promise<PostgresServer> {
  const bin = binDir()
  if (bin === undefined) throw new Error(postgresUnavailable())
  const base = mkdtempSync(join(tmpdir(), 'roost-pg-'))
  chmodSync(base, 0o777) // the postgres user writes here
  const data = join(base, 'data')
  const port = await freePort()
  asPostgres(join(bin, 'initdb'), ['-D', data, '-U', 'roost', '--auth=trust', '-E', 'UTF8', '--no-sync'])
  const settings = {
    listen_addresses: "'127.0.0.1'",
    port: String(port),
    unix_socket_directories: `'${base}'`,
    // a test server: keep it small and quick to start
    shared_buffers: "'64MB'",
    max_connections: '50',
    ...opts.settings,
  }
  const options = Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`).join(' ')
  const start = async (): Promise<void> => {
    asPostgres(join(bin, 'pg_ctl'), ['-D', data, '-l', join(base, 'log'), '-o', options, '-w', '-t', '30', 'start'])
  }
  const pause = async (): Promise<void> => {
    asPostgres(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'])
  }
  await start()
  asPostgres(join(bin, 'createdb'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'roost', 'roost'])
  return {
    url: `postgres://roost@127.0.0.1:${port}/roost`,
    port,
    start,
    pause,
    async stop () {
      try { await pause() } catch { /* already stopped */ }
      rmSync(base, { recursive: true, force: true })
    },
  }
}
