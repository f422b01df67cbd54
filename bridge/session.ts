// One device's voice session: its `hello` opens a Realtime conversation; microphone frames go up decoded to
// 24 kHz, the reply comes down encoded into paced frames, captions and state go to `audio/events`, and an
// interrupt (barge-in) cuts the reply everywhere at once. The bridge (bridge/index.ts) owns the MQTT side and
// hands each device's messages to its session.

import type { Logger } from 'pino'
import type { RealtimeServerEvent, RealtimeResponseUsage } from 'openai/resources/realtime/realtime'
import { openCodec, REALTIME_RATE, samplesFor, type AudioCodec, type FrameMs, type TranscodingCodec } from './codec.ts'
import { epochNewer, nextEpoch, packFrame, parseFrame, type CodecName, type FrameHeader } from './frame.ts'
import { UplinkReceiver } from './jitter.ts'
import type { InterruptTrigger, VoiceMetrics } from './metrics.ts'
import { DownlinkPacer, type PayloadSource } from './pacer.ts'
import { RealtimeClient, RealtimeConnectError, type RealtimeOptions, type SessionOptions } from './realtime.ts'
import { errorMessage, type ErrorCode } from '../schemas/errors.ts'
import type { BridgeEvent, DeviceControl, HelloMessage, ListenMode, VoiceSettings, VoiceState } from '../schemas/voice.ts'

// the contract: uplink frames that arrive before the upstream is ready are kept up to 2 s
export const PRE_READY_BUFFER_MS = 2000
// Realtime refuses to commit less than 100 ms of input (input_audio_buffer_commit_empty)
const MIN_COMMIT_MS = 100
// µ-law runs at 8 kHz, one byte a sample; 0xff is its silence
const G711_RATE = 8000
const MU_LAW_SILENCE = 0xff
// user captions come from this model; the realtime model itself does not transcribe its input
export const TRANSCRIPTION_MODEL = 'gpt-4o-mini-transcribe'
// how often the idle check looks; an idle session ends at most this much after its idle time
const IDLE_CHECK_MIN_MS = 1000

export interface SessionStats {
  framesUp: number // uplink frames received
  framesDown: number // downlink frames published
  badFrames: number // unparsable, of another codec, or undecodable
  mutedFrames: number // uplink ignored while speaking without AEC
  droppedBeforeReady: number // uplink ms beyond PRE_READY_BUFFER_MS before the upstream was ready
  interrupts: number
}

/** What ended a session, for logs and the bridge's bookkeeping. */
export type EndReason = 'bye' | 'idle' | 'upstream_closed' | 'upstream_unavailable' | 'replaced' | 'offline' | 'shutdown' | 'limit' | 'lease_lost'

export interface SessionDeps {
  readonly id?: string // newSessionId() unless given
  readonly deviceId: string
  readonly hello: HelloMessage
  readonly settings: VoiceSettings
  readonly realtime: RealtimeOptions
  readonly idleMs: number
  readonly log: Logger
  // publishes on the broker as the bridge; `audio/down` at QoS 0, `audio/events` at QoS 1
  readonly publish: (topic: string, payload: Buffer | string, qos: 0 | 1) => void
  readonly onEnd: (session: VoiceSession, reason: EndReason) => void
  // audio (heard plus spoken) this session may still use today; at zero it says `limit` and ends
  readonly budget?: { readonly remainingMs: number, readonly resetAt: number }
  // for history and usage: the upstream is ready, a response finished, a caption is final
  readonly onReady?: () => void
  readonly onUsage?: (usage: RealtimeResponseUsage | undefined) => void
  readonly onTranscript?: (role: 'user' | 'assistant', text: string) => void
  readonly now?: () => number
  readonly connect?: (opts: RealtimeOptions) => RealtimeClient
  // latency histograms (bridge/metrics.ts); spans are timed with performance.now(), not `now`, because
  // they are sub-millisecond and must not jump with the wall clock
  readonly metrics?: VoiceMetrics
}

