// Command round trip: POST /v1/devices/{id}/commands with waitMs → the broker publishes the command → the
// device answers on …/result → the POST returns 201 "succeeded". Latency percentiles and round trips/s.
// Both sides live here: commandsBenchmark() runs in the orchestrator; run as a process entry (its own
// core, like bench/load.ts) this file is the load side, 100 raw MQTT devices and their HTTP loops.

import { Agent, request } from 'node:http'
import type { Socket } from 'node:net'
import { resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { profileArgs, startRoostBroker, type RoostUnderTest } from './brokers.ts'
import { benchDeviceIds, type BenchDevice } from './devices.ts'
import { CpuMeter, NodeChild, serveParent, sleep, type CpuShares } from './process.ts'
import { median, rate, type BenchReport } from './report.ts'
import type { Settings } from './settings.ts'
import { postgresUnavailable } from '../test/postgres.ts'
import {
  FrameScanner, openSession, publishTemplate, pubackPacket, subscribePacket,
  PACKET_PUBACK, PACKET_PUBLISH, PACKET_SUBACK, PUBACK_BYTES,
} from './wire.ts'

// The issue's target: p99 of the round trip at 100 concurrent devices, on loopback. The case it is judged
// on: every device online at once and each sent a command a second (100/s in all for 100 devices), at the
// times a schedule says, whether or not earlier ones have come back. Apps command a fleet now and then,
// not back to back; the faster rates show how much room there is above that.
const TARGET_P99_MS = 20
const TARGET_PER_DEVICE_PER_S = 1
// What every loop sends. waitMs is far above a healthy round trip: a command not answered within it
// comes back "sent" and counts as a failure rather than stalling the loop.
const WAIT_MS = 5000
const COMMAND_BODY = Buffer.from(JSON.stringify({ name: 'ping', waitMs: WAIT_MS }))
const RESULT_PAYLOAD = Buffer.from(JSON.stringify({ ok: true, result: 'pong' }))
// The closed-loop cases: every device's loop at once (a capacity measure: with all of them always waiting
// for an answer, latency is devices ÷ throughput), then one loop alone, for the round trip without queueing
// behind the other 99.
const UNLOADED_LOOPS = 1
// Open-loop rates, commands per second per device (the first is the target's case)
const OPEN_PER_DEVICE = [TARGET_PER_DEVICE_PER_S, 2.5, 5]
// An open-loop case measures at least this many round trips, so its p99 rests on 20 of them and not on
// the 5th-worst of a 5 s window at 100/s; slower rates get a longer window.
const MIN_OPEN_SAMPLES = 2000

/** A measured case: `loops` devices sending back to back, or `rate` commands/s spread over all devices. */
type Case = { readonly kind: 'closed', readonly loops: number } | { readonly kind: 'open', readonly rate: number }

function caseLabel (c: Case, devices: number): string {
  if (c.kind === 'open') return `${devices} devices, ${rate(c.rate)}/s open loop`
  return c.loops === devices ? `${c.loops} back to back (all)` : `${c.loops} at a time`
}

function openRates (devices: number): number[] {
  return OPEN_PER_DEVICE.map(perDevice => Math.round(perDevice * devices))
}

function casesFor (devices: number): Case[] {
  const closed: Case[] = (devices === UNLOADED_LOOPS ? [devices] : [devices, UNLOADED_LOOPS]).map(loops => ({ kind: 'closed', loops }))
  return [...closed, ...openRates(devices).map(rate => ({ kind: 'open' as const, rate }))]
}

function resultCase (r: RunResult): Case {
  return r.rate === undefined ? { kind: 'closed', loops: r.loops } : { kind: 'open', rate: r.rate }
}
const CONNACK_TIMEOUT_MS = 30_000
const SUBSCRIBE_ID = 1
const SUBACK_FAILURE = 0x80
// MQTT packet identifiers are 1..65535 [MQTT-2.3.1-1]
const MAX_PACKET_ID = 0xffff
// Sockets beyond the devices' own (MQTT and HTTP, one each per device), for the broker's listeners and
// pipes; bench/brokers.ts adds room for its other files.
const SPARE_CONNECTIONS = 16
// Room for the load process's own files (Node's, tsx's) beyond its sockets.
const LOAD_SPARE_FDS = 1024
// load process cores at which the client, not Roost, may set the pace (as in bench/relay.ts)
const CLIENT_BOUND_CORES = 0.9
// Failure texts kept per run: enough to see what went wrong without copying thousands of bodies.
const FAILURE_SAMPLES = 5

// ---- shared between the two sides ----------------------------------------------------------------

interface OpenSpec {
  readonly mqttPort: number
  readonly httpPort: number
  readonly adminToken: string
  readonly devices: readonly BenchDevice[]
}

interface RunSpec {
  readonly loops: number
  // open loop: this many commands per second in all, spread round-robin over every device, each sent at
  // its scheduled time whether or not earlier ones have come back (latency counts from that time, so a
  // late send is not hidden); absent: `loops` devices each send back to back (closed loop)
  readonly rate?: number
  readonly brokerPid: number
  readonly warmupMs: number
  readonly measureMs: number
}

interface Latency { readonly p50: number, readonly p90: number, readonly p99: number, readonly p999: number, readonly max: number, readonly mean: number }

interface RunResult {
  readonly loops: number
  readonly rate: number | undefined
  readonly seconds: number
  readonly roundTrips: number // completed within the measured window
  readonly perSecond: number
  readonly latencyMs: Latency
  // over the whole run, warm-up included: replies that were not 201 "succeeded", and request errors
  readonly failures: number
  readonly failureSamples: readonly string[]
  readonly disconnects: number // device sessions the broker closed during the run
  readonly cpu: CpuShares
}

// ---- load side -----------------------------------------------------------------------------------

/** One device's session: PUBACKs each command and publishes its result at once, in one write. */
class CommandDevice {
  commands = 0
  resultsAcked = 0
  closed = false
  private nextId = 0

  constructor (readonly id: string, readonly socket: Socket) {
    const scanner = new FrameScanner((first, buf, start) => {
      const type = first >> 4
      if (type === PACKET_PUBACK) { this.resultsAcked++; return }
      if (type !== PACKET_PUBLISH) return
      const topicEnd = start + 2 + buf.readUInt16BE(start)
      const topic = buf.toString('utf8', start + 2, topicEnd)
      const qos = (first >> 1) & 3
      const ack = qos > 0 ? Buffer.allocUnsafe(PUBACK_BYTES) : undefined
      if (ack !== undefined) pubackPacket(buf.readUInt16BE(topicEnd), ack, 0)
      // devices/{id}/commands/{cmdId}; anything else the device ignores (its subscription is only that)
      if (topic.split('/').length !== 4) { if (ack !== undefined) socket.write(ack); return }
      this.commands++
      const result = publishTemplate(`${topic}/result`, RESULT_PAYLOAD, 1)
      this.nextId = this.nextId % MAX_PACKET_ID + 1
      result.bytes.writeUInt16BE(this.nextId, result.idOffset)
      socket.write(ack === undefined ? result.bytes : Buffer.concat([ack, result.bytes]))
    })
    socket.on('data', chunk => scanner.feed(chunk))
    socket.on('close', () => { this.closed = true })
    socket.on('error', () => {}) // a broker closing at the end of a run is not an error of the run
  }
}

async function openDevice (port: number, d: BenchDevice): Promise<CommandDevice> {
  const socket = await openSession({ port }, { clientId: d.id, username: d.id, password: d.token }, CONNACK_TIMEOUT_MS)
  // the subscription is what makes Roost deliver (docs/architecture.md, Commands)
  await new Promise<void>((resolve, reject) => {
    const scanner = new FrameScanner((first, buf, start, end) => {
      if (first >> 4 !== PACKET_SUBACK) return
      socket.off('data', onData)
      if (buf.readUInt16BE(start) !== SUBSCRIBE_ID || buf[end - 1] === SUBACK_FAILURE) reject(new Error(`${d.id}: subscription to its commands refused`))
      else resolve()
    })
    const onData = (chunk: Buffer): void => scanner.feed(chunk)
    socket.on('data', onData)
    socket.write(subscribePacket(`devices/${d.id}/commands/+`, 1, SUBSCRIBE_ID))
  })
  return new CommandDevice(d.id, socket)
}

// Sessions stay open from `open` to `close`, across the cases and runs.
let opened: { spec: OpenSpec, devices: CommandDevice[], agent: Agent } | undefined

async function open (spec: OpenSpec): Promise<{ devices: number }> {
  const devices = await Promise.all(spec.devices.map(d => openDevice(spec.mqttPort, d)))
  // one keep-alive connection per loop, as a backend with a connection pool would hold
  const agent = new Agent({ keepAlive: true, maxSockets: spec.devices.length })
  // Open those connections before anything is measured, with one command each at once: a connection
  // opened while Roost is saturated waits seconds for its first request to be read (seen: one new
  // connection served every ~0.3 s), which would land in the window as a tail of the warm-up's making.
  const first = await Promise.all(devices.map(d => postCommand(spec, agent, d.id).then(failureOf, (err: unknown) => String(err))))
  const failed = first.filter(f => f !== undefined)
  if (failed.length > 0) throw new Error(`${failed.length} of ${devices.length} first commands failed; first: ${failed[0]}`)
  opened = { spec, devices, agent }
  return { devices: devices.length }
}

function postCommand (spec: OpenSpec, agent: Agent, deviceId: string): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({
      agent,
      host: '127.0.0.1',
      port: spec.httpPort,
      method: 'POST',
      path: `/v1/devices/${deviceId}/commands`,
      headers: { authorization: `Bearer ${spec.adminToken}`, 'content-type': 'application/json', 'content-length': COMMAND_BODY.length },
    }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(COMMAND_BODY)
  })
}

