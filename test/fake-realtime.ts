// A local fake of the OpenAI Realtime API for tests: a real WebSocket server speaking the GA wire protocol
// where a bridge's logic depends on it (auth, session.update, server VAD on appended-audio time, commits,
// responses streamed faster than real time, cancel, truncate, errors, the session time limit). The "model"
// is scripted: every reply is the configured audio and transcript.

import { randomBytes } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import type {
  ConversationItem,
  RealtimeAudioInputTurnDetection,
  RealtimeClientEvent,
  RealtimeConversationItemAssistantMessage,
  RealtimeError,
  RealtimeResponse,
  RealtimeResponseUsage,
  RealtimeServerEvent,
  RealtimeSessionCreateRequest,
} from 'openai/resources/realtime/realtime'

const SAMPLE_RATE = 24_000 // the only PCM rate of the GA API
const G711_RATE = 8000
// the API's own defaults for server VAD
const DEFAULT_PREFIX_PADDING_MS = 300
const DEFAULT_SILENCE_MS = 500
// VAD works on 10 ms frames of appended audio
const VAD_FRAME_MS = 10
// the API refuses to commit less than 100 ms of audio
const MIN_COMMIT_MS = 100
// the API's largest client event is 15 MiB
const MAX_EVENT_BYTES = 15 * 1024 * 1024
// GA sessions last at most 60 minutes
const DEFAULT_SESSION_LIMIT_MS = 60 * 60 * 1000
// deterministic token counts for usage, roughly the API's rates: 10 audio tokens per second in, 20 out
const INPUT_AUDIO_TOKENS_PER_S = 10
const OUTPUT_AUDIO_TOKENS_PER_S = 20

// the GA client events, kept apart from bridge/realtime.ts on purpose: the fake is an independent check
const GA_CLIENT_EVENTS: ReadonlySet<string> = new Set<RealtimeClientEvent['type']>([
  'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', 'input_audio_buffer.clear',
  'output_audio_buffer.clear', 'conversation.item.create', 'conversation.item.retrieve',
  'conversation.item.truncate', 'conversation.item.delete', 'response.create', 'response.cancel',
])
// what a GA session object may hold; beta fields (modalities, voice, input_audio_format, turn_detection at
// the top level, ...) are unknown parameters to the GA API
const SESSION_KEYS = new Set(['type', 'model', 'instructions', 'output_modalities', 'audio', 'include', 'max_output_tokens', 'prompt', 'tool_choice', 'tools', 'tracing', 'truncation', 'parallel_tool_calls', 'reasoning'])
const AUDIO_KEYS = new Set(['input', 'output'])
const AUDIO_INPUT_KEYS = new Set(['format', 'noise_reduction', 'transcription', 'turn_detection'])
const AUDIO_OUTPUT_KEYS = new Set(['format', 'voice', 'speed'])
const TURN_DETECTION_KEYS = new Set(['type', 'threshold', 'prefix_padding_ms', 'silence_duration_ms', 'create_response', 'interrupt_response', 'idle_timeout_ms'])
const RESPONSE_KEYS = new Set(['audio', 'conversation', 'input', 'instructions', 'max_output_tokens', 'metadata', 'output_modalities', 'prompt', 'tool_choice', 'tools', 'parallel_tool_calls', 'reasoning'])

export interface FakeRealtimeOptions {
  readonly apiKey?: string
  // accepted `?model=` values
  readonly models?: readonly string[]
  // 24 kHz PCM16 spoken by every reply; default a tone of replyToneMs
  readonly replyAudio?: Int16Array
  readonly replyToneMs?: number
  readonly replyTranscript?: string
  // the transcript of every committed user turn (sent when the session configures input transcription)
  readonly userTranscript?: string
  // "thinking" time between response.created and the first output item
  readonly replyDelayMs?: number
  // silence (of appended audio) that ends a turn, unless the session sets silence_duration_ms
  readonly vadSilenceMs?: number
  // RMS of a 10 ms frame, as a fraction of full scale, above which the frame is speech
  readonly vadThreshold?: number
  readonly sessionLimitMs?: number
  // audio per response.output_audio.delta, and wall time between deltas (much less: faster than real time)
  readonly deltaMs?: number
  readonly deltaIntervalMs?: number
}

export interface FakeConnection {
  readonly model: string
  readonly headers: IncomingHttpHeaders
}

export interface FakeRealtime {
  // use as OPENAI_BASE_URL: http://127.0.0.1:port/v1
  readonly url: string
  readonly apiKey: string
  // every GA client event received, in order, across connections
  readonly received: RealtimeClientEvent[]
  // messages whose type is not a GA client event (answered with an error)
  readonly invalid: unknown[]
  // every server event sent
  readonly sent: RealtimeServerEvent[]
  readonly connections: FakeConnection[]
  receivedOf<T extends RealtimeClientEvent['type']>(type: T): Array<Extract<RealtimeClientEvent, { type: T }>>
  sentOf<T extends RealtimeServerEvent['type']>(type: T): Array<Extract<RealtimeServerEvent, { type: T }>>
  // closes every open Realtime socket (as a network drop or server restart would), keeps listening
  dropConnections (code?: number, reason?: string): void
  close (): Promise<void>
}