// When a downlink frame's audio came from upstream and when it was queued for the pacer (bridge/metrics.ts)
interface FrameTimes { readonly arrivedAt: number, readonly queuedAt: number }

// The response being spoken (or generated): its ids, how much audio came for it, and its downlink epoch.
interface Reply {
  readonly id: string
  itemId: string | undefined
  generating: boolean
  interrupted: boolean
  epoch: number | undefined // set when its downlink stream begins
  generatedMs: number
  pending: Int16Array // transcoding codecs: the frame being filled (a fresh array each frame: queued frames keep theirs)
  pendingFill: number
  pendingBytes: Buffer[] // µ-law: bytes short of a whole frame
  pendingByteCount: number
  transcript: string
}

let sessionSeq = 0

/** A session id: unique per process and time-ordered; the device sees it in `hello`, history keeps it. */
export function newSessionId (now: number = Date.now()): string {
  return `vs_${now.toString(36)}${(++sessionSeq).toString(36).padStart(3, '0')}${Math.floor(Math.random() * 36 ** 4).toString(36).padStart(4, '0')}`
}

export class VoiceSession {
  readonly id: string
  readonly deviceId: string
  readonly stats: SessionStats = { framesUp: 0, framesDown: 0, badFrames: 0, mutedFrames: 0, droppedBeforeReady: 0, interrupts: 0 }
  readonly startedAt: number

  private readonly deps: SessionDeps
  private readonly now: () => number
  private readonly log: Logger
  private readonly codec: AudioCodec
  private readonly frameMs: FrameMs
  private readonly receiver: UplinkReceiver
  private readonly pacer: DownlinkPacer
  private readonly downTopic: string
  private readonly eventsTopic: string
  private client: RealtimeClient | undefined
  private ready = false
  private ended = false
  private state: VoiceState | undefined
  private mode: ListenMode
  // uplink: the epoch the device's last `listen stop` closed; its frames (and older) are no longer taken
  private closedEpoch: number | undefined
  private appendedMs = 0 // uplink audio in the upstream's uncommitted buffer
  private heardMs = 0 // uplink audio sent upstream in this session
  private spokenMs = 0 // reply audio generated in this session
  private beforeReady: Array<Int16Array | Buffer> = []
  private beforeReadyMs = 0
  private commitWhenReady = false
  // downlink: the epoch of the newest response stream, and whether a response already used it
  private downEpoch = 1
  private downEpochUsed = false
  private reply: Reply | undefined
  private playedOutTimer: NodeJS.Timeout | undefined
  private lastActivity: number
  private idleTimer: NodeJS.Timeout | undefined
  private limitSent = false
  // latency metrics: per queued frame (its payload, or the function that encodes it on release) its times;
  // when the current synchronous call into the pacer began, or else when the pacer's own timer (or a turn
  // after a yield) began sending; when the user's last turn ended
  private readonly frameTimes = new WeakMap<object, FrameTimes>()
  private pacerCallAt: number | undefined
  private timerRunAt: number | undefined
  private turnEndedAt: number | undefined

  constructor (deps: SessionDeps) {
    this.deps = deps
    this.deviceId = deps.deviceId
    this.now = deps.now ?? Date.now
    this.startedAt = this.now()
    this.lastActivity = this.startedAt
    this.id = deps.id ?? newSessionId(this.startedAt)
    this.log = deps.log.child({ deviceId: deps.deviceId, session: this.id })
    this.mode = deps.settings.mode
    const codecName = deps.hello.codecs[0] as CodecName
    this.frameMs = deps.hello.frameMs as FrameMs
    this.codec = openCodec(codecName, this.frameMs)
    this.receiver = new UplinkReceiver({ frameMs: this.frameMs, outputRate: this.codec.passThrough ? G711_RATE : REALTIME_RATE })
    this.downTopic = `devices/${deps.deviceId}/audio/down`
    this.eventsTopic = `devices/${deps.deviceId}/audio/events`
    this.pacer = new DownlinkPacer({
      codec: codecName,
      now: this.now,
      send: (header, payload) => this.sendFrame(header, payload),
      onSent: () => this.onAllSent(),
      // frames are encoded as they go out: a burst of due frames is spread over turns of the event loop
      yieldBetweenFrames: true,
    })
  }

