// MQTT 3.1.1 conformance over raw TCP: packets the spec forbids, built byte by byte where mqtt-packet's
// generator would refuse to build them, must close that connection and only that one. Each test title
// carries the spec rule it checks. Anonymous scratch mode lets raw clients log in without credentials.

import { connect as tcpConnect, type Socket } from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { MqttClient } from 'mqtt'
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet'
import { nextMessage, startRoost, type TestRoost } from './harness.ts'

// How long a server gets to close a violating connection; it does so at once, the margin is for loaded CI cores.
const CLOSE_WITHIN_MS = 3000
// How long a connection that must stay open is watched.
const STAYS_OPEN_MS = 300

// ---- raw packet building -----------------------------------------------------------------------------

/** The variable-length "remaining length" of the fixed header [MQTT-2.2.3]. */
function remainingLength (n: number): Buffer {
  const out: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return Buffer.from(out)
}

function packet (firstByte: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([firstByte]), remainingLength(body.length), body])
}

/** A length-prefixed MQTT string from raw bytes, so ill-formed UTF-8 can be sent [MQTT-1.5.3]. */
function str (s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

interface ConnectFields {
  readonly clientId?: string | Buffer
  readonly username?: string | Buffer
  readonly password?: string | Buffer
  readonly will?: { readonly topic: string | Buffer, readonly payload?: string, readonly qos?: number, readonly retain?: boolean }
  readonly clean?: boolean
  readonly level?: number
  readonly protocolName?: string
  // OR-ed into the connect flags after they are computed, to build inconsistent flags
  readonly extraFlags?: number
}

function connectBytes (f: ConnectFields = {}): Buffer {
  let flags = f.clean === false ? 0 : 0x02
  if (f.will !== undefined) flags |= 0x04 | ((f.will.qos ?? 0) << 3) | (f.will.retain === true ? 0x20 : 0)
  if (f.password !== undefined) flags |= 0x40
  if (f.username !== undefined) flags |= 0x80
  flags |= f.extraFlags ?? 0
  const parts = [str(f.protocolName ?? 'MQTT'), Buffer.from([f.level ?? 4, flags, 0, 60]), str(f.clientId ?? 'raw-client')]
  if (f.will !== undefined) parts.push(str(f.will.topic), str(f.will.payload ?? 'gone'))
  if (f.username !== undefined) parts.push(str(f.username))
  if (f.password !== undefined) parts.push(str(f.password))
  return packet(0x10, Buffer.concat(parts))
}

function publishBytes (topic: string | Buffer, opts: { qos?: number, messageId?: number, dup?: boolean, retain?: boolean, payload?: string } = {}): Buffer {
  const qos = opts.qos ?? 0
  const first = 0x30 | (opts.dup === true ? 0x08 : 0) | (qos << 1) | (opts.retain === true ? 0x01 : 0)
  const id = Buffer.alloc(2)
  id.writeUInt16BE(opts.messageId ?? 1)
  return packet(first, Buffer.concat([str(topic), qos > 0 ? id : Buffer.alloc(0), Buffer.from(opts.payload ?? 'x')]))
}

function subscribeBytes (filters: ReadonlyArray<readonly [string | Buffer, number]>, messageId = 1, firstByte = 0x82): Buffer {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(messageId)
  return packet(firstByte, Buffer.concat([id, ...filters.map(([f, qos]) => Buffer.concat([str(f), Buffer.from([qos])]))]))
}

function unsubscribeBytes (filters: ReadonlyArray<string | Buffer>, messageId = 1): Buffer {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(messageId)
  return packet(0xa2, Buffer.concat([id, ...filters.map(f => str(f))]))
}

// Strings the spec forbids, as the bytes a client would send.
const BAD_STRINGS: ReadonlyArray<readonly [string, string, Buffer]> = [
  ['[MQTT-1.5.3-1]', 'ill-formed UTF-8 (a lone continuation byte)', Buffer.from([0x61, 0x80, 0x62])],
  ['[MQTT-1.5.3-1]', 'an overlong encoding', Buffer.from([0x61, 0xc0, 0xaf])],
  ['[MQTT-1.5.3-1]', 'a UTF-16 surrogate encoded in UTF-8 (U+D800)', Buffer.from([0x61, 0xed, 0xa0, 0x80])],
  ['[MQTT-1.5.3-2]', 'U+0000', Buffer.from([0x61, 0x00, 0x62])],
  ['[MQTT-1.5.3-1]', 'a control character (U+0001)', Buffer.from([0x61, 0x01, 0x62])],
  ['[MQTT-1.5.3-1]', 'a C1 control character (U+0085)', Buffer.from([0x61, 0xc2, 0x85])],
]

// ---- a raw client ------------------------------------------------------------------------------------

class RawClient {
  readonly received: Packet[] = []
  private closedFlag = false
  private readonly closed: Promise<void>
  private waiters: Array<() => void> = []

  constructor (private readonly socket: Socket) {
    const p = mqttParser({ protocolVersion: 4 })
    p.on('packet', (pk: Packet) => { this.received.push(pk); this.wake() })
    // a server packet we cannot parse is a test failure, shown by the assertions on `received`
    p.on('error', () => {})
    socket.on('data', (b: Buffer) => { p.parse(b) })
    socket.on('error', () => {}) // ECONNRESET after the server destroys the socket is expected here
    this.closed = new Promise(resolve => socket.once('close', () => { this.closedFlag = true; resolve(); this.wake() }))
  }

  static open (port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = tcpConnect(port, '127.0.0.1', () => { socket.off('error', reject); resolve(new RawClient(socket)) })
      socket.once('error', reject)
    })
  }

  get isClosed (): boolean { return this.closedFlag }

  send (bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes)
  }

  /** The first received packet of type `cmd`, waiting up to `ms`. */
  async next (cmd: Packet['cmd'], ms = CLOSE_WITHIN_MS): Promise<Packet> {
    const end = Date.now() + ms
    for (;;) {
      const found = this.received.find(p => p.cmd === cmd)
      if (found !== undefined) return found
      if (this.closedFlag || Date.now() > end) throw new Error(`no ${cmd} (received: ${this.received.map(p => p.cmd).join(', ') || 'nothing'}; closed: ${this.closedFlag})`)
      await this.wait(end - Date.now())
    }
  }

  /** Resolves when the server has closed the connection; fails after `ms`. */
  async expectClosed (ms = CLOSE_WITHIN_MS): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms) })
    try {
      await Promise.race([this.closed, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  async expectOpen (ms = STAYS_OPEN_MS): Promise<void> {
    await new Promise(resolve => setTimeout(resolve, ms))
    expect(this.closedFlag, 'the server closed a conforming connection').toBe(false)
  }

  /** CONNECT as an anonymous client and wait for CONNACK 0. */
  async login (clientId: string): Promise<void> {
    this.send(generate({ cmd: 'connect', clientId, protocolVersion: 4, protocolId: 'MQTT', clean: true, keepalive: 60 }))
    const connack = await this.next('connack')
    expect(connack).toMatchObject({ returnCode: 0 })
  }

  destroy (): void { this.socket.destroy() }

  private wait (ms: number): Promise<void> {
    return new Promise(resolve => {
      const timer = setTimeout(done, Math.max(ms, 0))
      const waiters = this.waiters
      function done (): void { clearTimeout(timer); resolve() }
      waiters.push(done)
    })
  }

  private wake (): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }
}

// ---- the tests ---------------------------------------------------------------------------------------

describe('MQTT 3.1.1 conformance of the broker', () => {
  let roost: TestRoost
  let bystander: MqttClient
  let bystanderCloses = 0
  const raws: RawClient[] = []
  let n = 0

  async function raw (): Promise<RawClient> {
    const r = await RawClient.open(roost.mqttPort)
    raws.push(r)
    return r
  }
  /** A raw client that has logged in, ready to send a violating packet. */
  async function loggedIn (): Promise<RawClient> {
    const r = await raw()
    await r.login(`raw-${++n}`)
    return r
  }
  /** A CONNECT that breaks section 3.1 is answered by closing the connection, without a CONNACK [MQTT-3.1.4-1]. */
  async function refusedAtConnect (r: RawClient): Promise<void> {
    await r.expectClosed()
    expect(r.received.map(p => p.cmd)).toEqual([])
  }

  beforeAll(async () => {
    roost = await startRoost({ env: { ROOST_ANONYMOUS: 'true', ROOST_MAX_PACKET_BYTES: '4096' } })
    bystander = await roost.connect({ clientId: 'bystander' })
    bystander.on('close', () => { bystanderCloses++ })
    await bystander.subscribeAsync('bystander/#', { qos: 1 })
  })

  // The violating connection is the only one closed [MQTT-4.8.0-1]: a well-behaved client keeps working.
  afterEach(async () => {
    const echo = nextMessage(bystander, t => t === 'bystander/ping')
    await bystander.publishAsync('bystander/ping', 'still here', { qos: 1 })
    await echo
    expect(bystanderCloses).toBe(0)
    for (const r of raws.splice(0)) r.destroy()
  })

  afterAll(async () => { await roost.close() })

  describe('UTF-8 strings [MQTT-1.5.3]', () => {
    describe.each(BAD_STRINGS)('%s %s', (_id, _what, bad) => {
      it('in the client id closes the connection', async () => {
        const r = await raw()
        r.send(connectBytes({ clientId: bad }))
        await refusedAtConnect(r)
      })

      it('in the user name closes the connection', async () => {
        const r = await raw()
        r.send(connectBytes({ username: bad, password: 'x' }))
        await refusedAtConnect(r)
      })

      it('in the will topic closes the connection', async () => {
        const r = await raw()
        r.send(connectBytes({ will: { topic: Buffer.concat([Buffer.from('scratch/'), bad]) } }))
        await refusedAtConnect(r)
      })

      it('in a PUBLISH topic name closes the connection', async () => {
        const r = await loggedIn()
        r.send(publishBytes(Buffer.concat([Buffer.from('scratch/'), bad]), { qos: 1 }))
        await r.expectClosed()
        expect(r.received.filter(p => p.cmd === 'puback')).toEqual([])
      })

      it('in a SUBSCRIBE topic filter closes the connection', async () => {
        const r = await loggedIn()
        r.send(subscribeBytes([[Buffer.concat([Buffer.from('scratch/'), bad]), 0]]))
        await r.expectClosed()
        expect(r.received.filter(p => p.cmd === 'suback')).toEqual([])
      })
    })

    it('[MQTT-1.5.3-3] a BOM (U+FEFF) in a topic is an ordinary character and is delivered, not stripped', async () => {
      const topic = 'bystander/\uFEFFbom'
      const echo = nextMessage(bystander, t => t === topic)
      const r = await loggedIn()
      r.send(publishBytes(topic, { qos: 0 }))
      await echo
      await r.expectOpen()
    })
  })

  describe('CONNECT', () => {
    it('[MQTT-3.1.2-3] the reserved connect flag set closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ extraFlags: 0x01 }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.2-13] will QoS without the will flag closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ extraFlags: 0x08 }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.2-15] will retain without the will flag closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ extraFlags: 0x20 }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.2-14] will QoS 3 closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ will: { topic: 'scratch/will', qos: 3 } }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.2-22] a password without a user name closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ password: 'secret' }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.3.2-2] a will topic with a wildcard closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ will: { topic: 'scratch/+' } }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.2-1] an unknown protocol name closes the connection', async () => {
      const r = await raw()
      r.send(connectBytes({ protocolName: 'MQTX' }))
      await refusedAtConnect(r)
    })

    it.each([5, 6, 2])('[MQTT-3.1.2-2] protocol level %i is answered with CONNACK return code 1, then the connection is closed', async level => {
      const r = await raw()
      r.send(connectBytes({ level }))
      expect(await r.next('connack')).toMatchObject({ returnCode: 1 })
      await r.expectClosed()
    })

    it('[MQTT-3.1.2-2] MQTT 3.1 (protocol name MQIsdp, level 3) is accepted', async () => {
      const r = await raw()
      r.send(connectBytes({ protocolName: 'MQIsdp', level: 3, clientId: 'mqtt31' }))
      expect(await r.next('connack')).toMatchObject({ returnCode: 0 })
      await r.expectOpen()
    })

    it('[MQTT-3.1.3-8] an empty client id with clean session 0 is answered with CONNACK 0x02, then closed', async () => {
      const r = await raw()
      r.send(connectBytes({ clientId: '', clean: false }))
      expect(await r.next('connack')).toMatchObject({ returnCode: 2 })
      await r.expectClosed()
    })

    it('[MQTT-3.1.3-6] an empty client id with clean session 1 is accepted', async () => {
      const r = await raw()
      r.send(connectBytes({ clientId: '', clean: true }))
      expect(await r.next('connack')).toMatchObject({ returnCode: 0 })
      await r.expectOpen()
    })

    it('[MQTT-3.1.0-1] a first packet other than CONNECT closes the connection', async () => {
      const r = await raw()
      r.send(publishBytes('scratch/early', { qos: 0 }))
      await refusedAtConnect(r)
    })

    it('[MQTT-3.1.0-1] a PINGREQ before CONNECT closes the connection', async () => {
      const r = await raw()
      r.send(Buffer.from([0xc0, 0x00]))
      await refusedAtConnect(r)
      expect(r.received.filter(p => p.cmd === 'pingresp')).toEqual([])
    })

    it('[MQTT-3.1.0-2] a second CONNECT closes the connection', async () => {
      const r = await loggedIn()
      r.send(connectBytes({ clientId: 'again' }))
      await r.expectClosed()
    })
  })

  describe('PUBLISH', () => {
    it('[MQTT-2.3.1-1] a QoS 1 PUBLISH with packet identifier 0 closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/id0', { qos: 1, messageId: 0 }))
      await r.expectClosed()
      expect(r.received.filter(p => p.cmd === 'puback')).toEqual([])
    })

    it('[MQTT-2.3.1-1] a QoS 2 PUBLISH with packet identifier 0 closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/id0', { qos: 2, messageId: 0 }))
      await r.expectClosed()
    })

    it('[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/dup', { qos: 0, dup: true }))
      await r.expectClosed()
    })

    it('[MQTT-3.3.1-4] a PUBLISH with QoS 3 closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/qos3', { qos: 3 }))
      await r.expectClosed()
    })

    it('[MQTT-3.3.2-2] a PUBLISH topic name with a wildcard closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/+', { qos: 1 }))
      await r.expectClosed()
    })

    it('[MQTT-4.7.3-1] a PUBLISH with an empty topic name closes the connection', async () => {
      const r = await loggedIn()
      r.send(publishBytes('', { qos: 1 }))
      await r.expectClosed()
    })

    it('a violating PUBLISH is not delivered to subscribers', async () => {
      const r = await loggedIn()
      const seen: string[] = []
      const on = (t: string): void => { seen.push(t) }
      bystander.on('message', on)
      r.send(publishBytes('bystander/dup', { qos: 0, dup: true }))
      await r.expectClosed()
      await new Promise(resolve => setTimeout(resolve, STAYS_OPEN_MS))
      bystander.off('message', on)
      expect(seen).not.toContain('bystander/dup')
    })

    it('a conforming QoS 1 PUBLISH is acknowledged and the connection stays open', async () => {
      const r = await loggedIn()
      r.send(publishBytes('scratch/ok', { qos: 1, messageId: 7 }))
      expect(await r.next('puback')).toMatchObject({ messageId: 7 })
      await r.expectOpen()
    })
  })

  describe('SUBSCRIBE and UNSUBSCRIBE', () => {
    it('[MQTT-3.8.3-3] a SUBSCRIBE without topic filters closes the connection', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([]))
      await r.expectClosed()
      expect(r.received.filter(p => p.cmd === 'suback')).toEqual([])
    })

    it('[MQTT-3.8.1-1] a SUBSCRIBE with reserved header flags other than 0010 closes the connection', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([['scratch/x', 0]], 1, 0x80))
      await r.expectClosed()
    })

    it('[MQTT-3.8.3-4] a SUBSCRIBE requesting QoS 3 closes the connection', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([['scratch/x', 3]]))
      await r.expectClosed()
    })

    it('[MQTT-2.3.1-1] a SUBSCRIBE with packet identifier 0 closes the connection', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([['scratch/x', 0]], 0))
      await r.expectClosed()
    })

    it('[MQTT-4.7.1-2] a SUBSCRIBE with # not last in the filter closes the connection', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([['scratch/#/x', 0]]))
      await r.expectClosed()
    })

    it('[MQTT-3.10.3-2] an UNSUBSCRIBE without topic filters closes the connection', async () => {
      const r = await loggedIn()
      r.send(unsubscribeBytes([]))
      await r.expectClosed()
    })

    it('[MQTT-3.9.3-1] a conforming SUBSCRIBE gets a SUBACK with one return code per filter, in order', async () => {
      const r = await loggedIn()
      r.send(subscribeBytes([['scratch/a', 0], ['scratch/b', 1], ['$SYS/#', 1]], 9))
      // $SYS belongs to the broker: refused with 0x80, the others granted at the requested QoS
      expect(await r.next('suback')).toMatchObject({ messageId: 9, granted: [0, 1, 128] })
      await r.expectOpen()
    })
  })

  describe('packets only a server sends [MQTT-4.8.0-1]', () => {
    const serverPackets: ReadonlyArray<readonly [string, Buffer]> = [
      ['CONNACK', Buffer.from([0x20, 0x02, 0x00, 0x00])],
      ['SUBACK', Buffer.from([0x90, 0x03, 0x00, 0x01, 0x00])],
      ['UNSUBACK', Buffer.from([0xb0, 0x02, 0x00, 0x01])],
      ['PINGRESP', Buffer.from([0xd0, 0x00])],
    ]
    it.each(serverPackets)('a client sending %s is disconnected', async (_name, bytes) => {
      const r = await loggedIn()
      r.send(bytes)
      await r.expectClosed()
    })
  })

  describe('framing [MQTT-2.2.3]', () => {
    it('a remaining length longer than four bytes closes the connection', async () => {
      const r = await loggedIn()
      r.send(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))
      await r.expectClosed()
    })

    it('a packet announcing more than ROOST_MAX_PACKET_BYTES is refused before its body arrives', async () => {
      const r = await loggedIn()
      // only the fixed header of a 1 MB PUBLISH: the server must not wait for the body
      r.send(Buffer.concat([Buffer.from([0x30]), remainingLength(1024 * 1024)]))
      await r.expectClosed()
    })

    it('a PINGREQ is answered with PINGRESP [MQTT-3.12.4-1]', async () => {
      const r = await loggedIn()
      r.send(Buffer.from([0xc0, 0x00]))
      await r.next('pingresp')
      await r.expectOpen()
    })
  })
})