/** A sine tone of `ms` at 24 kHz: the default reply audio, and loud enough to count as speech. */
export function tone (ms: number, hz = 440, amplitude = 0.3, rate = SAMPLE_RATE): Int16Array {
  const out = new Int16Array(Math.round(ms * rate / 1000))
  for (let i = 0; i < out.length; i++) out[i] = Math.round(Math.sin(2 * Math.PI * hz * i / rate) * amplitude * 32767)
  return out
}

export function silence (ms: number, rate = SAMPLE_RATE): Int16Array {
  return new Int16Array(Math.round(ms * rate / 1000))
}

type Format = 'audio/pcm' | 'audio/pcmu'
type ServerVad = RealtimeAudioInputTurnDetection.ServerVad
type Outgoing = RealtimeServerEvent extends infer E ? E extends unknown ? Omit<E, 'event_id'> : never : never
type Session = RealtimeSessionCreateRequest & { id: string, object: 'realtime.session', expires_at: number }
type UserItem = ConversationItem & { id: string }

interface Settings {
  readonly apiKey: string
  readonly models: readonly string[]
  readonly replyAudio: Int16Array
  readonly replyTranscript: string
  readonly userTranscript: string
  readonly replyDelayMs: number
  readonly vadSilenceMs: number
  readonly vadThreshold: number
  readonly sessionLimitMs: number
  readonly deltaMs: number
  readonly deltaIntervalMs: number
}

interface Recorder {
  received: RealtimeClientEvent[]
  invalid: unknown[]
  sent: RealtimeServerEvent[]
}

export async function startFakeRealtime (opts: FakeRealtimeOptions = {}): Promise<FakeRealtime> {
  const settings: Settings = {
    apiKey: opts.apiKey ?? 'sk-fake-' + randomBytes(12).toString('hex'),
    models: opts.models ?? ['gpt-realtime', 'gpt-realtime-mini', 'gpt-realtime-2025-08-28'],
    replyAudio: opts.replyAudio ?? tone(opts.replyToneMs ?? 1000),
    replyTranscript: opts.replyTranscript ?? 'Hello! How can I help you today?',
    userTranscript: opts.userTranscript ?? 'Hello there.',
    replyDelayMs: opts.replyDelayMs ?? 20,
    vadSilenceMs: opts.vadSilenceMs ?? DEFAULT_SILENCE_MS,
    vadThreshold: opts.vadThreshold ?? 0.02,
    sessionLimitMs: opts.sessionLimitMs ?? DEFAULT_SESSION_LIMIT_MS,
    deltaMs: opts.deltaMs ?? 100,
    deltaIntervalMs: opts.deltaIntervalMs ?? 2,
  }
  const rec: Recorder = { received: [], invalid: [], sent: [] }
  const connections: FakeConnection[] = []
  const sessions = new Set<FakeSession>()
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_EVENT_BYTES })
  const server: Server = createServer((_req, res) => { res.writeHead(404).end() })

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.setNoDelay(true)
    const refuse = (status: number, code: string, message: string): void => {
      const body = JSON.stringify({ error: { message, type: 'invalid_request_error', code, param: null } })
      socket.end(`HTTP/1.1 ${status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    }
    const url = new URL(req.url ?? '/', 'http://fake')
    if (url.pathname !== '/v1/realtime') return refuse(404, 'not_found', `no route ${url.pathname}`)
    if (req.headers.authorization !== `Bearer ${settings.apiKey}`) return refuse(401, 'invalid_api_key', 'Incorrect API key provided.')
    // the beta protocol is chosen by this header; the fake (like the bridge) speaks GA only
    if (/realtime/.test(String(req.headers['openai-beta'] ?? ''))) return refuse(400, 'beta_not_supported', 'this server speaks the GA Realtime protocol only')
    const model = url.searchParams.get('model')
    if (model === null || model === '') return refuse(400, 'missing_model', 'the model query parameter is required')
    if (!settings.models.includes(model)) return refuse(404, 'model_not_found', `The model '${model}' does not exist or you do not have access to it.`)
    connections.push({ model, headers: req.headers })
    wss.handleUpgrade(req, socket, head, ws => {
      const s = new FakeSession(ws, model, settings, rec)
      sessions.add(s)
      ws.on('close', () => { s.end(); sessions.delete(s) })
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  const { port } = server.address() as AddressInfo

  return {
    url: `http://127.0.0.1:${port}/v1`,
    apiKey: settings.apiKey,
    received: rec.received,
    invalid: rec.invalid,
    sent: rec.sent,
    connections,
    receivedOf: <T extends RealtimeClientEvent['type']>(type: T) =>
      rec.received.filter((e): e is Extract<RealtimeClientEvent, { type: T }> => e.type === type),
    sentOf: <T extends RealtimeServerEvent['type']>(type: T) =>
      rec.sent.filter((e): e is Extract<RealtimeServerEvent, { type: T }> => e.type === type),
    dropConnections (code = 1012, reason = 'service restart') {
      for (const s of sessions) s.closeSocket(code, reason)
    },
    close: () => new Promise(resolve => {
      for (const s of sessions) { s.end(); s.ws.terminate() }
      wss.close()
      server.closeAllConnections()
      server.close(() => resolve())
    }),
  }
}