  get currentState (): VoiceState | undefined { return this.state }
  get isEnded (): boolean { return this.ended }
  get downlinkEpoch (): number { return this.downEpoch }
  // what the daily budget counts: audio heard from the device plus audio spoken to it
  get audioMs (): number { return this.heardMs + this.spokenMs }

  /** Opens the upstream conversation; the device hears `hello` once it is ready, or an error. */
  async start (): Promise<void> {
    this.setState('connecting')
    this.scheduleIdleCheck(this.deps.idleMs)
    const client = (this.deps.connect ?? (o => new RealtimeClient(o)))(this.deps.realtime)
    this.client = client
    this.listen(client)
    try {
      await client.connect()
      if (this.ended) return
      await client.updateSession(this.sessionOptions())
    } catch (err) {
      if (this.ended) return
      const detail = err instanceof RealtimeConnectError ? `${err.reason}: ${err.message}` : (err as Error).message
      this.log.warn({ err: detail }, 'voice upstream unavailable')
      this.end('upstream_unavailable', 'VOICE_UPSTREAM_UNAVAILABLE', { detail })
      return
    }
    if (this.ended) return
    this.ready = true
    // the conversation is on record before anything of it (usage, captions) is
    this.deps.onReady?.()
    const hello = this.deps.hello
    const up = this.codec.passThrough ? G711_RATE : (hello.rates.up ?? 16_000)
    const down = this.codec.passThrough ? G711_RATE : REALTIME_RATE
    this.event({ type: 'hello', session: this.id, codec: this.codec.name, rates: { up, down }, frame_ms: this.frameMs })
    this.setState('listening')
    for (const audio of this.beforeReady) if (!this.ended) this.append(audio)
    this.beforeReady = []
    if (this.commitWhenReady && !this.ended) this.commitTurn()
    this.log.info({ codec: this.codec.name, frameMs: this.frameMs, aec: hello.aec, mode: this.mode, buffered: this.beforeReadyMs }, 'voice session ready')
  }

  /** One control message of the device (hello is the bridge's: it starts a new session). */
  control (msg: DeviceControl, receivedAt: number = performance.now()): void {
    if (this.ended) return
    this.touch()
    switch (msg.type) {
      case 'listen':
        if (msg.state === 'start') this.listenStart(msg.epoch, msg.mode)
        else this.listenStop(msg.epoch, receivedAt)
        return
      case 'playback':
        this.pacerCallAt = performance.now()
        this.pacer.report(msg.epoch, msg.playedMs)
        this.pacerCallAt = undefined
        if (msg.epoch === this.downEpoch) this.checkPlayedOut()
        return
      case 'interrupt':
        if (msg.epoch !== this.downEpoch || !this.pacer.isActive || this.state !== 'speaking') {
          this.log.debug({ epoch: msg.epoch, current: this.downEpoch }, 'interrupt of an epoch not playing; ignored')
          return
        }
        this.bargeIn(msg.playedMs, msg.reason ?? 'device', { trigger: 'device', at: receivedAt })
        return
      case 'bye':
        this.end('bye')
        return
      case 'hello':
        return
    }
  }

