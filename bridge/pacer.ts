// Downlink pacing of one device: frames of the current response epoch wait here and go out only as fast as
// the device plays them, at most PACING_LEAD_MS ahead of what it has played (shared ARCHITECTURE.md, "Voice
// audio"). A shallow lead is what makes barge-in instant: a flush throws away at most this much audio on the
// device, and everything not yet sent is simply dropped here.
//
// A queued frame may be lazy: a function that produces its payload, called only when the frame is released.
// The session queues a reply's PCM that way and Opus-encodes each frame as it goes out, so the encoding of a
// reply that arrives much faster than real time is spread over its playback instead of blocking the event
// loop in one burst (and what a flush drops was never encoded).

import { FLAG, type CodecName, type FrameHeader } from './frame.ts'

// the contract's bound; about 8 frames of 40 ms, enough to ride out Wi-Fi jitter without an audible gap
export const PACING_LEAD_MS = 300

/** Where the device's playback is believed to be: `playedMs` of the epoch at wall time `at`. */
export interface PlayAnchor { readonly playedMs: number, readonly at: number }

/**
 * How much of the epoch the device has played by `now`: its last report plus the wall time since, never
 * more than was sent. When the estimate reaches what was sent the device has run dry (an underrun), and its
 * clock stops there: the returned anchor restarts from that point, so a later burst is not let through for
 * playback time that never happened.
 */
export function estimatePlayed (anchor: PlayAnchor | undefined, sentMs: number, now: number): { playedMs: number, anchor: PlayAnchor | undefined } {
  if (anchor === undefined) return { playedMs: 0, anchor }
  const guess = anchor.playedMs + Math.max(0, now - anchor.at)
  if (guess < sentMs) return { playedMs: guess, anchor }
  return { playedMs: sentMs, anchor: { playedMs: sentMs, at: now } }
}

/** Milliseconds to wait before a frame of `frameMs` may go out; 0 when it may go now. */
export function waitBeforeSending (sentMs: number, playedMs: number, frameMs: number, leadMs: number = PACING_LEAD_MS): number {
  return Math.max(0, sentMs + frameMs - leadMs - playedMs)
}

/** A frame's payload, or what makes it when the frame is released (called at most once, never after a flush). */
export type PayloadSource = Uint8Array | (() => Uint8Array)

interface Queued {
  flags: number // END is set on the last queued frame when the response ends
  readonly payload: PayloadSource
  readonly durationMs: number
}

export interface PacerOptions {
  readonly codec: CodecName
  readonly leadMs?: number
  // publishes one packed frame; the pacer never calls it for a frame of an epoch it has left
  readonly send: (header: FrameHeader, payload: Uint8Array) => void
  // the queue ran empty after end(): the whole response has been sent
  readonly onSent?: () => void
  readonly now?: () => number
  // send at most one frame per turn of the event loop (the next due one follows in a setImmediate), so one
  // device's burst (and its encoding) cannot hold up the others; a frame due when the pacer is idle still
  // goes out at once, as does the first frame of an epoch
  readonly yieldBetweenFrames?: boolean
}

export class DownlinkPacer {
  private readonly opts: PacerOptions
  private readonly leadMs: number
  private readonly now: () => number
  private epoch = 0
  private queue: Queued[] = []
  private seq = 0
  private sent = 0 // media ms sent in this epoch
  private anchor: PlayAnchor | undefined
  private ended = false // end() called for this epoch
  private timer: NodeJS.Timeout | undefined
  private immediate: NodeJS.Immediate | undefined // the next due frame, after a yield
  private active = false // begin() called and not flushed

  constructor (opts: PacerOptions) {
    this.opts = opts
    this.leadMs = opts.leadMs ?? PACING_LEAD_MS
    this.now = opts.now ?? Date.now
  }

  get currentEpoch (): number { return this.epoch }
  get sentMs (): number { return this.sent }
  get queuedFrames (): number { return this.queue.length }
  // begun and not all sent yet, or sent and maybe still playing
  get isActive (): boolean { return this.active }

  /** Starts the stream of a new response under `epoch`; anything still queued is dropped. */
  begin (epoch: number): void {
    this.flush()
    this.epoch = epoch
    this.active = true
  }

  /** Queues one frame (encoded, or encoded on release) carrying `durationMs` of audio and sends what the lead allows. */
  push (payload: PayloadSource, durationMs: number): void {
    if (!this.active || this.ended) return
    this.queue.push({ flags: 0, payload, durationMs })
    this.pump()
  }

  /**
   * The response has no more audio: the last frame gets END. If every frame already went out, an empty END
   * frame follows them (it carries no audio, so the device's clock does not move).
   */
  end (): void {
    if (!this.active || this.ended) return
    this.ended = true
    const last = this.queue[this.queue.length - 1]
    if (last !== undefined) { last.flags |= FLAG.END; return }
    if (this.seq > 0) this.emit({ flags: FLAG.END, payload: new Uint8Array(0), durationMs: 0 })
    this.opts.onSent?.()
  }

  /** A `playback` report of the device for `epoch`; reports of another epoch are stale and ignored. */
  report (epoch: number, playedMs: number): void {
    if (!this.active || epoch !== this.epoch) return
    this.anchor = { playedMs: Math.min(playedMs, this.sent), at: this.now() }
    this.pump()
  }

  /** How much of this epoch the device has played by now, by its last report and the clock. */
  playedMs (): number {
    const { playedMs, anchor } = estimatePlayed(this.anchor, this.sent, this.now())
    this.anchor = anchor
    return playedMs
  }

  /** Drops every queued frame at once and stops; nothing of this epoch is sent after this returns. */
  flush (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    if (this.immediate !== undefined) clearImmediate(this.immediate)
    this.immediate = undefined
    this.queue = []
    this.seq = 0
    this.sent = 0
    this.anchor = undefined
    this.ended = false
    this.active = false
  }

  private pump (): void {
    // a yield is pending: its turn looks again at what is due (a report or a push changes nothing before it)
    if (this.immediate !== undefined) return
    if (this.timer !== undefined) { clearTimeout(this.timer); this.timer = undefined }
    for (;;) {
      const next = this.queue[0]
      if (next === undefined) return
      const wait = waitBeforeSending(this.sent, this.playedMs(), next.durationMs, this.leadMs)
      if (wait > 0) {
        // ceil: a timer that fires a fraction early would find the frame still not due and spin
        this.timer = setTimeout(() => { this.timer = undefined; this.pump() }, Math.ceil(wait))
        return
      }
      this.queue.shift()
      this.emit(next)
      if (this.queue.length === 0 && this.ended) { this.opts.onSent?.(); return }
      // the next frame, even one pushed before this turn ends, waits for the next turn of the event loop
      if (this.opts.yieldBetweenFrames === true) {
        this.immediate = setImmediate(() => { this.immediate = undefined; this.pump() })
        return
      }
    }
  }

  private emit (frame: Queued): void {
    // the device's playback clock starts with the first frame, until a report says where it really is
    if (this.seq === 0 && this.anchor === undefined) this.anchor = { playedMs: 0, at: this.now() }
    const flags = frame.flags | (this.seq === 0 ? FLAG.START | FLAG.MARK : 0)
    const header: FrameHeader = { codec: this.opts.codec, flags, epoch: this.epoch, seq: this.seq, mediaMs: Math.round(this.sent) }
    const payload = typeof frame.payload === 'function' ? frame.payload() : frame.payload
    this.seq++
    this.sent += frame.durationMs
    this.opts.send(header, payload)
  }
}
