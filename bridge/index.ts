// The bridge part: an MQTT service client on the broker that turns each device's voice topics into one
// VoiceSession (bridge/session.ts). It hears `audio/ctl`, `audio/up` and presence of every device and answers
// on `audio/down` and `audio/events`. Every bridge instance hears every device; the database lease
// (bridge/ledger.ts) decides which one serves it.

import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import mqtt, { type MqttClient } from 'mqtt'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Config } from '../schemas/config.ts'
import type { Database } from '../db/open.ts'
import { errorMessage, type ErrorCode } from '../schemas/errors.ts'
import { parseTopic } from '../schemas/topics.ts'
import { DEFAULT_VOICE_SETTINGS, parseDeviceControl, type BridgeEvent, type HelloMessage } from '../schemas/voice.ts'
import { warmCodecs } from './codec.ts'
import { openLedger, type GateDecision } from './ledger.ts'
import { registerVoiceMetrics } from './metrics.ts'
import type { RealtimeClient, RealtimeOptions } from './realtime.ts'
import { newSessionId, VoiceSession, type EndReason } from './session.ts'

// MQTT.js's default; a voice bridge should be back as soon as the broker is
const RECONNECT_MS = 1000

/**
 * How the bridge reaches the broker. `roost bridge` alone logs in over MQTT as a service; inside `roost
 * start` it uses the broker's own publish and subscribe (platform.ts), which spares every audio frame a
 * loopback hop each way: two MQTT encodes, two parses and two socket writes in the same event loop.
 */
export interface BrokerLink {
  publish (topic: string, payload: Buffer | string, qos: 0 | 1): void
  /** Hears every message on the filters; resolves once they are in place. */
  subscribe (filters: Readonly<Record<string, 0 | 1>>, handler: (topic: string, payload: Buffer) => void): Promise<void>
  connected (): boolean
  close (): Promise<void>
}

export interface BridgeOptions {
  // where a link of its own logs in, when `link` is not given
  readonly brokerUrl: string
  readonly link?: BrokerLink
  // settings, budgets, leases and history; without it every device gets the defaults and nothing is kept
  readonly db?: Database
  // the Realtime transport; tests and other upstreams pass their own
  readonly connect?: (opts: RealtimeOptions) => RealtimeClient
  readonly leaseMs?: number
  // the platform's Prometheus registry, for the voice latency histograms (bridge/metrics.ts)
  readonly registry?: Registry
}

export interface Bridge {
  readonly sessions: ReadonlyMap<string, VoiceSession>
  // the lease owner name of this instance (undefined without a database)
  readonly owner: string | undefined
  // its link to the broker is up
  healthy (): boolean
  close (): Promise<void>
}

// `at`: when the message reached the bridge (performance.now()), for the latency metrics
type Held = { readonly family: 'ctl' | 'up', readonly payload: Buffer, readonly at: number }

