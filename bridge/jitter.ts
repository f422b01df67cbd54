// The uplink receiver of one device: keeps only the current epoch's frames, in order, and fills what is
// missing with silence so the audio clock Realtime hears stays continuous (its voice detection needs the
// silence to end a turn). Frames ride one MQTT connection over TCP, so they never arrive reordered; loss
// comes from QoS 0 drops and reconnects. A frame behind the newest one is therefore dropped, never waited for.

import { REALTIME_RATE, silence, type FrameMs } from './codec.ts'
import { epochNewer, FLAG, hasFlag, type Frame } from './frame.ts'

// Longer holes are a stall or a bogus media time, not jitter: 2 s of silence already ends any server-VAD
// turn (its silence window defaults to 500 ms), and it bounds what one forged header can allocate
// (2 s × 24 kHz × 2 B = 96 KB). The rest of such a hole is skipped and counted.
export const MAX_SILENCE_FILL_MS = 2_000

export type UplinkItem =
  | { readonly kind: 'frame', readonly frame: Frame }
  | { readonly kind: 'silence', readonly ms: number, readonly pcm: Int16Array } // at the output rate

export interface UplinkStats {
  epochs: number // epochs started
  accepted: number // frames passed on
  staleEpoch: number // frames of an older epoch, dropped
  duplicate: number // a sequence number seen last, dropped
  late: number // a sequence number behind the newest, dropped
  lostFrames: number // sequence numbers never received
  lossFilledMs: number // silence standing in for lost frames or missing media time
  gapFilledMs: number // silence the sender skipped on purpose (GAP flag)
  skippedMs: number // media time beyond MAX_SILENCE_FILL_MS, not filled
}

export interface UplinkOptions {
  readonly frameMs: FrameMs // from the device's hello: how much media time each frame carries
  readonly outputRate?: number // rate of the filled silence; Realtime's 24 kHz by default
}

export class UplinkReceiver {
  readonly stats: UplinkStats = {
    epochs: 0, accepted: 0, staleEpoch: 0, duplicate: 0, late: 0, lostFrames: 0, lossFilledMs: 0, gapFilledMs: 0, skippedMs: 0,
  }

  private readonly frameMs: FrameMs
  private readonly outputRate: number
  private epoch: number | undefined
  private nextSeq = 0
  private nextMediaMs = 0 // media time the next frame should start at, if nothing is missing

  constructor (options: UplinkOptions) {
    this.frameMs = options.frameMs
    this.outputRate = options.outputRate ?? REALTIME_RATE
  }

  get currentEpoch (): number | undefined {
    return this.epoch
  }

  /** Opens `epoch` (a `listen` start) unless a newer one is already open; its frames count from 0. */
  startEpoch (epoch: number): void {
    if (this.epoch !== undefined && !epochNewer(epoch, this.epoch)) return
    this.epoch = epoch
    this.nextSeq = 0
    this.nextMediaMs = 0
    this.stats.epochs++
  }

  /** What to feed onward for one received frame: nothing, the frame, or silence and then the frame. */
  push (frame: Frame): readonly UplinkItem[] {
    if (this.epoch === undefined || epochNewer(frame.epoch, this.epoch)) this.startEpoch(frame.epoch)
    if (frame.epoch !== this.epoch) {
      this.stats.staleEpoch++
      return []
    }
    if (frame.seq < this.nextSeq) {
      if (frame.seq === this.nextSeq - 1) this.stats.duplicate++
      else this.stats.late++
      return []
    }
    this.stats.lostFrames += frame.seq - this.nextSeq
    const fill = this.fill(frame)
    this.nextSeq = frame.seq + 1
    // an empty payload (say, a bare END) carries no audio; otherwise every frame is frameMs long
    this.nextMediaMs = frame.mediaMs + (frame.payload.byteLength === 0 ? 0 : this.frameMs)
    this.stats.accepted++
    const item: UplinkItem = { kind: 'frame', frame }
    return fill === undefined ? [item] : [fill, item]
  }

  // Silence for the media time between the last frame's end and this one's start. A frame that starts
  // early (the sender's clock overlapping ours) fills nothing; the clock simply follows the sender again.
  private fill (frame: Frame): UplinkItem | undefined {
    const missingMs = frame.mediaMs - this.nextMediaMs
    if (missingMs <= 0) return undefined
    const ms = Math.min(missingMs, MAX_SILENCE_FILL_MS)
    this.stats.skippedMs += missingMs - ms
    if (hasFlag(frame, FLAG.GAP)) this.stats.gapFilledMs += ms
    else this.stats.lossFilledMs += ms
    return { kind: 'silence', ms, pcm: silence(ms, this.outputRate) }
  }
}