interface ActiveResponse {
  readonly id: string
  readonly audio: Int16Array | Buffer // in the output format
  readonly rate: number
  readonly words: string[]
  timer: NodeJS.Timeout | undefined
  item: (RealtimeConversationItemAssistantMessage & { id: string }) | undefined
  previousItemId: string | null
  sentSamples: number
  sentWords: number
}

interface AssistantAudio {
  // audio generated for the item so far (or what a truncate left of it)
  ms: number
  truncated: boolean
}

class FakeSession {
  private readonly session: Session
  private readonly timers = new Set<NodeJS.Timeout>()
  private nextId = 1
  private ended = false
  // appended audio, in samples of the input format's rate, since the session began
  private totalSamples = 0
  // the uncommitted input buffer: where it began (in session samples) and how long it is
  private bufferStart = 0
  private bufferSamples = 0
  // VAD state, on appended-audio time
  private frameSamples = 0
  private frameSumSq = 0
  private speaking = false
  private speechItemId = ''
  private lastVoiceEnd = 0
  private committedInputMs = 0
  private readonly items = new Map<string, ConversationItem & { id: string }>()
  private readonly assistantAudio = new Map<string, AssistantAudio>()
  private lastItemId: string | null = null
  private response: ActiveResponse | undefined
  private audioOutputHappened = false

