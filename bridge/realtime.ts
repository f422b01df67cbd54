// Realtime transport: one WebSocket to the OpenAI Realtime API, GA protocol only, typed with the openai SDK's
// GA event types. It sends client events and emits server events; what they mean for a device's conversation
// is the bridge session's business.

import { EventEmitter } from 'node:events'
import type { IncomingMessage } from 'node:http'
import { endianness } from 'node:os'
import WebSocket from 'ws'
import type {
  AudioTranscription,
  RealtimeAudioConfigInput,
  RealtimeAudioConfigOutput,
  RealtimeAudioInputTurnDetection,
  RealtimeClientEvent,
  RealtimeErrorEvent,
  RealtimeServerEvent,
  RealtimeSessionCreateRequest,
  ResponseAudioDeltaEvent,
  SessionCreatedEvent,
  SessionUpdatedEvent,
} from 'openai/resources/realtime/realtime'

// `OPENAI_BASE_URL`'s default; the Realtime URL is derived from it as the SDK derives it
export const DEFAULT_BASE_URL = 'https://api.openai.com/v1'
export const DEFAULT_MODEL = 'gpt-realtime'
// from opening the socket to `session.created`; the API answers within a second or two when healthy
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000
// an upgrade refusal carries a short JSON error body; anything longer is not worth buffering
const MAX_REFUSAL_BODY_BYTES = 4096

// Every client event type of the GA protocol, from the SDK's `RealtimeClientEvent` union. The `satisfies`
// clause and the exhaustiveness check below fail to compile if the SDK adds or renames one.
const GA_CLIENT_EVENT_LIST = [
  'session.update',
  'input_audio_buffer.append',
  'input_audio_buffer.commit',
  'input_audio_buffer.clear',
  'output_audio_buffer.clear',
  'conversation.item.create',
  'conversation.item.retrieve',
  'conversation.item.truncate',
  'conversation.item.delete',
  'response.create',
  'response.cancel',
] as const satisfies ReadonlyArray<RealtimeClientEvent['type']>
type MissingClientEvent = Exclude<RealtimeClientEvent['type'], typeof GA_CLIENT_EVENT_LIST[number]>
const allClientEventsListed: [MissingClientEvent] extends [never] ? true : MissingClientEvent = true
void allClientEventsListed
export const GA_CLIENT_EVENT_TYPES: ReadonlySet<string> = new Set(GA_CLIENT_EVENT_LIST)

// Realtime audio is little-endian PCM16; on a little-endian host a typed array is a view of the bytes as they are
const HOST_IS_LE = endianness() === 'LE'

export type ServerEventType = RealtimeServerEvent['type']
export type ServerEvent<T extends ServerEventType> = Extract<RealtimeServerEvent, { type: T }>

/**
 * What a `RealtimeClient` emits: each GA server event under its own type (audio deltas also decoded:
 * `pcm16` is linear PCM at the output rate, `bytes` the wire bytes in the session's output format; both may
 * be views into a larger pooled ArrayBuffer, so use their offset and length, not `.buffer` alone), every
 * server event once more under `event`, `transport_error` for socket errors and unreadable messages, and
 * `close` once an opened socket closes. A server `error` event is informational: the session stays open.
 */
export type RealtimeEvents = {
  [T in ServerEventType]: T extends 'response.output_audio.delta'
    ? [event: ResponseAudioDeltaEvent, pcm16: Int16Array, bytes: Buffer]
    : [event: ServerEvent<T>]
} & {
  event: [event: RealtimeServerEvent]
  transport_error: [err: Error]
  close: [code: number, reason: string]
}

export type AudioFormat = 'audio/pcm' | 'audio/pcmu'

export interface RealtimeOptions {
  readonly apiKey: string
  readonly baseUrl?: string
  readonly model?: string
  readonly connectTimeoutMs?: number
}

export interface SessionOptions {
  readonly instructions?: string
  readonly voice?: RealtimeAudioConfigOutput['voice']
  // 'audio/pcm' is 24 kHz mono PCM16LE, the only rate the API takes; 'audio/pcmu' is G.711 µ-law at 8 kHz
  readonly inputFormat?: AudioFormat
  readonly outputFormat?: AudioFormat
  // server VAD ends turns; null is push-to-talk (the caller commits and asks for a response); unset keeps
  // the session's current setting
  readonly turnDetection?: RealtimeAudioInputTurnDetection.ServerVad | null
  readonly transcription?: AudioTranscription
}

export interface RealtimeStats {
  eventsSent: number
  eventsReceived: number
  // JSON text on the wire, both ways
  bytesSent: number
  bytesReceived: number
  // decoded audio bytes, both ways
  audioBytesSent: number
  audioBytesReceived: number
}

