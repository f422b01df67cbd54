// The voice frame header (bridge/frame.ts) and the uplink receiver (bridge/jitter.ts): pure functions over
// bytes and frames, so these tests need no broker.

import { describe, expect, it } from 'vitest'
import { CODEC_IDS, FLAG, epochNewer, nextEpoch, packFrame, parseFrame, type CodecName, type Frame, type FrameHeader } from '../bridge/frame.ts'
import { MAX_SILENCE_FILL_MS, UplinkReceiver, type UplinkItem } from '../bridge/jitter.ts'

const CODECS = Object.keys(CODEC_IDS) as CodecName[]
const FLAG_SETS = [0, FLAG.START, FLAG.END, FLAG.GAP, FLAG.MARK, FLAG.START | FLAG.MARK, FLAG.START | FLAG.END | FLAG.GAP | FLAG.MARK]

function parsed (bytes: Uint8Array): Frame {
  const result = parseFrame(bytes)
  if (!result.ok) throw new Error(`expected a frame, got ${result.refusal}: ${result.detail}`)
  return result.frame
}

describe('packing and parsing the 12-byte header', () => {
  it('every codec with every flag survives a round trip', () => {
    const payload = Uint8Array.from([1, 2, 3, 250])
    for (const codec of CODECS) {
      for (const flags of FLAG_SETS) {
        const header: FrameHeader = { codec, flags, epoch: 7, seq: 42, mediaMs: 1680 }
        const frame = parsed(packFrame(header, payload))
        expect({ ...frame, payload: [...frame.payload] }).toEqual({ ...header, payload: [1, 2, 3, 250] })
      }
    }
  })

  it('the largest epoch, sequence number and media time survive a round trip', () => {
    const header: FrameHeader = { codec: 'opus', flags: 0xff, epoch: 0xffff, seq: 0xffffffff, mediaMs: 0xffffffff }
    expect(parsed(packFrame(header, new Uint8Array(0)))).toMatchObject(header)
  })

  it('lays fields out big-endian with version 1 in the high nibble and the codec in the low one', () => {
    const bytes = packFrame({ codec: 'pcmu', flags: FLAG.START | FLAG.MARK, epoch: 0x0102, seq: 0x03040506, mediaMs: 0x0708090a }, Uint8Array.from([0xee]))
    expect([...bytes]).toEqual([0x12, 0x09, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0xee])
  })

  it('a header with no payload is a valid frame', () => {
    expect(parsed(packFrame({ codec: 'pcm16', flags: FLAG.END, epoch: 1, seq: 9, mediaMs: 360 }, new Uint8Array(0))).payload.byteLength).toBe(0)
  })

  it('parses a frame that sits inside a larger buffer', () => {
    const packet = packFrame({ codec: 'opus', flags: 0, epoch: 3, seq: 4, mediaMs: 160 }, Uint8Array.from([9, 8]))
    const shifted = new Uint8Array(packet.byteLength + 5)
    shifted.set(packet, 5)
    expect(parsed(shifted.subarray(5))).toMatchObject({ epoch: 3, seq: 4, mediaMs: 160, payload: Uint8Array.from([9, 8]) })
  })

  it('refuses to pack a field outside its unsigned range', () => {
    const ok: FrameHeader = { codec: 'opus', flags: 0, epoch: 1, seq: 0, mediaMs: 0 }
    expect(() => packFrame({ ...ok, epoch: 0x10000 }, new Uint8Array(0))).toThrow(RangeError)
    expect(() => packFrame({ ...ok, seq: -1 }, new Uint8Array(0))).toThrow(/seq/)
    expect(() => packFrame({ ...ok, mediaMs: 2 ** 32 }, new Uint8Array(0))).toThrow(/mediaMs/)
    expect(() => packFrame({ ...ok, flags: 0x100 }, new Uint8Array(0))).toThrow(/flags/)
    expect(() => packFrame({ ...ok, seq: 1.5 }, new Uint8Array(0))).toThrow(/seq/)
  })
})

