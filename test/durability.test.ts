// Durability: a QoS 1 telemetry publish is acknowledged only once committed, so `kill -9` of the real
// `roost start` process in mid-stream loses none of the acknowledged readings, on PGlite or Postgres.

import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freshDataDir, sleep } from './harness.ts'
import { freePort, postgresUnavailable, startPostgres, type PostgresServer } from './postgres.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const DEVICES = ['dur-1', 'dur-2', 'dur-3', 'dur-4']
// publishes each device keeps in flight: enough to keep several group commits busy at the moment of the kill
const IN_FLIGHT_PER_DEVICE = 16
// publish for at least this long, and until at least this many acknowledgements, before the kill
const STREAM_MS = 1500
const MIN_ACKED_BEFORE_KILL = 200
// small pages, so the check also pages through the REST cursor several times
const PAGE_ROWS = 250

interface RoostProcess {
  readonly child: ChildProcess
  readonly httpUrl: string
  readonly mqttUrl: string
  output (): string
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** Runs `node bin/roost.mjs start` as its own process and waits until /health answers 200. */
async function startRoostProcess (env: Record<string, string>): Promise<RoostProcess> {
  const [mqttPort, httpPort] = [await freePort(), await freePort()]
  const inherited = { ...process.env }
  delete inherited.DATABASE_URL // the scenario decides the database
  // --no-single-threaded-gc: on a one-CPU machine the launcher would otherwise start the server again
  // (bin/launcher.mjs), and the kill -9 below would hit the launcher instead of the server
  const child = spawn(process.execPath, ['--no-single-threaded-gc', 'bin/roost.mjs', 'start'], {
    cwd: ROOT,
    env: { ...inherited, ROOST_HOST: '127.0.0.1', ROOST_MQTT_PORT: String(mqttPort), ROOST_HTTP_PORT: String(httpPort), ROOST_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const keep = (b: Buffer): void => { out = (out + b.toString()).slice(-20_000) }
  child.stdout!.on('data', keep)
  child.stderr!.on('data', keep)
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
  const p: RoostProcess = { child, httpUrl: `http://127.0.0.1:${httpPort}`, mqttUrl: `mqtt://127.0.0.1:${mqttPort}`, output: () => out, exited }
  let dead = false
  void exited.then(() => { dead = true })
  const deadline = Date.now() + 60_000
  for (;;) {
    if (dead) throw new Error(`roost exited before it was ready:\n${out}`)
    try {
      if ((await fetch(p.httpUrl + '/health')).status === 200) return p
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`roost was not healthy within 60 s:\n${out}`)
    }
    await sleep(100)
  }
}

async function rest (base: string, token: string, method: string, path: string, body?: unknown): Promise<{ status: number, body: unknown }> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) as unknown }
}

/** Every stored `seq` of a device, read through the REST range query page by page. */
async function storedSeqs (base: string, adminToken: string, deviceId: string): Promise<number[]> {
  const seqs: number[] = []
  let cursor: string | undefined
  for (let pages = 0; pages < 1000; pages++) {
    const query = `from=0&keys=seq&limit=${PAGE_ROWS}${cursor === undefined ? '' : '&cursor=' + cursor}`
    const res = await rest(base, adminToken, 'GET', `/v1/devices/${deviceId}/telemetry?${query}`)
    expect(res.status).toBe(200)
    const page = res.body as { rows: Array<{ key: string, value: unknown }>, next?: string }
    for (const r of page.rows) seqs.push(r.value as number)
    if (page.next === undefined) return seqs
    cursor = page.next
  }
  throw new Error('paging did not end')
}

interface Stream {
  readonly acked: Map<string, number[]>
  readonly sent: () => number
  stop (): Promise<void>
}

/** Each device publishes {"seq": n} at QoS 1 with a window of publishes in flight, recording each PUBACK. */
async function streamTelemetry (mqttUrl: string, tokens: Map<string, string>): Promise<Stream> {
  const acked = new Map<string, number[]>()
  const clients: MqttClient[] = []
  const lanes: Array<Promise<void>> = []
  let stopped = false
  let sent = 0
  for (const [id, token] of tokens) {
    // no reconnect: after the kill nothing more is published, so nothing is acknowledged by the restarted server
    const client = await mqtt.connectAsync(mqttUrl, { clientId: id, username: id, password: token, reconnectPeriod: 0, connectTimeout: 5000 })
    client.on('error', () => {}) // the kill resets the socket
    clients.push(client)
    const mine: number[] = []
    acked.set(id, mine)
    let next = 0
    for (let lane = 0; lane < IN_FLIGHT_PER_DEVICE; lane++) {
      lanes.push((async () => {
        while (!stopped && client.connected) {
          const seq = next++
          sent++
          try {
            await client.publishAsync(`devices/${id}/telemetry`, JSON.stringify({ seq }), { qos: 1 })
          } catch {
            return // connection gone: this publish was not acknowledged
          }
          mine.push(seq)
        }
      })())
    }
  }
  return {
    acked,
    sent: () => sent,
    async stop () {
      stopped = true
      // a forced end fails the callbacks of publishes that never got their PUBACK
      await Promise.all(clients.map(c => c.endAsync(true).catch(() => {})))
      await Promise.race([Promise.all(lanes), sleep(5000)])
    },
  }
}

