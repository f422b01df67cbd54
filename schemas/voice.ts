// Voice control messages (shared ARCHITECTURE.md, "Voice audio"): what a device sends on `audio/ctl`, parsed
// into typed messages or a named refusal, and what the bridge sends on `audio/events`.

import { isPlainObject } from './state.ts'
import type { ErrorCode } from './errors.ts'

export type VoiceCodec = 'opus' | 'pcm16' | 'pcmu'
export type ListenMode = 'vad' | 'ptt'
export type VoiceState = 'connecting' | 'listening' | 'thinking' | 'speaking' | 'idle'

// the bridge's preference when a device offers several: Opus is the wire codec, PCM16 is for bring-up
const CODEC_NAMES: readonly VoiceCodec[] = ['opus', 'pcm16', 'pcmu']
// a control message is a few hundred bytes; anything near this is not one
export const CONTROL_MAX_BYTES = 4096
const UINT16_MAX = 0xffff
// played_ms of one response: 2^32 ms is 49 days, far beyond any reply
const PLAYED_MS_MAX = 0xffffffff

export interface HelloMessage {
  readonly type: 'hello'
  readonly codecs: readonly VoiceCodec[] // known codecs only, in the device's order
  readonly rates: { readonly up?: number, readonly down?: number }
  readonly frameMs: number
  readonly firmware?: string
  readonly aec: boolean
}

export type DeviceControl =
  | HelloMessage
  | { readonly type: 'listen', readonly state: 'start', readonly mode: ListenMode | undefined, readonly epoch: number }
  | { readonly type: 'listen', readonly state: 'stop', readonly epoch: number }
  | { readonly type: 'playback', readonly epoch: number, readonly playedMs: number, readonly bufferedMs: number | undefined }
  | { readonly type: 'interrupt', readonly epoch: number, readonly playedMs: number, readonly reason: string | undefined }
  | { readonly type: 'bye' }

export type ParsedControl =
  | { readonly ok: true, readonly message: DeviceControl }
  | { readonly ok: false, readonly code: Extract<ErrorCode, 'VOICE_BAD_HELLO' | 'VOICE_CONTROL_INVALID'>, readonly detail: string }

/** Bridge → device on `audio/events`. */
export type BridgeEvent =
  | { readonly type: 'hello', readonly session: string, readonly codec: VoiceCodec, readonly rates: { readonly up: number, readonly down: number }, readonly frame_ms: number }
  | { readonly type: 'state', readonly state: VoiceState }
  | { readonly type: 'flush', readonly epoch: number }
  | { readonly type: 'transcript', readonly role: 'user' | 'assistant', readonly text: string, readonly final: boolean, readonly epoch: number }
  | { readonly type: 'limit', readonly reason: 'daily_minutes' | 'session_length', readonly resetAt: number }
  | { readonly type: 'error', readonly code: ErrorCode, readonly message: string }

