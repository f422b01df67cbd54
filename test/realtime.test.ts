// The Realtime transport against a local fake Realtime server speaking the GA wire protocol: URL and auth,
// session.update, server VAD on appended-audio time, replies, cancel, truncate, errors and the session limit.

import { afterEach, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import type { RealtimeClientEvent, RealtimeServerEvent } from 'openai/resources/realtime/realtime'
import { DEFAULT_BASE_URL, RealtimeClient, RealtimeConnectError, realtimeUrl, type RealtimeEvents, type RealtimeOptions } from '../bridge/realtime.ts'
import { silence, startFakeRealtime, tone, type FakeRealtime, type FakeRealtimeOptions } from './fake-realtime.ts'

const RATE = 24_000
const WAIT_MS = 5000

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function fake (opts: FakeRealtimeOptions = {}): Promise<FakeRealtime> {
  const f = await startFakeRealtime(opts)
  cleanups.push(() => f.close())
  return f
}

/** A client on the fake, connected, with every server event it received collected in `events`. */
async function client (f: FakeRealtime, opts: Partial<RealtimeOptions> = {}): Promise<{ c: RealtimeClient, events: RealtimeServerEvent[] }> {
  const c = new RealtimeClient({ baseUrl: f.url, apiKey: f.apiKey, ...opts })
  cleanups.push(() => c.close())
  const events: RealtimeServerEvent[] = []
  c.on('event', e => { events.push(e) })
  await c.connect()
  return { c, events }
}

/** The next emission of `type` (its arguments), or a rejection after `ms`. */
function next<K extends keyof RealtimeEvents> (c: RealtimeClient, type: K, ms = WAIT_MS): Promise<RealtimeEvents[K]> {
  // the emitter is typed per event; this helper is generic over them, so it listens untyped
  const untyped = c as unknown as NodeJS.EventEmitter
  return new Promise((resolve, reject) => {
    const onEvent = (...args: unknown[]): void => { clearTimeout(timer); resolve(args as RealtimeEvents[K]) }
    const timer = setTimeout(() => { untyped.off(type, onEvent); reject(new Error(`no ${String(type)} within ${ms} ms`)) }, ms)
    untyped.once(type, onEvent)
  })
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

async function until (ok: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const end = Date.now() + ms
  while (!ok()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`)
    await sleep(5)
  }
}

/** Voiced-sounding audio: three harmonics of 150 Hz under a 4 Hz syllable envelope, never near silence. */
function speechLike (ms: number): Int16Array {
  const out = new Int16Array(Math.round(ms * RATE / 1000))
  for (let i = 0; i < out.length; i++) {
    const t = i / RATE
    const envelope = 0.6 + 0.4 * Math.sin(2 * Math.PI * 4 * t)
    const voice = Math.sin(2 * Math.PI * 150 * t) + 0.5 * Math.sin(2 * Math.PI * 300 * t) + 0.25 * Math.sin(2 * Math.PI * 450 * t)
    out[i] = Math.round(voice / 1.75 * envelope * 0.3 * 32767)
  }
  return out
}

/** Appends audio in 20 ms frames, as the bridge does, without waiting between them. */
function appendFrames (c: RealtimeClient, pcm: Int16Array): void {
  const frame = RATE * 20 / 1000
  for (let i = 0; i < pcm.length; i += frame) c.appendAudio(pcm.subarray(i, i + frame))
}

function concat (parts: Int16Array[]): Int16Array {
  const out = new Int16Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

/** A deterministic noisy reply, of a length that is not a whole number of deltas. */
function noise (samples: number): Int16Array {
  const out = new Int16Array(samples)
  let x = 12345
  for (let i = 0; i < samples; i++) { x = (x * 1103515245 + 12345) & 0x7fffffff; out[i] = (x >> 8) % 20000 - 10000 }
  return out
}

describe('Realtime transport', () => {
  it('builds the Realtime URL from the SDK base URL: http→ws, https→wss, plus /realtime?model=', () => {
    expect(realtimeUrl('http://127.0.0.1:4010/v1', 'gpt-realtime')).toBe('ws://127.0.0.1:4010/v1/realtime?model=gpt-realtime')
    expect(realtimeUrl('https://api.openai.com/v1', 'gpt-realtime')).toBe('wss://api.openai.com/v1/realtime?model=gpt-realtime')
    expect(realtimeUrl('https://proxy.example/openai/v1/', 'gpt-realtime-mini')).toBe('wss://proxy.example/openai/v1/realtime?model=gpt-realtime-mini')
    expect(new RealtimeClient({ apiKey: 'k' }).url).toBe(realtimeUrl(DEFAULT_BASE_URL, 'gpt-realtime'))
    expect(new RealtimeClient({ apiKey: 'k', baseUrl: 'http://h:1/v1', model: 'gpt-realtime-mini' }).url).toBe('ws://h:1/v1/realtime?model=gpt-realtime-mini')
    expect(() => realtimeUrl('ftp://h/v1', 'gpt-realtime')).toThrow(TypeError)
  })

  it('connects with a bearer key only (no beta header, no subprotocol) and resolves with session.created', async () => {
    const f = await fake()
    const { c } = await client(f)
    expect(c.isOpen).toBe(true)
    expect(f.connections).toHaveLength(1)
    const conn = f.connections[0]
    expect(conn?.model).toBe('gpt-realtime')
    expect(conn?.headers.authorization).toBe(`Bearer ${f.apiKey}`)
    expect(conn?.headers['openai-beta']).toBeUndefined()
    expect(conn?.headers['sec-websocket-protocol']).toBeUndefined()
    expect(f.sentOf('session.created')[0]?.session).toMatchObject({ type: 'realtime', model: 'gpt-realtime' })
  })

  it('a wrong key is refused with HTTP 401 before the upgrade, and an unknown model is refused too', async () => {
    const f = await fake()
    const wrong = new RealtimeClient({ baseUrl: f.url, apiKey: 'sk-wrong' })
    const err = await wrong.connect().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RealtimeConnectError)
    expect(err).toMatchObject({ reason: 'unauthorized', status: 401 })
    expect((err as Error).message).toContain('Incorrect API key')
    const badModel = new RealtimeClient({ baseUrl: f.url, apiKey: f.apiKey, model: 'gpt-nonexistent' })
    await expect(badModel.connect()).rejects.toMatchObject({ reason: 'refused', status: 404 })
    expect(f.connections).toHaveLength(0)
  })

  it('a connect that gets no session.created in time fails with a timeout', async () => {
    // a server that upgrades and then says nothing
    const { WebSocketServer } = await import('ws')
    const silent = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    cleanups.push(() => new Promise(resolve => { for (const s of silent.clients) s.terminate(); silent.close(() => resolve()) }))
    await new Promise(resolve => silent.once('listening', resolve))
    const port = (silent.address() as { port: number }).port
    const c = new RealtimeClient({ baseUrl: `http://127.0.0.1:${port}/v1`, apiKey: 'k', connectTimeoutMs: 200 })
    await expect(c.connect()).rejects.toMatchObject({ reason: 'timeout' })
  })

  it('session.update sends a GA session (type realtime, audio.input/output) and resolves with session.updated', async () => {
    const f = await fake()
    const { c } = await client(f)
    const updated = await c.updateSession({
      instructions: 'Be brief.',
      voice: 'cedar',
      inputFormat: 'audio/pcm',
      outputFormat: 'audio/pcm',
      turnDetection: { type: 'server_vad', silence_duration_ms: 400 },
      transcription: { model: 'gpt-4o-mini-transcribe' },
    })
    const sent = f.receivedOf('session.update')[0]
    expect(sent?.session).toEqual({
      type: 'realtime',
      instructions: 'Be brief.',
      audio: {
        input: { format: { type: 'audio/pcm', rate: 24000 }, turn_detection: { type: 'server_vad', silence_duration_ms: 400 }, transcription: { model: 'gpt-4o-mini-transcribe' } },
        output: { format: { type: 'audio/pcm', rate: 24000 }, voice: 'cedar' },
      },
    })
    expect(updated.session).toMatchObject({
      type: 'realtime',
      instructions: 'Be brief.',
      audio: { input: { turn_detection: { type: 'server_vad', silence_duration_ms: 400, prefix_padding_ms: 300 } }, output: { voice: 'cedar' } },
    })
    // push-to-talk turns server VAD off
    const ptt = await c.updateSession({ turnDetection: null })
    expect(ptt.session.type === 'realtime' && ptt.session.audio?.input?.turn_detection).toBeNull()
  })

  it('server VAD runs on appended-audio time: 3 s appended in a few ms yields speech_started/stopped at the appended ms', async () => {
    const f = await fake({ userTranscript: 'what is the weather' })
    const { c, events } = await client(f)
    await c.updateSession({ turnDetection: { type: 'server_vad', prefix_padding_ms: 300, silence_duration_ms: 500 }, transcription: { model: 'whisper-1' } })
    const stopped = next(c, 'input_audio_buffer.speech_stopped')
    const t0 = Date.now()
    appendFrames(c, silence(1000))
    appendFrames(c, speechLike(1000))
    appendFrames(c, silence(1000))
    const [stop] = await stopped
    const wallMs = Date.now() - t0
    const start = f.sentOf('input_audio_buffer.speech_started')[0]
    // speech began at 1000 ms of appended audio; speech_started reaches back by prefix_padding_ms
    expect(start?.audio_start_ms).toBe(700)
    // the last voiced audio ended at 2000 ms; the turn ends after 500 ms of appended silence
    expect(stop.audio_end_ms).toBe(2500)
    expect(wallMs).toBeLessThan(2500)
    expect(stop.item_id).toBe(start?.item_id)
    // the server answers a VAD turn by itself
    await next(c, 'response.done')
    const transcript = events.find(e => e.type === 'conversation.item.input_audio_transcription.completed')
    expect(transcript).toMatchObject({ item_id: stop.item_id, transcript: 'what is the weather' })
    const types = events.map(e => e.type)
    expect(types.indexOf('input_audio_buffer.speech_started')).toBeLessThan(types.indexOf('input_audio_buffer.speech_stopped'))
    expect(types.indexOf('input_audio_buffer.speech_stopped')).toBeLessThan(types.indexOf('input_audio_buffer.committed'))
    expect(events.find(e => e.type === 'input_audio_buffer.committed')).toMatchObject({ item_id: stop.item_id })
    expect(types.indexOf('input_audio_buffer.committed')).toBeLessThan(types.indexOf('response.created'))
    expect(c.stats.audioBytesSent).toBe(3 * RATE * 2)
    expect(f.receivedOf('input_audio_buffer.append')).toHaveLength(150)
  })

  it('no appended audio never ends a turn, however much wall time passes', async () => {
    const f = await fake({ vadSilenceMs: 200 })
    const { c, events } = await client(f)
    await c.updateSession({ turnDetection: { type: 'server_vad' } })
    appendFrames(c, speechLike(600))
    await next(c, 'input_audio_buffer.speech_started')
    // the device stopped sending: well past the silence duration in wall time, but no silence was appended
    await sleep(700)
    const types = events.map(e => e.type)
    expect(types).not.toContain('input_audio_buffer.speech_stopped')
    expect(types).not.toContain('input_audio_buffer.committed')
    expect(types).not.toContain('response.created')
    // appended silence then ends it, at appended time
    appendFrames(c, silence(200))
    const [stop] = await next(c, 'input_audio_buffer.speech_stopped')
    expect(stop.audio_end_ms).toBe(800)
  })

  it('a reply\'s audio deltas decode to exactly the configured reply audio, with its transcript', async () => {
    const reply = noise(Math.round(RATE * 0.75) + 7)
    const f = await fake({ replyAudio: reply, replyTranscript: 'It is sunny and warm today.', replyDelayMs: 30 })
    const { c } = await client(f)
    await c.updateSession({ turnDetection: null })
    const pcm: Int16Array[] = []
    const bytes: Buffer[] = []
    const transcript: string[] = []
    c.on('response.output_audio.delta', (_e, samples, raw) => { pcm.push(samples.slice()); bytes.push(raw) })
    c.on('response.output_audio_transcript.delta', e => { transcript.push(e.delta) })
    appendFrames(c, speechLike(500))
    expect(c.commit()).toBe(true)
    expect(c.createResponse()).toBe(true)
    const [done] = await next(c, 'response.done')
    expect(done.response.status).toBe('completed')
    const got = concat(pcm)
    expect(got.length).toBe(reply.length)
    expect(Buffer.from(got.buffer).equals(Buffer.from(reply.buffer))).toBe(true)
    expect(Buffer.concat(bytes).length).toBe(reply.length * 2)
    expect(c.stats.audioBytesReceived).toBe(reply.length * 2)
    expect(transcript.join('')).toBe('It is sunny and warm today.')
    const final = f.sentOf('response.output_audio_transcript.done')[0]
    expect(final?.transcript).toBe('It is sunny and warm today.')
    // once the assistant has spoken, the voice is fixed: the refusal names this update, which rejects
    await expect(c.updateSession({ voice: 'alloy' })).rejects.toMatchObject({ code: 'cannot_update_voice' })
    expect(c.isOpen).toBe(true)
  })

  it('response.done carries the usage the server reported', async () => {
    const f = await fake({ replyToneMs: 500 })
    const { c } = await client(f)
    await c.updateSession({ instructions: 'You are a friendly robot.', turnDetection: { type: 'server_vad' } })
    appendFrames(c, speechLike(1000))
    appendFrames(c, silence(600))
    const [done] = await next(c, 'response.done')
    const sent = f.sentOf('response.done')[0]
    expect(done.response.usage).toEqual(sent?.response.usage)
    expect(done.response.usage).toMatchObject({ input_token_details: { text_tokens: 5 }, output_token_details: { audio_tokens: 10 } })
    expect(done.response.usage?.total_tokens).toBe((done.response.usage?.input_tokens ?? 0) + (done.response.usage?.output_tokens ?? 0))
  })

  it('response.cancel mid-response stops the deltas and ends the response as cancelled', async () => {
    const f = await fake({ replyToneMs: 20_000, deltaIntervalMs: 5 })
    const { c } = await client(f)
    await c.updateSession({ turnDetection: null })
    let deltas = 0
    c.on('response.output_audio.delta', () => {
      deltas++
      if (deltas === 3) c.cancelResponse()
    })
    appendFrames(c, speechLike(300))
    c.commit()
    c.createResponse()
    const [done] = await next(c, 'response.done')
    expect(done.response.status).toBe('cancelled')
    expect(done.response.status_details).toMatchObject({ type: 'cancelled', reason: 'client_cancelled' })
    expect(f.receivedOf('response.cancel')).toHaveLength(1)
    const atDone = deltas
    expect(atDone).toBeLessThan(200) // 20 s of reply is 200 deltas
    await sleep(100)
    expect(deltas).toBe(atDone)
    // nothing left to cancel: an error event, and the session goes on
    const errored = next(c, 'error')
    c.cancelResponse()
    const [err] = await errored
    expect(err.error).toMatchObject({ type: 'invalid_request_error', code: 'response_cancel_not_active' })
    expect(c.isOpen).toBe(true)
    await expect(c.updateSession({ instructions: 'still here' })).resolves.toMatchObject({ type: 'session.updated' })
  })

  it('a truncate past the generated audio is an error event and the connection stays usable; within it, it is confirmed', async () => {
    const f = await fake({ replyToneMs: 1000 })
    const { c } = await client(f)
    await c.updateSession({ turnDetection: null })
    appendFrames(c, speechLike(300))
    c.commit()
    c.createResponse()
    const [added] = await next(c, 'response.output_item.added')
    await next(c, 'response.done')
    const itemId = added.item.id ?? ''
    const errored = next(c, 'error')
    expect(c.truncate(itemId, 0, 5000)).toBe(true)
    const [err] = await errored
    expect(err.error).toMatchObject({ type: 'invalid_request_error', param: 'audio_end_ms' })
    expect(c.isOpen).toBe(true)
    const truncated = next(c, 'conversation.item.truncated')
    c.truncate(itemId, 0, 400)
    const [ok] = await truncated
    expect(ok).toMatchObject({ item_id: itemId, content_index: 0, audio_end_ms: 400 })
    expect(f.receivedOf('conversation.item.truncate').map(e => e.audio_end_ms)).toEqual([5000, 400])
  })

  it('beta event names and beta-shaped events get error events while the socket stays open; the client refuses to send them', async () => {
    const f = await fake()
    const { c } = await client(f)
    // the client: only GA client events, at compile time and at run time
    // @ts-expect-error response.audio.delta is a beta (and server) event name
    expect(() => c.send({ type: 'response.audio.delta' })).toThrow(TypeError)
    expect(() => c.send({ type: 'transcription_session.update' } as unknown as RealtimeClientEvent)).toThrow(TypeError)

    // the fake: a beta-only event type from a raw socket
    const raw = new WebSocket(realtimeUrl(f.url, 'gpt-realtime'), { headers: { Authorization: `Bearer ${f.apiKey}` } })
    cleanups.push(async () => { raw.terminate() })
    const rawEvents: Array<{ type: string, error?: { code?: string, param?: string } }> = []
    raw.on('message', d => { rawEvents.push(JSON.parse(d.toString())) })
    await new Promise(resolve => raw.once('open', resolve))
    raw.send(JSON.stringify({ type: 'transcription_session.update', session: {} }))
    raw.send(JSON.stringify({ type: 'response.audio.delta', delta: '' }))
    await until(() => rawEvents.filter(e => e.type === 'error').length === 2, 'two error events')
    const errors = rawEvents.filter(e => e.type === 'error')
    expect(errors.map(e => [e.error?.code, e.error?.param])).toEqual([['invalid_value', 'type'], ['invalid_value', 'type']])
    expect(raw.readyState).toBe(WebSocket.OPEN)
    expect(f.invalid).toHaveLength(2)

    // beta shapes under GA names: a session without type, beta session fields, beta response fields
    const beta = [
      { type: 'session.update', session: { modalities: ['audio', 'text'], voice: 'alloy' } },
      { type: 'session.update', session: { type: 'realtime', input_audio_format: 'pcm16' } },
      { type: 'session.update', session: { type: 'realtime', audio: { input: { format: 'pcm16' } } } },
      { type: 'response.create', response: { modalities: ['audio', 'text'] } },
    ]
    const codes: Array<[string | null | undefined, string | null | undefined]> = []
    c.on('error', e => { codes.push([e.error.code, e.error.param]) })
    for (const e of beta) c.send(e as unknown as RealtimeClientEvent)
    await until(() => codes.length === beta.length, 'an error event for each')
    expect(codes).toEqual([
      ['missing_required_parameter', 'session.type'],
      ['unknown_parameter', 'session.input_audio_format'],
      ['invalid_type', 'session.audio.input.format'],
      ['unknown_parameter', 'response.modalities'],
    ])
    expect(c.isOpen).toBe(true)
    await expect(c.updateSession({ turnDetection: null })).resolves.toMatchObject({ type: 'session.updated' })
  })

  it('the session time limit sends an error event, then closes the socket', async () => {
    const f = await fake({ sessionLimitMs: 300 })
    const { c } = await client(f)
    const errored = next(c, 'error')
    const closed = next(c, 'close')
    const [err] = await errored
    expect(err.error.code).toBe('session_expired')
    const [code] = await closed
    expect(code).toBe(1000)
    expect(c.isOpen).toBe(false)
    expect(c.appendAudio(silence(20))).toBe(false)
  })

  it('push-to-talk refuses to commit less than 100 ms of audio', async () => {
    const f = await fake()
    const { c } = await client(f)
    await c.updateSession({ turnDetection: null })
    appendFrames(c, speechLike(40))
    const errored = next(c, 'error')
    c.commit()
    const [err] = await errored
    expect(err.error.code).toBe('input_audio_buffer_commit_empty')
    appendFrames(c, speechLike(100))
    c.commit()
    const [committed] = await next(c, 'input_audio_buffer.committed')
    expect(committed.item_id).toMatch(/^item_/)
  })

  it('speech starting during a reply cancels it as turn_detected (server VAD interrupt_response)', async () => {
    const f = await fake({ replyToneMs: 20_000, deltaIntervalMs: 5 })
    const { c } = await client(f)
    await c.updateSession({ turnDetection: { type: 'server_vad' } })
    appendFrames(c, speechLike(500))
    appendFrames(c, silence(500))
    await next(c, 'response.output_audio.delta')
    appendFrames(c, speechLike(100))
    const [done] = await next(c, 'response.done')
    expect(done.response).toMatchObject({ status: 'cancelled', status_details: { reason: 'turn_detected' } })
  })

  it('µ-law sessions count appended time at 8 kHz and receive µ-law deltas', async () => {
    const f = await fake({ replyToneMs: 300 })
    const { c } = await client(f)
    const updated = await c.updateSession({ inputFormat: 'audio/pcmu', outputFormat: 'audio/pcmu', turnDetection: { type: 'server_vad', prefix_padding_ms: 0, silence_duration_ms: 300 } })
    expect(updated.session.type === 'realtime' && updated.session.audio?.output?.format).toEqual({ type: 'audio/pcmu' })
    // 0xff is µ-law silence; 0x80/0x00 alternating is a full-scale square wave
    const loud = Buffer.alloc(8000 * 0.5)
    for (let i = 0; i < loud.length; i++) loud[i] = i % 2 === 0 ? 0x80 : 0x00
    c.appendAudio(Buffer.alloc(8000 * 0.2, 0xff))
    c.appendAudio(loud)
    c.appendAudio(Buffer.alloc(8000 * 0.3, 0xff))
    const [stop] = await next(c, 'input_audio_buffer.speech_stopped')
    expect(f.sentOf('input_audio_buffer.speech_started')[0]?.audio_start_ms).toBe(200)
    expect(stop.audio_end_ms).toBe(1000)
    let bytes = 0
    let samples = 0
    c.on('response.output_audio.delta', (_e, pcm, raw) => { bytes += raw.length; samples += pcm.length })
    await next(c, 'response.done')
    expect(bytes).toBe(8000 * 0.3)
    expect(samples).toBe(bytes)
  })

  it('a dropped connection reaches the client as close with the code and reason', async () => {
    const f = await fake()
    const { c } = await client(f)
    const closed = next(c, 'close')
    f.dropConnections(1012, 'service restart')
    const [code, reason] = await closed
    expect([code, reason]).toEqual([1012, 'service restart'])
    await expect(c.updateSession({})).rejects.toThrow(/not open/)
  })
})
