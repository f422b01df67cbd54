// The binary voice frame on `audio/up` and `audio/down`: the 12-byte big-endian header, packed and parsed,
// and the serial-number comparison of epochs (shared ARCHITECTURE.md, "Voice audio").

export const FRAME_HEADER_BYTES = 12
// the only header version; a new layout gets a new number rather than a reinterpretation of this one
export const FRAME_VERSION = 1

// wire ids in the low nibble of byte 0
export const CODEC_IDS = { pcm16: 0, opus: 1, pcmu: 2 } as const
export type CodecName = keyof typeof CODEC_IDS
const CODEC_BY_ID: readonly CodecName[] = ['pcm16', 'opus', 'pcmu']

export const FLAG = {
  START: 1, // first frame of a turn
  END: 2, // last frame of a turn
  GAP: 4, // the sender skipped silence before this frame; its media time jumps on purpose
  MARK: 8, // first frame of a new response
} as const

const UINT16_MAX = 0xffff
const UINT32_MAX = 0xffffffff
// RFC 1982 §3.2 for SERIAL_BITS = 16: a is newer than b when it is ahead by less than half the number space
const EPOCH_HALF = 0x8000

export interface FrameHeader {
  readonly codec: CodecName
  readonly flags: number // FLAG bits; bits 4–7 are kept as received so a newer sender's flags survive a relay
  readonly epoch: number // uint16
  readonly seq: number // uint32
  readonly mediaMs: number // uint32, ms since the epoch began
}

export interface Frame extends FrameHeader {
  // a view into the received packet, not a copy: copy it before keeping it past the packet's life
  readonly payload: Uint8Array
}

export type FrameRefusal = 'too-short' | 'wrong-version' | 'unknown-codec'

export type ParsedFrame =
  | { readonly ok: true, readonly frame: Frame }
  | { readonly ok: false, readonly refusal: FrameRefusal, readonly detail: string }

/** Header and payload as one wire frame. Out-of-range fields are a bug in the caller, so they throw. */
export function packFrame (header: FrameHeader, payload: Uint8Array): Buffer {
  checkUint('flags', header.flags, 0xff)
  checkUint('epoch', header.epoch, UINT16_MAX)
  checkUint('seq', header.seq, UINT32_MAX)
  checkUint('mediaMs', header.mediaMs, UINT32_MAX)
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.byteLength)
  out[0] = (FRAME_VERSION << 4) | CODEC_IDS[header.codec]
  out[1] = header.flags
  out.writeUInt16BE(header.epoch, 2)
  out.writeUInt32BE(header.seq, 4)
  out.writeUInt32BE(header.mediaMs, 8)
  out.set(payload, FRAME_HEADER_BYTES)
  return out
}

/** Reads a frame a device (or anyone) sent; bad input is a named refusal, never an exception. */
export function parseFrame (bytes: Uint8Array): ParsedFrame {
  if (bytes.byteLength < FRAME_HEADER_BYTES) {
    return refuse('too-short', `${bytes.byteLength} bytes, the header alone is ${FRAME_HEADER_BYTES}`)
  }
  const first = bytes[0] as number
  const version = first >> 4
  if (version !== FRAME_VERSION) return refuse('wrong-version', `version ${version}, expected ${FRAME_VERSION}`)
  const codec = CODEC_BY_ID[first & 0x0f]
  if (codec === undefined) return refuse('unknown-codec', `codec id ${first & 0x0f}`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return {
    ok: true,
    frame: {
      codec,
      flags: bytes[1] as number,
      epoch: view.getUint16(2),
      seq: view.getUint32(4),
      mediaMs: view.getUint32(8),
      payload: bytes.subarray(FRAME_HEADER_BYTES),
    },
  }
}

export function hasFlag (frame: FrameHeader, flag: number): boolean {
  return (frame.flags & flag) !== 0
}

/**
 * Is epoch `a` newer than epoch `b`? Serial-number arithmetic (RFC 1982) over uint16, so 0 follows 65535.
 * Two epochs exactly half the space apart are undefined by the RFC; neither is newer here.
 */
export function epochNewer (a: number, b: number): boolean {
  const ahead = (a - b) & UINT16_MAX
  return ahead !== 0 && ahead < EPOCH_HALF
}

/** The epoch after `epoch`, wrapping 65535 to 0. */
export function nextEpoch (epoch: number): number {
  return (epoch + 1) & UINT16_MAX
}

function checkUint (field: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`frame ${field} must be an integer from 0 to ${max}, not ${value}`)
  }
}

function refuse (refusal: FrameRefusal, detail: string): ParsedFrame {
  return { ok: false, refusal, detail }
}