export type ConnectFailure = 'unauthorized' | 'refused' | 'timeout' | 'network' | 'closed'

/** Why `connect()` failed; callers match on `reason` (and `status` for an HTTP refusal of the upgrade). */
export class RealtimeConnectError extends Error {
  constructor (readonly reason: ConnectFailure, message: string, readonly status?: number) {
    super(message)
    this.name = 'RealtimeConnectError'
  }
}

/** The Realtime WebSocket URL for an SDK-style base URL: http→ws, https→wss, plus `/realtime?model=`. */
export function realtimeUrl (baseUrl: string, model: string): string {
  const url = new URL(baseUrl)
  const scheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[url.protocol]
  if (scheme === undefined) throw new TypeError(`OPENAI_BASE_URL must be an http(s) URL, not ${url.protocol}`)
  url.protocol = scheme
  url.pathname = url.pathname.replace(/\/+$/, '') + '/realtime'
  url.searchParams.set('model', model)
  return url.toString()
}

/** Raw PCM16LE bytes of samples, sharing memory where the host allows. */
export function pcm16ToBytes (pcm: Int16Array): Buffer {
  const view = Buffer.from(pcm.buffer, pcm.byteOffset, pcm.byteLength)
  return HOST_IS_LE ? view : Buffer.from(view).swap16()
}

/** Samples of PCM16LE bytes (an odd last byte is dropped); a copy unless the bytes are aligned on an LE host. */
export function bytesToPcm16 (bytes: Buffer): Int16Array {
  const n = bytes.length >> 1
  if (HOST_IS_LE && bytes.byteOffset % 2 === 0) return new Int16Array(bytes.buffer, bytes.byteOffset, n)
  const copy = Buffer.from(bytes.subarray(0, n * 2))
  if (!HOST_IS_LE) copy.swap16()
  return new Int16Array(copy.buffer, copy.byteOffset, n)
}

/** G.711 µ-law byte to a linear 16-bit sample (ITU-T G.711). */
export function muLawToLinear (u: number): number {
  const v = ~u & 0xff
  const t = (((v & 0x0f) << 3) + 0x84) << ((v & 0x70) >> 4)
  return (v & 0x80) !== 0 ? 0x84 - t : t - 0x84
}

function decodeAudio (bytes: Buffer, format: AudioFormat): Int16Array {
  if (format === 'audio/pcm') return bytesToPcm16(bytes)
  const out = new Int16Array(bytes.length)
  for (let i = 0; i < bytes.length; i++) out[i] = muLawToLinear(bytes[i] as number)
  return out
}

interface PendingUpdate {
  readonly eventId: string
  resolve (e: SessionUpdatedEvent): void
  reject (err: Error): void
}

/**
 * One Realtime session over `ws`. Attach listeners, then `await connect()`: it resolves with
 * `session.created`, so no early event is missed. Send methods return false when the socket is not open.
 */
export class RealtimeClient extends EventEmitter<RealtimeEvents> {
  readonly url: string
  readonly stats: RealtimeStats = { eventsSent: 0, eventsReceived: 0, bytesSent: 0, bytesReceived: 0, audioBytesSent: 0, audioBytesReceived: 0 }
  private socket: WebSocket | undefined
  // connect() succeeded: from here on, socket errors and the close are the session's, not connect()'s
  private opened = false
  private outputFormat: AudioFormat = 'audio/pcm'
  private nextEventId = 1
  private pendingUpdates: PendingUpdate[] = []
  // performance.now() when the server message being dispatched arrived, for the bridge's latency metrics
  // (bridge/metrics.ts): listeners run synchronously inside receive(), so they read their own message's time
  messageAt = 0

  constructor (private readonly opts: RealtimeOptions) {
    super()
    this.url = realtimeUrl(opts.baseUrl ?? DEFAULT_BASE_URL, opts.model ?? DEFAULT_MODEL)
    // A server `error` event leaves the session open; Node would throw for an 'error' nobody listens to.
    this.on('error', () => {})
  }

  get isOpen (): boolean {
    return this.socket?.readyState === WebSocket.OPEN
  }

  /** Bytes queued in the socket but not yet written: the upstream's backpressure. */
  get bufferedAmount (): number {
    return this.socket?.bufferedAmount ?? 0
  }