/** Why a reply is not a finished round trip, or undefined when it is one. */
function failureOf (reply: { status: number, body: string }): string | undefined {
  if (reply.status !== 201) return `HTTP ${reply.status}: ${reply.body.slice(0, 200)}`
  let status: unknown
  try { status = (JSON.parse(reply.body) as { status?: unknown }).status } catch { return `not JSON: ${reply.body.slice(0, 200)}` }
  return status === 'succeeded' ? undefined : `201 with status "${String(status)}"`
}


function latencyOf (samples: Float64Array): Latency {
  const s = samples.sort()
  const n = s.length
  const at = (q: number): number => n === 0 ? 0 : s[Math.min(n - 1, Math.floor(n * q))] as number
  const round = (x: number): number => Math.round(x * 100) / 100
  let total = 0
  for (const x of s) total += x
  return { p50: round(at(0.5)), p90: round(at(0.9)), p99: round(at(0.99)), p999: round(at(0.999)), max: round(n === 0 ? 0 : s[n - 1] as number), mean: round(n === 0 ? 0 : total / n) }
}

async function run (r: RunSpec): Promise<RunResult> {
  if (opened === undefined) throw new Error('run before open')
  const { spec, devices, agent } = opened
  const active = devices.slice(0, r.loops)
  const disconnected0 = devices.filter(d => d.closed).length
  const latencies: number[] = []
  const failureSamples: string[] = []
  let failures = 0
  let stopping = false
  // the window is set once warm-up is over; a round trip counts when it completes inside it
  let windowStart = Number.POSITIVE_INFINITY
  let windowEnd = Number.POSITIVE_INFINITY

  /** One command to device `d`, its latency counted from `from` when it completes inside the window. */
  const roundTrip = async (d: CommandDevice, from: number): Promise<void> => {
    let failure: string | undefined
    try { failure = failureOf(await postCommand(spec, agent, d.id)) } catch (err) { failure = err instanceof Error ? err.message : String(err) }
    const t1 = performance.now()
    if (failure !== undefined) {
      failures++
      if (failureSamples.length < FAILURE_SAMPLES) failureSamples.push(`${d.id}: ${failure}`)
    } else if (t1 >= windowStart && t1 <= windowEnd) latencies.push(t1 - from)
  }

  const loop = async (d: CommandDevice): Promise<void> => {
    while (!stopping) await roundTrip(d, performance.now())
  }

  const openLoop = async (rate: number): Promise<void> => {
    const start = performance.now()
    const inFlight = new Set<Promise<void>>()
    let k = 0
    while (!stopping) {
      const due = start + k * 1000 / rate
      const wait = due - performance.now()
      if (wait > 1) { await sleep(Math.min(wait, 5)); continue }
      const d = devices[k % devices.length] as CommandDevice
      k++
      const sent = roundTrip(d, due)
      inFlight.add(sent)
      void sent.then(() => inFlight.delete(sent))
    }
    await Promise.all(inFlight)
  }

  const loops = r.rate === undefined ? active.map(loop) : [openLoop(r.rate)]
  await sleep(r.warmupMs)
  const cpuMeter = new CpuMeter(r.brokerPid)
  windowStart = performance.now()
  await sleep(r.measureMs)
  windowEnd = performance.now()
  const seconds = (windowEnd - windowStart) / 1000
  const cpu = cpuMeter.read()
  stopping = true
  await Promise.all(loops)
  return {
    loops: r.loops,
    rate: r.rate,
    seconds,
    roundTrips: latencies.length,
    perSecond: latencies.length / seconds,
    latencyMs: latencyOf(Float64Array.from(latencies)),
    failures,
    failureSamples,
    disconnects: devices.filter(d => d.closed).length - disconnected0,
    cpu,
  }
}

