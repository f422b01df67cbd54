// The voice codecs (bridge/codec.ts) on generated signals: Opus round trips at 24 kHz, 16 kHz Opus decoded
// straight to 24 kHz, the PCM16 bring-up resampler, µ-law pass-through, and that opusscript needs no
// native build. Speech comes in the bridge's end-to-end test.

import { readdirSync, readFileSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import OpusScript from 'opusscript'
import { describe, expect, it } from 'vitest'
import {
  CodecError, FRAME_MS_ALLOWED, REALTIME_RATE, UPLINK_RATE, durationMs, linearResampler, openCodec, pcm16FromBytes,
  pcm16ToBytes, rms, samplesFor, silence, warmCodecs, type AudioCodec, type CodecErrorCode, type TranscodingCodec,
} from '../bridge/codec.ts'
import { packFrame, parseFrame } from '../bridge/frame.ts'

const SIGNAL_MS = 1200
const AMPLITUDE = 8000 // about -12 dBFS: loud, with no clipping anywhere in the chain

function sine (hz: number, rate: number, ms = SIGNAL_MS): Int16Array {
  return Int16Array.from({ length: samplesFor(ms, rate) }, (_, i) => Math.round(AMPLITUDE * Math.sin((2 * Math.PI * hz * i) / rate)))
}

// a linear sweep across the speech band, so every frame holds a different spectrum; `delayS` shifts it later
function chirp (fromHz: number, toHz: number, rate: number, ms = SIGNAL_MS, delayS = 0): Int16Array {
  const seconds = ms / 1000
  return Int16Array.from({ length: samplesFor(ms, rate) }, (_, i) => {
    const t = Math.max(0, i / rate - delayS)
    return Math.round(AMPLITUDE * Math.sin(2 * Math.PI * (fromHz * t + ((toHz - fromHz) * t * t) / (2 * seconds))))
  })
}

function frames (pcm: Int16Array, frameSamples: number): Int16Array[] {
  const out: Int16Array[] = []
  for (let at = 0; at + frameSamples <= pcm.length; at += frameSamples) out.push(pcm.subarray(at, at + frameSamples))
  return out
}

function concat (parts: readonly Int16Array[]): Int16Array {
  const out = new Int16Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

function decoded (codec: TranscodingCodec, payload: Uint8Array): Int16Array {
  const result = codec.decode(payload)
  if (!result.ok) throw new Error(`expected audio, got ${result.refusal}: ${result.detail}`)
  return result.pcm
}

function transcoding (codec: AudioCodec): TranscodingCodec {
  if (codec.passThrough) throw new Error(`${codec.name} is pass-through`)
  return codec
}

// The best normalised cross-correlation of `output` against `reference` delayed by 0..maxLag samples,
// skipping the start while a codec's state settles. 1 is identical shape.
function bestCorrelation (reference: Int16Array, output: Int16Array, maxLag: number, skip: number): number {
  let best = -1
  const length = Math.min(reference.length, output.length) - maxLag - skip
  for (let lag = 0; lag <= maxLag; lag++) {
    let xy = 0
    let xx = 0
    let yy = 0
    for (let i = skip; i < skip + length; i++) {
      const x = reference[i] as number
      const y = output[i + lag] as number
      xy += x * y
      xx += x * x
      yy += y * y
    }
    best = Math.max(best, xy / Math.sqrt(xx * yy))
  }
  return best
}

// the encoder's look-ahead delays Opus output by 6.5 ms (156 samples at 24 kHz); 20 ms of lag search covers it
const MAX_LAG = samplesFor(20)
const SETTLE = samplesFor(60)

function codecError (run: () => unknown): CodecErrorCode | undefined {
  try {
    run()
  } catch (err) {
    if (err instanceof CodecError) return err.code
    throw err
  }
  return undefined
}

describe('Opus', () => {
  for (const frameMs of FRAME_MS_ALLOWED) {
    // Opus codes what is heard, not the exact waveform: a pure tone comes back almost sample for sample,
    // a fast sweep with its phase shifted (about 0.9 at these frame sizes and 32 kbit/s)
    const signals = [['a 440 Hz sine', sine(440, REALTIME_RATE), 0.95], ['a 200–4000 Hz chirp', chirp(200, 4000, REALTIME_RATE), 0.85]] as const
    for (const [name, signal, minCorrelation] of signals) {
      it(`${name} survives a 24 kHz encode and decode in ${frameMs} ms frames, with every frame exactly ${frameMs * 24} samples`, () => {
        const codec = transcoding(openCodec('opus', frameMs))
        const out = frames(signal, samplesFor(frameMs)).map(frame => decoded(codec, codec.encode(frame)))
        codec.close()
        for (const frame of out) expect(frame.length).toBe(frameMs * 24)
        const all = concat(out)
        expect(bestCorrelation(signal, all, MAX_LAG, SETTLE)).toBeGreaterThan(minCorrelation)
        expect(rms(all.subarray(SETTLE)) / rms(signal.subarray(SETTLE))).toBeGreaterThan(0.8)
        expect(rms(all.subarray(SETTLE)) / rms(signal.subarray(SETTLE))).toBeLessThan(1.25)
      })
    }

    it(`decodes ${frameMs} ms frames a device encoded at 16 kHz straight to ${frameMs * 24} samples at 24 kHz`, () => {
      const device = new OpusScript(UPLINK_RATE, 1, OpusScript.Application.VOIP)
      const codec = transcoding(openCodec('opus', frameMs))
      const input = sine(440, UPLINK_RATE)
      const out = frames(input, samplesFor(frameMs, UPLINK_RATE)).map(frame => decoded(codec, device.encode(pcm16ToBytes(frame), frame.length)))
      device.delete()
      codec.close()
      for (const frame of out) expect(frame.length).toBe(frameMs * 24)
      const all = concat(out)
      expect(durationMs(all)).toBe(durationMs(input, UPLINK_RATE))
      // the same tone generated at 24 kHz is what a correct decode must look like
      expect(bestCorrelation(sine(440, REALTIME_RATE), all, MAX_LAG, SETTLE)).toBeGreaterThan(0.95)
      expect(rms(all.subarray(SETTLE)) / rms(input)).toBeGreaterThan(0.8)
      expect(rms(all.subarray(SETTLE)) / rms(input)).toBeLessThan(1.25)
    })
  }

  it('pads the short last frame of a response to a whole frame', () => {
    const codec = transcoding(openCodec('opus', 40))
    expect(decoded(codec, codec.encode(sine(440, REALTIME_RATE, 10))).length).toBe(40 * 24)
    codec.close()
  })

  it('refuses to encode more than one frame', () => {
    const codec = transcoding(openCodec('opus', 20))
    expect(codecError(() => codec.encode(silence(40)))).toBe('PCM_TOO_LONG')
    codec.close()
  })

  it('answers an empty payload with no audio, not with concealed loss', () => {
    const codec = transcoding(openCodec('opus', 40))
    expect(decoded(codec, new Uint8Array(0)).length).toBe(0)
    codec.close()
  })

  it('refuses a malformed packet and an oversized payload by name', () => {
    const codec = transcoding(openCodec('opus', 40))
    // TOC code 3 announces a frame count byte that is missing (RFC 6716 §3.2.5)
    expect(codec.decode(Uint8Array.from([0x03]))).toMatchObject({ ok: false, refusal: 'bad-packet' })
    expect(codec.decode(new Uint8Array(5000))).toMatchObject({ ok: false, refusal: 'too-large' })
    codec.close()
  })

  it('may be closed twice, and refuses work once closed', () => {
    const codec = transcoding(openCodec('opus', 40))
    codec.close()
    codec.close()
    expect(codecError(() => codec.decode(Uint8Array.from([0xf8, 0xff, 0xfe])))).toBe('CODEC_CLOSED')
    expect(codecError(() => codec.encode(silence(40)))).toBe('CODEC_CLOSED')
  })
})

describe('PCM16 bring-up codec', () => {
  it('turns 16 kHz little-endian input into 24 kHz: 640 samples become 960 with the same level', () => {
    const codec = transcoding(openCodec('pcm16', 40))
    const input = sine(440, UPLINK_RATE, 40)
    const out = decoded(codec, pcm16ToBytes(input))
    expect(out.length).toBe(960)
    expect(rms(out.subarray(1)) / rms(input)).toBeCloseTo(1, 1)
  })

  it('resamples a stream in frames exactly as in one piece, so frame joins are seamless', () => {
    const input = chirp(200, 4000, UPLINK_RATE)
    const whole = linearResampler(UPLINK_RATE, REALTIME_RATE)(input)
    const codec = transcoding(openCodec('pcm16', 40))
    const framed = concat(frames(input, samplesFor(40, UPLINK_RATE)).map(f => decoded(codec, pcm16ToBytes(f))))
    expect(framed.length).toBe(samplesFor(SIGNAL_MS))
    expect([...framed]).toEqual([...whole])
    // one input sample (62.5 µs) of delay: every third output sample is an input sample exactly
    for (let k = 0; k < 100; k++) expect(framed[3 * k + 3]).toBe(input[2 * k + 1])
    // against the sweep itself at 24 kHz, delayed by that sample, linear interpolation is close but not exact
    expect(bestCorrelation(chirp(200, 4000, REALTIME_RATE, SIGNAL_MS, 1 / UPLINK_RATE), framed, 0, 0)).toBeGreaterThan(0.98)
  })

  it('keeps chunks of odd length in phase', () => {
    const input = sine(440, UPLINK_RATE, 100)
    const resample = linearResampler(UPLINK_RATE, REALTIME_RATE)
    const chunked = concat([input.subarray(0, 7), input.subarray(7, 8), input.subarray(8, 8), input.subarray(8)].map(resample))
    expect([...chunked]).toEqual([...linearResampler(UPLINK_RATE, REALTIME_RATE)(input)])
  })

  it('refuses a payload that is not a whole number of samples', () => {
    const codec = transcoding(openCodec('pcm16', 40))
    expect(codec.decode(new Uint8Array(3))).toMatchObject({ ok: false, refusal: 'odd-length' })
  })

  it('sends 24 kHz downlink as little-endian bytes, unchanged', () => {
    const codec = transcoding(openCodec('pcm16', 20))
    const pcm = Int16Array.from([0, 1, -1, 32767, -32768])
    expect([...codec.encode(pcm)]).toEqual([0, 0, 1, 0, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x80])
    expect([...pcm16FromBytes(codec.encode(pcm))]).toEqual([...pcm])
  })
})

describe('µ-law', () => {
  it('is a pass-through codec: Realtime takes audio/pcmu, and the frame carries the bytes unchanged', () => {
    const codec = openCodec('pcmu', 40)
    expect(codec).toMatchObject({ passThrough: true, realtimeFormat: { type: 'audio/pcmu' } })
    const payload = Uint8Array.from({ length: 320 }, (_, i) => (i * 37) & 0xff) // 40 ms at 8 kHz
    const result = parseFrame(packFrame({ codec: 'pcmu', flags: 0, epoch: 1, seq: 0, mediaMs: 0 }, payload))
    expect(result.ok && [...result.frame.payload]).toEqual([...payload])
  })
})

describe('opening codecs', () => {
  it('refuses a frame_ms other than 20, 40 or 60 with FRAME_MS_UNSUPPORTED', () => {
    for (const frameMs of [0, 10, 30, 40.5, 80, 120, Number.NaN]) {
      expect(codecError(() => openCodec('opus', frameMs))).toBe('FRAME_MS_UNSUPPORTED')
      expect(codecError(() => openCodec('pcm16', frameMs))).toBe('FRAME_MS_UNSUPPORTED')
    }
    expect(() => openCodec('opus', 30)).toThrow('frame_ms must be one of 20, 40, 60, not 30')
  })

  it('says every transcoding codec meets Realtime at 24 kHz audio/pcm', () => {
    for (const name of ['opus', 'pcm16'] as const) {
      const codec = openCodec(name, 40)
      expect(codec.realtimeFormat).toEqual({ type: 'audio/pcm', rate: 24000 })
      codec.close()
    }
  })

  it('warms every codec without error', () => {
    expect(() => warmCodecs()).not.toThrow()
  })
})

describe('PCM helpers', () => {
  it('measure duration, level and silence', () => {
    expect(durationMs(silence(40))).toBe(40)
    expect(silence(40).length).toBe(960)
    expect(silence(40, UPLINK_RATE).length).toBe(640)
    expect(rms(silence(20))).toBe(0)
    expect(rms(new Int16Array(0))).toBe(0)
    expect(rms(sine(1000, REALTIME_RATE))).toBeCloseTo(AMPLITUDE / Math.SQRT2, -1)
  })
})

describe('the Opus library installs from the npm registry alone', () => {
  const require = createRequire(import.meta.url)
  const root = dirname(require.resolve('opusscript/package.json'))
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts?: Record<string, string>, dependencies?: Record<string, string>, gypfile?: boolean }

  it('declares no install, preinstall or postinstall script and no native build', () => {
    for (const script of ['install', 'preinstall', 'postinstall']) expect(manifest.scripts?.[script]).toBeUndefined()
    expect(manifest.gypfile).toBeUndefined()
    expect(Object.keys(manifest.dependencies ?? {})).toEqual([])
  })

  it('ships no native binary: no .node file and no binding.gyp', () => {
    const files = (dir: string): string[] => readdirSync(dir).flatMap(name => {
      const path = join(dir, name)
      return statSync(path).isDirectory() ? files(path) : [path]
    })
    const all = files(root)
    expect(all.filter(path => path.endsWith('.node') || path.endsWith('binding.gyp'))).toEqual([])
    expect(all.some(path => path.endsWith('.wasm'))).toBe(true)
  })

  it('loads and encodes with its WebAssembly build', () => {
    const encoder = new OpusScript(REALTIME_RATE, 1, OpusScript.Application.VOIP, { wasm: true })
    expect(encoder.encode(pcm16ToBytes(silence(20)), samplesFor(20)).byteLength).toBeGreaterThan(0)
    encoder.delete()
  })
})
