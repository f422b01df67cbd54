// Voice end to end: a simulated device (a real MQTT client speaking the audio topics) talks through a real
// Roost, whose bridge talks to the local fake Realtime server. Speech is real synthesized speech (espeak-ng),
// Opus-encoded at 16 kHz in 40 ms frames as a device would send it.

import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { MqttClient } from 'mqtt'
import OpusScript from 'opusscript'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { rms } from '../bridge/codec.ts'
import { FLAG, packFrame, parseFrame, type CodecName, type Frame } from '../bridge/frame.ts'
import { startFakeRealtime, tone, type FakeRealtime, type FakeRealtimeOptions } from './fake-realtime.ts'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'
import { createLogger } from '../log.ts'
import { startBridge } from '../bridge/index.ts'
import { addUsage, utcDay } from '../db/voice.ts'

const UP_RATE = 16_000
const DOWN_RATE = 24_000
const FRAME_MS = 40
const UP_FRAME = (UP_RATE * FRAME_MS) / 1000 // 640 samples
const DOWN_FRAME = (DOWN_RATE * FRAME_MS) / 1000 // 960 samples
const WAIT_MS = 15_000
const USER_TEXT = 'hello, what is the sun?'
const REPLY_TEXT = 'The sun is the star at the centre of our solar system.'

let scratch: string
let question: Int16Array // 16 kHz
let answer: Int16Array // 24 kHz

/** Text spoken by espeak-ng, as mono PCM16 at `rate` (sox resamples). */
function speak (text: string, rate: number): Int16Array {
  const wav = join(scratch, `speech-${rate}.wav`)
  const raw = join(scratch, `speech-${rate}.raw`)
  execFileSync('espeak-ng', ['-w', wav, text])
  execFileSync('sox', [wav, '-r', String(rate), '-c', '1', '-b', '16', '-e', 'signed-integer', '-t', 'raw', raw])
  const bytes = readFileSync(raw)
  return new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))
}

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'roost-voice-'))
  question = speak(USER_TEXT, UP_RATE)
  answer = speak(REPLY_TEXT, DOWN_RATE)
})
afterAll(() => { rmSync(scratch, { recursive: true, force: true }) })

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
})

async function setup (fakeOpts: FakeRealtimeOptions = {}, env: Record<string, string> = {}): Promise<{ fake: FakeRealtime, roost: TestRoost }> {
  const fake = await startFakeRealtime(fakeOpts)
  cleanups.push(() => fake.close())
  const roost = await startRoost({ env: { OPENAI_API_KEY: fake.apiKey, OPENAI_BASE_URL: fake.url, ...env } })
  cleanups.push(() => roost.close())
  return { fake, roost }
}

interface Received {
  readonly at: number
  readonly frame?: Frame
  readonly event?: Record<string, any>
}

/** A device on the audio topics: sends control and frames, records everything it hears in arrival order. */
class Device {
  readonly log: Received[] = []
  private upSeq = 0
  private upEpoch = 0
  private upMediaMs = 0

  constructor (readonly id: string, readonly token: string, readonly client: MqttClient, readonly codec: CodecName = 'opus') {
    client.on('message', (topic, payload) => {
      const at = performance.now()
      if (topic.endsWith('/audio/down')) {
        const parsed = parseFrame(payload)
        if (!parsed.ok) throw new Error(`bad downlink frame: ${parsed.detail}`)
        // the payload is a view of the packet; keep a copy
        this.log.push({ at, frame: { ...parsed.frame, payload: Buffer.from(parsed.frame.payload) } })
      } else {
        this.log.push({ at, event: JSON.parse(payload.toString()) })
      }
    })
  }

  static async connect (roost: TestRoost, id: string, codec: CodecName = 'opus'): Promise<Device> {
    const token = await roost.addDevice(id)
    const client = await roost.connectDevice(id, token)
    await client.subscribeAsync([`devices/${id}/audio/down`, `devices/${id}/audio/events`], { qos: 1 })
    return new Device(id, token, client, codec)
  }

