// Raw MQTT connections over TCP, TLS and WebSocket for tests that must send bytes a well-behaved client
// never would (oversized or malformed headers) or stop talking mid-session (keepalive expiry).

import { connect as tcpConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import mqttPacket, { type IConnectPacket, type Packet } from 'mqtt-packet'
import WebSocket from 'ws'

export interface RawConnection {
  /** Packets the broker sent, parsed as MQTT 3.1.1. */
  readonly packets: Packet[]
  /** Resolves when the data is handed to the socket; rejects once the connection is gone. */
  send (data: Uint8Array): Promise<void>
  /** Resolves when the connection is closed, by either side. */
  readonly closed: Promise<void>
  isClosed (): boolean
  /** The next packet of kind `cmd` (already received or still to come), or a rejection after `ms`. */
  next (cmd: Packet['cmd'], ms?: number): Promise<Packet>
  destroy (): void
}

interface Transport {
  write (data: Uint8Array, cb: (err?: Error | null) => void): void
  destroy (): void
}

function rawConnection (transport: Transport, onData: (feed: (buf: Buffer) => void) => void, onClose: (fire: () => void) => void): RawConnection {
  const packets: Packet[] = []
  const waiters = new Set<() => void>()
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  parser.on('packet', p => {
    packets.push(p)
    for (const w of waiters) w()
  })
  // what the broker sends is well-formed; a parse error here would be a broker bug surfacing as a timeout
  parser.on('error', () => {})
  onData(buf => { parser.parse(buf) })
  let closed = false
  const closedPromise = new Promise<void>(resolve => onClose(() => {
    closed = true
    resolve()
    for (const w of waiters) w()
  }))
  return {
    packets,
    send: data => new Promise((resolve, reject) => {
      if (closed) return reject(new Error('connection closed'))
      transport.write(data, err => (err === undefined || err === null ? resolve() : reject(err)))
    }),
    closed: closedPromise,
    isClosed: () => closed,
    next (cmd, ms = 5000) {
      let seen = 0
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no ${cmd} within ${ms} ms`)) }, ms)
        function check (): void {
          for (; seen < packets.length; seen++) {
            const p = packets[seen] as Packet
            if (p.cmd === cmd) {
              clearTimeout(timer)
              waiters.delete(check)
              return resolve(p)
            }
          }
          if (closed) {
            clearTimeout(timer)
            waiters.delete(check)
            reject(new Error(`connection closed before ${cmd}`))
          }
        }
        waiters.add(check)
        check()
      })
    },
    destroy: () => transport.destroy(),
  }
}

function fromSocket (socket: Socket): RawConnection {
  // the broker cutting us off shows up as EPIPE/ECONNRESET on our next write; that is the expected outcome
  socket.on('error', () => {})
  return rawConnection(
    { write: (data, cb) => { socket.write(data, cb) }, destroy: () => socket.destroy() },
    feed => socket.on('data', feed),
    fire => socket.once('close', fire),
  )
}

export function rawTcp (port: number): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port }, () => {
      socket.off('error', reject)
      socket.setNoDelay(true)
      resolve(fromSocket(socket))
    })
    socket.once('error', reject)
  })
}

export function rawTls (port: number, ca: Buffer): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      socket.off('error', reject)
      resolve(fromSocket(socket))
    })
    socket.once('error', reject)
  })
}

export function rawWebSocket (url: string): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'mqtt')
    ws.once('error', reject)
    ws.once('open', () => {
      ws.off('error', reject)
      ws.on('error', () => {}) // as with sockets: being cut off is the expected outcome
      resolve(rawConnection(
        { write: (data, cb) => ws.send(data, { binary: true }, cb), destroy: () => ws.terminate() },
        feed => ws.on('message', (data: WebSocket.RawData) => feed(Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data))),
        fire => ws.once('close', fire),
      ))
    })
  })
}

/** Sends CONNECT (MQTT 3.1.1 unless the packet says otherwise) and returns the CONNACK return code. */
export async function rawLogin (conn: RawConnection, connect: Omit<IConnectPacket, 'cmd'>): Promise<number> {
  const connack = conn.next('connack')
  await conn.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 60, ...connect }))
  const p = await connack
  return p.cmd === 'connack' ? (p.returnCode ?? 0) : -1
}

/** An MQTT fixed header for a PUBLISH (QoS 0) announcing `remainingLength` bytes to follow [MQTT-2.2.3]. */
export function publishHeader (remainingLength: number): Buffer {
  const bytes = [0x30]
  let n = remainingLength
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    bytes.push(b)
  } while (n > 0)
  return Buffer.from(bytes)
}

/** Keeps sending `chunkBytes` chunks until the connection is gone or `maxBytes` are sent; returns bytes sent. */
export async function streamUntilClosed (conn: RawConnection, maxBytes: number, chunkBytes = 64 * 1024): Promise<number> {
  const chunk = Buffer.alloc(chunkBytes, 0x61)
  let sent = 0
  while (!conn.isClosed() && sent < maxBytes) {
    try {
      await conn.send(chunk)
    } catch {
      break
    }
    sent += chunk.length
  }
  return sent
}

/** Resolves with `p`, or rejects with `what` after `ms`. */
export function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms) })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}