async function close (): Promise<{ commands: number, resultsAcked: number }> {
  if (opened === undefined) return { commands: 0, resultsAcked: 0 }
  const { devices, agent } = opened
  opened = undefined
  agent.destroy()
  for (const d of devices) d.socket.destroy()
  return { commands: devices.reduce((n, d) => n + d.commands, 0), resultsAcked: devices.reduce((n, d) => n + d.resultsAcked, 0) }
}

// ---- orchestrator side ---------------------------------------------------------------------------

type Backend = 'pglite' | 'postgres'
interface BackendRuns { readonly db: Backend, readonly runs: ReadonlyArray<{ run: number, result: RunResult }>, readonly totals: { commands: number, resultsAcked: number } }

export async function commandsBenchmark (settings: Settings): Promise<BenchReport> {
  if (!settings.brokers.has('roost')) {
    return { name: 'commands', tables: [], notes: ['commands skipped: a Roost feature, and BENCH_BROKERS leaves Roost out'], summary: { skipped: true }, details: {} }
  }
  const notes: string[] = []
  const backends: Backend[] = ['pglite']
  const noPostgres = postgresUnavailable()
  if (noPostgres === undefined) backends.push('postgres')
  else notes.push(`Roost on Postgres skipped: ${noPostgres}`)
  const results: BackendRuns[] = []
  for (const db of backends) results.push(await runBackend(settings, db))
  return report(settings, results, notes)
}