  get events (): Array<Record<string, any>> { return this.log.flatMap(r => r.event === undefined ? [] : [r.event]) }
  get frames (): Frame[] { return this.log.flatMap(r => r.frame === undefined ? [] : [r.frame]) }
  states (): string[] { return this.events.filter(e => e.type === 'state').map(e => e.state as string) }

  ctl (msg: Record<string, unknown>): Promise<unknown> {
    return this.client.publishAsync(`devices/${this.id}/audio/ctl`, JSON.stringify(msg), { qos: 1 })
  }

  hello (extra: Record<string, unknown> = {}): Promise<unknown> {
    return this.ctl({ type: 'hello', codecs: [this.codec], rates: { up: UP_RATE, down: DOWN_RATE }, frame_ms: FRAME_MS, firmware: '1.4.2', aec: false, ...extra })
  }

  async listen (mode: 'vad' | 'ptt' = 'vad'): Promise<number> {
    this.upEpoch++
    this.upSeq = 0
    this.upMediaMs = 0
    await this.ctl({ type: 'listen', state: 'start', mode, epoch: this.upEpoch })
    return this.upEpoch
  }

  /** Publishes one uplink frame (QoS 0, as a device does) and returns when it was sent. */
  sendFrame (payload: Uint8Array): number {
    const bytes = packFrame({ codec: this.codec, flags: this.upSeq === 0 ? FLAG.START : 0, epoch: this.upEpoch, seq: this.upSeq++, mediaMs: this.upMediaMs }, payload)
    this.upMediaMs += FRAME_MS
    this.client.publish(`devices/${this.id}/audio/up`, bytes, { qos: 0 })
    return performance.now()
  }

  /** Resolves with the first event matching `match` (already received or coming). */
  event (match: (e: Record<string, any>) => boolean, what: string, ms = WAIT_MS): Promise<Record<string, any>> {
    return eventually(() => this.events.find(match), ms, what)
  }
}

/** 16 kHz speech as 40 ms device frames in `codec`. */
function uplinkFrames (pcm: Int16Array, codec: CodecName): Uint8Array[] {
  const encoder = codec === 'opus' ? new OpusScript(UP_RATE, 1, OpusScript.Application.VOIP) : undefined
  const out: Uint8Array[] = []
  for (let at = 0; at < pcm.length; at += UP_FRAME) {
    const frame = new Int16Array(UP_FRAME)
    frame.set(pcm.subarray(at, Math.min(pcm.length, at + UP_FRAME)))
    const bytes = Buffer.from(frame.buffer)
    out.push(encoder === undefined ? bytes : Buffer.from(encoder.encode(bytes, UP_FRAME)))
  }
  encoder?.delete()
  return out
}

function withSilence (pcm: Int16Array, ms: number): Int16Array {
  const out = new Int16Array(pcm.length + (UP_RATE * ms) / 1000)
  out.set(pcm)
  return out
}

/** Sends frames at real-time pace (one every 40 ms, on a drift-free schedule); returns each send time. */
async function sendRealtime (device: Device, frames: readonly Uint8Array[], stop?: () => boolean): Promise<number[]> {
  const times: number[] = []
  const t0 = performance.now()
  for (let i = 0; i < frames.length && stop?.() !== true; i++) {
    const due = t0 + i * FRAME_MS
    const wait = due - performance.now()
    if (wait > 0) await sleep(wait)
    times.push(device.sendFrame(frames[i] as Uint8Array))
  }
  return times
}

/**
 * The device's playback of one downlink epoch: it starts playing at the first frame and plays in real time,
 * reporting `played_ms` every 200 ms as the contract asks.
 */
function playback (device: Device, epochOf: () => number | undefined): { playedMs: () => number, stop: () => void } {
  let startedAt: number | undefined
  let epoch: number | undefined
  const played = (): number => {
    const frames = device.frames.filter(f => f.epoch === epoch)
    const receivedMs = frames.length * FRAME_MS
    return startedAt === undefined ? 0 : Math.min(receivedMs, Math.floor(performance.now() - startedAt))
  }
  const timer = setInterval(() => {
    const e = epochOf()
    if (e === undefined) return
    if (e !== epoch) { epoch = e; startedAt = device.log.find(r => r.frame?.epoch === e)?.at }
    if (startedAt !== undefined) void device.ctl({ type: 'playback', epoch, played_ms: played(), buffered_ms: 0 })
  }, 200)
  return { playedMs: played, stop: () => clearInterval(timer) }
}

