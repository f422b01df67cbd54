// The benchmark's settings: which benchmarks to run (arguments) and how long and hard (BENCH_* variables).
// The only bench module that reads process.env, as schemas/config.ts is for Roost itself.

import { placement, type Placement } from './process.ts'
import type { Part } from '../platform.ts'

export const BENCHMARKS = ['relay', 'ingest', 'idle', 'commands', 'voice'] as const
export type BenchName = typeof BENCHMARKS[number]
export const BROKERS = ['roost', 'aedes', 'mosquitto'] as const
export type BrokerName = typeof BROKERS[number]

export interface Settings {
  readonly benchmarks: readonly BenchName[]
  readonly brokers: ReadonlySet<BrokerName>
  readonly measureMs: number
  readonly warmupMs: number
  readonly runs: number
  readonly window: number
  readonly refillBatch: number
  readonly pipeline: number
  readonly payloadBytes: number
  readonly relayPublishers: number
  readonly ingestDevices: number
  readonly idleConnections: number
  readonly connectConcurrency: number
  readonly commandDevices: number
  readonly voiceDevices: number
  readonly voiceMeasureMs: number
  readonly profile: boolean
  readonly placement: Placement
}

// The issue: keep at least 200 QoS 1 messages in flight per publisher.
const MIN_IN_FLIGHT = 200
// Messages a publisher writes at once when its windows open. Each write to a broker that sleeps
// between reads (Mosquitto) pays for waking it, in a VM an inter-processor interrupt, charged to the
// generator: few large writes keep the generator from running out of CPU before the broker does.
const REFILL_BATCH = 64

interface IntSetting { readonly env: string, readonly default: number, readonly min: number, readonly help: string }

const INTS = {
  seconds: { env: 'BENCH_SECONDS', default: 5, min: 1, help: 'measured window of each throughput case, in seconds' },
  warmup: { env: 'BENCH_WARMUP_SECONDS', default: 1, min: 0, help: 'load before the measured window, in seconds' },
  runs: { env: 'BENCH_RUNS', default: 1, min: 1, help: 'repetitions of each throughput case; the table shows the median' },
  refill: { env: 'BENCH_REFILL_BATCH', default: REFILL_BATCH, min: 1, help: 'messages a publisher writes at once when its window opens' },
  // publishers refill in batches, so 200 + one batch of ids keep at least 200 in flight (the floor)
  window: { env: 'BENCH_WINDOW', default: MIN_IN_FLIGHT + REFILL_BATCH, min: 1, help: 'outstanding QoS 1 packet ids per publisher' },
  // twice the PUBACK window: at QoS 1 the PUBACK window binds first, at QoS 0 this is the window; either
  // way a broker queues at most publishers × this, instead of filling its memory when it falls behind
  pipeline: { env: 'BENCH_PIPELINE', default: 2 * (MIN_IN_FLIGHT + REFILL_BATCH), min: 1, help: 'relay messages per publisher written but not yet delivered to the subscriber' },
  payload: { env: 'BENCH_PAYLOAD_BYTES', default: 64, min: 2, help: 'relay payload size, in bytes' },
  publishers: { env: 'BENCH_RELAY_PUBLISHERS', default: 10, min: 1, help: 'relay publishers (one subscriber)' },
  devices: { env: 'BENCH_INGEST_DEVICES', default: 100, min: 1, help: 'devices publishing telemetry in the ingest benchmark' },
  connections: { env: 'BENCH_IDLE_CONNECTIONS', default: 10_000, min: 1, help: 'idle authenticated connections' },
  // below Mosquitto's listen backlog (100): more SYNs than that waiting for accept() are dropped and
  // retried a second later, which measures TCP's retry timer instead of the broker
  concurrency: { env: 'BENCH_CONNECT_CONCURRENCY', default: 50, min: 1, help: 'logins in progress at once while opening idle connections' },
  commandDevices: { env: 'BENCH_COMMAND_DEVICES', default: 100, min: 1, help: 'devices in the commands benchmark, each sent commands over its own keep-alive HTTP connection' },
  voiceDevices: { env: 'BENCH_VOICE_DEVICES', default: 20, min: 1, help: 'talking devices in the voice benchmark (half of them interrupt each reply)' },
  // a voice turn takes 3–6 s, so BENCH_SECONDS' few seconds would hold a turn or two per device
  voiceSeconds: { env: 'BENCH_VOICE_SECONDS', default: 40, min: 5, help: 'measured window of the voice benchmark, in seconds' },
} as const satisfies Record<string, IntSetting>

