// The bridge's latency histograms on the platform's Prometheus registry (issue 7): what the bridge itself
// adds to each audio frame each way, end of speech to the first reply frame, and interrupt to flush. The
// session (bridge/session.ts) decides where each span starts and ends; this file only names and buckets them.

import { Histogram, type Registry } from 'prom-client'

// The bridge's own share of a frame or an interrupt: tens of microseconds when healthy, milliseconds under
// load. Issue 7's target is p99 ≤ 5 ms, and 0.005 is a bound here, so the target reads off exactly.
export const FRAME_BUCKETS_S = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
// End of speech to the first reply spans the model's thinking (a few hundred ms), so the buckets are finer
// around 300–400 ms, where issue 7's "≤ 50 ms over the upstream" bound falls.
export const TURN_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.325, 0.35, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10]

export const VOICE_METRICS = {
  uplinkFrame: 'roost_voice_uplink_frame_seconds',
  downlinkFrame: 'roost_voice_downlink_frame_seconds',
  firstReply: 'roost_voice_first_reply_seconds',
  interrupt: 'roost_voice_interrupt_seconds',
} as const

/** What barged in: the device's `interrupt`, or the server hearing the user over the reply (AEC devices). */
export type InterruptTrigger = 'device' | 'speech'

/** The session's side: every span in milliseconds of performance.now(). */
export interface VoiceMetrics {
  uplinkFrame (ms: number): void
  downlinkFrame (ms: number): void
  firstReply (ms: number): void
  interrupt (trigger: InterruptTrigger, ms: number): void
}

const HELP = {
  uplinkFrame: 'bridge time per uplink frame: MQTT message at the bridge → its audio handed to the Realtime socket (input_audio_buffer.append); frames buffered before the upstream is ready, or muted while speaking, are not counted',
  downlinkFrame: 'bridge time per downlink frame: Realtime message carrying the audio that completed the frame → frame queued for pacing, plus the pacer releasing it → frame encoded and handed to MQTT (Opus/PCM16 frames are encoded on release); the time the pacer deliberately held it (pacing, or waiting a turn of the event loop behind the previous frame) is not counted',
  firstReply: 'end of speech as the bridge sees it (server VAD speech_stopped arriving, or push-to-talk listen stop) → first frame of the reply handed to MQTT; includes the upstream model\'s time to answer',
  interrupt: 'barge-in seen by the bridge (device interrupt message, or server speech_started with AEC) → flush event handed to MQTT',
} as const

/**
 * Registers the histograms on `registry`, or takes the ones already there: two bridges in one process
 * (tests do that) share one registry, and prom-client refuses a name twice.
 */
export function registerVoiceMetrics (registry: Registry): VoiceMetrics {
  const histogram = (key: keyof typeof VOICE_METRICS, buckets: number[], labelNames: string[] = []): Histogram<string> =>
    (registry.getSingleMetric(VOICE_METRICS[key]) as Histogram<string> | undefined) ??
    new Histogram({ name: VOICE_METRICS[key], help: HELP[key], buckets, labelNames, registers: [registry] })
  const up = histogram('uplinkFrame', FRAME_BUCKETS_S)
  const down = histogram('downlinkFrame', FRAME_BUCKETS_S)
  const first = histogram('firstReply', TURN_BUCKETS_S)
  const interrupt = histogram('interrupt', FRAME_BUCKETS_S, ['trigger'])
  return {
    uplinkFrame: ms => up.observe(ms / 1000),
    downlinkFrame: ms => down.observe(ms / 1000),
    firstReply: ms => first.observe(ms / 1000),
    interrupt: (trigger, ms) => interrupt.observe({ trigger }, ms / 1000),
  }
}