export async function startBridge (config: Config, log: Logger, opts: BridgeOptions): Promise<Bridge> {
  const apiKey = config.openai.apiKey
  if (apiKey === undefined) throw new Error('the voice bridge needs OPENAI_API_KEY')
  // the first Opus instance compiles opusscript's WebAssembly; pay that now, not in a device's first frame
  warmCodecs()
  const metrics = opts.registry === undefined ? undefined : registerVoiceMetrics(opts.registry)
  const sessions = new Map<string, VoiceSession>()
  // messages of a device whose hello is still being decided, replayed in order once it is
  const waiting = new Map<string, Held[]>()
  // devices whose session another bridge owns: their traffic is that bridge's to answer
  const elsewhere = new Set<string>()
  let closing = false
  const endSession = (deviceId: string, reason: EndReason): void => { sessions.get(deviceId)?.end(reason) }
  const gate = opts.db === undefined
    ? undefined
    : openLedger(opts.db, { model: config.openai.realtimeModel, log, leaseMs: opts.leaseMs, onLeaseLost: id => endSession(id, 'lease_lost') })

  const link = opts.link ?? await mqttLink(opts.brokerUrl, config.auth.serviceToken, log, () => closing)
  const publish = (topic: string, payload: Buffer | string, qos: 0 | 1): void => link.publish(topic, payload, qos)
  const event = (deviceId: string, e: BridgeEvent): void => publish(`devices/${deviceId}/audio/events`, JSON.stringify(e), 1)
  const refuse = (deviceId: string, code: ErrorCode, params: Record<string, string | number> = {}): void =>
    event(deviceId, { type: 'error', code, message: errorMessage(code, params) })

  const hello = async (deviceId: string, msg: HelloMessage): Promise<void> => {
    endSession(deviceId, 'replaced')
    elsewhere.delete(deviceId)
    const sessionId = newSessionId()
    let decision: GateDecision
    try {
      decision = gate === undefined ? { ok: true, settings: DEFAULT_VOICE_SETTINGS } : await gate.open(deviceId, msg, sessionId)
    } catch (err) {
      log.warn({ err: (err as Error).message, deviceId }, 'voice session not decided: database unavailable')
      decision = { ok: false, code: 'DB_UNAVAILABLE' }
    }
    if (closing) return
    if (!decision.ok) {
      if (decision.silent === true) { elsewhere.add(deviceId); return }
      if (decision.limit !== undefined) event(deviceId, { type: 'limit', reason: decision.limit.reason, resetAt: decision.limit.resetAt })
      refuse(deviceId, decision.code, decision.params)
      event(deviceId, { type: 'state', state: 'idle' })
      return
    }
    const record = decision.record
    const session: VoiceSession = new VoiceSession({
      id: sessionId,
      deviceId,
      hello: msg,
      settings: decision.settings,
      budget: decision.budget,
      realtime: { apiKey, baseUrl: config.openai.baseUrl, model: config.openai.realtimeModel },
      idleMs: config.voice.idleMs,
      log,
      publish,
      connect: opts.connect,
      metrics,
      onReady: () => record?.ready(session),
      onUsage: usage => record?.usage(session, usage),
      onTranscript: (role, text) => record?.transcript(session, role, text),
      onEnd: (s, reason) => {
        if (sessions.get(deviceId) === s) sessions.delete(deviceId)
        void record?.ended(s, reason)
      },
    })
    sessions.set(deviceId, session)
    // connecting goes on in the background; the session buffers early audio and answers hello when ready
    void session.start()
  }

  const handle = (deviceId: string, family: 'ctl' | 'up', payload: Buffer, at: number): void => {
    const queue = waiting.get(deviceId)
    if (queue !== undefined) { queue.push({ family, payload, at }); return }
    if (family === 'up') { sessions.get(deviceId)?.uplink(payload, at); return }
    const parsed = parseDeviceControl(payload)
    if (!parsed.ok) {
      if (!elsewhere.has(deviceId)) refuse(deviceId, parsed.code, { detail: parsed.detail })
      return
    }
    const msg = parsed.message
    if (msg.type === 'hello') {
      // what follows the hello waits until its session exists (the gate asks the database first)
      const held: Held[] = []
      waiting.set(deviceId, held)
      hello(deviceId, msg).catch(err => log.error({ err, deviceId }, 'voice session failed to start')).finally(() => {
        waiting.delete(deviceId)
        for (const m of held) handle(deviceId, m.family, m.payload, m.at)
      })
      return
    }
    const session = sessions.get(deviceId)
    if (session === undefined) {
      // a bye to no session is already done; anything else needs a hello first (unless another bridge has it)
      if (msg.type !== 'bye' && !elsewhere.has(deviceId)) refuse(deviceId, 'VOICE_NO_SESSION')
      return
    }
    session.control(msg, at)
  }

  await link.subscribe({
    'devices/+/audio/ctl': 1,
    'devices/+/audio/up': 0,
    'devices/+/presence': 1,
  }, (topic, payload) => {
    // the earliest the bridge can time a message: it has just been parsed
    const at = performance.now()
    if (closing) return
    const parsed = parseTopic(topic)
    if (parsed.space !== 'device') return
    switch (parsed.family) {
      case 'audio/up': return handle(parsed.deviceId, 'up', payload, at)
      case 'audio/ctl': return handle(parsed.deviceId, 'ctl', payload, at)
      case 'presence':
        // a device that went away is not coming back to this conversation; its next connect says hello again
        if (!isOnline(payload)) { endSession(parsed.deviceId, 'offline'); elsewhere.delete(parsed.deviceId) }
    }
  })
  const owner = gate?.owner
  log.info({ broker: opts.link === undefined ? opts.brokerUrl : 'in process', model: config.openai.realtimeModel, owner }, 'voice bridge ready')

  return {
    sessions,
    owner,
    healthy: () => link.connected(),
    async close () {
      closing = true
      // each session's last event (state idle) is published, and its lease released, before the link closes
      for (const s of [...sessions.values()]) s.end('shutdown')
      await gate?.close()
      await link.close().catch(() => {})
    },
  }
}

/** The bridge's own MQTT login as `service:bridge`, for a bridge in a process of its own. */
async function mqttLink (brokerUrl: string, serviceToken: string | undefined, log: Logger, closing: () => boolean): Promise<BrokerLink> {
  const client: MqttClient = await mqtt.connectAsync(brokerUrl, {
    username: 'service:bridge',
    password: serviceToken,
    clientId: 'roost-bridge-' + randomBytes(6).toString('hex'),
    reconnectPeriod: RECONNECT_MS,
    // sessions are in memory: after a reconnect devices say hello again, so nothing is worth resuming
    clean: true,
  })
  // audio frames are small and latency-bound: Nagle would hold each behind the previous one's ACK
  const noDelay = (): void => { (client.stream as Partial<Socket>).setNoDelay?.(true) }
  noDelay()
  client.on('connect', noDelay)
  client.on('error', err => log.warn({ err: err.message }, 'bridge broker link error'))
  return {
    publish (topic, payload, qos) {
      client.publish(topic, payload, { qos }, err => {
        // MQTT.js calls back with null (not undefined) on success
        if (err instanceof Error && !closing()) log.debug({ err: err.message, topic }, 'bridge publish failed')
      })
    },
    async subscribe (filters, handler) {
      client.on('message', handler)
      await client.subscribeAsync(Object.fromEntries(Object.entries(filters).map(([f, qos]) => [f, { qos }])))
    },
    connected: () => client.connected,
    async close () { await client.endAsync(false) },
  }
}

function isOnline (payload: Buffer): boolean {
  try { return (JSON.parse(payload.toString()) as { online?: unknown }).online === true } catch { return false }
}