async function runBackend (settings: Settings, db: Backend): Promise<BackendRuns> {
  const n = settings.commandDevices
  let roost: RoostUnderTest | undefined
  let load: NodeChild | undefined
  try {
    // each device holds one MQTT session and one keep-alive HTTP connection
    roost = await startRoostBroker({ db, deviceIds: benchDeviceIds('cmd', n), settings, connections: 2 * n + SPARE_CONNECTIONS, api: true })
    if (roost.httpPort === undefined) throw new Error('the Roost child did not report an HTTP port')
    load = (await NodeChild.start<{ pid: number }>('./commands.ts', {
      name: 'command load',
      core: settings.placement.load,
      fdLimit: 2 * n + LOAD_SPARE_FDS,
      nodeArgs: profileArgs(settings, 'load'),
    })).child
    await load.call('open', { mqttPort: roost.port, httpPort: roost.httpPort, adminToken: roost.adminToken, devices: roost.devices } satisfies OpenSpec)

    const runs: Array<{ run: number, result: RunResult }> = []
    for (let run = 1; run <= settings.runs; run++) {
      for (const c of casesFor(n)) {
        const measureMs = c.kind === 'open' ? Math.max(settings.measureMs, Math.ceil(MIN_OPEN_SAMPLES / c.rate) * 1000) : settings.measureMs
        const spec: RunSpec = { loops: c.kind === 'closed' ? c.loops : n, ...(c.kind === 'open' ? { rate: c.rate } : {}), brokerPid: roost.pid, warmupMs: settings.warmupMs, measureMs }
        const result = await load.call<RunResult>('run', spec)
        runs.push({ run, result })
        const l = result.latencyMs
        console.log(`  commands ${db} run ${run}, ${caseLabel(c, n)}: ${rate(result.perSecond)} round trips/s, p50 ${l.p50} ms, p99 ${l.p99} ms, max ${l.max} ms, mean ${l.mean} ms` +
          `, ${result.failures} failed` + (result.disconnects > 0 ? `, ${result.disconnects} device sessions closed` : '') +
          `, cores busy: broker ${result.cpu.broker}, load ${result.cpu.load}`)
      }
    }
    const totals = await load.call<{ commands: number, resultsAcked: number }>('close')
    return { db, runs, totals }
  } finally {
    await load?.stop()
    await roost?.stop().catch((err: unknown) => console.error('stopping Roost:', err))
  }
}