  /** One binary frame from `audio/up`, which reached the bridge at `receivedAt` (performance.now()). */
  uplink (bytes: Uint8Array, receivedAt: number = performance.now()): void {
    if (this.ended) return
    this.touch()
    this.stats.framesUp++
    const parsed = parseFrame(bytes)
    if (!parsed.ok || parsed.frame.codec !== this.codec.name) { this.stats.badFrames++; return }
    const frame = parsed.frame
    if (this.closedEpoch !== undefined && !epochNewer(frame.epoch, this.closedEpoch)) return
    const items = this.receiver.push(frame)
    // half duplex: without echo cancellation the microphone hears the speaker, so nothing it picks up while
    // the bridge speaks is the user's (the receiver still ran, so its clock stays right)
    if (this.state === 'speaking' && !this.deps.hello.aec) { this.stats.mutedFrames += items.length; return }
    let sent = false // went upstream now, rather than into the pre-ready buffer or nowhere
    for (const item of items) {
      if (item.kind === 'silence') {
        sent = this.append(this.codec.passThrough ? Buffer.alloc(item.pcm.length, MU_LAW_SILENCE) : item.pcm) || sent
        continue
      }
      if (this.codec.passThrough) {
        // the payload is only a view of the MQTT packet; it is copied before being kept
        if (item.frame.payload.byteLength > 0) sent = this.append(Buffer.from(item.frame.payload)) || sent
        continue
      }
      const decoded = this.codec.decode(item.frame.payload)
      if (!decoded.ok) { this.stats.badFrames++; continue }
      if (decoded.pcm.length > 0) sent = this.append(decoded.pcm) || sent
    }
    if (sent) this.deps.metrics?.uplinkFrame(performance.now() - receivedAt)
  }

  /** Ends the session: upstream closed, queued audio dropped, `state idle` (and why, if it went wrong). */
  end (reason: EndReason, code?: ErrorCode, params: Record<string, string | number> = {}): void {
    if (this.ended) return
    this.ended = true
    this.pacer.flush()
    clearTimeout(this.playedOutTimer)
    clearTimeout(this.idleTimer)
    if (code !== undefined) this.event({ type: 'error', code, message: errorMessage(code, params) })
    // a replaced session's device has already said hello again, and a lost lease means another bridge
    // serves it now: telling it "idle" would be wrong
    if (reason !== 'replaced' && reason !== 'lease_lost') this.setState('idle')
    this.codec.close()
    void this.client?.close().catch(() => {})
    this.log.info({ reason, stats: this.stats }, 'voice session ended')
    this.deps.onEnd(this, reason)
  }

  /** The daily budget ran out: says so, then ends. */
  limit (reason: 'daily_minutes' | 'session_length', resetAt: number): void {
    if (this.ended || this.limitSent) return
    this.limitSent = true
    this.event({ type: 'limit', reason, resetAt })
    this.end('limit')
  }

  // ---- uplink ----

  private listenStart (epoch: number, mode: ListenMode | undefined): void {
    this.receiver.startEpoch(epoch)
    if (this.closedEpoch !== undefined && epochNewer(epoch, this.closedEpoch)) this.closedEpoch = undefined
    const wanted = mode ?? this.mode
    if (wanted !== this.mode) {
      this.mode = wanted
      if (this.ready) void this.client?.updateSession({ turnDetection: turnDetection(wanted) }).catch(err => this.log.warn({ err: (err as Error).message }, 'turn detection not changed'))
    }
    // a push-to-talk turn is exactly what is said while the button is down
    if (this.mode === 'ptt' && this.ready) { this.client?.clearInput(); this.appendedMs = 0 }
    if (this.state !== 'speaking' && this.state !== 'connecting') this.setState('listening')
  }

  private listenStop (epoch: number, receivedAt: number): void {
    if (this.receiver.currentEpoch !== undefined && epochNewer(this.receiver.currentEpoch, epoch)) return
    this.closedEpoch = epoch
    if (this.mode !== 'ptt') return
    if (!this.ready) { this.commitWhenReady = true; return }
    this.commitTurn(receivedAt)
  }

  // `endedAt`: the end of the push-to-talk turn as the bridge saw it (a turn stopped before the upstream was
  // ready counts from the moment it could be committed)
  private commitTurn (endedAt: number = performance.now()): void {
    this.commitWhenReady = false
    if (this.appendedMs < MIN_COMMIT_MS) {
      // too short to be a question (a tap of the button); Realtime would refuse the commit anyway
      this.client?.clearInput()
      this.appendedMs = 0
      return
    }
    this.client?.commit()
    this.client?.createResponse()
    this.appendedMs = 0
    this.turnEndedAt = endedAt
    this.setState('thinking')
  }

