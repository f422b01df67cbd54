// The load generator's MQTT 3.1.1 wire: packets built once with mqtt-packet, then copied and patched per
// message, and a frame scanner that reads only what the benchmark counts. An MQTT.js client (or
// mqtt-packet's object-per-packet parser) saturates its own core before a broker does.

import { connect as netConnect, type Socket } from 'node:net'
import { generate, type IPublishPacket } from 'mqtt-packet'

export const PACKET_CONNACK = 2
export const PACKET_PUBLISH = 3
export const PACKET_PUBACK = 4
export const PACKET_SUBACK = 9
export const PACKET_PINGRESP = 13


// MQTT 3.1.1: 4 = protocol level of 3.1.1
const MQTT_311 = 4

export interface Login {
  readonly clientId: string
  readonly username?: string
  readonly password?: string
  // seconds; 0 turns keepalive off so idle connections send nothing while memory is measured
  readonly keepalive?: number
}

/** Called once per complete packet: first byte (type and flags) and the body's bounds within `buf`. */
export type PacketHandler = (first: number, buf: Buffer, start: number, end: number) => void

/**
 * Splits a TCP byte stream into MQTT packets without allocating per packet: only a packet cut across
 * two reads is copied (once, into the next read's buffer).
 */
export class FrameScanner {
  private rest: Buffer | undefined

  constructor (private readonly onPacket: PacketHandler) {}

  feed (chunk: Buffer): void {
    const buf = this.rest === undefined ? chunk : Buffer.concat([this.rest, chunk])
    this.rest = undefined
    const n = buf.length
    let i = 0
    while (i < n) {
      if (n - i < 2) break
      // remaining length: 1–4 bytes, 7 bits each [MQTT-2.2.3]
      let length = 0
      let multiplier = 1
      let j = i + 1
      let complete = false
      for (let k = 0; k < 4 && j < n; k++) {
        const b = buf[j++] as number
        length += (b & 0x7f) * multiplier
        multiplier *= 128
        if ((b & 0x80) === 0) { complete = true; break }
      }
      if (!complete || j + length > n) break
      this.onPacket(buf[i] as number, buf, j, j + length)
      i = j + length
    }
    if (i < n) this.rest = buf.subarray(i)
  }
}

export function connectPacket (login: Login): Buffer {
  return generate({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: MQTT_311,
    clean: true,
    clientId: login.clientId,
    keepalive: login.keepalive ?? 0,
    ...(login.username !== undefined ? { username: login.username } : {}),
    ...(login.password !== undefined ? { password: Buffer.from(login.password) } : {}),
  })
}

export function subscribePacket (filter: string, qos: 0 | 1, messageId: number): Buffer {
  return generate({ cmd: 'subscribe', messageId, subscriptions: [{ topic: filter, qos }] })
}

/** A PUBLISH to copy per message; `idOffset` is where its packet identifier sits (QoS 1), -1 at QoS 0. */
export interface PublishTemplate {
  readonly bytes: Buffer
  readonly idOffset: number
}

export function publishTemplate (topic: string, payload: Buffer, qos: 0 | 1): PublishTemplate {
  const bytes = generate({ cmd: 'publish', topic, payload, qos, messageId: qos === 1 ? 1 : undefined, retain: false, dup: false } as IPublishPacket)
  if (qos === 0) return { bytes, idOffset: -1 }
  // fixed header byte + remaining-length bytes, then the 2-byte topic length and the topic
  let lengthBytes = 1
  while (((bytes[lengthBytes] as number) & 0x80) !== 0) lengthBytes++
  const topicLength = Buffer.byteLength(topic)
  return { bytes, idOffset: 1 + lengthBytes + 2 + topicLength }
}

export function pubackPacket (messageId: number, into: Buffer, at: number): void {
  into[at] = PACKET_PUBACK << 4
  into[at + 1] = 2
  into[at + 2] = messageId >> 8
  into[at + 3] = messageId & 0xff
}
export const PUBACK_BYTES = 4

export interface OpenOptions {
  readonly port: number
  readonly host?: string
  // a 127.0.0.x source address: each one has its own ephemeral port range, so 10k+ connections fit
  readonly localAddress?: string
}

/**
 * Opens a TCP connection, sends CONNECT and resolves once CONNACK 0 arrives; rejects on any other
 * CONNACK or a closed socket. The returned socket's data listener is removed: the caller attaches its own.
 */
export function openSession (opts: OpenOptions, login: Login, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ port: opts.port, host: opts.host ?? '127.0.0.1', ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}) })
    socket.setNoDelay(true)
    let settled = false
    const fail = (err: Error): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      reject(err)
    }
    const timer = setTimeout(() => fail(new Error(`no CONNACK for ${login.clientId} within ${timeoutMs} ms`)), timeoutMs)
    const scanner = new FrameScanner((first, buf, start) => {
      if (first >> 4 !== PACKET_CONNACK) return fail(new Error(`expected CONNACK, got packet type ${first >> 4}`))
      const code = buf[start + 1] as number
      if (code !== 0) return fail(new Error(`CONNACK ${code} for ${login.clientId}`))
      settled = true
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('error', fail)
      socket.off('close', onClose)
      resolve(socket)
    })
    const onData = (chunk: Buffer): void => scanner.feed(chunk)
    const onClose = (): void => fail(new Error(`connection of ${login.clientId} closed before CONNACK`))
    socket.on('data', onData)
    socket.once('error', fail)
    socket.once('close', onClose)
    socket.write(connectPacket(login))
  })
}
