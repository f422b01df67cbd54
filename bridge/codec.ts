// Voice codecs behind one interface: frame payloads in, 24 kHz mono PCM16 for Realtime out, and back;
// plus the small PCM helpers (byte order, silence, level) the bridge and its tests share.

import OpusScript from 'opusscript'
import type { CodecName } from './frame.ts'

// Realtime GA takes and gives `audio/pcm` at 24 kHz mono only, so every transcoding codec meets it there
export const REALTIME_RATE = 24_000
// the contract's uplink rate: devices record and encode at 16 kHz
export const UPLINK_RATE = 16_000

export const FRAME_MS_ALLOWED = [20, 40, 60] as const
export type FrameMs = typeof FRAME_MS_ALLOWED[number]
// the contract's default; 20 and 60 ms trade packets per second against latency
export const DEFAULT_FRAME_MS: FrameMs = 40

// 32 kbit/s keeps 24 kHz speech close to transparent at 160 B per 40 ms frame, far below any MQTT limit
const OPUS_DOWNLINK_BITRATE = 32_000
// opusscript copies a packet into a heap buffer of this size (3 × 1276 B, three maximal frames); a longer
// payload cannot be an Opus packet and would overrun that copy
const OPUS_MAX_PACKET_BYTES = OpusScript.MAX_PACKET_SIZE

// the shapes of Realtime GA `session.audio.{input,output}.format`
export interface RealtimePcm { readonly type: 'audio/pcm', readonly rate: typeof REALTIME_RATE }
export interface RealtimePcmu { readonly type: 'audio/pcmu' }

export type DecodeRefusal = 'too-large' | 'odd-length' | 'bad-packet'

export type Decoded =
  | { readonly ok: true, readonly pcm: Int16Array }
  | { readonly ok: false, readonly refusal: DecodeRefusal, readonly detail: string }

interface CodecCommon {
  readonly name: CodecName
  readonly frameMs: FrameMs
  // frees the codec's native state; closing twice is harmless, using it afterwards throws CODEC_CLOSED
  close (): void
}

/** Converts between wire payloads and 24 kHz PCM16 (Opus, PCM16). */
export interface TranscodingCodec extends CodecCommon {
  readonly passThrough: false
  readonly realtimeFormat: RealtimePcm
  // uplink: one payload from a device → 24 kHz PCM16; a payload that cannot be decoded is a named refusal
  decode (payload: Uint8Array): Decoded
  // downlink: at most one frame (frameMs × 24 samples) of 24 kHz PCM16 → one payload; longer throws PCM_TOO_LONG
  encode (pcm: Int16Array): Uint8Array
}

/** A codec Realtime speaks itself (µ-law): payloads go to and come from Realtime as they are. */
export interface PassThroughCodec extends CodecCommon {
  readonly passThrough: true
  readonly realtimeFormat: RealtimePcmu
}

export type AudioCodec = TranscodingCodec | PassThroughCodec

export type CodecErrorCode = 'FRAME_MS_UNSUPPORTED' | 'PCM_TOO_LONG' | 'CODEC_CLOSED'

export class CodecError extends Error {
  readonly code: CodecErrorCode
  constructor (code: CodecErrorCode, message: string) {
    super(message)
    this.name = 'CodecError'
    this.code = code
  }
}

// One opener per wire codec. A faster native Opus would become the `opus` entry here, falling back to
// opusscript when it does not load; nothing outside this table knows which implementation runs.
const OPENERS: Readonly<Record<CodecName, (frameMs: FrameMs) => AudioCodec>> = {
  opus: openOpus,
  pcm16: openPcm16,
  pcmu: openPcmu,
}

export function isFrameMs (ms: unknown): ms is FrameMs {
  return FRAME_MS_ALLOWED.some(allowed => allowed === ms)
}

/** A codec for one session; `frameMs` comes from the device's hello and must be 20, 40 or 60. */
export function openCodec (name: CodecName, frameMs: number): AudioCodec {
  if (!isFrameMs(frameMs)) {
    throw new CodecError('FRAME_MS_UNSUPPORTED', `frame_ms must be one of ${FRAME_MS_ALLOWED.join(', ')}, not ${frameMs}`)
  }
  return OPENERS[name](frameMs)
}