/** One case's figures over its runs: medians, except max (the worst of any run) and failures (their sum). */
interface Figures {
  readonly roundTripsPerSecond: number
  readonly p50Ms: number
  readonly p90Ms: number
  readonly p99Ms: number
  readonly p999Ms: number
  readonly maxMs: number
  readonly meanMs: number
  readonly failures: number
  readonly brokerCores: number
  readonly loadCores: number
}

function figures (rs: readonly RunResult[]): Figures {
  const med = (f: (r: RunResult) => number): number => median(rs.map(f)) ?? 0
  return {
    roundTripsPerSecond: Math.round(med(r => r.perSecond)),
    p50Ms: med(r => r.latencyMs.p50),
    p90Ms: med(r => r.latencyMs.p90),
    p99Ms: med(r => r.latencyMs.p99),
    p999Ms: med(r => r.latencyMs.p999),
    maxMs: Math.max(0, ...rs.map(r => r.latencyMs.max)),
    meanMs: med(r => r.latencyMs.mean),
    failures: rs.reduce((k, r) => k + r.failures, 0),
    brokerCores: med(r => r.cpu.broker),
    loadCores: med(r => r.cpu.load),
  }
}

function report (settings: Settings, results: readonly BackendRuns[], notes: string[]): BenchReport {
  const n = settings.commandDevices
  const cases = casesFor(n)
  const rates = openRates(n)
  const targetRate = rates[0] as number
  const meetsTarget = (f: Figures): boolean => f.p99Ms <= TARGET_P99_MS && f.failures === 0
  const ms = (x: number): string => x.toFixed(2)
  const rows: string[][] = []
  const summary: Record<string, unknown> = { devices: n, targetP99Ms: TARGET_P99_MS, targetPerDevicePerSecond: TARGET_PER_DEVICE_PER_S }
  for (const { db, runs } of results) {
    const byCase = new Map(cases.map(c => [caseLabel(c, n), figures(runs.filter(r => caseLabel(resultCase(r.result), n) === caseLabel(c, n)).map(r => r.result))]))
    for (const [label, f] of byCase) {
      rows.push([
        db, label,
        rate(f.roundTripsPerSecond), ms(f.p50Ms), ms(f.p99Ms), ms(f.maxMs), ms(f.meanMs),
        String(f.failures), f.brokerCores.toFixed(2), f.loadCores.toFixed(2),
      ])
    }
    const atRate = (rt: number): Figures => byCase.get(caseLabel({ kind: 'open', rate: rt }, n)) as Figures
    const target = atRate(targetRate)
    const met = meetsTarget(target)
    notes.push(`${db}: ${n} devices online, each sent ${TARGET_PER_DEVICE_PER_S} command a second (${rate(targetRate)}/s in all): p50 ${ms(target.p50Ms)} ms, ` +
      `p99 ${ms(target.p99Ms)} ms (target ≤ ${TARGET_P99_MS} ms, no failures) — ${met ? 'met' : 'NOT met'}`)
    const openMet = rates.filter(rt => meetsTarget(atRate(rt)))
    notes.push(`${db}: p99 ≤ ${TARGET_P99_MS} ms at ${openMet.length === 0 ? 'none of' : openMet.map(rt => `${rate(rt)}/s`).join(', ') + ' of'} ${rates.map(rt => `${rate(rt)}/s`).join(', ')}`)
    // Little's law: with every loop always waiting for its reply, the mean latency is loops ÷ throughput
    const loaded = byCase.get(caseLabel({ kind: 'closed', loops: n }, n)) as Figures
    const needed = n / (TARGET_P99_MS / 1000)
    const cpuPerRoundTrip = loaded.roundTripsPerSecond > 0 ? loaded.brokerCores * 1000 / loaded.roundTripsPerSecond : 0
    notes.push(`${db}: capacity, all ${n} back to back: ${rate(loaded.roundTripsPerSecond)} round trips/s, p99 ${ms(loaded.p99Ms)} ms. ${n} are always in flight, so the mean ` +
      `(${ms(loaded.meanMs)} ms) is ${n} ÷ round trips/s: ${TARGET_P99_MS} ms there would take more than ${rate(needed)} round trips/s; Roost's process spends ${ms(cpuPerRoundTrip)} ms of CPU on each`)
    const failures = runs.reduce((k, r) => k + r.result.failures, 0)
    if (failures > 0) notes.push(`${db}: ${failures} POSTs did not come back 201 "succeeded"; first: ${runs.flatMap(r => r.result.failureSamples)[0] ?? '?'}`)
    const disconnects = runs.reduce((k, r) => k + r.result.disconnects, 0)
    if (disconnects > 0) notes.push(`${db}: the broker closed ${disconnects} device sessions during the runs`)
    if (loaded.loadCores >= CLIENT_BOUND_CORES) notes.push(`${db}: the load process used ≥ ${CLIENT_BOUND_CORES} of its core: the figures may be the client's limit, not Roost's`)
    summary[db] = { cases: Object.fromEntries(byCase), targetMet: met, openLoopMetAt: openMet, backToBackPerSecond: loaded.roundTripsPerSecond }
  }
  return {
    name: 'commands',
    tables: [{
      title: `commands: POST /v1/devices/{id}/commands {"name":"ping","waitMs":${WAIT_MS}} → device answers over MQTT (QoS 1) → 201 "succeeded"; ` +
        `Roost (broker + API in one process), ${n} devices, keep-alive HTTP; closed loop: devices sending back to back; open loop: a fixed rate over all devices, latency from each send's scheduled time, ` +
        `the target's case is ${rate(targetRate)}/s; round-trip ms (median of ${settings.runs} runs of ${settings.measureMs / 1000} s, open loop at least ${MIN_OPEN_SAMPLES.toLocaleString('en-US')} round trips; failures over whole runs)`,
      columns: ['database', 'case', 'round trips/s', 'p50 ms', 'p99 ms', 'max ms', 'mean ms', 'failures', 'Roost cores', 'load cores'],
      rows,
    }],
    notes,
    summary,
    details: { results, waitMs: WAIT_MS },
  }
}

// Run as a process entry (NodeChild.start above), this file is the load side.
if (resolve(process.argv[1] ?? '') === fileURLToPath(import.meta.url)) {
  serveParent({
    open: arg => open(arg as OpenSpec),
    run: arg => run(arg as RunSpec),
    close: () => close(),
    stop: () => close(),
  }, { pid: process.pid })
}