  constructor (readonly ws: WebSocket, model: string, private readonly cfg: Settings, private readonly rec: Recorder) {
    this.session = {
      type: 'realtime',
      object: 'realtime.session',
      id: this.id('sess'),
      model,
      expires_at: Math.floor((Date.now() + cfg.sessionLimitMs) / 1000),
      output_modalities: ['audio'],
      instructions: 'You are a helpful assistant.',
      tools: [],
      tool_choice: 'auto',
      max_output_tokens: 'inf',
      tracing: null,
      truncation: 'auto',
      prompt: null,
      audio: {
        input: {
          format: { type: 'audio/pcm', rate: SAMPLE_RATE },
          turn_detection: { type: 'server_vad', threshold: 0.5, prefix_padding_ms: DEFAULT_PREFIX_PADDING_MS, silence_duration_ms: cfg.vadSilenceMs, create_response: true, interrupt_response: true, idle_timeout_ms: null },
        },
        output: { format: { type: 'audio/pcm', rate: SAMPLE_RATE }, voice: 'marin', speed: 1 },
      },
    }
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary))
    this.later(cfg.sessionLimitMs, () => {
      const limit = cfg.sessionLimitMs >= 60_000 ? `${Math.round(cfg.sessionLimitMs / 60_000)} minutes` : `${cfg.sessionLimitMs} ms`
      this.error('session_expired', `Your session hit the maximum duration of ${limit}.`)
      this.closeSocket(1000, 'session expired')
    })
    this.send({ type: 'session.created', session: this.session })
  }

  end (): void {
    this.ended = true
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }

  closeSocket (code: number, reason: string): void {
    this.end()
    this.ws.close(code, reason)
  }

  private id (prefix: string): string {
    return `${prefix}_fake${String(this.nextId++).padStart(6, '0')}`
  }

  private later (ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => { this.timers.delete(t); if (!this.ended) fn() }, ms)
    this.timers.add(t)
    return t
  }

  private send (e: Outgoing): void {
    if (this.ended && e.type !== 'error') return
    // an Outgoing plus its event_id is the RealtimeServerEvent it was made from
    const event = { ...e, event_id: this.id('event') } as RealtimeServerEvent
    this.rec.sent.push(event)
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(event))
  }

  private error (code: string, message: string, param: string | null = null, clientEventId: string | null = null): void {
    const error: RealtimeError = { type: 'invalid_request_error', code, message, param, event_id: clientEventId }
    this.send({ type: 'error', error })
  }

  private onMessage (data: RawData, isBinary: boolean): void {
    if (isBinary) { this.error('invalid_type', 'binary frames are not supported; send JSON text'); return }
    let msg: unknown
    try {
      msg = JSON.parse(rawBytes(data).toString())
    } catch {
      this.error('invalid_json', 'The server could not parse the JSON message.')
      return
    }
    if (!isObject(msg) || typeof msg.type !== 'string') {
      this.rec.invalid.push(msg)
      this.error('missing_required_parameter', "Missing required parameter: 'type'.", 'type')
      return
    }
    const clientEventId = typeof msg.event_id === 'string' ? msg.event_id : null
    if (!GA_CLIENT_EVENTS.has(msg.type)) {
      this.rec.invalid.push(msg)
      this.error('invalid_value', `Invalid value: '${msg.type}'. Supported values are: ${[...GA_CLIENT_EVENTS].map(t => `'${t}'`).join(', ')}.`, 'type', clientEventId)
      return
    }
    // the type is a GA client event; the fields are checked where each event is handled
    const event = msg as unknown as RealtimeClientEvent
    this.rec.received.push(event)
    this.handle(msg, event, clientEventId)
  }

  private handle (msg: Record<string, unknown>, event: RealtimeClientEvent, eid: string | null): void {
    switch (event.type) {
      case 'session.update': return this.updateSession(msg.session, eid)
      case 'input_audio_buffer.append': return this.append(msg.audio, eid)
      case 'input_audio_buffer.commit': {
        if (this.bufferMs() < MIN_COMMIT_MS) {
          this.error('input_audio_buffer_commit_empty', `Error committing input audio buffer: buffer too small. Expected at least ${MIN_COMMIT_MS}ms of audio, but buffer only has ${this.bufferMs().toFixed(2)}ms of audio.`, null, eid)
          return
        }
        this.speaking = false
        this.commitBuffer(this.speechItemId !== '' ? this.speechItemId : this.id('item'))
        return
      }
      case 'input_audio_buffer.clear':
        this.bufferStart = this.totalSamples
        this.bufferSamples = 0
        this.speaking = false
        this.speechItemId = ''
        this.send({ type: 'input_audio_buffer.cleared' })
        return
      case 'output_audio_buffer.clear':
        this.error('invalid_value', 'output_audio_buffer.clear is only supported for WebRTC and SIP sessions.', 'type', eid)
        return
      case 'response.create': return this.createResponse(msg.response, eid)
      case 'response.cancel': {
        const r = this.response
        if (r === undefined || (event.response_id !== undefined && event.response_id !== r.id)) {
          this.error('response_cancel_not_active', 'Cancellation failed: no active response found', null, eid)
          return
        }
        this.finish('cancelled', 'client_cancelled')
        return
      }
      case 'conversation.item.truncate': return this.truncate(event.item_id, event.content_index, event.audio_end_ms, eid)
      case 'conversation.item.create': {
        const item = msg.item
        if (!isObject(item) || typeof item.type !== 'string') {
          this.error('missing_required_parameter', "Missing required parameter: 'item'.", 'item', eid)
          return
        }
        const withId = { ...(item as unknown as ConversationItem), id: typeof item.id === 'string' ? item.id : this.id('item') }
        this.addItem(withId)
        return
      }
      case 'conversation.item.delete': {
        if (!this.items.delete(event.item_id)) {
          this.error('invalid_value', `Item with item_id '${event.item_id}' not found.`, 'item_id', eid)
          return
        }
        this.send({ type: 'conversation.item.deleted', item_id: event.item_id })
        return
      }
      case 'conversation.item.retrieve': {
        const item = this.items.get(event.item_id)
        if (item === undefined) {
          this.error('invalid_value', `Item with item_id '${event.item_id}' not found.`, 'item_id', eid)
          return
        }
        this.send({ type: 'conversation.item.retrieved', item })
      }
    }
  }

  // ---- session ----

  private updateSession (raw: unknown, eid: string | null): void {
    const problem = checkSession(raw)
    if (problem !== undefined) { this.error(problem.code, problem.message, problem.param, eid); return }
    const s = raw as RealtimeSessionCreateRequest
    if (s.model !== undefined && s.model !== this.session.model) { this.error('invalid_value', 'The model of a session cannot be changed.', 'session.model', eid); return }
    const voice = s.audio?.output?.voice
    if (voice !== undefined && this.audioOutputHappened && JSON.stringify(voice) !== JSON.stringify(this.session.audio?.output?.voice)) {
      this.error('cannot_update_voice', 'Cannot update a conversation\'s voice if assistant audio is present.', 'session.audio.output.voice', eid)
      return
    }
    const { audio, ...rest } = s
    Object.assign(this.session, rest)
    const current = this.session.audio ?? {}
    const input = { ...current.input, ...audio?.input }
    const td = audio?.input?.turn_detection
    // a turn_detection object replaces the old one; what it leaves out takes the API's defaults
    if (td !== undefined && td !== null && td.type === 'server_vad') {
      input.turn_detection = { threshold: 0.5, prefix_padding_ms: DEFAULT_PREFIX_PADDING_MS, silence_duration_ms: this.cfg.vadSilenceMs, create_response: true, interrupt_response: true, idle_timeout_ms: null, ...td }
    }
    const wasFormat = this.inputFormat()
    this.session.audio = { input, output: { ...current.output, ...audio?.output } }
    if (this.inputFormat() !== wasFormat) {
      // a new input format starts a new clock for the uncommitted buffer
      this.bufferStart = this.totalSamples = Math.round(this.totalSamples * this.inputRate() / rateOf(wasFormat))
      this.bufferSamples = 0
      this.frameSamples = 0
      this.frameSumSq = 0
      this.speaking = false
    }
    if (this.vad() === undefined) this.speaking = false
    this.send({ type: 'session.updated', session: this.session })
  }

  private inputFormat (): Format {
    return this.session.audio?.input?.format?.type === 'audio/pcmu' ? 'audio/pcmu' : 'audio/pcm'
  }

  private outputFormat (): Format {
    return this.session.audio?.output?.format?.type === 'audio/pcmu' ? 'audio/pcmu' : 'audio/pcm'
  }

  private inputRate (): number {
    return rateOf(this.inputFormat())
  }

  private vad (): ServerVad | undefined {
    const td = this.session.audio?.input?.turn_detection
    return td !== undefined && td !== null && td.type === 'server_vad' ? td : undefined
  }

  private bufferMs (): number {
    return this.bufferSamples * 1000 / this.inputRate()
  }

  private msAt (samples: number): number {
    return Math.round(samples * 1000 / this.inputRate())
  }

  // ---- input audio and server VAD ----

  private append (audio: unknown, eid: string | null): void {
    if (typeof audio !== 'string') { this.error('missing_required_parameter', "Missing required parameter: 'audio'.", 'audio', eid); return }
    if (audio.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(audio)) {
      this.error('invalid_value', "Invalid 'audio'. Expected base64-encoded audio bytes.", 'audio', eid)
      return
    }
    const samples = decodeInput(Buffer.from(audio, 'base64'), this.inputFormat())
    const vad = this.vad()
    if (vad === undefined) {
      this.totalSamples += samples.length
      this.bufferSamples += samples.length
      return
    }
    // Walk the audio in 10 ms frames of session time, so a turn can end inside one append and the audio
    // after its end starts the next buffer.
    const frame = this.inputRate() * VAD_FRAME_MS / 1000
    let i = 0
    while (i < samples.length) {
      const n = Math.min(frame - this.frameSamples, samples.length - i)
      for (let k = i; k < i + n; k++) { const v = (samples[k] as number) / 32768; this.frameSumSq += v * v }
      i += n
      this.frameSamples += n
      this.totalSamples += n
      this.bufferSamples += n
      if (this.frameSamples === frame) {
        const voiced = Math.sqrt(this.frameSumSq / frame) >= this.cfg.vadThreshold
        this.frameSamples = 0
        this.frameSumSq = 0
        this.onFrame(voiced, vad)
      }
    }
  }

  private onFrame (voiced: boolean, vad: ServerVad): void {
    const end = this.totalSamples
    const frameStartMs = this.msAt(end) - VAD_FRAME_MS
    if (!this.speaking) {
      if (!voiced) return
      this.speaking = true
      this.lastVoiceEnd = end
      this.speechItemId = this.id('item')
      // speech_started reaches back by prefix_padding_ms, but not before the uncommitted buffer began
      const start = Math.max(this.msAt(this.bufferStart), frameStartMs - (vad.prefix_padding_ms ?? DEFAULT_PREFIX_PADDING_MS))
      this.send({ type: 'input_audio_buffer.speech_started', audio_start_ms: start, item_id: this.speechItemId })
      if (this.response !== undefined && vad.interrupt_response !== false) this.finish('cancelled', 'turn_detected')
      return
    }
    if (voiced) { this.lastVoiceEnd = end; return }
    const silenceMs = vad.silence_duration_ms ?? this.cfg.vadSilenceMs
    if (this.msAt(end) - this.msAt(this.lastVoiceEnd) < silenceMs) return
    // the turn's end includes the silence that ended it, as the API's audio_end_ms does
    this.speaking = false
    const itemId = this.speechItemId
    this.send({ type: 'input_audio_buffer.speech_stopped', audio_end_ms: this.msAt(end), item_id: itemId })
    this.commitBuffer(itemId)
    if (vad.create_response !== false && this.response === undefined) this.startResponse()
  }

  private commitBuffer (itemId: string): void {
    const ms = this.bufferMs()
    this.committedInputMs += ms
    this.bufferStart = this.totalSamples
    this.bufferSamples = 0
    this.speechItemId = ''
    this.send({ type: 'input_audio_buffer.committed', item_id: itemId, previous_item_id: this.lastItemId })
    const item: UserItem = { id: itemId, object: 'realtime.item', type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_audio' }] }
    this.addItem(item)
    if (this.session.audio?.input?.transcription !== undefined && this.session.audio.input.transcription !== null) {
      this.send({
        type: 'conversation.item.input_audio_transcription.completed',
        item_id: itemId,
        content_index: 0,
        transcript: this.cfg.userTranscript,
        usage: { type: 'duration', seconds: Math.round(ms) / 1000 },
      })
    }
  }

  private addItem (item: ConversationItem & { id: string }): void {
    // GA announces a new item as conversation.item.added, then conversation.item.done once it is final
    // (the beta protocol's conversation.item.created is not sent)
    const previous = this.lastItemId
    this.send({ type: 'conversation.item.added', item, previous_item_id: previous })
    this.items.set(item.id, item)
    this.lastItemId = item.id
    this.send({ type: 'conversation.item.done', item, previous_item_id: previous })
  }

  // ---- responses ----

  private createResponse (raw: unknown, eid: string | null): void {
    if (raw !== undefined) {
      if (!isObject(raw)) { this.error('invalid_type', "Invalid type for 'response': expected an object.", 'response', eid); return }
      const unknown = Object.keys(raw).find(k => !RESPONSE_KEYS.has(k))
      if (unknown !== undefined) { this.error('unknown_parameter', `Unknown parameter: 'response.${unknown}'.`, `response.${unknown}`, eid); return }
    }
    if (this.response !== undefined) {
      this.error('conversation_already_has_active_response', `Conversation already has an active response in progress: ${this.response.id}. Wait until the response is finished before creating a new one.`, null, eid)
      return
    }
    this.startResponse()
  }

  private startResponse (): void {
    const format = this.outputFormat()
    const r: ActiveResponse = {
      id: this.id('resp'),
      audio: format === 'audio/pcm' ? this.cfg.replyAudio : encodeMuLaw(decimate3(this.cfg.replyAudio)),
      rate: rateOf(format),
      words: this.cfg.replyTranscript.split(/(?<= )/),
      timer: undefined,
      item: undefined,
      previousItemId: null,
      sentSamples: 0,
      sentWords: 0,
    }
    this.response = r
    this.send({ type: 'response.created', response: this.responseObject(r, 'in_progress') })
    r.timer = this.later(this.cfg.replyDelayMs, () => this.beginOutput(r))
  }

  private beginOutput (r: ActiveResponse): void {
    const item: RealtimeConversationItemAssistantMessage & { id: string } = { id: this.id('item'), object: 'realtime.item', type: 'message', role: 'assistant', status: 'in_progress', content: [] }
    r.item = item
    r.previousItemId = this.lastItemId
    this.assistantAudio.set(item.id, { ms: 0, truncated: false })
    this.send({ type: 'response.output_item.added', response_id: r.id, output_index: 0, item })
    this.send({ type: 'conversation.item.added', item, previous_item_id: r.previousItemId })
    this.items.set(item.id, item)
    this.lastItemId = item.id
    this.send({ type: 'response.content_part.added', response_id: r.id, item_id: item.id, output_index: 0, content_index: 0, part: { type: 'audio', transcript: '' } })
    this.audioOutputHappened = true
    this.nextDelta(r)
  }

  private nextDelta (r: ActiveResponse): void {
    const item = r.item
    if (item === undefined || this.response !== r) return
    const chunk = Math.max(1, Math.round(r.rate * this.cfg.deltaMs / 1000))
    const total = r.audio.length
    const slice = r.audio.subarray(r.sentSamples, Math.min(total, r.sentSamples + chunk))
    if (slice.length === 0) { this.finish('completed'); return }
    r.sentSamples += slice.length
    // the transcript runs just ahead of the audio, in whole words
    const wordsDue = total === 0 ? r.words.length : Math.floor(r.words.length * r.sentSamples / total)
    if (wordsDue > r.sentWords) {
      this.send({ type: 'response.output_audio_transcript.delta', response_id: r.id, item_id: item.id, output_index: 0, content_index: 0, delta: r.words.slice(r.sentWords, wordsDue).join('') })
      r.sentWords = wordsDue
    }
    const bytes = slice instanceof Int16Array ? pcm16Bytes(slice) : Buffer.from(slice)
    this.send({ type: 'response.output_audio.delta', response_id: r.id, item_id: item.id, output_index: 0, content_index: 0, delta: bytes.toString('base64') })
    const heard = this.assistantAudio.get(item.id)
    if (heard !== undefined && !heard.truncated) heard.ms = Math.round(r.sentSamples * 1000 / r.rate)
    r.timer = this.later(this.cfg.deltaIntervalMs, () => this.nextDelta(r))
  }

  private finish (status: 'completed' | 'cancelled', reason?: 'client_cancelled' | 'turn_detected'): void {
    const r = this.response
    if (r === undefined) return
    if (r.timer !== undefined) { clearTimeout(r.timer); this.timers.delete(r.timer) }
    this.response = undefined
    const item = r.item
    const transcript = r.words.slice(0, r.sentWords).join('')
    if (item !== undefined) {
      const ids = { response_id: r.id, item_id: item.id, output_index: 0, content_index: 0 }
      this.send({ type: 'response.output_audio.done', ...ids })
      this.send({ type: 'response.output_audio_transcript.done', ...ids, transcript })
      this.send({ type: 'response.content_part.done', ...ids, part: { type: 'audio', transcript } })
      item.status = status === 'completed' ? 'completed' : 'incomplete'
      item.content = [{ type: 'output_audio', transcript }]
      this.send({ type: 'response.output_item.done', response_id: r.id, output_index: 0, item })
      this.send({ type: 'conversation.item.done', item, previous_item_id: r.previousItemId })
    }
    const done = this.responseObject(r, status)
    if (status === 'cancelled') done.status_details = { type: 'cancelled', reason }
    this.send({ type: 'response.done', response: done })
  }

  private responseObject (r: ActiveResponse, status: 'in_progress' | 'completed' | 'cancelled'): RealtimeResponse {
    const out: RealtimeResponse = {
      id: r.id,
      object: 'realtime.response',
      status,
      output: r.item === undefined ? [] : [r.item],
      conversation_id: 'conv_' + this.session.id.slice(5),
      output_modalities: ['audio'],
      max_output_tokens: 'inf',
      audio: { output: { format: this.session.audio?.output?.format, voice: stringVoice(this.session.audio?.output?.voice) } },
      metadata: null,
    }
    if (status !== 'in_progress') out.usage = this.usage(r)
    return out
  }

  private usage (r: ActiveResponse): RealtimeResponseUsage {
    const inputAudio = Math.ceil(this.committedInputMs / 1000 * INPUT_AUDIO_TOKENS_PER_S)
    const inputText = (this.session.instructions ?? '').split(/\s+/).filter(Boolean).length
    const outputAudio = Math.ceil(r.sentSamples / r.rate * OUTPUT_AUDIO_TOKENS_PER_S)
    const outputText = r.sentWords
    return {
      total_tokens: inputAudio + inputText + outputAudio + outputText,
      input_tokens: inputAudio + inputText,
      output_tokens: outputAudio + outputText,
      input_token_details: { text_tokens: inputText, audio_tokens: inputAudio, image_tokens: 0, cached_tokens: 0, cached_tokens_details: { text_tokens: 0, audio_tokens: 0, image_tokens: 0 } },
      output_token_details: { text_tokens: outputText, audio_tokens: outputAudio },
    }
  }

  private truncate (itemId: string, contentIndex: number, audioEndMs: number, eid: string | null): void {
    const item = this.items.get(itemId)
    const heard = this.assistantAudio.get(itemId)
    if (item === undefined) { this.error('invalid_value', `Item with item_id '${itemId}' not found.`, 'item_id', eid); return }
    if (heard === undefined) { this.error('invalid_value', 'Only assistant messages with audio can be truncated.', 'item_id', eid); return }
    if (contentIndex !== 0) { this.error('invalid_value', `Invalid content_index ${contentIndex}: the item's audio is content 0.`, 'content_index', eid); return }
    if (!Number.isInteger(audioEndMs) || audioEndMs < 0) { this.error('invalid_value', "Invalid 'audio_end_ms': expected a non-negative integer.", 'audio_end_ms', eid); return }
    if (audioEndMs > heard.ms) {
      this.error('invalid_value', `Audio content of ${heard.ms}ms is already shorter than ${audioEndMs}ms`, 'audio_end_ms', eid)
      return
    }
    heard.ms = audioEndMs
    heard.truncated = true
    this.send({ type: 'conversation.item.truncated', item_id: itemId, content_index: contentIndex, audio_end_ms: audioEndMs })
  }
}