// Frames of speech-like audio warmCodecs runs through each transcoding codec: opusscript's WebAssembly starts
// out as V8's baseline (Liftoff) code, many times slower than the optimized code it gets once hot. Cold, one
// 40 ms frame takes 2–30 ms to encode (0.25 ms hot); at the first replies of a busy bridge that stalls the
// event loop for tens of ms at a time, delaying every device's uplink and events (the voice benchmark's
// first turns). 200 frames (8 s of audio, about 0.5 s of CPU once per process) make the encoder hot.
const WARM_FRAMES = 200
let warmed = false

/**
 * Instantiates every codec and runs speech-like audio through it, once per process, so real frames pay no
 * start-up cost: the first Opus instance compiles opusscript's WebAssembly, which then stays loaded for the
 * process, and the warm-up makes its hot paths optimized code (see WARM_FRAMES).
 */
export function warmCodecs (): void {
  if (warmed) return
  warmed = true
  for (const name of Object.keys(OPENERS) as CodecName[]) {
    const codec = openCodec(name, DEFAULT_FRAME_MS)
    if (!codec.passThrough) {
      const pcm = new Int16Array(samplesFor(DEFAULT_FRAME_MS))
      for (let f = 0; f < WARM_FRAMES; f++) {
        for (let i = 0; i < pcm.length; i++) {
          const t = (f * pcm.length + i) / REALTIME_RATE
          pcm[i] = Math.round(8000 * (Math.sin(2 * Math.PI * 150 * t) + 0.5 * Math.sin(2 * Math.PI * 450 * t)) * (0.7 + 0.3 * Math.sin(2 * Math.PI * 4 * t)))
        }
        codec.decode(codec.encode(pcm))
      }
    }
    codec.close()
  }
}

function openOpus (frameMs: FrameMs): TranscodingCodec {
  // An Opus decoder outputs any of its rates whatever rate the sender encoded at (libopus
  // `opus_decoder_create`), so 16 kHz uplink comes out at 24 kHz straight from it, with no resampler
  let decoder: OpusScript | undefined = new OpusScript(REALTIME_RATE, 1)
  // downlink is always speech from Realtime, which the VOIP mode is tuned for
  let encoder: OpusScript | undefined = new OpusScript(REALTIME_RATE, 1, OpusScript.Application.VOIP)
  encoder.setBitrate(OPUS_DOWNLINK_BITRATE)
  const frameSamples = samplesFor(frameMs)
  return {
    name: 'opus',
    frameMs,
    passThrough: false,
    realtimeFormat: { type: 'audio/pcm', rate: REALTIME_RATE },
    decode (payload) {
      if (decoder === undefined) throw closed('opus')
      // an empty packet would make libopus conceal a whole 120 ms of loss; it carries no audio
      if (payload.byteLength === 0) return { ok: true, pcm: new Int16Array(0) }
      if (payload.byteLength > OPUS_MAX_PACKET_BYTES) {
        return { ok: false, refusal: 'too-large', detail: `${payload.byteLength} bytes, an Opus packet is at most ${OPUS_MAX_PACKET_BYTES}` }
      }
      try {
        return { ok: true, pcm: pcm16FromBytes(decoder.decode(asBuffer(payload))) }
      } catch (err) {
        return { ok: false, refusal: 'bad-packet', detail: (err as Error).message }
      }
    },
    encode (pcm) {
      if (encoder === undefined) throw closed('opus')
      checkFrameLength(pcm, frameSamples)
      // Opus only encodes whole frames; the short tail of a response is padded with silence
      const frame = pcm.length === frameSamples ? pcm : padded(pcm, frameSamples)
      return encoder.encode(pcm16ToBytes(frame), frameSamples)
    },
    close () {
      decoder?.delete()
      encoder?.delete()
      decoder = undefined
      encoder = undefined
    },
  }
}