describe('parseFrame refusals', () => {
  const valid = packFrame({ codec: 'opus', flags: 0, epoch: 1, seq: 0, mediaMs: 0 }, Uint8Array.from([1]))

  it('refuses fewer than 12 bytes as too-short', () => {
    for (const length of [0, 1, 11]) {
      expect(parseFrame(valid.subarray(0, length))).toMatchObject({ ok: false, refusal: 'too-short' })
    }
  })

  it('refuses any version but 1 as wrong-version', () => {
    for (const version of [0, 2, 15]) {
      const bytes = Uint8Array.from(valid)
      bytes[0] = (version << 4) | CODEC_IDS.opus
      expect(parseFrame(bytes)).toMatchObject({ ok: false, refusal: 'wrong-version' })
    }
  })

  it('refuses codec ids 3 to 15 as unknown-codec', () => {
    for (let id = 3; id <= 15; id++) {
      const bytes = Uint8Array.from(valid)
      bytes[0] = 0x10 | id
      expect(parseFrame(bytes)).toMatchObject({ ok: false, refusal: 'unknown-codec' })
    }
  })

  it('answers random bytes with a frame or a named refusal, never an exception', () => {
    let seed = 1
    const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    for (let n = 0; n < 2000; n++) {
      const bytes = Uint8Array.from({ length: Math.floor(random() * 24) }, () => Math.floor(random() * 256))
      const result = parseFrame(bytes)
      if (!result.ok) expect(['too-short', 'wrong-version', 'unknown-codec']).toContain(result.refusal)
    }
  })
})

describe('epochNewer: RFC 1982 serial arithmetic over uint16', () => {
  const rows: ReadonlyArray<readonly [number, number, boolean]> = [
    [2, 1, true],
    [1, 2, false],
    [1, 1, false],
    [0, 65535, true], // wrap-around: 0 follows 65535
    [65535, 0, false],
    [4, 65530, true],
    [32767, 0, true], // the furthest ahead that still counts as newer
    [32768, 0, false], // exactly half the space apart is undefined: neither is newer
    [0, 32768, false],
  ]
  for (const [a, b, newer] of rows) {
    it(`${a} is ${newer ? '' : 'not '}newer than ${b}`, () => expect(epochNewer(a, b)).toBe(newer))
  }

  it('nextEpoch wraps 65535 to 0, which is newer', () => {
    expect(nextEpoch(65535)).toBe(0)
    expect(epochNewer(nextEpoch(65535), 65535)).toBe(true)
  })
})

// A 40 ms frame of epoch `epoch`; media time follows the sequence number unless given.
function frame (epoch: number, seq: number, options: { mediaMs?: number, flags?: number, empty?: boolean } = {}): Frame {
  const payload = options.empty === true ? new Uint8Array(0) : Uint8Array.from([epoch & 0xff, seq & 0xff])
  return { codec: 'opus', flags: options.flags ?? 0, epoch, seq, mediaMs: options.mediaMs ?? seq * 40, payload }
}

function describeItems (items: readonly UplinkItem[]): string[] {
  return items.map(item => item.kind === 'frame' ? `frame ${item.frame.epoch}/${item.frame.seq}` : `silence ${item.ms} ms`)
}

function receive (receiver: UplinkReceiver, frames: readonly Frame[]): string[] {
  return frames.flatMap(f => describeItems(receiver.push(f)))
}

