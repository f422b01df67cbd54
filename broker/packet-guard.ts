// A byte-level MQTT framer that sees every packet's fixed header before the parser buffers its body, so an
// oversized packet is refused as soon as its length is announced, and an unsupported protocol level is
// answered with CONNACK 0x01 [MQTT-3.1.2-2] instead of a parser error.

export type GuardVerdict =
  | { readonly kind: 'too-large', readonly size: number }
  | { readonly kind: 'malformed-length' }
  | { readonly kind: 'unsupported-level', readonly level: number }

const HEADER = 0
const LENGTH = 1
const CONNECT_PREFIX = 2
const BODY = 3

const CONNECT = 1
// protocol name length (2) + "MQIsdp" (6) + level (1): enough of the first CONNECT to read its level
const CONNECT_PREFIX_BYTES = 9
const SUPPORTED_LEVELS = new Set([3, 4]) // MQTT 3.1 and 3.1.1

export class PacketFramer {
  private phase = HEADER
  private type = 0
  private length = 0
  private multiplier = 1
  private lengthBytes = 0
  private remaining = 0
  private packets = 0
  private prefix: number[] | undefined // the first bytes of the first CONNECT, while they are read

  constructor (private readonly maxBytes: number) {}

  /** Scans one chunk; returns a verdict at the first packet that must not reach the parser. */
  feed (buf: Uint8Array): GuardVerdict | undefined {
    const n = buf.length
    let i = 0
    while (i < n) {
      switch (this.phase) {
        case HEADER:
          this.type = (buf[i++] as number) >> 4
          this.length = 0
          this.multiplier = 1
          this.lengthBytes = 0
          this.phase = LENGTH
          break
        case LENGTH: {
          const b = buf[i++] as number
          this.length += (b & 0x7f) * this.multiplier
          this.multiplier *= 128
          this.lengthBytes++
          if ((b & 0x80) !== 0) {
            // the remaining length is at most four bytes [MQTT-2.2.3]
            if (this.lengthBytes === 4) return { kind: 'malformed-length' }
            break
          }
          const size = 1 + this.lengthBytes + this.length
          if (size > this.maxBytes) return { kind: 'too-large', size }
          this.remaining = this.length
          this.phase = this.packets === 0 && this.type === CONNECT ? CONNECT_PREFIX : BODY
          this.packets++
          if (this.remaining === 0) this.phase = HEADER
          break
        }
        case CONNECT_PREFIX: {
          const prefix = this.prefix ?? (this.prefix = [])
          const want = Math.min(CONNECT_PREFIX_BYTES, this.length) - prefix.length
          const take = Math.min(want, n - i)
          for (let k = 0; k < take; k++) prefix.push(buf[i + k] as number)
          i += take
          this.remaining -= take
          if (prefix.length === Math.min(CONNECT_PREFIX_BYTES, this.length)) {
            const verdict = this.checkLevel(prefix)
            this.prefix = undefined
            if (verdict !== undefined) return verdict
            this.phase = this.remaining === 0 ? HEADER : BODY
          }
          break
        }
        default: {
          const take = Math.min(this.remaining, n - i)
          i += take
          this.remaining -= take
          if (this.remaining === 0) this.phase = HEADER
        }
      }
    }
    return undefined
  }

  private checkLevel (p: readonly number[]): GuardVerdict | undefined {
    const nameLength = ((p[0] ?? 0) << 8) | (p[1] ?? 0)
    // only "MQTT" and "MQIsdp" are protocol names; anything else is left to the parser, which refuses it
    if (nameLength !== 4 && nameLength !== 6) return undefined
    const level = p[2 + nameLength]
    if (level === undefined) return undefined
    return SUPPORTED_LEVELS.has(level) ? undefined : { kind: 'unsupported-level', level }
  }
}

// CONNACK with return code 1, "unacceptable protocol level" [MQTT-3.2.2-4]
export const CONNACK_UNSUPPORTED_LEVEL = Buffer.from([0x20, 0x02, 0x00, 0x01])