function openPcm16 (frameMs: FrameMs): TranscodingCodec {
  const upsample = linearResampler(UPLINK_RATE, REALTIME_RATE)
  const frameSamples = samplesFor(frameMs)
  let open = true
  return {
    name: 'pcm16',
    frameMs,
    passThrough: false,
    realtimeFormat: { type: 'audio/pcm', rate: REALTIME_RATE },
    decode (payload) {
      if (!open) throw closed('pcm16')
      if (payload.byteLength % 2 !== 0) {
        return { ok: false, refusal: 'odd-length', detail: `${payload.byteLength} bytes is not a whole number of 16-bit samples` }
      }
      return { ok: true, pcm: upsample(pcm16FromBytes(payload)) }
    },
    encode (pcm) {
      if (!open) throw closed('pcm16')
      checkFrameLength(pcm, frameSamples)
      // downlink PCM16 is already at the device's 24 kHz; a short last frame needs no padding
      return pcm16ToBytes(pcm)
    },
    close () { open = false },
  }
}

function openPcmu (frameMs: FrameMs): PassThroughCodec {
  // G.711 µ-law at 8 kHz is a Realtime format (`audio/pcmu`), so the bridge neither decodes nor encodes it
  return { name: 'pcmu', frameMs, passThrough: true, realtimeFormat: { type: 'audio/pcmu' }, close () {} }
}

/**
 * A stateful linear-interpolation resampler, for the PCM16 bring-up path only (it does not filter, so a
 * downsampler built with it would alias). Output sample k sits at input position k × from/to, counted in
 * integer steps of 1/to input samples so the phase never drifts; interpolating between the previous chunk's
 * last sample and this chunk's first delays the output by one input sample and keeps chunk joins seamless.
 * 16 → 24 kHz turns every 2 input samples into exactly 3.
 */
export function linearResampler (fromRate: number, toRate: number): (input: Int16Array) => Int16Array {
  const g = gcd(fromRate, toRate)
  const step = fromRate / g // input advance per output sample, in units of 1/up input samples
  const up = toRate / g
  let previous = 0 // last sample of the previous chunk, at position -1
  let position = -up // next output's position relative to this chunk's first sample, in units of 1/up
  return input => {
    const out = new Int16Array(Math.max(0, Math.ceil(((input.length - 1) * up - position) / step)))
    for (let k = 0; k < out.length; k++, position += step) {
      const i = Math.floor(position / up)
      const frac = (position - i * up) / up
      const a = i < 0 ? previous : input[i] as number
      const b = input[i + 1] as number
      out[k] = Math.round(a + (b - a) * frac)
    }
    if (input.length > 0) {
      previous = input[input.length - 1] as number
      position -= input.length * up
    }
    return out
  }
}

/** Little-endian 16-bit samples, as on every Roost wire and in Realtime's base64 audio. */
export function pcm16ToBytes (pcm: Int16Array): Buffer {
  const out = Buffer.allocUnsafe(pcm.length * 2)
  for (let i = 0; i < pcm.length; i++) out.writeInt16LE(pcm[i] as number, i * 2)
  return out
}

export function pcm16FromBytes (bytes: Uint8Array): Int16Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out = new Int16Array(bytes.byteLength >> 1)
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true)
  return out
}

export function samplesFor (ms: number, rate: number = REALTIME_RATE): number {
  return Math.round((ms * rate) / 1000)
}

export function durationMs (pcm: Int16Array, rate: number = REALTIME_RATE): number {
  return (pcm.length * 1000) / rate
}

export function silence (ms: number, rate: number = REALTIME_RATE): Int16Array {
  return new Int16Array(samplesFor(ms, rate))
}

/** Root-mean-square level in sample units (0 for silence, about 23170 for a full-scale sine). */
export function rms (pcm: Int16Array): number {
  if (pcm.length === 0) return 0
  let sum = 0
  for (const s of pcm) sum += s * s
  return Math.sqrt(sum / pcm.length)
}

function checkFrameLength (pcm: Int16Array, frameSamples: number): void {
  if (pcm.length > frameSamples) {
    throw new CodecError('PCM_TOO_LONG', `${pcm.length} samples is more than one ${frameSamples}-sample frame`)
  }
}

function padded (pcm: Int16Array, length: number): Int16Array {
  const out = new Int16Array(length)
  out.set(pcm)
  return out
}

// opusscript's types ask for a Buffer; a view over the same memory avoids a copy
function asBuffer (bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

function closed (name: CodecName): CodecError {
  return new CodecError('CODEC_CLOSED', `the ${name} codec was closed`)
}

function gcd (a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b)
}
