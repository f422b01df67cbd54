// The brokers under test, started the same way for every benchmark: Roost (on PGlite or on a throwaway
// Postgres server), bare Aedes and Mosquitto, each in its own process on the broker core.

import { mkdirSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { openDatabase } from '../db/open.ts'
import { freshDataDir, testEnv } from '../test/harness.ts'
import buildPgliteTemplate from '../test/global-setup.ts'
import { startPostgres, type PostgresServer } from '../test/postgres.ts'
import { cleanUpOnInterrupt, NodeChild, rssBytes, type LoopDelay } from './process.ts'
import { seedDevices, type BenchDevice } from './devices.ts'
import { startMosquitto } from './mosquitto.ts'
import type { MemorySample } from './memory.ts'
import { childBaseEnv, ROOST_PARTS_ENV, type Settings } from './settings.ts'

export type BrokerKind = 'roost' | 'aedes' | 'mosquitto'

export interface BrokerUnderTest {
  readonly kind: BrokerKind
  readonly label: string
  readonly port: number
  readonly pid: number
  /** Resident memory, read from /proc; Node brokers collect garbage first and add their own figures. */
  memory (): Promise<BrokerMemory>
  stop (): Promise<void>
}

export interface BrokerMemory {
  readonly rss: number
  // V8 heap, and memory outside it (Buffers; PGlite's WebAssembly memory shows in RSS only)
  readonly node: MemorySample | undefined
}

export interface RoostUnderTest extends BrokerUnderTest {
  readonly devices: readonly BenchDevice[]
  readonly serviceToken: string
  /** The REST API's port and admin token, when started with `api: true` (else undefined). */
  readonly httpPort: number | undefined
  readonly adminToken: string
  /** Rows in the telemetry table, counted by the broker process (the one that holds the database). */
  telemetryRows (): Promise<number>
  /** Roost's event-loop delay from loopDelayStart() to loopDelay(). */
  loopDelayStart (): Promise<void>
  loopDelay (): Promise<LoopDelay>
}

// Room above the connection count for the broker's own files (database, pipes, listeners).
const SPARE_FDS = 1024
// Node flags of every Node broker: the memory benchmark needs full collections on request.
const NODE_BROKER_ARGS = ['--expose-gc']
// For memory figures: V8 grows its young generation (semi-spaces of up to 16 MiB) after a burst of
// allocation, such as 10k logins, and that growth showed up as 2–5 KiB of noise per connection. With
// it fixed at its usual maximum from the start, the baseline already holds it and the RSS delta is the
// connections' own memory. Throughput benchmarks run Node's defaults.
const SEMI_SPACE_MIB = 16
const FIXED_YOUNG_GENERATION = [`--min-semi-space-size=${SEMI_SPACE_MIB}`, `--max-semi-space-size=${SEMI_SPACE_MIB}`]

/** What the Roost child says once listening (bench/broker-roost.ts). */
export interface RoostHello { readonly port: number, readonly httpPort?: number }
export interface NodeBrokerOptions {
  readonly settings: Settings
  // open connections to expect, for the file-descriptor limit
  readonly connections: number
  readonly fixedYoungGeneration?: boolean
}

function nodeArgs (opts: NodeBrokerOptions, kind: string): string[] {
  return [...NODE_BROKER_ARGS, ...(opts.fixedYoungGeneration === true ? FIXED_YOUNG_GENERATION : []), ...profileArgs(opts.settings, kind)]
}

/** --cpu-prof flags when BENCH_PROFILE is set: one directory per process kind under results/profiles/. */
export function profileArgs (settings: Settings, kind: string): string[] {
  if (!settings.profile) return []
  const dir = fileURLToPath(new URL(`./results/profiles/${kind}`, import.meta.url))
  mkdirSync(dir, { recursive: true })
  return ['--cpu-prof', '--cpu-prof-dir', dir]
}

function nodeMemory (child: NodeChild): () => Promise<BrokerMemory> {
  return async () => {
    const node = await child.call<MemorySample>('memory')
    return { rss: rssBytes(child.pid), node }
  }
}

/** The voice bridge's upstream, for `roost start` with the bridge (the voice benchmark's fake Realtime server). */
export interface RealtimeUpstream { readonly apiKey: string, readonly baseUrl: string }

export async function startRoostBroker (opts: NodeBrokerOptions & { db: 'pglite' | 'postgres', deviceIds: readonly string[], api?: boolean, voice?: RealtimeUpstream }): Promise<RoostUnderTest> {
  let pg: PostgresServer | undefined
  if (opts.db === 'postgres') pg = await startPostgres()
  await buildPgliteTemplate() // no-op once the test suite (or an earlier run) built it
  const dataDir = freshDataDir()
  const cleanup = async (): Promise<void> => {
    rmSync(dataDir, { recursive: true, force: true })
    await pg?.stop()
  }
  const registered = cleanUpOnInterrupt(cleanup)
  try {
    const db = await openDatabase({ url: pg?.url, dataDir })
    let devices: BenchDevice[]
    try { devices = await seedDevices(db, opts.deviceIds) } finally { await db.close() }
    const roostEnv = testEnv(dataDir, { ROOST_LOG_LEVEL: 'warn', ...(pg !== undefined ? { DATABASE_URL: pg.url } : {}) })
    // with the API, `roost start` in one process: REST on an ephemeral port (testEnv's ROOST_HTTP_PORT=0)
    // with the voice bridge as well: all three parts, as `roost start` runs them with OPENAI_API_KEY set
    const parts: Record<string, string> = opts.voice !== undefined
      ? { [ROOST_PARTS_ENV]: 'broker,api,bridge', OPENAI_API_KEY: opts.voice.apiKey, OPENAI_BASE_URL: opts.voice.baseUrl }
      : opts.api === true ? { [ROOST_PARTS_ENV]: 'broker,api' } : {}
    const env: Record<string, string> = { ...childBaseEnv(), ...roostEnv, ...parts }
    const kind = `roost-${opts.db}${opts.voice !== undefined ? '-voice' : opts.api === true ? '-api' : ''}`
    const { child, hello } = await NodeChild.start<RoostHello>('./broker-roost.ts', {
      name: kind,
      core: opts.settings.placement.broker,
      fdLimit: opts.connections + SPARE_FDS,
      env,
      nodeArgs: nodeArgs(opts, kind),
    })
    return {
      kind: 'roost',
      label: `Roost (${opts.db === 'postgres' ? 'Postgres' : 'PGlite'})`,
      port: hello.port,
      pid: child.pid,
      devices,
      serviceToken: roostEnv.ROOST_SERVICE_TOKEN as string,
      httpPort: hello.httpPort,
      adminToken: roostEnv.ROOST_ADMIN_TOKEN as string,
      memory: nodeMemory(child),
      telemetryRows: () => child.call<number>('telemetryRows'),
      loopDelayStart: () => child.call<void>('loopDelayStart'),
      loopDelay: () => child.call<LoopDelay>('loopDelay'),
      async stop () {
        await child.stop()
        await cleanup()
        registered()
      },
    }
  } catch (err) {
    await cleanup()
    registered()
    throw err
  }
}

export async function startBareAedes (opts: NodeBrokerOptions): Promise<BrokerUnderTest> {
  const { child, hello } = await NodeChild.start<{ port: number }>('./broker-aedes.ts', {
    name: 'aedes',
    core: opts.settings.placement.broker,
    fdLimit: opts.connections + SPARE_FDS,
    nodeArgs: nodeArgs(opts, 'aedes'),
  })
  return {
    kind: 'aedes',
    label: 'bare Aedes',
    port: hello.port,
    pid: child.pid,
    memory: nodeMemory(child),
    stop: () => child.stop(),
  }
}

export async function startMosquittoBroker (opts: { settings: Settings, connections: number }): Promise<BrokerUnderTest> {
  const m = await startMosquitto({ core: opts.settings.placement.broker, fdLimit: opts.connections + SPARE_FDS })
  return {
    kind: 'mosquitto',
    label: 'Mosquitto',
    port: m.port,
    pid: m.pid,
    memory: async () => ({ rss: rssBytes(m.pid), node: undefined }),
    stop: () => m.stop(),
  }
}