  /** Sends audio upstream, or keeps it until the upstream is ready; true when it went upstream now. */
  private append (audio: Int16Array | Buffer): boolean {
    const ms = Buffer.isBuffer(audio) ? (audio.length * 1000) / G711_RATE : (audio.length * 1000) / REALTIME_RATE
    if (!this.ready) {
      if (this.beforeReadyMs + ms > PRE_READY_BUFFER_MS) { this.stats.droppedBeforeReady += ms; return false }
      // decoded samples are fresh arrays; µ-law buffers were copied above
      this.beforeReady.push(audio)
      this.beforeReadyMs += ms
      return false
    }
    if (this.client?.appendAudio(audio) !== true) return false
    this.appendedMs += ms
    this.heardMs += ms
    this.checkBudget()
    return true
  }

  private checkBudget (): void {
    const budget = this.deps.budget
    if (budget !== undefined && this.audioMs >= budget.remainingMs) this.limit('daily_minutes', budget.resetAt)
  }

  // ---- upstream ----

  private sessionOptions (): SessionOptions {
    const s = this.deps.settings
    const format = this.codec.passThrough ? 'audio/pcmu' : 'audio/pcm'
    return {
      instructions: s.instructions,
      voice: s.voice,
      inputFormat: format,
      outputFormat: format,
      turnDetection: turnDetection(this.mode),
      transcription: s.language === undefined ? { model: TRANSCRIPTION_MODEL } : { model: TRANSCRIPTION_MODEL, language: s.language },
    }
  }

  private listen (client: RealtimeClient): void {
    let expired = false
    client.on('event', e => this.onServerEvent(e))
    client.on('response.output_audio.delta', (e, pcm, bytes) => this.onAudio(e.response_id, e.item_id, pcm, bytes))
    client.on('error', e => {
      // the session time limit is announced as an error just before the socket closes
      if (e.error.code === 'session_expired') expired = true
      this.log.debug({ code: e.error.code, message: e.error.message }, 'realtime error event')
    })
    client.on('transport_error', err => this.log.warn({ err: err.message }, 'realtime transport error'))
    client.on('close', (code, reason) => {
      if (this.ended) return
      if (expired) { this.limit('session_length', this.now()); return }
      this.log.warn({ code, reason }, 'voice upstream closed')
      this.end('upstream_closed', 'VOICE_UPSTREAM_CLOSED', { detail: `${code}${reason === '' ? '' : ' ' + reason}` })
    })
  }