function ackedTotal (s: Stream): number {
  let n = 0
  for (const seqs of s.acked.values()) n += seqs.length
  return n
}

/** Starts roost, streams QoS 1 telemetry, kill -9s it, restarts it on the same data, checks every acked seq. */
async function killNineMidStream (label: string, env: Record<string, string>): Promise<void> {
  const adminToken = 'rat_dur_' + randomBytes(12).toString('hex')
  const fullEnv = { ...env, ROOST_ADMIN_TOKEN: adminToken, ROOST_SERVICE_TOKEN: 'rst_dur_' + randomBytes(12).toString('hex') }
  const first = await startRoostProcess(fullEnv)
  let second: RoostProcess | undefined
  try {
    const tokens = new Map<string, string>()
    for (const id of DEVICES) {
      const res = await rest(first.httpUrl, adminToken, 'POST', '/v1/devices', { id })
      expect(res.status).toBe(201)
      tokens.set(id, (res.body as { token: string }).token)
    }

    const stream = await streamTelemetry(first.mqttUrl, tokens)
    const started = Date.now()
    while (Date.now() - started < STREAM_MS || ackedTotal(stream) < MIN_ACKED_BEFORE_KILL) {
      if (Date.now() - started > 30_000) throw new Error(`only ${ackedTotal(stream)} publishes acknowledged in 30 s:\n${first.output()}`)
      await sleep(50)
    }
    const inFlightAtKill = stream.sent() - ackedTotal(stream)
    first.child.kill('SIGKILL')
    expect((await first.exited).signal).toBe('SIGKILL')
    await stream.stop()
    const acked = ackedTotal(stream)

    second = await startRoostProcess(fullEnv)
    let stored = 0
    for (const id of DEVICES) {
      const seqs = await storedSeqs(second.httpUrl, adminToken, id)
      stored += seqs.length
      const have = new Set(seqs)
      const lost = (stream.acked.get(id) ?? []).filter(seq => !have.has(seq))
      expect(lost, `${id}: acknowledged but not stored after kill -9`).toEqual([])
      expect(new Set(seqs).size, `${id}: a seq stored twice`).toBe(seqs.length)
    }
    console.log(`[durability ${label}] ${acked} QoS 1 publishes acknowledged before kill -9 (${inFlightAtKill} in flight at the kill); ${stored} stored after restart`)
    expect(stored).toBeGreaterThanOrEqual(acked)

    // the restarted server keeps working on the recovered data
    const more = await rest(second.httpUrl, adminToken, 'POST', `/v1/devices/${DEVICES[0]}/telemetry`, { seq: -1 })
    expect(more.status).toBe(201)
  } finally {
    for (const p of [first, second]) {
      if (p !== undefined && p.child.exitCode === null && p.child.signalCode === null) {
        p.child.kill('SIGTERM')
        await Promise.race([p.exited, sleep(10_000).then(() => p.child.kill('SIGKILL'))])
      }
    }
  }
}

describe('kill -9 in mid-stream', () => {
  it('embedded PGlite: every QoS 1 publish acknowledged before the kill is stored after a restart', async () => {
    const dataDir = freshDataDir()
    try {
      await killNineMidStream('PGlite', { ROOST_DATA_DIR: dataDir })
    } finally {
      rmSync(dataDir, { recursive: true, force: true })
    }
  }, 180_000)

  describe('on a Postgres server', () => {
    const noPostgres = postgresUnavailable()
    if (noPostgres !== undefined) console.warn(`kill -9 on Postgres skipped: ${noPostgres}`)
    let pg: PostgresServer | undefined
    beforeAll(async () => { if (noPostgres === undefined) pg = await startPostgres() })
    afterAll(async () => { await pg?.stop() })

    it.skipIf(noPostgres !== undefined)('every QoS 1 publish acknowledged before the kill is stored after a restart', async () => {
      const dataDir = freshDataDir() // secrets only; the data is in Postgres
      try {
        await killNineMidStream('Postgres', { ROOST_DATA_DIR: dataDir, DATABASE_URL: pg!.url })
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }, 180_000)
  })
})