interface Problem { code: string, message: string, param: string | null }

/** Checks a session.update's session against the GA shape; undefined when it is acceptable. */
function checkSession (raw: unknown): Problem | undefined {
  if (!isObject(raw)) return { code: 'missing_required_parameter', message: "Missing required parameter: 'session'.", param: 'session' }
  // GA requires the session type; a beta-style session.update has none
  if (raw.type === undefined) return { code: 'missing_required_parameter', message: "Missing required parameter: 'session.type'.", param: 'session.type' }
  if (raw.type !== 'realtime') return { code: 'invalid_value', message: `The fake serves 'realtime' sessions only, not '${String(raw.type)}'.`, param: 'session.type' }
  const unknown = unknownKey(raw, SESSION_KEYS, 'session')
  if (unknown !== undefined) return unknown
  if (raw.output_modalities !== undefined && JSON.stringify(raw.output_modalities) !== '["audio"]') {
    return { code: 'invalid_value', message: "The fake answers with audio only: output_modalities must be ['audio'].", param: 'session.output_modalities' }
  }
  if (raw.audio === undefined) return undefined
  if (!isObject(raw.audio)) return { code: 'invalid_type', message: "Invalid type for 'session.audio': expected an object.", param: 'session.audio' }
  const audio = raw.audio
  const u = unknownKey(audio, AUDIO_KEYS, 'session.audio') ??
    (isObject(audio.input) ? unknownKey(audio.input, AUDIO_INPUT_KEYS, 'session.audio.input') : undefined) ??
    (isObject(audio.output) ? unknownKey(audio.output, AUDIO_OUTPUT_KEYS, 'session.audio.output') : undefined)
  if (u !== undefined) return u
  for (const side of ['input', 'output'] as const) {
    const part = audio[side]
    if (part === undefined) continue
    if (!isObject(part)) return { code: 'invalid_type', message: `Invalid type for 'session.audio.${side}': expected an object.`, param: `session.audio.${side}` }
    const p = checkFormat(part.format, `session.audio.${side}.format`)
    if (p !== undefined) return p
  }
  if (isObject(audio.input) && audio.input.turn_detection !== undefined && audio.input.turn_detection !== null) {
    const td = audio.input.turn_detection
    const param = 'session.audio.input.turn_detection'
    if (!isObject(td)) return { code: 'invalid_type', message: `Invalid type for '${param}': expected an object or null.`, param }
    if (td.type === 'semantic_vad') return { code: 'invalid_value', message: 'The fake implements server_vad only.', param: `${param}.type` }
    if (td.type !== 'server_vad') return { code: 'invalid_value', message: `Invalid value: '${String(td.type)}'. Supported values are: 'server_vad' and 'semantic_vad'.`, param: `${param}.type` }
    const bad = unknownKey(td, TURN_DETECTION_KEYS, param)
    if (bad !== undefined) return bad
    for (const k of ['threshold', 'prefix_padding_ms', 'silence_duration_ms']) {
      if (td[k] !== undefined && typeof td[k] !== 'number') return { code: 'invalid_type', message: `Invalid type for '${param}.${k}': expected a number.`, param: `${param}.${k}` }
    }
  }
  return undefined
}