  private onServerEvent (e: RealtimeServerEvent): void {
    if (this.ended) return
    switch (e.type) {
      case 'input_audio_buffer.speech_started':
        // with echo cancellation the user may talk over the reply: that is a barge-in
        if (this.state === 'speaking' && this.deps.hello.aec && this.pacer.isActive) this.bargeIn(this.pacer.playedMs(), 'speech', { trigger: 'speech', at: this.upstreamAt() })
        else if (this.state !== 'speaking') this.setState('listening')
        return
      case 'input_audio_buffer.speech_stopped':
      case 'input_audio_buffer.committed':
        // server VAD's speech_stopped is where the bridge learns that the user's turn is over
        if (e.type === 'input_audio_buffer.speech_stopped') this.turnEndedAt = this.upstreamAt()
        this.appendedMs = 0
        if (this.state !== 'speaking') this.setState('thinking')
        return
      case 'conversation.item.input_audio_transcription.completed':
        this.caption('user', e.transcript, true, this.receiver.currentEpoch ?? 0)
        return
      case 'response.created':
        this.reply = {
          id: e.response.id ?? '', itemId: undefined, generating: true, interrupted: false, epoch: undefined, generatedMs: 0,
          pending: new Int16Array(samplesFor(this.frameMs)), pendingFill: 0, pendingBytes: [], pendingByteCount: 0, transcript: '',
        }
        return
      case 'response.output_item.added':
        if (this.reply?.id === e.response_id && e.item.type === 'message') this.reply.itemId = e.item.id
        return
      case 'response.output_audio_transcript.delta': {
        const r = this.replyOf(e.response_id)
        if (r === undefined) return
        r.transcript += e.delta
        this.caption('assistant', e.delta, false, this.beginDownlink(r))
        return
      }
      case 'response.output_audio_transcript.done': {
        const r = this.replyOf(e.response_id)
        if (r !== undefined) this.caption('assistant', e.transcript, true, this.beginDownlink(r))
        if (e.transcript !== '') this.deps.onTranscript?.('assistant', e.transcript)
        return
      }
      case 'response.output_audio.done': {
        const r = this.replyOf(e.response_id)
        if (r !== undefined) this.finishDownlink(r)
        return
      }
      case 'response.done': {
        const r = this.reply?.id === e.response.id ? this.reply : undefined
        this.deps.onUsage?.(e.response.usage)
        if (r === undefined) return
        r.generating = false
        if (r.interrupted) return
        this.finishDownlink(r)
        // a response with no audio (cancelled while thinking, or text only) leaves nothing to play
        if (r.epoch === undefined) {
          this.turnEndedAt = undefined
          if (this.state !== 'speaking') this.setState('listening')
        } else this.checkPlayedOut()
      }
    }
  }

  private replyOf (responseId: string): Reply | undefined {
    const r = this.reply
    return r !== undefined && r.id === responseId && !r.interrupted ? r : undefined
  }

  // Reply audio arrives much faster than real time. Its PCM is cut into frames and queued as is; each frame
  // is encoded only when the pacer releases it (encodeOnRelease), so the encoding follows playback.
  private onAudio (responseId: string, itemId: string, pcm: Int16Array, bytes: Buffer): void {
    if (this.ended) return
    const r = this.replyOf(responseId)
    if (r === undefined) return
    r.itemId ??= itemId
    this.beginDownlink(r)
    this.touch()
    this.spokenMs += this.codec.passThrough ? (bytes.length * 1000) / G711_RATE : (pcm.length * 1000) / REALTIME_RATE
    this.checkBudget()
    if (this.ended) return
    const arrivedAt = this.upstreamAt()
    if (this.codec.passThrough) {
      r.generatedMs += (bytes.length * 1000) / G711_RATE
      r.pendingBytes.push(Buffer.from(bytes))
      r.pendingByteCount += bytes.length
      const frameBytes = (this.frameMs * G711_RATE) / 1000
      if (r.pendingByteCount < frameBytes) return
      const all = Buffer.concat(r.pendingBytes)
      let at = 0
      for (; at + frameBytes <= all.length; at += frameBytes) this.queueFrame(all.subarray(at, at + frameBytes), this.frameMs, arrivedAt)
      r.pendingBytes = at < all.length ? [all.subarray(at)] : []
      r.pendingByteCount = all.length - at
      return
    }
    r.generatedMs += (pcm.length * 1000) / REALTIME_RATE
    let at = 0
    while (at < pcm.length) {
      const frame = r.pending
      const n = Math.min(frame.length - r.pendingFill, pcm.length - at)
      frame.set(pcm.subarray(at, at + n), r.pendingFill)
      r.pendingFill += n
      at += n
      if (r.pendingFill === frame.length) {
        this.queueFrame(this.encodeOnRelease(this.codec, frame), this.frameMs, arrivedAt)
        r.pending = new Int16Array(frame.length)
        r.pendingFill = 0
      }
    }
  }