  connect (): Promise<SessionCreatedEvent> {
    if (this.socket !== undefined) return Promise.reject(new Error('connect() may be called once'))
    return new Promise((resolve, reject) => {
      // Bearer header only: no `OpenAI-Beta` header (that would select the beta protocol) and no key in a
      // subprotocol (that trick is for browsers, which cannot set headers).
      const socket = new WebSocket(this.url, { headers: { Authorization: `Bearer ${this.opts.apiKey}` } })
      this.socket = socket
      let settled = false
      const fail = (err: RealtimeConnectError): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        this.off('session.created', created)
        socket.terminate()
        reject(err)
      }
      const created = (e: SessionCreatedEvent): void => {
        if (settled) return
        settled = true
        this.opened = true
        clearTimeout(timer)
        resolve(e)
      }
      const timeoutMs = this.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS
      const timer = setTimeout(() => fail(new RealtimeConnectError('timeout', `no session.created within ${timeoutMs} ms`)), timeoutMs)
      this.once('session.created', created)

      socket.on('upgrade', (res: IncomingMessage) => {
        // ws already turns Nagle off; say so here too, since audio latency depends on it
        res.socket.setNoDelay(true)
      })
      socket.on('unexpected-response', (_req, res: IncomingMessage) => {
        const status = res.statusCode ?? 0
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => { if (body.length < MAX_REFUSAL_BODY_BYTES) body += chunk })
        res.on('end', () => fail(new RealtimeConnectError(status === 401 ? 'unauthorized' : 'refused', `Realtime upgrade refused with HTTP ${status}: ${refusalMessage(body)}`, status)))
        res.on('error', () => fail(new RealtimeConnectError('refused', `Realtime upgrade refused with HTTP ${status}`, status)))
      })
      socket.on('message', (data, isBinary) => this.receive(data, isBinary))
      socket.on('error', (err: Error) => {
        if (!settled) fail(new RealtimeConnectError('network', err.message))
        else if (this.opened) this.emit<'transport_error'>('transport_error', err)
      })
      socket.on('close', (code: number, reason: Buffer) => {
        const text = reason.toString()
        if (!settled) fail(new RealtimeConnectError('closed', `closed before session.created (${code} ${text})`))
        for (const p of this.pendingUpdates.splice(0)) p.reject(new Error(`Realtime socket closed (${code} ${text})`))
        if (this.opened) this.emit<'close'>('close', code, text)
      })
    })
  }

  /** Sends any GA client event; a beta or unknown event type is refused, at compile time and at run time. */
  send (event: RealtimeClientEvent): boolean {
    if (!GA_CLIENT_EVENT_TYPES.has(event.type)) throw new TypeError(`"${String(event.type)}" is not a GA Realtime client event`)
    const socket = this.socket
    if (socket === undefined || socket.readyState !== WebSocket.OPEN) return false
    const text = JSON.stringify(event)
    socket.send(text)
    this.stats.eventsSent++
    this.stats.bytesSent += Buffer.byteLength(text)
    return true
  }

  /** `session.update`; resolves with the `session.updated` it caused, rejects on the `error` naming it. */
  updateSession (opts: SessionOptions): Promise<SessionUpdatedEvent> {
    // only what is given is sent: the server keeps every field a session.update leaves out
    const input: RealtimeAudioConfigInput = {}
    const output: RealtimeAudioConfigOutput = {}
    if (opts.inputFormat !== undefined) input.format = formatConfig(opts.inputFormat)
    if (opts.turnDetection !== undefined) input.turn_detection = opts.turnDetection
    if (opts.transcription !== undefined) input.transcription = opts.transcription
    if (opts.outputFormat !== undefined) output.format = formatConfig(opts.outputFormat)
    if (opts.voice !== undefined) output.voice = opts.voice
    const session: RealtimeSessionCreateRequest = { type: 'realtime' }
    if (opts.instructions !== undefined) session.instructions = opts.instructions
    if (Object.keys(input).length > 0 || Object.keys(output).length > 0) {
      session.audio = {}
      if (Object.keys(input).length > 0) session.audio.input = input
      if (Object.keys(output).length > 0) session.audio.output = output
    }
    // the server echoes a client event_id in the error an event causes, which is how a refusal is matched
    const eventId = `roost_${this.nextEventId++}`
    return new Promise((resolve, reject) => {
      if (!this.send({ type: 'session.update', event_id: eventId, session })) {
        reject(new Error('Realtime socket is not open'))
        return
      }
      this.pendingUpdates.push({ eventId, resolve, reject })
    })
  }

  /** `input_audio_buffer.append`: samples (24 kHz PCM16), or raw bytes in the session's input format. */
  appendAudio (audio: Int16Array | Buffer): boolean {
    const bytes = Buffer.isBuffer(audio) ? audio : pcm16ToBytes(audio)
    const sent = this.send({ type: 'input_audio_buffer.append', audio: bytes.toString('base64') })
    if (sent) this.stats.audioBytesSent += bytes.length
    return sent
  }

  commit (): boolean {
    return this.send({ type: 'input_audio_buffer.commit' })
  }

  clearInput (): boolean {
    return this.send({ type: 'input_audio_buffer.clear' })
  }

  createResponse (): boolean {
    return this.send({ type: 'response.create' })
  }

  cancelResponse (responseId?: string): boolean {
    return this.send(responseId === undefined ? { type: 'response.cancel' } : { type: 'response.cancel', response_id: responseId })
  }

  /** Tells the server how much of an assistant item's audio was heard, so its context matches the listener's. */
  truncate (itemId: string, contentIndex: number, audioEndMs: number): boolean {
    return this.send({ type: 'conversation.item.truncate', item_id: itemId, content_index: contentIndex, audio_end_ms: Math.max(0, Math.round(audioEndMs)) })
  }

  /** Closes the socket; resolves once it is closed. */
  close (code = 1000, reason = ''): Promise<void> {
    const socket = this.socket
    if (socket === undefined || socket.readyState === WebSocket.CLOSED) return Promise.resolve()
    return new Promise(resolve => {
      socket.once('close', () => resolve())
      if (socket.readyState === WebSocket.CONNECTING) socket.terminate()
      else socket.close(code, reason)
    })
  }

  private receive (data: WebSocket.RawData, isBinary: boolean): void {
    this.messageAt = performance.now()
    // the API sends only JSON text frames
    if (isBinary) { this.emit<'transport_error'>('transport_error', new Error('unexpected binary Realtime message')); return }
    const bytes = rawBytes(data)
    const text = bytes.toString()
    this.stats.eventsReceived++
    this.stats.bytesReceived += bytes.length
    let event: RealtimeServerEvent
    try {
      event = JSON.parse(text) as RealtimeServerEvent
    } catch {
      this.emit<'transport_error'>('transport_error', new Error('unparsable Realtime message'))
      return
    }
    if (typeof event !== 'object' || event === null || typeof event.type !== 'string') {
      this.emit<'transport_error'>('transport_error', new Error('Realtime message without a type'))
      return
    }
    // emits name their event type: @types/node infers no useful K from a name that is already a key of the
    // map, and would then check the arguments against any event's
    this.emit<'event'>('event', event)
    this.dispatch(event)
  }

  private dispatch (event: RealtimeServerEvent): void {
    switch (event.type) {
      case 'response.output_audio.delta': {
        const bytes = Buffer.from(event.delta, 'base64')
        this.stats.audioBytesReceived += bytes.length
        this.emit<'response.output_audio.delta'>(event.type, event, decodeAudio(bytes, this.outputFormat), bytes)
        return
      }
      case 'session.created':
      case 'session.updated': {
        // the server's word on the output format decides how deltas are decoded
        const format = event.session.type === 'realtime' ? event.session.audio?.output?.format?.type : undefined
        if (format === 'audio/pcm' || format === 'audio/pcmu') this.outputFormat = format
        if (event.type === 'session.updated') this.pendingUpdates.shift()?.resolve(event)
        break
      }
      case 'error':
        this.rejectUpdate(event)
        break
    }
    // Emitting under a computed type loses the pairing of type and payload that RealtimeEvents declares;
    // the payload is the event whose `type` this is, so the untyped emitter is right here.
    const untyped: EventEmitter = this
    untyped.emit(event.type, event)
  }

  private rejectUpdate (event: RealtimeErrorEvent): void {
    const id = event.error.event_id
    const i = id == null ? -1 : this.pendingUpdates.findIndex(p => p.eventId === id)
    if (i < 0) return
    const [p] = this.pendingUpdates.splice(i, 1)
    p?.reject(Object.assign(new Error(`session.update refused: ${event.error.message}`), { code: event.error.code ?? event.error.type }))
  }
}

function formatConfig (format: AudioFormat): { type: 'audio/pcm', rate: 24000 } | { type: 'audio/pcmu' } {
  return format === 'audio/pcm' ? { type: 'audio/pcm', rate: 24000 } : { type: 'audio/pcmu' }
}

function rawBytes (data: WebSocket.RawData): Buffer {
  if (Array.isArray(data)) return Buffer.concat(data)
  return Buffer.isBuffer(data) ? data : Buffer.from(data)
}

function refusalMessage (body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: { message?: unknown } }
    if (typeof parsed.error?.message === 'string') return parsed.error.message
  } catch {}
  return body.slice(0, 200) || '(no body)'
}