function decodeOpus (frames: readonly Frame[]): Int16Array {
  const decoder = new OpusScript(DOWN_RATE, 1)
  const parts = frames.filter(f => f.payload.byteLength > 0).map(f => {
    const out = decoder.decode(Buffer.from(f.payload))
    return new Int16Array(out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength))
  })
  decoder.delete()
  const pcm = new Int16Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { pcm.set(p, at); at += p.length }
  return pcm
}

/** A TCP relay in front of the fake that knows how many upstream connections are open. */
async function relay (target: string): Promise<{ url: string, open: () => number, close: () => Promise<void> }> {
  const url = new URL(target)
  const sockets = new Set<Socket>()
  const server: Server = createServer(inbound => {
    sockets.add(inbound)
    const outbound = netConnect(Number(url.port), url.hostname)
    inbound.pipe(outbound).pipe(inbound)
    const end = (): void => { sockets.delete(inbound); inbound.destroy(); outbound.destroy() }
    inbound.on('close', end).on('error', end)
    outbound.on('close', end).on('error', end)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port}${url.pathname}`,
    open: () => sockets.size,
    close: () => new Promise(resolve => { for (const s of sockets) s.destroy(); server.close(() => resolve()) }),
  }
}

describe('voice sessions end to end', () => {
  it('spoken question in, paced spoken answer out: the reply decodes to the fake\'s audio, captions arrive', async () => {
    const { fake, roost } = await setup({ replyAudio: answer, replyTranscript: REPLY_TEXT, userTranscript: USER_TEXT, replyDelayMs: 20 })
    const device = await Device.connect(roost, 'speaker-1')
    await device.hello()
    const hello = await device.event(e => e.type === 'hello', 'hello')
    expect(hello).toMatchObject({ type: 'hello', codec: 'opus', rates: { up: 16_000, down: 24_000 }, frame_ms: 40 })
    expect(typeof hello.session).toBe('string')

    // the upstream session the bridge configured: GA shapes, 24 kHz PCM both ways, server VAD, captions on
    const update = fake.receivedOf('session.update')[0]
    expect(update?.session).toMatchObject({
      type: 'realtime',
      audio: {
        input: { format: { type: 'audio/pcm', rate: 24_000 }, turn_detection: { type: 'server_vad' }, transcription: { model: expect.any(String) } },
        output: { format: { type: 'audio/pcm', rate: 24_000 }, voice: expect.any(String) },
      },
    })

    await device.listen('vad')
    const frames = uplinkFrames(withSilence(question, 1200), 'opus')
    const player = playback(device, () => device.frames[0]?.epoch)
    // a device keeps its microphone open; the bridge ignores it while it speaks (no AEC)
    const sentAt = await sendRealtime(device, frames, () => device.frames.length > 0)
    // half duplex (no AEC): the user talking while the reply plays is not heard, so it does not cut the reply
    await sleep(200)
    for (const f of uplinkFrames(question.subarray(0, UP_RATE / 2), 'opus')) device.sendFrame(f)
    const end = await eventually(() => device.frames.find(f => (f.flags & FLAG.END) !== 0), WAIT_MS, 'the END frame')
    expect(end).toBeDefined()
    player.stop()

    // the reply: one epoch, numbered from 0, START|MARK first and END last, media time continuous
    const reply = device.frames
    const epoch = reply[0]?.epoch
    expect(epoch).toBe(1)
    expect(reply.every(f => f.epoch === epoch && f.codec === 'opus')).toBe(true)
    expect(reply.map(f => f.seq)).toEqual(reply.map((_, i) => i))
    expect(reply[0]?.flags).toBe(FLAG.START | FLAG.MARK)
    expect(reply.slice(1, -1).every(f => f.flags === 0)).toBe(true)
    expect((reply.at(-1)?.flags ?? 0) & FLAG.END).toBe(FLAG.END)
    reply.forEach((f, i) => expect(f.mediaMs).toBe(i * FRAME_MS))

    // what the device decodes is the fake's reply: its length within one frame, its energy close
    const heard = decodeOpus(reply)
    expect(Math.abs(heard.length - answer.length)).toBeLessThanOrEqual(DOWN_FRAME)
    const energy = rms(heard) / rms(answer)
    expect(energy).toBeGreaterThan(0.8)
    expect(energy).toBeLessThan(1.25)

    // paced: about 300 ms ahead of real-time playback, not the whole reply at once (the fake generates it
    // 50 times faster than real time). The slack is delivery jitter on a loaded two-core machine, which
    // shifts the first frame's arrival, from which this device's clock starts.
    const replyLog = device.log.filter(r => r.frame !== undefined && r.frame.payload.byteLength > 0)
    const first = replyLog[0]?.at ?? 0
    const lead = Math.max(...replyLog.map(r => (r.frame?.mediaMs ?? 0) + FRAME_MS - (r.at - first)))
    expect(lead).toBeLessThanOrEqual(300 + 250)
    const answerMs = (answer.length * 1000) / DOWN_RATE
    const spread = (replyLog.at(-1)?.at ?? 0) - first
    expect(spread).toBeGreaterThan(answerMs - 300 - 250)

    // captions: the user's words once final, the assistant's in partials and then whole
    const transcripts = device.events.filter(e => e.type === 'transcript')
    expect(transcripts.filter(t => t.role === 'user')).toEqual([{ type: 'transcript', role: 'user', text: USER_TEXT, final: true, epoch: 1 }])
    const assistant = transcripts.filter(t => t.role === 'assistant')
    expect(assistant.filter(t => !t.final).map(t => t.text).join('')).toBe(REPLY_TEXT)
    expect(assistant.filter(t => t.final)).toEqual([{ type: 'transcript', role: 'assistant', text: REPLY_TEXT, final: true, epoch: 1 }])
    await eventually(() => device.states().at(-1) === 'listening' ? true : undefined, WAIT_MS, 'back to listening')
    expect(device.states()).toEqual(['connecting', 'listening', 'thinking', 'speaking', 'listening'])
    expect(device.events.filter(e => e.type === 'flush')).toEqual([])
    expect(fake.sentOf('input_audio_buffer.speech_started')).toHaveLength(1)

    // end of speech (the uplink frame that completed the VAD's silence window) to the first reply frame
    const stopped = fake.sentOf('input_audio_buffer.speech_stopped')[0]
    expect(stopped).toBeDefined()
    const trigger = sentAt[Math.ceil((stopped?.audio_end_ms ?? 0) / FRAME_MS) - 1] ?? 0
    const latency = first - trigger
    console.log(`voice e2e: end of speech → first reply frame ${latency.toFixed(0)} ms (fake thinking time 20 ms); reply ${answerMs.toFixed(0)} ms sent over ${spread.toFixed(0)} ms; max lead ${lead.toFixed(0)} ms`)
    expect(latency).toBeLessThan(2000)

    // the conversation is kept: its transcript, its usage, and (after bye) how it ended
    await device.ctl({ type: 'bye' })
    const stored = await eventually(async () => {
      const res = await roost.request('GET', '/v1/devices/speaker-1/conversations', undefined, device.token)
      const c = res.body.items?.[0]
      return c?.endedAt !== null && c?.transcript.length === 2 ? c : undefined
    }, WAIT_MS, 'the stored conversation')
    expect(stored).toMatchObject({
      id: hello.session,
      endReason: 'bye',
      responses: 1,
      transcript: [{ role: 'user', text: USER_TEXT }, { role: 'assistant', text: REPLY_TEXT }],
    })
    expect(stored.outputTokens).toBeGreaterThan(0)
    // heard: the question and the silence after it until the reply began; spoken: the whole reply
    expect(stored.audioMs).toBeGreaterThan(answerMs + 1000)
    const voice = await roost.request('GET', '/v1/devices/speaker-1/voice', undefined, device.token)
    expect(voice.body.today.usedMs).toBe(stored.audioMs)
  })

  it('barge-in: interrupt mid-reply flushes, no frame of the old epoch follows, the upstream cancels and truncates at played_ms', async () => {
    // 8 s of reply generated at twice real time: still generating when the user interrupts
    const { fake, roost } = await setup({ replyToneMs: 8000, deltaMs: 100, deltaIntervalMs: 50 })
    const device = await Device.connect(roost, 'speaker-2')
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    await device.listen('vad')
    for (const f of uplinkFrames(withSilence(question, 700), 'opus')) device.sendFrame(f)
    const player = playback(device, () => device.frames[0]?.epoch)
    await eventually(() => player.playedMs() >= 600 ? true : undefined, WAIT_MS, '600 ms played')
    const epoch = device.frames[0]?.epoch as number
    const playedMs = player.playedMs()
    player.stop()
    const responsesDoneBefore = fake.sentOf('response.done').length
    await device.ctl({ type: 'interrupt', epoch, played_ms: playedMs, reason: 'button' })

    const flush = await device.event(e => e.type === 'flush', 'flush')
    expect(flush).toEqual({ type: 'flush', epoch })
    await eventually(() => fake.receivedOf('conversation.item.truncate')[0], WAIT_MS, 'truncate')
    await sleep(300)
    const flushAt = device.log.findIndex(r => r.event?.type === 'flush')
    expect(device.log.slice(flushAt).filter(r => r.frame?.epoch === epoch)).toEqual([])
    // the device got far less than the 8 s reply: pacing kept it ~300 ms ahead
    const oldFrames = device.frames.filter(f => f.epoch === epoch)
    expect(oldFrames.length * FRAME_MS).toBeLessThan(playedMs + 300 + 200)

    const item = fake.sentOf('response.output_item.added')[0]?.item.id
    expect(fake.receivedOf('conversation.item.truncate')).toEqual([{ type: 'conversation.item.truncate', item_id: item, content_index: 0, audio_end_ms: playedMs }])
    // 8 s generated at twice real time is still being generated ~1 s in, so it is cancelled
    expect(responsesDoneBefore).toBe(0)
    expect(fake.receivedOf('response.cancel')).toHaveLength(1)
    expect(fake.sentOf('response.done')[0]?.response).toMatchObject({ status: 'cancelled', status_details: { reason: 'client_cancelled' } })
    expect(device.states().at(-1)).toBe('listening')

    // the next turn's reply comes under a newer epoch, starting afresh
    await device.listen('vad')
    const before = device.frames.length
    for (const f of uplinkFrames(withSilence(question, 700), 'opus')) device.sendFrame(f)
    const next = await eventually(() => device.frames.slice(before).find(f => f.epoch !== epoch), WAIT_MS, 'a frame of the next reply')
    expect(next).toMatchObject({ epoch: epoch + 1, seq: 0, mediaMs: 0, flags: FLAG.START | FLAG.MARK })
    expect(device.frames.slice(before).filter(f => f.epoch === epoch)).toEqual([])
  })

  it('with AEC, the user talking over the reply is a barge-in: flush, and a truncate at what had played', async () => {
    const { fake, roost } = await setup({ replyToneMs: 8000, deltaMs: 100, deltaIntervalMs: 50 })
    const device = await Device.connect(roost, 'aec-1')
    await device.hello({ aec: true })
    await device.event(e => e.type === 'hello', 'hello')
    await device.listen('vad')
    const turn = uplinkFrames(withSilence(question, 700), 'opus')
    for (const f of turn) device.sendFrame(f)
    const player = playback(device, () => device.frames[0]?.epoch)
    await eventually(() => player.playedMs() >= 500 ? true : undefined, WAIT_MS, '500 ms played')
    const epoch = device.frames[0]?.epoch as number
    // the echo-cancelled microphone goes on in the same turn: now the user speaks
    for (const f of uplinkFrames(question.subarray(0, UP_RATE / 2), 'opus')) device.sendFrame(f)
    const playedMs = player.playedMs()
    const flush = await device.event(e => e.type === 'flush', 'flush')
    player.stop()
    expect(flush).toEqual({ type: 'flush', epoch })
    const truncate = await eventually(() => fake.receivedOf('conversation.item.truncate')[0], WAIT_MS, 'truncate')
    // the bridge estimates what played from the device's reports and the clock
    expect(Math.abs(truncate.audio_end_ms - playedMs)).toBeLessThan(250)
    await sleep(200)
    const flushAt = device.log.findIndex(r => r.event?.type === 'flush')
    expect(device.log.slice(flushAt).filter(r => r.frame?.epoch === epoch)).toEqual([])
    // the server stopped the reply itself (server VAD interrupt_response) or on the bridge's cancel
    expect(fake.sentOf('response.done')[0]?.response.status).toBe('cancelled')
  })

  it('push-to-talk with PCM16: a turn sent before the upstream is ready is kept, and listen stop commits it', async () => {
    const { fake, roost } = await setup({ replyToneMs: 500, userTranscript: USER_TEXT })
    const device = await Device.connect(roost, 'ptt-1', 'pcm16')
    // all of it before the bridge's hello: the bridge buffers up to 2 s and commits once the upstream is ready
    await device.hello()
    const epoch = await device.listen('ptt')
    for (const f of uplinkFrames(question, 'pcm16')) device.sendFrame(f)
    await device.ctl({ type: 'listen', state: 'stop', epoch })
    await device.event(e => e.type === 'hello', 'hello')
    await eventually(() => device.frames.find(f => (f.flags & FLAG.END) !== 0), WAIT_MS, 'the END frame')
    const updates = fake.receivedOf('session.update').map(u => u.session.audio?.input?.turn_detection)
    expect(updates.at(-1)).toBeNull()
    expect(fake.receivedOf('input_audio_buffer.commit')).toHaveLength(1)
    // the whole question went up, at 24 kHz: 16 kHz frames of 40 ms, each 960 samples after resampling
    const appended = fake.receivedOf('input_audio_buffer.append').reduce((n, a) => n + Buffer.from(a.audio, 'base64').length / 2, 0)
    expect(appended).toBe(uplinkFrames(question, 'pcm16').length * DOWN_FRAME)
    expect(fake.receivedOf('response.create')).toHaveLength(1)
    // PCM16 downlink is the reply's samples themselves
    const pcm = Buffer.concat(device.frames.map(f => f.payload))
    expect(pcm.length).toBe(tone(500).length * 2)
    expect(device.events.find(e => e.type === 'transcript' && e.role === 'user')).toMatchObject({ text: USER_TEXT, final: true, epoch })
  })

  it('bye ends the session: state idle, and the upstream connection is closed', async () => {
    const fake = await startFakeRealtime()
    cleanups.push(() => fake.close())
    const r = await relay(fake.url)
    cleanups.push(() => r.close())
    const roost = await startRoost({ env: { OPENAI_API_KEY: fake.apiKey, OPENAI_BASE_URL: r.url } })
    cleanups.push(() => roost.close())
    const device = await Device.connect(roost, 'bye-1')
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    expect(r.open()).toBe(1)
    expect(roost.platform.bridge?.sessions.has('bye-1')).toBe(true)
    await device.ctl({ type: 'bye' })
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    await eventually(() => r.open() === 0 ? true : undefined, WAIT_MS, 'the upstream socket closed')
    expect(roost.platform.bridge?.sessions.has('bye-1')).toBe(false)
    expect(device.events.filter(e => e.type === 'error')).toEqual([])
    // audio after bye has no session to go to
    await device.listen('vad')
    const err = await device.event(e => e.type === 'error', 'an error for listen without a session')
    expect(err.code).toBe('VOICE_NO_SESSION')
  })

  it('the upstream closing ends the session with VOICE_UPSTREAM_CLOSED; a new hello starts over', async () => {
    const { fake, roost } = await setup()
    const device = await Device.connect(roost, 'drop-1')
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    fake.dropConnections(1012, 'service restart')
    const err = await device.event(e => e.type === 'error', 'an error event')
    expect(err).toMatchObject({ type: 'error', code: 'VOICE_UPSTREAM_CLOSED' })
    expect(err.message).toContain('1012')
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    expect(roost.platform.bridge?.sessions.has('drop-1')).toBe(false)
    await device.hello()
    await eventually(() => device.events.filter(e => e.type === 'hello').length === 2 ? true : undefined, WAIT_MS, 'a second hello')
    expect(fake.connections).toHaveLength(2)
  })

  it('a session with no audio or control for ROOST_VOICE_IDLE_MS ends with VOICE_SESSION_IDLE', async () => {
    const { roost } = await setup({}, { ROOST_VOICE_IDLE_MS: '1000' })
    const device = await Device.connect(roost, 'idle-1')
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    const t0 = performance.now()
    const err = await device.event(e => e.type === 'error', 'VOICE_SESSION_IDLE')
    expect(err.code).toBe('VOICE_SESSION_IDLE')
    expect(performance.now() - t0).toBeLessThan(3000)
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    expect(roost.platform.bridge?.sessions.has('idle-1')).toBe(false)
  })

  it('a bad hello and an unreachable upstream are stable error codes on audio/events', async () => {
    const fake = await startFakeRealtime()
    cleanups.push(() => fake.close())
    const roost = await startRoost({ env: { OPENAI_API_KEY: 'sk-wrong', OPENAI_BASE_URL: fake.url } })
    cleanups.push(() => roost.close())
    const device = await Device.connect(roost, 'err-1')
    await device.hello({ frame_ms: 30 })
    expect(await device.event(e => e.type === 'error', 'VOICE_BAD_HELLO')).toMatchObject({ code: 'VOICE_BAD_HELLO' })
    await device.ctl({ type: 'hello', codecs: ['aac'] })
    await eventually(() => device.events.filter(e => e.code === 'VOICE_BAD_HELLO').length === 2 ? true : undefined, WAIT_MS, 'a second VOICE_BAD_HELLO')
    await device.hello()
    const err = await device.event(e => e.code === 'VOICE_UPSTREAM_UNAVAILABLE', 'VOICE_UPSTREAM_UNAVAILABLE')
    expect(err.message).toContain('401')
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    expect(device.events.filter(e => e.type === 'hello')).toEqual([])
  })
})

describe('voice settings, budgets and the session lease', () => {
  it('PUT /voice sets persona, voice and mode for the next hello; a device may read them but not change them', async () => {
    const { fake, roost } = await setup()
    const device = await Device.connect(roost, 'pirate-1')
    const defaults = await roost.request('GET', '/v1/devices/pirate-1/voice', undefined, device.token)
    expect(defaults.status).toBe(200)
    expect(defaults.body).toMatchObject({ deviceId: 'pirate-1', mode: 'vad', dailyMinutes: 60, language: null, updatedAt: null, today: { usedMs: 0, remainingMs: 3_600_000 } })
    const put = await roost.request('PUT', '/v1/devices/pirate-1/voice', { instructions: 'You are a friendly pirate.', voice: 'cedar', language: 'en', mode: 'ptt', dailyMinutes: 5 })
    expect(put.status).toBe(200)
    expect(put.body).toMatchObject({ instructions: 'You are a friendly pirate.', voice: 'cedar', language: 'en', mode: 'ptt', dailyMinutes: 5, today: { remainingMs: 300_000 } })
    expect((await roost.request('PUT', '/v1/devices/pirate-1/voice', { dailyMinutes: 1 }, device.token)).body.code).toBe('USER_REQUIRED')
    expect((await roost.request('PUT', '/v1/devices/pirate-1/voice', { mode: 'loud' })).body.code).toBe('VALIDATION_FAILED')
    expect((await roost.request('GET', '/v1/devices/nobody/voice')).body.code).toBe('DEVICE_NOT_FOUND')

    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    expect(fake.receivedOf('session.update')[0]?.session).toMatchObject({
      instructions: 'You are a friendly pirate.',
      audio: { input: { turn_detection: null, transcription: { language: 'en' } }, output: { voice: 'cedar' } },
    })
  })

  it('dailyMinutes 0 turns voice off: VOICE_DISABLED, and no upstream session', async () => {
    const { fake, roost } = await setup()
    const device = await Device.connect(roost, 'off-1')
    await roost.request('PUT', '/v1/devices/off-1/voice', { dailyMinutes: 0 })
    await device.hello()
    expect(await device.event(e => e.type === 'error', 'VOICE_DISABLED')).toMatchObject({ code: 'VOICE_DISABLED' })
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    expect(fake.connections).toHaveLength(0)
  })

  it('the daily budget: the session says limit and ends when it is spent; the next hello is refused until the reset', async () => {
    const { roost } = await setup({ replyToneMs: 500 })
    const device = await Device.connect(roost, 'budget-1')
    await roost.request('PUT', '/v1/devices/budget-1/voice', { dailyMinutes: 1 })
    // 59.5 s of today's minute is already used
    await addUsage(roost.platform.db, { conversationId: 'none', deviceId: 'budget-1', day: utcDay(Date.now()), audioMs: 59_500, responses: 0, inputTokens: 0, outputTokens: 0 })
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    await device.listen('vad')
    for (const f of uplinkFrames(withSilence(question, 300), 'opus')) device.sendFrame(f)
    const limit = await device.event(e => e.type === 'limit', 'limit')
    const midnight = (Math.floor(Date.now() / 86_400_000) + 1) * 86_400_000
    expect(limit).toEqual({ type: 'limit', reason: 'daily_minutes', resetAt: midnight })
    await device.event(e => e.type === 'state' && e.state === 'idle', 'state idle')
    await eventually(async () => (await roost.request('GET', '/v1/devices/budget-1/voice')).body.today.remainingMs === 0 ? true : undefined, WAIT_MS, 'the budget spent')

    await device.hello()
    const refused = await device.event(e => e.type === 'error', 'VOICE_LIMIT_REACHED')
    expect(refused.code).toBe('VOICE_LIMIT_REACHED')
    expect(device.events.filter(e => e.type === 'limit')).toHaveLength(2)
  })

  it('two bridges hear every hello; one takes the lease, the other stays silent and takes over once it is released', async () => {
    const { fake, roost } = await setup()
    const second = await startBridge(roost.platform.config, createLogger('silent'), { brokerUrl: roost.mqttUrl, db: roost.platform.db })
    cleanups.push(() => second.close())
    const first = roost.platform.bridge
    expect(first?.owner).toBeDefined()
    expect(second.owner).not.toBe(first?.owner)
    const device = await Device.connect(roost, 'shared-1')
    await device.hello()
    await device.event(e => e.type === 'hello', 'hello')
    await device.listen('vad')
    await sleep(500)
    // exactly one answered, one upstream session, and the other bridge said nothing (no VOICE_NO_SESSION)
    expect(device.events.filter(e => e.type === 'hello')).toHaveLength(1)
    expect(device.events.filter(e => e.type === 'error')).toEqual([])
    expect(fake.connections).toHaveLength(1)
    const owners = [first, second].filter(b => b?.sessions.has('shared-1') === true)
    expect(owners).toHaveLength(1)
    const lease = await roost.platform.db.query<{ owner: string }>('SELECT owner FROM voice_sessions WHERE device_id = $1', ['shared-1'])
    expect(lease[0]?.owner).toBe(owners[0]?.owner)

    // a new hello keeps the session where it is: the live lease is not stolen
    await device.hello()
    await eventually(() => device.events.filter(e => e.type === 'hello').length === 2 ? true : undefined, WAIT_MS, 'a second hello')
    await sleep(300)
    expect(device.events.filter(e => e.type === 'hello')).toHaveLength(2)
    expect([first, second].filter(b => b?.sessions.has('shared-1') === true)).toEqual(owners)

    // the owner shuts down (releasing the lease): the other one answers the next hello
    const other = owners[0] === second ? first : second
    await owners[0]?.close()
    await device.hello()
    await eventually(() => device.events.filter(e => e.type === 'hello').length === 3 ? true : undefined, WAIT_MS, 'a hello from the other bridge')
    expect(other?.sessions.has('shared-1')).toBe(true)
  })
})
