// Downlink pacing (bridge/pacer.ts) on fake time: frames go out at most 300 ms ahead of the device's
// playback as its reports and the clock place it; END marks the last frame; a flush drops everything queued.

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { DownlinkPacer, estimatePlayed, PACING_LEAD_MS, waitBeforeSending } from '../bridge/pacer.ts'
import { FLAG, type FrameHeader } from '../bridge/frame.ts'

const FRAME_MS = 40

beforeEach(() => { vi.useFakeTimers() })
afterEach(() => { vi.useRealTimers() })

function pacer (): { p: DownlinkPacer, sent: Array<FrameHeader & { at: number, bytes: number }>, done: () => number } {
  const sent: Array<FrameHeader & { at: number, bytes: number }> = []
  let done = 0
  const p = new DownlinkPacer({ codec: 'opus', now: Date.now, send: (h, payload) => { sent.push({ ...h, at: Date.now(), bytes: payload.byteLength }) }, onSent: () => { done++ } })
  return { p, sent, done: () => done }
}

function push (p: DownlinkPacer, n: number): void {
  for (let i = 0; i < n; i++) p.push(new Uint8Array(10), FRAME_MS)
}

describe('downlink pacing', () => {
  it('the decisions: wait until the frame keeps the lead within 300 ms; playback never runs ahead of what was sent', () => {
    expect(waitBeforeSending(0, 0, FRAME_MS)).toBe(0)
    expect(waitBeforeSending(280, 0, FRAME_MS)).toBe(20)
    expect(waitBeforeSending(1000, 800, FRAME_MS)).toBe(0)
    expect(estimatePlayed(undefined, 400, 1000).playedMs).toBe(0)
    expect(estimatePlayed({ playedMs: 100, at: 1000 }, 400, 1150).playedMs).toBe(250)
    // an underrun: the device cannot have played more than it got, and its clock restarts from there
    expect(estimatePlayed({ playedMs: 100, at: 1000 }, 400, 2000)).toEqual({ playedMs: 400, anchor: { playedMs: 400, at: 2000 } })
  })

  it('a burst of 300 ms goes at once, then one frame per frame time; first frame START|MARK, media time continuous', () => {
    const { p, sent } = pacer()
    const t0 = Date.now()
    p.begin(3)
    push(p, 50) // 2 s generated at once, as Realtime does
    expect(sent).toHaveLength(Math.floor(PACING_LEAD_MS / FRAME_MS)) // 7 frames = 280 ms; an 8th would make 320
    expect(sent[0]).toMatchObject({ epoch: 3, seq: 0, mediaMs: 0, flags: FLAG.START | FLAG.MARK })
    vi.advanceTimersByTime(1000)
    // after 1 s of playback, 1 s + under 300 ms has gone out
    expect(sent.length * FRAME_MS - 1000).toBeLessThanOrEqual(PACING_LEAD_MS)
    expect(sent.length * FRAME_MS - 1000).toBeGreaterThan(PACING_LEAD_MS - 2 * FRAME_MS)
    expect(sent.map(f => f.mediaMs)).toEqual(sent.map((_, i) => i * FRAME_MS))
    expect(sent.slice(1).every(f => f.flags === 0)).toBe(true)
    expect(sent.every(f => f.at - t0 >= f.mediaMs + FRAME_MS - PACING_LEAD_MS)).toBe(true)
  })

  it('a device that reports it is behind slows the stream; reports of another epoch are ignored', () => {
    const { p, sent } = pacer()
    p.begin(1)
    push(p, 50)
    vi.advanceTimersByTime(1000)
    const atOneSecond = sent.length
    // the device has played only 500 ms (it started late): nothing more may go until it catches up
    p.report(1, 500)
    p.report(0, 5000)
    vi.advanceTimersByTime(500)
    expect(sent.length).toBe(atOneSecond)
    vi.advanceTimersByTime(500)
    expect(sent.length * FRAME_MS - (500 + 1000)).toBeLessThanOrEqual(PACING_LEAD_MS)
    expect(sent.length).toBeGreaterThan(atOneSecond)
  })

  it('after an underrun the device does not get a burst for playback time that never happened', () => {
    const { p, sent } = pacer()
    p.begin(1)
    push(p, 5) // 200 ms, all sent at once
    expect(sent).toHaveLength(5)
    vi.advanceTimersByTime(2000) // the device ran dry 1.8 s ago
    push(p, 20)
    // 200 ms sent and played: 300 ms more may go now, not 2 s
    expect(sent.length * FRAME_MS - 200).toBeLessThanOrEqual(PACING_LEAD_MS)
  })

  it('end marks the last queued frame END, or sends an empty END frame when all went out', () => {
    const { p, sent, done } = pacer()
    p.begin(1)
    push(p, 20)
    p.end()
    expect(done()).toBe(0)
    vi.advanceTimersByTime(5000)
    expect(sent).toHaveLength(20)
    expect(sent.at(-1)?.flags).toBe(FLAG.END)
    expect(done()).toBe(1)

    p.begin(2)
    push(p, 2)
    p.end()
    expect(sent.slice(20).map(f => [f.seq, f.flags, f.bytes])).toEqual([[0, FLAG.START | FLAG.MARK, 10], [1, 0, 10], [2, FLAG.END, 0]])
    expect(done()).toBe(2)
  })

  it('flush drops every queued frame at once and nothing of the epoch is sent afterwards', () => {
    const { p, sent } = pacer()
    p.begin(1)
    push(p, 50)
    vi.advanceTimersByTime(400)
    const before = sent.length
    p.flush()
    push(p, 10) // late audio of the cut response
    p.end()
    vi.advanceTimersByTime(5000)
    expect(sent).toHaveLength(before)
    expect(p.isActive).toBe(false)
  })
})

describe('lazy payloads and yielding', () => {
  it('a lazy frame is made only when released, never after a flush; with yielding, one due frame goes per turn', async () => {
    vi.useRealTimers()
    const sent: FrameHeader[] = []
    const p = new DownlinkPacer({ codec: 'opus', send: h => { sent.push(h) }, yieldBetweenFrames: true })
    const made: number[] = []
    const lazy = (i: number) => () => { made.push(i); return new Uint8Array(10) }
    p.begin(1)
    for (let i = 0; i < 20; i++) p.push(lazy(i), FRAME_MS)
    // the first frame goes at once; the rest of the due burst one per turn of the event loop
    expect(made).toEqual([0])
    expect(sent).toHaveLength(1)
    await new Promise(resolve => setImmediate(resolve))
    expect(sent).toHaveLength(2)
    for (let i = 0; i < 10; i++) await new Promise(resolve => setImmediate(resolve))
    expect(sent).toHaveLength(Math.floor(PACING_LEAD_MS / FRAME_MS))
    expect(made).toEqual(sent.map((_, i) => i))
    p.flush()
    await new Promise(resolve => setTimeout(resolve, 100))
    expect(made).toHaveLength(Math.floor(PACING_LEAD_MS / FRAME_MS))
    expect(sent[0]?.flags).toBe(FLAG.START | FLAG.MARK)
  })
})