export function usage (): string {
  const vars = Object.values(INTS).map(s => `  ${s.env.padEnd(26)} ${s.help} (default ${s.default})`)
  return [
    `usage: npm run bench [-- ${BENCHMARKS.join(' | ')} ...]   (no name: all of them)`,
    ...vars,
    `  ${'BENCH_BROKERS'.padEnd(26)} comma-separated subset of ${BROKERS.join(',')} (default all)`,
    `  ${'BENCH_PROFILE'.padEnd(26)} 1: run Node brokers and the load generator with --cpu-prof into bench/results/profiles/<kind>/ (read with bench/profile-summary.ts)`,
  ].join('\n')
}

export function loadSettings (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Settings {
  const problems: string[] = []
  const benchmarks: BenchName[] = []
  for (const a of argv) {
    if ((BENCHMARKS as readonly string[]).includes(a)) benchmarks.push(a as BenchName)
    else problems.push(`unknown benchmark "${a}"`)
  }
  const int = (s: IntSetting): number => {
    const raw = env[s.env]
    if (raw === undefined || raw === '') return s.default
    const n = Number(raw)
    if (!Number.isSafeInteger(n) || n < s.min) { problems.push(`${s.env} must be a whole number ≥ ${s.min}, got "${raw}"`); return s.default }
    return n
  }
  const brokers = new Set<BrokerName>()
  for (const b of (env.BENCH_BROKERS ?? BROKERS.join(',')).split(',').map(s => s.trim()).filter(s => s !== '')) {
    if ((BROKERS as readonly string[]).includes(b)) brokers.add(b as BrokerName)
    else problems.push(`BENCH_BROKERS: unknown broker "${b}"`)
  }
  const settings: Settings = {
    benchmarks: benchmarks.length === 0 ? [...BENCHMARKS] : benchmarks,
    brokers,
    measureMs: int(INTS.seconds) * 1000,
    warmupMs: int(INTS.warmup) * 1000,
    runs: int(INTS.runs),
    window: int(INTS.window),
    refillBatch: int(INTS.refill),
    pipeline: int(INTS.pipeline),
    payloadBytes: int(INTS.payload),
    relayPublishers: int(INTS.publishers),
    ingestDevices: int(INTS.devices),
    idleConnections: int(INTS.connections),
    connectConcurrency: int(INTS.concurrency),
    commandDevices: int(INTS.commandDevices),
    voiceDevices: int(INTS.voiceDevices),
    voiceMeasureMs: int(INTS.voiceSeconds) * 1000,
    profile: env.BENCH_PROFILE === '1' || env.BENCH_PROFILE === 'true',
    placement: placement(),
  }
  if (problems.length > 0) throw new Error(problems.join('\n') + '\n\n' + usage())
  return settings
}

/** Tells the Roost child (bench/broker-roost.ts) which parts to start: `broker` (the default), `broker,api` or `broker,api,bridge`. */
export const ROOST_PARTS_ENV = 'BENCH_ROOST_PARTS'

/** The parts the Roost child starts, from the variable its parent set (read in the child). */
export function roostParts (env: Readonly<Record<string, string | undefined>>): Part[] {
  switch (env[ROOST_PARTS_ENV]) {
    case 'broker,api': return ['broker', 'api']
    case 'broker,api,bridge': return ['broker', 'api', 'bridge']
    default: return ['broker']
  }
}

/** What a broker child needs from our environment (no ROOST_* or DATABASE_URL of the caller's shell). */
export function childBaseEnv (): Record<string, string> {
  const keep: Record<string, string> = {}
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'LANG']) {
    const v = process.env[k]
    if (v !== undefined) keep[k] = v
  }
  return keep
}
