// ROOST_MAX_PACKET_BYTES: an oversized packet is refused from its announced length, before its body is
// buffered, on every listener, without disturbing anyone else; and the broker's memory stays flat under
// a crowd of such clients.

import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect as tcpConnect, type Socket } from 'node:net'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, freshDataDir, nextMessage, startRoost, testEnv, type TestRoost } from './harness.ts'
import { makeTestCert, type TestCert } from './tls.ts'
import { publishHeader, rawLogin, rawTcp, rawTls, rawWebSocket, streamUntilClosed, within, type RawConnection } from './raw-mqtt.ts'
import { sampleValue, scrape } from './prometheus.ts'

const LIMIT = 4096
const ANNOUNCED = 100 * 1024 * 1024 // 100 MB: what a hostile or broken client claims to send
const STREAM_CAP = 16 * 1024 * 1024 // a client stops streaming here and only waits to be cut off (bounds the test, not the broker)
const CUT_WITHIN_MS = 10_000

interface Listener {
  readonly name: string
  raw (): Promise<RawConnection>
  client (opts: IClientOptions): Promise<MqttClient>
}

/** True until the client is closed or goes offline: the bystander's health. */
function watchConnection (client: MqttClient): () => boolean {
  let up = true
  client.once('close', () => { up = false })
  client.once('offline', () => { up = false })
  return () => up && client.connected
}

/** The client publishes on a scratch topic it subscribes to and gets its own message back. */
async function roundTrip (client: MqttClient, topic: string): Promise<void> {
  await client.subscribeAsync(topic, { qos: 1 })
  const echoed = nextMessage(client, t => t === topic)
  await client.publishAsync(topic, 'still here', { qos: 1 })
  expect((await echoed).payload.toString()).toBe('still here')
}