function checkFormat (format: unknown, param: string): Problem | undefined {
  if (format === undefined) return undefined
  // beta formats were strings ('pcm16', 'g711_ulaw'); GA formats are objects
  if (!isObject(format)) return { code: 'invalid_type', message: `Invalid type for '${param}': expected an object, but got ${typeof format} instead.`, param }
  if (format.type === 'audio/pcm') {
    if (format.rate !== undefined && format.rate !== SAMPLE_RATE) return { code: 'invalid_value', message: `Invalid '${param}.rate': only 24000 is supported.`, param: `${param}.rate` }
    return undefined
  }
  if (format.type === 'audio/pcmu') return undefined
  if (format.type === 'audio/pcma') return { code: 'invalid_value', message: 'The fake does not implement audio/pcma.', param: `${param}.type` }
  return { code: 'invalid_value', message: `Invalid value: '${String(format.type)}'. Supported values are: 'audio/pcm', 'audio/pcmu' and 'audio/pcma'.`, param: `${param}.type` }
}

function unknownKey (obj: Record<string, unknown>, allowed: ReadonlySet<string>, path: string): Problem | undefined {
  const k = Object.keys(obj).find(key => !allowed.has(key))
  return k === undefined ? undefined : { code: 'unknown_parameter', message: `Unknown parameter: '${path}.${k}'.`, param: `${path}.${k}` }
}