  /** The downlink epoch of reply `r`, opening its stream on first use. */
  private beginDownlink (r: Reply): number {
    if (r.epoch !== undefined) return r.epoch
    // a new reply while the last one still plays (it should not happen: the device is speaking) cuts it
    if (this.pacer.isActive && this.state === 'speaking') this.bargeIn(this.pacer.playedMs(), 'new_response')
    if (this.downEpochUsed) this.downEpoch = nextEpoch(this.downEpoch)
    this.downEpochUsed = true
    r.epoch = this.downEpoch
    this.pacer.begin(r.epoch)
    clearTimeout(this.playedOutTimer)
    this.setState('speaking')
    return r.epoch
  }

  /** No more audio for `r`: the short last frame goes out, marked END. */
  private finishDownlink (r: Reply): void {
    if (r.epoch === undefined || r.epoch !== this.pacer.currentEpoch || r.interrupted) return
    if (this.codec.passThrough) {
      if (r.pendingByteCount > 0) this.queueFrame(Buffer.concat(r.pendingBytes), (r.pendingByteCount * 1000) / G711_RATE, this.upstreamAt())
      r.pendingBytes = []
      r.pendingByteCount = 0
    } else if (r.pendingFill > 0) {
      this.queueFrame(this.encodeOnRelease(this.codec, r.pending.subarray(0, r.pendingFill)), (r.pendingFill * 1000) / REALTIME_RATE, this.upstreamAt())
      r.pendingFill = 0
    }
    this.pacer.end()
  }

  // ---- downlink ----

  /**
   * The payload of a frame of `pcm` (transcoding codecs), made when the pacer releases the frame: the codec
   * runs then, not when the audio arrives. A flushed frame is never encoded. The frame's metric times move
   * to the encoded payload, which is what sendFrame sees.
   */
  private encodeOnRelease (codec: TranscodingCodec, pcm: Int16Array): () => Uint8Array {
    const source = (): Uint8Array => {
      const times = this.frameTimes.get(source)
      // the frame's release is before its encoding: the encoding is the bridge's time, not pacing
      if (times !== undefined) this.releasedAt()
      const payload = codec.encode(pcm)
      if (times !== undefined) this.frameTimes.set(payload, times)
      return payload
    }
    return source
  }

  /**
   * Hands one frame (encoded, or encoded on release) to the pacer; `arrivedAt`: when the upstream message
   * that completed it came.
   */
  private queueFrame (payload: PayloadSource, durationMs: number, arrivedAt: number): void {
    if (this.deps.metrics !== undefined) {
      this.pacerCallAt = performance.now()
      this.frameTimes.set(payload, { arrivedAt, queuedAt: this.pacerCallAt })
    }
    this.pacer.push(payload, durationMs)
    this.pacerCallAt = undefined
  }

  private sendFrame (header: FrameHeader, payload: Uint8Array): void {
    const metrics = this.deps.metrics
    const releasedAt = metrics === undefined ? 0 : this.releasedAt()
    this.stats.framesDown++
    this.deps.publish(this.downTopic, packFrame(header, payload), 0)
    if (metrics === undefined) return
    const publishedAt = performance.now()
    // the bridge's time is up to the queue, and from the pacer's release on; the wait between is pacing
    // (the empty END frame carries no audio and has no times)
    const t = this.frameTimes.get(payload)
    if (t !== undefined) metrics.downlinkFrame(t.queuedAt - t.arrivedAt + publishedAt - Math.max(t.queuedAt, releasedAt))
    if (header.seq === 0 && this.turnEndedAt !== undefined) {
      metrics.firstReply(publishedAt - this.turnEndedAt)
      this.turnEndedAt = undefined
    }
  }

  /**
   * When the pacer released the frame being sent: the start of the session's call into it (queueFrame, a
   * playback report), or else the first send (before its encoding) of the pacer's timer or yield callback
   * now running; a microtask runs only once that callback has returned, so it closes the run.
   */
  private releasedAt (): number {
    if (this.pacerCallAt !== undefined) return this.pacerCallAt
    if (this.timerRunAt === undefined) {
      this.timerRunAt = performance.now()
      queueMicrotask(() => { this.timerRunAt = undefined })
    }
    return this.timerRunAt
  }

