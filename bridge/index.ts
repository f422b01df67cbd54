// The bridge part: an MQTT service client on the broker that turns each device's voice topics into one
// VoiceSession (bridge/session.ts). It hears `audio/ctl`, `audio/up` and presence of every device and answers
// on `audio/down` and `audio/events`.

import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import mqtt, { type MqttClient } from 'mqtt'
import type { Logger } from 'pino'
import type { Config } from '../schemas/config.ts'
import { errorMessage, type ErrorCode } from '../schemas/errors.ts'
import { parseTopic } from '../schemas/topics.ts'
import { DEFAULT_VOICE_SETTINGS, parseDeviceControl, type BridgeEvent, type HelloMessage, type VoiceSettings } from '../schemas/voice.ts'
import { warmCodecs } from './codec.ts'
import type { RealtimeClient, RealtimeOptions } from './realtime.ts'
import { VoiceSession, type EndReason, type SessionDeps } from './session.ts'

// the MQTT.js defaults reconnect after 1 s; a voice bridge should come back as fast as the broker does
const RECONNECT_MS = 1000

/** What decides, per device and hello, whether a session may start and with which settings. */
export interface SessionGate {
  // settings for a new session, or a refusal sent to the device as an error event
  open (deviceId: string, hello: HelloMessage): Promise<{ ok: true, settings: VoiceSettings, hooks?: Partial<Pick<SessionDeps, 'onUsage' | 'onTranscript'>> & { onEnd?: () => void, limit?: { resetAt: number, remainingMs: number } } } | { ok: false, code: ErrorCode, params?: Record<string, string | number>, limit?: { reason: 'daily_minutes', resetAt: number } }>
  close (): Promise<void>
}

export interface BridgeOptions {
  readonly brokerUrl: string
  readonly gate?: SessionGate
  // the Realtime transport; tests and other upstreams pass their own
  readonly connect?: (opts: RealtimeOptions) => RealtimeClient
}

export interface Bridge {
  readonly sessions: ReadonlyMap<string, VoiceSession>
  close (): Promise<void>
}