/** Reads one `audio/ctl` payload; never throws. */
export function parseDeviceControl (payload: Uint8Array): ParsedControl {
  if (payload.byteLength > CONTROL_MAX_BYTES) return invalid(`a control message is at most ${CONTROL_MAX_BYTES} bytes`)
  let doc: unknown
  try { doc = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8')) } catch { return invalid('not JSON') }
  if (!isPlainObject(doc)) return invalid('a control message is a JSON object with a "type"')
  switch (doc.type) {
    case 'hello': return parseHello(doc)
    case 'listen': {
      if (!isUint(doc.epoch, UINT16_MAX)) return invalid('listen needs an "epoch" from 0 to 65535')
      if (doc.state === 'stop') return ok({ type: 'listen', state: 'stop', epoch: doc.epoch })
      if (doc.state !== 'start') return invalid('listen "state" is "start" or "stop"')
      if (doc.mode !== undefined && doc.mode !== 'vad' && doc.mode !== 'ptt') return invalid('listen "mode" is "vad" or "ptt"')
      return ok({ type: 'listen', state: 'start', mode: doc.mode, epoch: doc.epoch })
    }
    case 'playback':
      if (!isUint(doc.epoch, UINT16_MAX)) return invalid('playback needs an "epoch" from 0 to 65535')
      if (!isUint(doc.played_ms, PLAYED_MS_MAX)) return invalid('playback needs "played_ms", a whole number of ms')
      if (doc.buffered_ms !== undefined && !isUint(doc.buffered_ms, PLAYED_MS_MAX)) return invalid('"buffered_ms" is a whole number of ms')
      return ok({ type: 'playback', epoch: doc.epoch, playedMs: doc.played_ms, bufferedMs: doc.buffered_ms })
    case 'interrupt':
      if (!isUint(doc.epoch, UINT16_MAX)) return invalid('interrupt needs an "epoch" from 0 to 65535')
      if (!isUint(doc.played_ms, PLAYED_MS_MAX)) return invalid('interrupt needs "played_ms", a whole number of ms')
      return ok({ type: 'interrupt', epoch: doc.epoch, playedMs: doc.played_ms, reason: typeof doc.reason === 'string' ? doc.reason.slice(0, 32) : undefined })
    case 'bye': return ok({ type: 'bye' })
    default: return invalid(`unknown type ${JSON.stringify(doc.type)}; expected hello, listen, playback, interrupt or bye`)
  }
}

function parseHello (doc: Record<string, unknown>): ParsedControl {
  const codecs = doc.codecs
  if (!Array.isArray(codecs) || codecs.length === 0 || codecs.length > 8) return badHello('"codecs" is a list such as ["opus","pcm16"]')
  const known = CODEC_NAMES.filter(c => codecs.includes(c)).sort((a, b) => codecs.indexOf(a) - codecs.indexOf(b))
  if (known.length === 0) return badHello(`none of ${JSON.stringify(codecs)} is supported; offer one of ${CODEC_NAMES.join(', ')}`)
  const rates = doc.rates === undefined ? {} : doc.rates
  if (!isPlainObject(rates)) return badHello('"rates" is an object {"up": 16000, "down": 24000}')
  for (const side of ['up', 'down'] as const) {
    if (rates[side] !== undefined && !isUint(rates[side], 192_000)) return badHello(`"rates.${side}" is a sample rate in Hz`)
  }
  const frameMs = doc.frame_ms ?? 40
  if (frameMs !== 20 && frameMs !== 40 && frameMs !== 60) return badHello('"frame_ms" is 20, 40 or 60')
  if (doc.aec !== undefined && typeof doc.aec !== 'boolean') return badHello('"aec" is true or false')
  if (doc.firmware !== undefined && typeof doc.firmware !== 'string') return badHello('"firmware" is a version string')
  const hello: HelloMessage = {
    type: 'hello',
    codecs: known,
    rates: { up: rates.up as number | undefined, down: rates.down as number | undefined },
    frameMs,
    aec: doc.aec === true,
    ...(doc.firmware === undefined ? {} : { firmware: (doc.firmware as string).slice(0, 64) }),
  }
  return ok(hello)
}

function isUint (v: unknown, max: number): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max
}

function ok (message: DeviceControl): ParsedControl {
  return { ok: true, message }
}

function invalid (detail: string): ParsedControl {
  return { ok: false, code: 'VOICE_CONTROL_INVALID', detail }
}

function badHello (detail: string): ParsedControl {
  return { ok: false, code: 'VOICE_BAD_HELLO', detail }
}

// a persona is a few paragraphs; this bounds what every session.update carries
export const VOICE_INSTRUCTIONS_MAX = 8000

/** A device's voice settings (`GET|PUT /v1/devices/{id}/voice`); the bridge reads them at each hello. */
export interface VoiceSettings {
  readonly instructions: string
  readonly voice: string
  // ISO-639-1 hint for the user's speech transcription; undefined lets the model detect it
  readonly language: string | undefined
  readonly mode: ListenMode
  // minutes of conversation a day; 0 turns voice off for the device
  readonly dailyMinutes: number
}

export const DEFAULT_VOICE_SETTINGS: VoiceSettings = {
  instructions: 'You are the voice of a small speaker. Answer in one or two short spoken sentences, in the language the user speaks.',
  voice: 'marin',
  language: undefined,
  mode: 'vad',
  // the contract's default budget: an hour of talk a day
  dailyMinutes: 60,
}