function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function rateOf (format: Format): number {
  return format === 'audio/pcm' ? SAMPLE_RATE : G711_RATE
}

function stringVoice (v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined
}

function rawBytes (data: RawData): Buffer {
  if (Array.isArray(data)) return Buffer.concat(data)
  return Buffer.isBuffer(data) ? data : Buffer.from(data)
}

// The fake's own codecs, separate from the bridge's, so a codec bug cannot hide itself.

function pcm16Bytes (pcm: Int16Array): Buffer {
  const out = Buffer.alloc(pcm.length * 2)
  for (let i = 0; i < pcm.length; i++) out.writeInt16LE(pcm[i] as number, i * 2)
  return out
}

function decodeInput (bytes: Buffer, format: Format): Int16Array {
  if (format === 'audio/pcmu') {
    const out = new Int16Array(bytes.length)
    for (let i = 0; i < bytes.length; i++) out[i] = muLawDecode(bytes[i] as number)
    return out
  }
  const out = new Int16Array(bytes.length >> 1)
  for (let i = 0; i < out.length; i++) out[i] = bytes.readInt16LE(i * 2)
  return out
}

// G.711 µ-law (ITU-T G.711, with the usual 0x84 bias)
function muLawDecode (byte: number): number {
  const u = ~byte & 0xff
  const magnitude = ((((u & 0x0f) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
  return (u & 0x80) !== 0 ? -magnitude : magnitude
}

function muLawEncode (sample: number): number {
  const sign = sample < 0 ? 0x80 : 0
  let s = Math.min(Math.abs(sample), 32635) + 0x84
  let exponent = 7
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--
  const mantissa = (s >> (exponent + 3)) & 0x0f
  s = ~(sign | (exponent << 4) | mantissa) & 0xff
  return s
}

function encodeMuLaw (pcm: Int16Array): Buffer {
  const out = Buffer.alloc(pcm.length)
  for (let i = 0; i < pcm.length; i++) out[i] = muLawEncode(pcm[i] as number)
  return out
}

// 24 kHz to 8 kHz by averaging each three samples: crude, but the fake's reply is a test tone
function decimate3 (pcm: Int16Array): Int16Array {
  const out = new Int16Array(Math.floor(pcm.length / 3))
  for (let i = 0; i < out.length; i++) out[i] = Math.round(((pcm[3 * i] as number) + (pcm[3 * i + 1] as number) + (pcm[3 * i + 2] as number)) / 3)
  return out
}