  /** When the Realtime message being handled arrived (for metrics; now, if there is no client). */
  private upstreamAt (): number {
    return this.client?.messageAt ?? performance.now()
  }

  // Everything is sent; the device still plays up to PACING_LEAD_MS of it. Speaking ends when it has played.
  private onAllSent (): void {
    if (this.reply?.generating !== true) this.checkPlayedOut()
  }

  private checkPlayedOut (): void {
    clearTimeout(this.playedOutTimer)
    if (this.state !== 'speaking' || this.pacer.queuedFrames > 0 || this.reply?.generating === true) return
    const left = this.pacer.sentMs - this.pacer.playedMs()
    if (left <= 0) { this.setState('listening'); return }
    this.playedOutTimer = setTimeout(() => this.checkPlayedOut(), Math.ceil(left))
  }

  /**
   * Barge-in: the device stops playing at once (flush), nothing more of this reply is sent or generated,
   * and the conversation keeps only what the user heard (truncate at the reported `played_ms`).
   */
  private bargeIn (playedMs: number, reason: string, seen?: { readonly trigger: InterruptTrigger, readonly at: number }): void {
    const old = this.downEpoch
    const r = this.reply
    // order matters: the queue is emptied before the flush is published, so no frame of `old` follows it
    this.pacer.flush()
    clearTimeout(this.playedOutTimer)
    this.downEpoch = nextEpoch(old)
    this.downEpochUsed = false
    this.stats.interrupts++
    this.event({ type: 'flush', epoch: old })
    if (seen !== undefined) this.deps.metrics?.interrupt(seen.trigger, performance.now() - seen.at)
    if (r !== undefined && r.epoch === old && !r.interrupted) {
      r.interrupted = true
      if (r.generating) this.client?.cancelResponse(r.id)
      // the server refuses a truncate beyond the audio it generated
      if (r.itemId !== undefined) this.client?.truncate(r.itemId, 0, Math.min(playedMs, Math.floor(r.generatedMs)))
    }
    this.log.debug({ epoch: old, playedMs, reason }, 'barge-in')
    this.setState('listening')
  }

  // ---- events, state, idleness ----

  private caption (role: 'user' | 'assistant', text: string, final: boolean, epoch: number): void {
    if (text === '') return
    this.event({ type: 'transcript', role, text, final, epoch })
    if (role === 'user' && final) this.deps.onTranscript?.('user', text)
  }

  private setState (state: VoiceState): void {
    if (this.state === state) return
    this.state = state
    this.event({ type: 'state', state })
  }

  private event (e: BridgeEvent): void {
    this.deps.publish(this.eventsTopic, JSON.stringify(e), 1)
  }

  private touch (): void {
    this.lastActivity = this.now()
  }

  // one timer per session, rescheduled only when it fires, rather than one reset per audio frame
  private scheduleIdleCheck (ms: number): void {
    this.idleTimer = setTimeout(() => {
      if (this.ended) return
      const quiet = this.now() - this.lastActivity
      if (quiet >= this.deps.idleMs) {
        this.end('idle', 'VOICE_SESSION_IDLE', { minutes: Math.round(this.deps.idleMs / 60_000 * 10) / 10 })
        return
      }
      this.scheduleIdleCheck(Math.max(IDLE_CHECK_MIN_MS, this.deps.idleMs - quiet))
    }, ms)
    this.idleTimer.unref?.()
  }
}

/**
 * Server VAD in `vad` mode (the server ends the turn and answers), none in push-to-talk (the bridge commits).
 * The API's own defaults stay: without echo cancellation nothing is appended while the bridge speaks, so the
 * server's barge-in on speech (interrupt_response) can only come from real user speech.
 */
function turnDetection (mode: ListenMode): SessionOptions['turnDetection'] {
  return mode === 'ptt' ? null : { type: 'server_vad' }
}