describe('packet limit on every listener', () => {
  let roost: TestRoost
  let cert: TestCert
  let listeners: Listener[]

  beforeAll(async () => {
    cert = makeTestCert()
    roost = await startRoost({ env: { ...cert.env, ROOST_ANONYMOUS: 'true', ROOST_MAX_PACKET_BYTES: String(LIMIT) } })
    const mqtts = roost.platform.ports.mqtts
    if (mqtts === undefined) throw new Error('the TLS listener did not start')
    const wsUrl = `ws://127.0.0.1:${roost.httpPort}/mqtt`
    listeners = [
      { name: 'TCP', raw: () => rawTcp(roost.mqttPort), client: o => roost.connect(o) },
      { name: 'TLS', raw: () => rawTls(mqtts, cert.cert), client: o => roost.connect({ ca: cert.cert, servername: 'localhost', ...o }, `mqtts://127.0.0.1:${mqtts}`) },
      { name: 'WebSocket', raw: () => rawWebSocket(wsUrl), client: o => roost.connect(o, wsUrl) },
    ]
  })
  afterAll(async () => {
    await roost?.close()
    cert?.remove()
  })

  function listener (name: string): Listener {
    const l = listeners.find(l => l.name === name)
    if (l === undefined) throw new Error('no listener ' + name)
    return l
  }

  for (const name of ['TCP', 'TLS', 'WebSocket']) {
    for (const phase of ['before CONNECT', 'after a successful CONNECT'] as const) {
      it(`over ${name}, a client announcing a 100 MB PUBLISH ${phase} is cut off while another client is unaffected`, async () => {
        const l = listener(name)
        const tag = `${name}-${phase === 'before CONNECT' ? 'pre' : 'post'}`.toLowerCase()
        const bystander = await l.client({ clientId: `bystander-${tag}` })
        const bystanderUp = watchConnection(bystander)
        const refusedBefore = sampleValue(await scrape(roost), 'roost_refusals_total', { code: 'PACKET_TOO_LARGE' }) ?? 0

        const conn = await l.raw()
        if (phase === 'after a successful CONNECT') expect(await rawLogin(conn, { clientId: `big-${tag}` })).toBe(0)
        await conn.send(publishHeader(ANNOUNCED)).catch(() => {})
        const streamed = streamUntilClosed(conn, STREAM_CAP)
        // bytes sent says little (the kernel's socket buffers take megabytes on loopback); being closed
        // while the announced packet is far from complete is what shows the cut
        await within(conn.closed, CUT_WITHIN_MS, 'the oversized client is cut off')
        await streamed

        expect(bystanderUp()).toBe(true)
        await roundTrip(bystander, `scratch/${tag}`)
        expect(bystanderUp()).toBe(true)
        const refusedAfter = sampleValue(await scrape(roost), 'roost_refusals_total', { code: 'PACKET_TOO_LARGE' })
        expect(refusedAfter).toBe(refusedBefore + 1)
      })
    }
  }

  it('a PUBLISH of 4000 payload bytes under a 4096-byte limit is delivered', async () => {
    const sub = await roost.connect({ clientId: 'under-sub' })
    await sub.subscribeAsync('scratch/under', { qos: 1 })
    const pub = await roost.connect({ clientId: 'under-pub' })
    const got = nextMessage(sub, t => t === 'scratch/under')
    const payload = Buffer.alloc(4000, 0x41)
    await pub.publishAsync('scratch/under', payload, { qos: 1 })
    expect((await got).payload.equals(payload)).toBe(true)
    expect(pub.connected).toBe(true)
  })

  it('a PUBLISH of exactly the limit is delivered and one byte more closes the sender\'s connection', async () => {
    const topic = 'scratch/edge'
    // QoS 0 PUBLISH: 1 type byte, 2 length bytes (128..16383), 2 + topic, payload
    const payloadBytes = LIMIT - 1 - 2 - 2 - topic.length
    const exact = mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.alloc(payloadBytes, 0x42), qos: 0, retain: false, dup: false })
    expect(exact.length).toBe(LIMIT)

    const sub = await roost.connect({ clientId: 'edge-sub' })
    await sub.subscribeAsync(topic, { qos: 0 })
    const got = nextMessage(sub, t => t === topic)
    const pub = await roost.connect({ clientId: 'edge-pub' })
    const pubUp = watchConnection(pub)
    pub.publish(topic, Buffer.alloc(payloadBytes, 0x42), { qos: 0 })
    expect((await got).payload.length).toBe(payloadBytes)
    expect(pubUp()).toBe(true)

    const closed = new Promise<void>(resolve => pub.once('close', () => resolve()))
    pub.publish(topic, Buffer.alloc(payloadBytes + 1, 0x42), { qos: 0 })
    await within(closed, CUT_WITHIN_MS, 'the sender of LIMIT+1 bytes is cut off')
    expect(sub.connected).toBe(true)
  })

  it('over WebSocket, a single frame announcing 100 MB is refused at its header with close code 1009, and a bystander is unaffected', async () => {
    const bystander = await listener('WebSocket').client({ clientId: 'bystander-ws-frame' })
    const bystanderUp = watchConnection(bystander)
    const { socket, received } = await upgradeRaw(roost.httpPort, '/mqtt')
    // FIN + binary opcode, masked, 64-bit length [RFC 6455 §5.2], then a masking key; the body never comes whole
    const header = Buffer.alloc(14)
    header[0] = 0x82
    header[1] = 0x80 | 127
    header.writeBigUInt64BE(BigInt(ANNOUNCED), 2)
    randomBytes(4).copy(header, 10)
    socket.write(header)
    const chunk = Buffer.alloc(64 * 1024, 0x61)
    const closeFrame = (): Buffer | undefined => {
      const all = Buffer.concat(received)
      const i = all.indexOf(0x88) // a close frame from the server (unmasked)
      return i === -1 || all.length < i + 4 ? undefined : all.subarray(i, i + 4)
    }
    for (let sent = 0; sent < STREAM_CAP && closeFrame() === undefined && !socket.destroyed; sent += chunk.length) {
      await new Promise<void>(resolve => socket.write(chunk, () => resolve()))
    }
    const frame = await eventually(closeFrame, CUT_WITHIN_MS, 'a close frame')
    expect(frame.readUInt16BE(2)).toBe(1009) // message too big [RFC 6455 §7.4.1]
    socket.destroy()
    expect(bystanderUp()).toBe(true)
    await roundTrip(bystander, 'scratch/ws-frame')
  })

  it('[MQTT-2.2.3] a remaining length longer than four bytes closes the connection, before and after CONNECT', async () => {
    const before = await rawTcp(roost.mqttPort)
    await before.send(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])).catch(() => {})
    await within(before.closed, CUT_WITHIN_MS, 'the malformed client is cut off')

    const after = await rawTcp(roost.mqttPort)
    expect(await rawLogin(after, { clientId: 'five-byte-length' })).toBe(0)
    await after.send(Buffer.from([0x30, 0x80, 0x80, 0x80, 0x80, 0x01])).catch(() => {})
    await within(after.closed, CUT_WITHIN_MS, 'the malformed client is cut off after CONNECT')
    expect(after.packets.map(p => p.cmd)).toEqual(['connack'])
  })
})

