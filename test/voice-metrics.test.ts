// Voice latency histograms on /metrics (issue 7): one conversation through a real Roost and the fake
// Realtime server (a spoken turn, a paced reply, a barge-in) leaves a count in each of them, and each
// counts what it says it counts. How fast they are is the benchmark's business (npm run bench -- voice).

import type { MqttClient } from 'mqtt'
import OpusScript from 'opusscript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { FLAG, packFrame, parseFrame, type Frame } from '../bridge/frame.ts'
import { VOICE_METRICS } from '../bridge/metrics.ts'
import { silence, startFakeRealtime, tone, type FakeRealtime } from './fake-realtime.ts'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'
import { parseSamples, sampleValue } from './prometheus.ts'

const UP_RATE = 16_000
const FRAME_MS = 40
const UP_FRAME = (UP_RATE * FRAME_MS) / 1000
const WAIT_MS = 15_000
// the fake's thinking time: the first reply frame cannot come sooner after the end of speech
const REPLY_DELAY_MS = 100

describe('voice latency metrics', () => {
  let fake: FakeRealtime
  let roost: TestRoost
  beforeAll(async () => {
    // a reply long enough to be interrupted in the middle, generated at twice real time
    fake = await startFakeRealtime({ replyToneMs: 3000, replyDelayMs: REPLY_DELAY_MS, deltaMs: 100, deltaIntervalMs: 50 })
    roost = await startRoost({ env: { OPENAI_API_KEY: fake.apiKey, OPENAI_BASE_URL: fake.url } })
  })
  afterAll(async () => {
    await roost?.close()
    await fake?.close()
  })

  it('after one conversation with a barge-in, /metrics has the four voice histograms, each counting its own events', async () => {
    const id = 'metrics-voice-1'
    const client = await roost.connectDevice(id, await roost.addDevice(id))
    await client.subscribeAsync([`devices/${id}/audio/down`, `devices/${id}/audio/events`], { qos: 1 })
    const frames: Frame[] = []
    const events: Array<Record<string, any>> = []
    client.on('message', (topic, payload) => {
      if (!topic.endsWith('/audio/down')) { events.push(JSON.parse(payload.toString())); return }
      const parsed = parseFrame(payload)
      if (parsed.ok) frames.push(parsed.frame)
    })
    const ctl = (msg: Record<string, unknown>): Promise<unknown> => client.publishAsync(`devices/${id}/audio/ctl`, JSON.stringify(msg), { qos: 1 })

    await ctl({ type: 'hello', codecs: ['opus'], rates: { up: UP_RATE, down: 24_000 }, frame_ms: FRAME_MS, aec: false })
    await eventually(() => events.find(e => e.type === 'hello'), WAIT_MS, 'hello')
    await ctl({ type: 'listen', state: 'start', mode: 'vad', epoch: 1 })
    // a spoken turn, then silence until the reply begins, at real time as a device sends it
    await sendUntil(client, id, opusFrames(concat(tone(800, 220, 0.3, UP_RATE), silence(2000, UP_RATE))), () => frames.length > 0)
    const epoch = (frames[0] as Frame).epoch
    await sleep(400)
    await ctl({ type: 'interrupt', epoch, played_ms: 400, reason: 'button' })
    await eventually(() => events.find(e => e.type === 'flush'), WAIT_MS, 'flush')
    await sleep(200)

    const res = await roost.request('GET', '/metrics')
    expect(res.status).toBe(200)
    const text = res.body as string
    for (const name of Object.values(VOICE_METRICS)) expect(text).toContain(`# TYPE ${name} histogram`)
    const samples = parseSamples(text)
    const count = (name: string, labels: Record<string, string> = {}): number => sampleValue(samples, `${name}_count`, labels) ?? 0
    const sum = (name: string, labels: Record<string, string> = {}): number => sampleValue(samples, `${name}_sum`, labels) ?? 0

    // uplink: one observation per frame that went upstream; nothing was lost, so one per append the fake got
    const appends = fake.receivedOf('input_audio_buffer.append').length
    expect(appends).toBeGreaterThan(0)
    expect(count(VOICE_METRICS.uplinkFrame)).toBe(appends)
    // downlink: one per audio frame the device received (the reply was cut, so none is an empty END frame)
    const audioFrames = frames.filter(f => f.payload.byteLength > 0 && f.epoch === epoch)
    expect(audioFrames.length).toBeGreaterThan(0)
    expect(frames.some(f => (f.flags & FLAG.END) !== 0)).toBe(false)
    expect(count(VOICE_METRICS.downlinkFrame)).toBe(audioFrames.length)
    // one turn, one first reply; it spans the upstream's thinking time, so it is at least that long
    expect(count(VOICE_METRICS.firstReply)).toBe(1)
    expect(sum(VOICE_METRICS.firstReply)).toBeGreaterThanOrEqual(REPLY_DELAY_MS / 1000)
    expect(sum(VOICE_METRICS.firstReply)).toBeLessThan(5)
    // one interrupt from the device
    expect(count(VOICE_METRICS.interrupt, { trigger: 'device' })).toBe(1)
    expect(count(VOICE_METRICS.interrupt, { trigger: 'speech' })).toBe(0)
    // the buckets are ms-scale: issue 7's 5 ms target is a bucket bound
    expect(sampleValue(samples, `${VOICE_METRICS.uplinkFrame}_bucket`, { le: '0.005' })).toBeDefined()
    expect(sampleValue(samples, `${VOICE_METRICS.firstReply}_bucket`, { le: '0.35' })).toBeDefined()
  })
})

function concat (a: Int16Array, b: Int16Array): Int16Array {
  const out = new Int16Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

/** 16 kHz audio as 40 ms Opus frames, as a device encodes them. */
function opusFrames (pcm: Int16Array): Buffer[] {
  const encoder = new OpusScript(UP_RATE, 1, OpusScript.Application.VOIP)
  const out: Buffer[] = []
  for (let at = 0; at < pcm.length; at += UP_FRAME) {
    const frame = new Int16Array(UP_FRAME)
    frame.set(pcm.subarray(at, Math.min(pcm.length, at + UP_FRAME)))
    out.push(Buffer.from(encoder.encode(Buffer.from(frame.buffer), UP_FRAME)))
  }
  encoder.delete()
  return out
}

/** Publishes uplink frames of epoch 1 every 40 ms (drift-free) until `stop` says so or they run out. */
async function sendUntil (client: MqttClient, id: string, payloads: readonly Buffer[], stop: () => boolean): Promise<void> {
  const t0 = performance.now()
  for (let seq = 0; seq < payloads.length && !stop(); seq++) {
    const wait = t0 + seq * FRAME_MS - performance.now()
    if (wait > 0) await sleep(wait)
    const header = { codec: 'opus' as const, flags: seq === 0 ? FLAG.START : 0, epoch: 1, seq, mediaMs: seq * FRAME_MS }
    client.publish(`devices/${id}/audio/up`, packFrame(header, payloads[seq] as Buffer), { qos: 0 })
  }
}