describe('the uplink receiver', () => {
  it('passes frames of one epoch that arrive in order, adding nothing', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1), frame(1, 2)])).toEqual(['frame 1/0', 'frame 1/1', 'frame 1/2'])
    expect(receiver.stats).toMatchObject({ epochs: 1, accepted: 3, lostFrames: 0, lossFilledMs: 0 })
  })

  it('fills two lost 40 ms frames with exactly 80 ms of silence at 24 kHz', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    receiver.push(frame(1, 0))
    const items = receiver.push(frame(1, 3))
    expect(describeItems(items)).toEqual(['silence 80 ms', 'frame 1/3'])
    const fill = items[0]
    expect(fill?.kind === 'silence' && fill.pcm.length).toBe(80 * 24)
    expect(fill?.kind === 'silence' && fill.pcm.every(s => s === 0)).toBe(true)
    expect(receiver.stats).toMatchObject({ lostFrames: 2, lossFilledMs: 80, gapFilledMs: 0 })
  })

  it('sizes silence for the output rate it was given', () => {
    const receiver = new UplinkReceiver({ frameMs: 20, outputRate: 16_000 })
    receiver.push(frame(1, 0, { mediaMs: 0 }))
    const fill = receiver.push(frame(1, 2, { mediaMs: 40 }))[0]
    expect(fill?.kind === 'silence' && fill.pcm.length).toBe(20 * 16)
  })

  it('fills missing media time even when no sequence number is missing', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1, { mediaMs: 100 })])).toEqual(['frame 1/0', 'silence 60 ms', 'frame 1/1'])
    expect(receiver.stats).toMatchObject({ lostFrames: 0, lossFilledMs: 60 })
  })

  it('fills the silence a sender skipped on purpose (GAP) and counts it apart from loss', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    const frames = [frame(1, 0), frame(1, 1), frame(1, 2, { mediaMs: 1000, flags: FLAG.GAP }), frame(1, 3, { mediaMs: 1040 })]
    expect(receive(receiver, frames)).toEqual(['frame 1/0', 'frame 1/1', 'silence 920 ms', 'frame 1/2', 'frame 1/3'])
    expect(receiver.stats).toMatchObject({ gapFilledMs: 920, lossFilledMs: 0, lostFrames: 0 })
  })

  it('fills frames lost at the start of an epoch, whose media time begins at 0', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 2)])).toEqual(['silence 80 ms', 'frame 1/2'])
  })

  it('fills a hole only up to MAX_SILENCE_FILL_MS and counts the rest as skipped', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    receiver.push(frame(1, 0))
    const fill = receiver.push(frame(1, 1, { mediaMs: 0xffffffff }))[0]
    expect(fill?.kind === 'silence' && fill.pcm.length).toBe(MAX_SILENCE_FILL_MS * 24)
    expect(receiver.stats.skippedMs).toBe(0xffffffff - 40 - MAX_SILENCE_FILL_MS)
  })

  it('counts an empty frame (a bare END) as no media time', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1, { empty: true, flags: FLAG.END }), frame(1, 2, { mediaMs: 40 })]))
      .toEqual(['frame 1/0', 'frame 1/1', 'frame 1/2'])
  })

  it('follows a sender whose media time overlaps, without filling', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1, { mediaMs: 30 }), frame(1, 2, { mediaMs: 70 })]))
      .toEqual(['frame 1/0', 'frame 1/1', 'frame 1/2'])
  })

  it('drops a duplicate frame and a frame behind the newest', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1), frame(1, 2), frame(1, 2), frame(1, 0), frame(1, 3)]))
      .toEqual(['frame 1/0', 'frame 1/1', 'frame 1/2', 'frame 1/3'])
    expect(receiver.stats).toMatchObject({ accepted: 4, duplicate: 1, late: 1 })
  })

  it('drops frames of an older epoch once a newer one has begun', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(2, 0), frame(1, 5), frame(2, 1)])).toEqual(['frame 2/0', 'frame 2/1'])
    expect(receiver.stats).toMatchObject({ staleEpoch: 1, accepted: 2 })
  })

  it('restarts sequence numbers and media time when a newer epoch arrives', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(1, 0), frame(1, 1), frame(1, 2), frame(2, 0), frame(2, 1)]))
      .toEqual(['frame 1/0', 'frame 1/1', 'frame 1/2', 'frame 2/0', 'frame 2/1'])
    expect(receiver.currentEpoch).toBe(2)
    expect(receiver.stats).toMatchObject({ epochs: 2, lostFrames: 0, lossFilledMs: 0 })
  })

  it('takes epoch 0 as newer than 65535 and then drops 65535 as stale', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    expect(receive(receiver, [frame(65535, 0), frame(0, 0), frame(65535, 1), frame(0, 1)]))
      .toEqual(['frame 65535/0', 'frame 0/0', 'frame 0/1'])
    expect(receiver.stats.staleEpoch).toBe(1)
  })

  it('drops the last turn\'s late frames once a listen start opens the next epoch', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    receiver.push(frame(4, 0))
    receiver.startEpoch(5)
    expect(receive(receiver, [frame(4, 1), frame(5, 0)])).toEqual(['frame 5/0'])
  })

  it('ignores a listen start for an epoch that is not newer', () => {
    const receiver = new UplinkReceiver({ frameMs: 40 })
    receiver.push(frame(5, 0))
    receiver.startEpoch(4)
    expect(receiver.currentEpoch).toBe(5)
    expect(receive(receiver, [frame(5, 1)])).toEqual(['frame 5/1'])
  })
})