/** A raw WebSocket upgrade (subprotocol mqtt) on a plain socket, so a test can write frames ws would refuse to build. */
async function upgradeRaw (port: number, path: string): Promise<{ socket: Socket, received: Buffer[] }> {
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = tcpConnect({ host: '127.0.0.1', port }, () => resolve(s))
    s.once('error', reject)
  })
  socket.on('error', () => {}) // being cut off is the expected outcome
  const received: Buffer[] = []
  const upgraded = new Promise<void>((resolve, reject) => {
    socket.on('data', (d: Buffer) => {
      received.push(d)
      const text = Buffer.concat(received).toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (end === -1) return
      if (!text.startsWith('HTTP/1.1 101')) return reject(new Error('upgrade refused: ' + text.slice(0, end)))
      // keep only what follows the HTTP response: WebSocket frames
      const rest = Buffer.concat(received).subarray(end + 4)
      received.length = 0
      if (rest.length > 0) received.push(rest)
      socket.removeAllListeners('data')
      socket.on('data', (f: Buffer) => received.push(f))
      resolve()
    })
  })
  socket.write([
    `GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Protocol: mqtt', '', '',
  ].join('\r\n'))
  await within(upgraded, 5000, 'the WebSocket upgrade')
  return { socket, received }
}

// ---- memory: the real CLI in a child process, its RSS read from /proc ----------------------------------

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const ATTACKERS = 50
const PER_ATTACKER_CAP = 8 * 1024 * 1024 // 50 × 8 MB = 400 MB if the broker buffered what it was sent
const RSS_GROWTH_MAX = 50 * 1024 * 1024

function rssBytes (pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no ${field} in /proc/${pid}/status`)
  return Number(m[1]) * 1024
}

