// The load generator, in its own process on its own core: publishers with a window of outstanding
// packet ids, a counting subscriber, and thousands of idle logins, all on raw sockets (see wire.ts).

import type { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import { CpuMeter, serveParent, sleep, type CpuShares } from './process.ts'
import {
  FrameScanner, openSession, publishTemplate, pubackPacket, subscribePacket,
  PACKET_PUBACK, PACKET_PUBLISH, PACKET_SUBACK, PUBACK_BYTES,
  type Login, type PublishTemplate,
} from './wire.ts'

// A login's CONNACK must arrive within this, even while thousands of others are logging in.
const CONNACK_TIMEOUT_MS = 30_000
// The relay watchdog looks this often for a subscriber that receives nothing while messages are
// outstanding; after QOS0_LOSS_AFTER_MS of that, outstanding QoS 0 messages are written off as lost
// (a broker may drop QoS 0 under load) so that the publishers' pipelines open again.
const WATCHDOG_MS = 250
const QOS0_LOSS_AFTER_MS = 2000
// How long a relay run waits after its window for the messages still in the pipeline.
const DRAIN_MS = 10_000
// Packet id of the subscriber's one SUBSCRIBE.
const SUBSCRIBE_ID = 1
const SUBACK_FAILURE = 0x80

export interface PublisherSpec extends Login { readonly topic: string }

export interface RelaySpec {
  readonly port: number
  readonly brokerPid: number
  readonly qos: 0 | 1
  readonly publishers: readonly PublisherSpec[]
  readonly subscriber: Login & { readonly filter: string }
  readonly payloadBytes: number
  readonly window: number
  readonly pipeline: number
  readonly refillBatch: number
  readonly warmupMs: number
  readonly measureMs: number
}

export interface RelayResult {
  readonly seconds: number
  readonly delivered: number // to the subscriber, within the measured window
  readonly deliveredPerSecond: number
  readonly published: number // written by the publishers within the window
  readonly lost: number // QoS 0 messages written off over the whole run
  readonly stalledMs: number // time within the window in which the subscriber received nothing while messages were outstanding
  readonly perPublisher: readonly number[] // delivered within the window, per publisher: how fairly the broker serves them
  readonly cpu: CpuShares
  readonly undrained: number // still undelivered when the run gave up waiting for the pipeline to empty
}

export interface IngestSpec {
  readonly port: number
  readonly brokerPid: number
  readonly publishers: readonly PublisherSpec[]
  readonly payload: string
  readonly window: number
  readonly refillBatch: number
  readonly warmupMs: number
  readonly measureMs: number
  readonly drainMs: number
}

export interface IngestResult {
  readonly seconds: number
  readonly acked: number // PUBACKs within the measured window
  readonly ackedPerSecond: number
  readonly totalSent: number // over the whole run, warm-up included
  readonly totalAcked: number // after the drain: every acknowledged message must be stored
  readonly unacked: number // still outstanding when the drain gave up
  readonly cpu: CpuShares
}

export interface IdleSpec {
  readonly port: number
  readonly logins: readonly Login[]
  readonly concurrency: number
  readonly localAddresses: readonly string[]
}

export interface IdleResult {
  readonly opened: number
  readonly failed: number
  readonly firstError: string | undefined
  readonly seconds: number
  readonly perSecond: number
  // CONNECT → CONNACK, in ms; a p99 or max near 1000 ms means SYNs were dropped and retried (listen backlog)
  readonly latencyMs: { readonly p50: number, readonly p99: number, readonly max: number }
}

/**
 * Cores busy during the window (1 = one core): a broker near 1 is saturated, as it should be; a load
 * generator near 1 means the client, not the broker, set the pace.
 */

/** One publishing connection: writes copies of one PUBLISH while its windows have room. */
class Publisher {
  sent = 0
  acked = 0
  delivered = 0 // counted by the subscriber, when there is one
  lost = 0
  stopped = false
  private readonly freeIds: number[] = []
  private blocked = false

  constructor (
    readonly socket: Socket,
    private readonly template: PublishTemplate,
    private readonly qos: 0 | 1,
    readonly window: number,
    // messages written but not yet seen by the subscriber; keeps the broker's queues bounded, so every
    // broker is measured in the same steady state instead of filling its memory
    private readonly pipeline: number,
    private readonly refillBatch: number,
  ) {
    // packet ids 1..window, reused as PUBACKs free them [MQTT-2.3.1-4]
    for (let id = window; id >= 1; id--) this.freeIds.push(id)
    const scanner = new FrameScanner((first, buf, start) => {
      if (first >> 4 !== PACKET_PUBACK) return
      this.freeIds.push(buf.readUInt16BE(start))
      this.acked++
    })
    socket.on('data', chunk => { scanner.feed(chunk); schedulePump(this) })
    socket.on('drain', () => { this.blocked = false; schedulePump(this) })
    socket.on('error', () => {}) // a broker closing at the end of a run is not an error of the run
  }

  get undelivered (): number {
    return this.sent - this.delivered - this.lost
  }

  /** Gives up on every message not yet delivered (QoS 0 a broker dropped). */
  writeOff (): void {
    this.lost += this.undelivered
    this.pump()
  }

  get outstandingAcks (): number {
    return this.window - this.freeIds.length
  }

  pump (): void {
    if (this.stopped || this.blocked) return
    let n = this.pipeline - this.undelivered
    if (this.qos === 1 && this.freeIds.length < n) n = this.freeIds.length
    // refill in batches (see BENCH_REFILL_BATCH): one write per batch rather than one per acknowledgement
    if (n <= 0 || (n < this.refillBatch && this.undelivered + this.outstandingAcks > 0)) return
    const bytes = this.template.bytes
    const len = bytes.length
    const out = Buffer.allocUnsafe(n * len)
    for (let i = 0; i < n; i++) {
      const at = i * len
      bytes.copy(out, at)
      if (this.qos === 1) out.writeUInt16BE(this.freeIds.pop() as number, at + this.template.idOffset)
    }
    this.sent += n
    if (!this.socket.write(out)) this.blocked = true
  }
}

// Writes happen once per event-loop turn, after every read of that turn was counted: a broker that
// sends one small TCP segment per message (Mosquitto) would otherwise have the generator answer each
// with its own tiny writes, and the generator, not the broker, would run out of CPU first.
const toPump = new Set<Publisher>()
const beforePump: Array<() => void> = []
let pumpScheduled = false

function schedulePump (p: Publisher): void {
  toPump.add(p)
  if (pumpScheduled) return
  pumpScheduled = true
  setImmediate(pumpAll)
}

function pumpAll (): void {
  pumpScheduled = false
  for (const f of beforePump) f()
  for (const p of toPump) p.pump()
  toPump.clear()
}

function payloadFor (index: number, bytes: number): Buffer {
  // the first two bytes name the publisher, so the subscriber can credit its pipeline
  const payload = Buffer.alloc(Math.max(bytes, 2), 0x5a)
  payload.writeUInt16BE(index, 0)
  return payload
}

async function subscribe (port: number, login: Login & { readonly filter: string }, qos: 0 | 1): Promise<Socket> {
  const socket = await openSession({ port }, login, CONNACK_TIMEOUT_MS)
  await new Promise<void>((resolve, reject) => {
    const scanner = new FrameScanner((first, buf, start, end) => {
      if (first >> 4 !== PACKET_SUBACK) return
      socket.off('data', onData)
      const code = buf[end - 1] as number
      if (buf.readUInt16BE(start) !== SUBSCRIBE_ID || code === SUBACK_FAILURE) reject(new Error(`subscription to ${login.filter} refused`))
      else resolve()
    })
    const onData = (chunk: Buffer): void => scanner.feed(chunk)
    socket.on('data', onData)
    socket.write(subscribePacket(login.filter, qos, SUBSCRIBE_ID))
  })
  return socket
}

async function relay (spec: RelaySpec): Promise<RelayResult> {
  const sub = await subscribe(spec.port, spec.subscriber, spec.qos)
  const publishers = await Promise.all(spec.publishers.map(async (p, i) => {
    const socket = await openSession({ port: spec.port }, p, CONNACK_TIMEOUT_MS)
    return new Publisher(socket, publishTemplate(p.topic, payloadFor(i, spec.payloadBytes), spec.qos), spec.qos, spec.window, spec.pipeline, spec.refillBatch)
  }))

  let delivered = 0
  const acks: number[] = []
  const scanner = new FrameScanner((first, buf, start) => {
    if (first >> 4 !== PACKET_PUBLISH) return
    const qos = (first >> 1) & 3
    let at = start + 2 + buf.readUInt16BE(start)
    if (qos > 0) {
      acks.push(buf.readUInt16BE(at))
      at += 2
    }
    const p = publishers[buf.readUInt16BE(at)]
    if (p !== undefined) p.delivered++
    delivered++
  })
  // one write of every PUBACK this event-loop turn produced, just before the publishers refill
  const flushAcks = (): void => {
    if (acks.length === 0) return
    const out = Buffer.allocUnsafe(acks.length * PUBACK_BYTES)
    for (let i = 0; i < acks.length; i++) pubackPacket(acks[i] as number, out, i * PUBACK_BYTES)
    acks.length = 0
    sub.write(out)
  }
  beforePump.push(flushAcks)
  sub.on('error', () => {})
  sub.on('data', chunk => {
    scanner.feed(chunk)
    for (const p of publishers) schedulePump(p)
  })

  let stalledTicks = 0
  let lastDelivered = 0
  let lastDeliveryAt = performance.now()
  const watchdog = setInterval(() => {
    const now = performance.now()
    if (delivered !== lastDelivered || sum(publishers, p => p.undelivered) <= 0) {
      lastDelivered = delivered
      lastDeliveryAt = now
      return
    }
    stalledTicks++
    if (spec.qos === 0 && now - lastDeliveryAt >= QOS0_LOSS_AFTER_MS) {
      for (const p of publishers) p.writeOff()
      lastDeliveryAt = now
    }
  }, WATCHDOG_MS)

  for (const p of publishers) p.pump()
  await sleep(spec.warmupMs)
  const t0 = performance.now()
  const d0 = delivered
  const s0 = sum(publishers, p => p.sent)
  const perPublisher0 = publishers.map(p => p.delivered)
  const stalled0 = stalledTicks
  const cpuMeter = new CpuMeter(spec.brokerPid)
  await sleep(spec.measureMs)
  const cpu = cpuMeter.read()
  const t1 = performance.now()
  const d1 = delivered
  const s1 = sum(publishers, p => p.sent)
  const perPublisher = publishers.map((p, i) => p.delivered - (perPublisher0[i] as number))
  const stalledMs = (stalledTicks - stalled0) * WATCHDOG_MS

  // Stop writing and let the pipeline empty before closing anything: Aedes (1.2, mqemitter) unwinds a
  // long backlog recursively when its subscriber goes away, and overflows the stack doing so.
  for (const p of publishers) p.stopped = true
  const deadline = performance.now() + DRAIN_MS
  const undelivered = (): number => sum(publishers, p => p.undelivered)
  while (undelivered() > 0 && performance.now() < deadline) await sleep(20)
  const leftInPipeline = undelivered()
  clearInterval(watchdog)
  beforePump.splice(beforePump.indexOf(flushAcks), 1)
  for (const p of publishers) p.socket.destroy()
  sub.destroy()
  const seconds = (t1 - t0) / 1000
  return {
    seconds,
    delivered: d1 - d0,
    deliveredPerSecond: (d1 - d0) / seconds,
    published: s1 - s0,
    lost: sum(publishers, p => p.lost),
    stalledMs,
    perPublisher,
    cpu,
    undrained: leftInPipeline,
  }
}

async function ingest (spec: IngestSpec): Promise<IngestResult> {
  const payload = Buffer.from(spec.payload)
  const publishers = await Promise.all(spec.publishers.map(async p => {
    const socket = await openSession({ port: spec.port }, p, CONNACK_TIMEOUT_MS)
    // no subscriber: only the PUBACK window limits a publisher
    return new Publisher(socket, publishTemplate(p.topic, payload, 1), 1, spec.window, Number.POSITIVE_INFINITY, spec.refillBatch)
  }))
  for (const p of publishers) p.pump()
  await sleep(spec.warmupMs)
  const t0 = performance.now()
  const a0 = sum(publishers, p => p.acked)
  const cpuMeter = new CpuMeter(spec.brokerPid)
  await sleep(spec.measureMs)
  const cpu = cpuMeter.read()
  const t1 = performance.now()
  const a1 = sum(publishers, p => p.acked)

  // stop writing, then wait for every outstanding PUBACK: the orchestrator compares acknowledged
  // messages with stored rows, so nothing may still be in flight
  for (const p of publishers) p.stopped = true
  const deadline = performance.now() + spec.drainMs
  while (sum(publishers, p => p.outstandingAcks) > 0 && performance.now() < deadline) await sleep(20)
  const result: IngestResult = {
    seconds: (t1 - t0) / 1000,
    acked: a1 - a0,
    ackedPerSecond: (a1 - a0) / ((t1 - t0) / 1000),
    totalSent: sum(publishers, p => p.sent),
    totalAcked: sum(publishers, p => p.acked),
    unacked: sum(publishers, p => p.outstandingAcks),
    cpu,
  }
  for (const p of publishers) p.socket.destroy()
  return result
}

// Idle connections stay open between the idleOpen and idleClose requests while the broker's memory is read.
const idle: Socket[] = []

async function idleOpen (spec: IdleSpec): Promise<IdleResult> {
  let next = 0
  let failed = 0
  let firstError: string | undefined
  const latencies: number[] = []
  const t0 = performance.now()
  const worker = async (): Promise<void> => {
    while (next < spec.logins.length) {
      const i = next++
      const localAddress = spec.localAddresses[i % spec.localAddresses.length]
      const started = performance.now()
      try {
        const socket = await openSession({ port: spec.port, ...(localAddress !== undefined ? { localAddress } : {}) }, spec.logins[i] as Login, CONNACK_TIMEOUT_MS)
        latencies.push(performance.now() - started)
        socket.on('error', () => {})
        idle.push(socket)
      } catch (err) {
        failed++
        firstError ??= err instanceof Error ? err.message : String(err)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(spec.concurrency, spec.logins.length) }, worker))
  const seconds = (performance.now() - t0) / 1000
  latencies.sort((a, b) => a - b)
  const at = (q: number): number => Math.round((latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? 0) * 10) / 10
  return { opened: idle.length, failed, firstError, seconds, perSecond: idle.length / seconds, latencyMs: { p50: at(0.5), p99: at(0.99), max: at(1) } }
}

async function idleClose (): Promise<{ closed: number }> {
  const n = idle.length
  await Promise.all(idle.splice(0).map(s => new Promise<void>(resolve => {
    s.once('close', () => resolve())
    s.destroy()
  })))
  return { closed: n }
}

function sum<T> (items: readonly T[], f: (t: T) => number): number {
  let total = 0
  for (const t of items) total += f(t)
  return total
}

serveParent({
  relay: arg => relay(arg as RelaySpec),
  ingest: arg => ingest(arg as IngestSpec),
  idleOpen: arg => idleOpen(arg as IdleSpec),
  idleClose: () => idleClose(),
  stop: () => idleClose(),
}, { pid: process.pid })