export async function startBridge (config: Config, log: Logger, opts: BridgeOptions): Promise<Bridge> {
  const apiKey = config.openai.apiKey
  if (apiKey === undefined) throw new Error('the voice bridge needs OPENAI_API_KEY')
  // the first Opus instance compiles opusscript's WebAssembly; pay that now, not in a device's first frame
  warmCodecs()
  const sessions = new Map<string, VoiceSession>()
  // messages of a device whose hello is still being decided, replayed in order once it is
  const waiting = new Map<string, Array<{ family: 'ctl' | 'up', payload: Buffer }>>()
  const budgetTimers = new Map<string, NodeJS.Timeout>()
  const gate = opts.gate
  let closing = false

  const client: MqttClient = await mqtt.connectAsync(opts.brokerUrl, {
    username: 'service:bridge',
    password: config.auth.serviceToken,
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

  const publish = (topic: string, payload: Buffer | string, qos: 0 | 1): void => {
    client.publish(topic, payload, { qos }, err => {
      // MQTT.js calls back with null (not undefined) on success
      if (err instanceof Error && !closing) log.debug({ err: err.message, topic }, 'bridge publish failed')
    })
  }
  const event = (deviceId: string, e: BridgeEvent): void => publish(`devices/${deviceId}/audio/events`, JSON.stringify(e), 1)
  const refuse = (deviceId: string, code: ErrorCode, params: Record<string, string | number> = {}): void =>
    event(deviceId, { type: 'error', code, message: errorMessage(code, params) })

  const endSession = (deviceId: string, reason: EndReason): void => {
    sessions.get(deviceId)?.end(reason)
  }

  const hello = async (deviceId: string, msg: HelloMessage): Promise<void> => {
    endSession(deviceId, 'replaced')
    const decision = gate === undefined ? { ok: true as const, settings: DEFAULT_VOICE_SETTINGS } : await gate.open(deviceId, msg)
    if (closing) return
    if (!decision.ok) {
      if (decision.limit !== undefined) event(deviceId, { type: 'limit', reason: decision.limit.reason, resetAt: decision.limit.resetAt })
      refuse(deviceId, decision.code, decision.params)
      event(deviceId, { type: 'state', state: 'idle' })
      return
    }
    const hooks = decision.hooks ?? {}
    const session = new VoiceSession({
      deviceId,
      hello: msg,
      settings: decision.settings,
      realtime: { apiKey, baseUrl: config.openai.baseUrl, model: config.openai.realtimeModel },
      idleMs: config.voice.idleMs,
      log,
      publish,
      connect: opts.connect,
      onUsage: hooks.onUsage,
      onTranscript: hooks.onTranscript,
      onEnd: (s, reason) => {
        if (sessions.get(deviceId) === s) sessions.delete(deviceId)
        clearTimeout(budgetTimers.get(deviceId))
        budgetTimers.delete(deviceId)
        hooks.onEnd?.()
        log.debug({ deviceId, reason }, 'voice session removed')
      },
    })
    sessions.set(deviceId, session)
    const limit = hooks.limit
    if (limit !== undefined) {
      // the budget left today: the session says `limit` and ends when it is spent
      const t = setTimeout(() => session.limit('daily_minutes', limit.resetAt), Math.max(0, limit.remainingMs))
      t.unref()
      budgetTimers.set(deviceId, t)
    }
    // connecting goes on in the background; the session buffers early audio and answers hello when ready
    void session.start()
  }

  const handle = (deviceId: string, family: 'ctl' | 'up', payload: Buffer): void => {
    const queue = waiting.get(deviceId)
    if (queue !== undefined) { queue.push({ family, payload }); return }
    if (family === 'up') { sessions.get(deviceId)?.uplink(payload); return }
    const parsed = parseDeviceControl(payload)
    if (!parsed.ok) { refuse(deviceId, parsed.code, { detail: parsed.detail }); return }
    const msg = parsed.message
    if (msg.type === 'hello') {
      // what follows the hello waits until its session exists (the gate may ask the database first)
      const held: Array<{ family: 'ctl' | 'up', payload: Buffer }> = []
      waiting.set(deviceId, held)
      hello(deviceId, msg).catch(err => log.error({ err, deviceId }, 'voice session failed to start')).finally(() => {
        waiting.delete(deviceId)
        for (const m of held) handle(deviceId, m.family, m.payload)
      })
      return
    }
    const session = sessions.get(deviceId)
    if (session === undefined) {
      // a bye to no session is already done; anything else needs a hello first
      if (msg.type !== 'bye') refuse(deviceId, 'VOICE_NO_SESSION')
      return
    }
    session.control(msg)
  }

  client.on('message', (topic, payload) => {
    if (closing) return
    const parsed = parseTopic(topic)
    if (parsed.space !== 'device') return
    switch (parsed.family) {
      case 'audio/up': return handle(parsed.deviceId, 'up', payload)
      case 'audio/ctl': return handle(parsed.deviceId, 'ctl', payload)
      case 'presence':
        // a device that went away is not coming back to this conversation; its next connect says hello again
        if (sessions.has(parsed.deviceId) && !isOnline(payload)) endSession(parsed.deviceId, 'offline')
    }
  })
  await client.subscribeAsync({
    'devices/+/audio/ctl': { qos: 1 },
    'devices/+/audio/up': { qos: 0 },
    'devices/+/presence': { qos: 1 },
  })
  log.info({ broker: opts.brokerUrl, model: config.openai.realtimeModel }, 'voice bridge ready')

  return {
    sessions,
    async close () {
      closing = true
      for (const s of [...sessions.values()]) s.end('shutdown')
      for (const t of budgetTimers.values()) clearTimeout(t)
      // the sessions' last events (state idle) go out before the link closes
      await client.endAsync(false).catch(() => {})
      await gate?.close()
    },
  }
}

function isOnline (payload: Buffer): boolean {
  try { return (JSON.parse(payload.toString()) as { online?: unknown }).online === true } catch { return false }
}