/** Resets the kernel's peak-RSS mark (VmHWM) so it measures from now; false where the kernel refuses. */
function resetPeak (pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** Starts `roost start` and resolves with its MQTT port once it logs "roost is ready". */
function startCli (env: Record<string, string>): Promise<{ child: ChildProcess, mqttPort: number }> {
  const inherited = { ...process.env }
  delete inherited.NODE_OPTIONS // vitest's worker options are not the CLI's
  const child = spawn(process.execPath, ['bin/roost.mjs', 'start'], { cwd: ROOT, env: { ...inherited, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
    lines.on('line', line => {
      let entry: { msg?: string, mqtt?: number }
      try { entry = JSON.parse(line) as typeof entry } catch { return }
      if (entry.msg === 'roost is ready' && typeof entry.mqtt === 'number') resolve({ child, mqttPort: entry.mqtt })
    })
    child.once('exit', code => reject(new Error(`roost exited (${code}) before it was ready: ${stderr}`)))
  })
}

describe('broker memory under oversized packets', () => {
  let child: ChildProcess | undefined
  let dataDir: string

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise(resolve => child?.once('exit', resolve))
      child.kill('SIGTERM')
      await within(exited, 10_000, 'roost exits on SIGTERM').catch(() => child?.kill('SIGKILL'))
    }
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true })
  })

  it(`${ATTACKERS} clients each announcing a 100 MB PUBLISH and streaming data grow the broker's RSS by less than 50 MB`, async () => {
    dataDir = freshDataDir()
    const started = await startCli(testEnv(dataDir, { ROOST_LOG_LEVEL: 'info', ROOST_ANONYMOUS: 'true' }))
    child = started.child
    const pid = child.pid as number

    async function attack (n: number, tag: string): Promise<number[]> {
      return await Promise.all(Array.from({ length: n }, async (_v, i) => {
        const conn = await rawTcp(started.mqttPort)
        // half announce it before CONNECT, half after a successful anonymous login
        if (i % 2 === 1) expect(await rawLogin(conn, { clientId: `${tag}-${i}` })).toBe(0)
        await conn.send(publishHeader(ANNOUNCED)).catch(() => {})
        const sent = await streamUntilClosed(conn, PER_ATTACKER_CAP)
        await within(conn.closed, CUT_WITHIN_MS, `attacker ${tag}-${i} is cut off`)
        return sent
      }))
    }

    // warm-up: ordinary logins and publishes, and a few attackers, so JIT and pools are in the baseline
    const warm = await Promise.all(Array.from({ length: 20 }, (_v, i) => mqtt.connectAsync(`mqtt://127.0.0.1:${started.mqttPort}`, { clientId: `warm-${i}`, reconnectPeriod: 0 })))
    await Promise.all(warm.map(c => c.publishAsync('scratch/warm', 'x', { qos: 1 })))
    await Promise.all(warm.map(c => c.endAsync()))
    await attack(6, 'warm')
    await new Promise(resolve => setTimeout(resolve, 500))

    const baseline = rssBytes(pid, 'VmRSS')
    const peakMarkReset = resetPeak(pid)
    let sampledPeak = baseline
    const sampler = setInterval(() => { sampledPeak = Math.max(sampledPeak, rssBytes(pid, 'VmRSS')) }, 10)
    let sent: number[]
    try {
      sent = await attack(ATTACKERS, 'attacker')
    } finally {
      clearInterval(sampler)
    }
    const after = rssBytes(pid, 'VmRSS')
    const peak = Math.max(sampledPeak, after, peakMarkReset ? rssBytes(pid, 'VmHWM') : 0)
    const mb = (n: number): string => (n / 1024 / 1024).toFixed(1) + ' MB'
    console.log(`[packet-limit memory] baseline ${mb(baseline)}, peak ${mb(peak)} (${peakMarkReset ? 'VmHWM' : 'sampled'}), after ${mb(after)}, growth ${mb(peak - baseline)}; attackers sent ${mb(sent.reduce((a, b) => a + b, 0))} in all, at most ${mb(Math.max(...sent))} each`)

    expect(peak - baseline).toBeLessThan(RSS_GROWTH_MAX)

    // and the broker still serves an ordinary client
    const ok = await mqtt.connectAsync(`mqtt://127.0.0.1:${started.mqttPort}`, { clientId: 'after-attack', reconnectPeriod: 0 })
    await ok.subscribeAsync('scratch/after', { qos: 1 })
    const echoed = nextMessage(ok, t => t === 'scratch/after')
    await ok.publishAsync('scratch/after', 'fine', { qos: 1 })
    expect((await echoed).payload.toString()).toBe('fine')
    await ok.endAsync()
  }, 120_000) // starting the CLI (tsx, PGlite) takes seconds on a busy CI core
})
