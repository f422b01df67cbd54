// Starts a real Roost (broker + API) on ephemeral ports with its own data dir, and gives tests real clients.

import { cpSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { loadConfig } from '../schemas/config.ts'
import { createLogger } from '../log.ts'
import { resolveSecrets } from '../secrets.ts'
import { startPlatform, type Part, type Platform } from '../platform.ts'
import { pgliteTemplateDir } from './template.ts'

export interface TestRoost {
  readonly platform: Platform
  readonly dataDir: string
  readonly adminToken: string
  readonly serviceToken: string
  readonly mqttPort: number
  readonly httpPort: number
  readonly mqttUrl: string
  readonly httpUrl: string
  /** A REST call with the admin token unless `token` is given (null: no credential). */
  request (method: string, path: string, body?: unknown, token?: string | null): Promise<{ status: number, body: any, headers: Headers }>
  /** Creates a device through the API; returns its token. */
  addDevice (id: string): Promise<string>
  /** Creates a user through the admin API and logs it in; returns its session's tokens. */
  addUser (email: string, password?: string): Promise<UserLogin>
  /** Connects a real MQTT client; closed by close(). */
  connect (opts: IClientOptions, url?: string): Promise<MqttClient>
  /** Connects as device `id` with its token. */
  connectDevice (id: string, token: string, opts?: IClientOptions): Promise<MqttClient>
  close (): Promise<void>
}

export interface UserLogin { readonly userId: string, readonly accessToken: string, readonly refreshToken: string }

export interface StartOptions {
  readonly env?: Record<string, string>
  readonly parts?: Part[]
  readonly dataDir?: string // reuse a data dir (restart tests)
  readonly keepDataDir?: boolean
}

export function freshDataDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'roost-test-'))
  cpSync(pgliteTemplateDir(), dir, { recursive: true })
  return dir
}

export function testEnv (dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ROOST_DATA_DIR: dataDir,
    ROOST_HOST: '127.0.0.1',
    ROOST_MQTT_PORT: '0',
    ROOST_MQTTS_PORT: '0',
    ROOST_HTTP_PORT: '0',
    ROOST_LOG_LEVEL: process.env.ROOST_TEST_LOG_LEVEL ?? 'silent',
    ROOST_ADMIN_TOKEN: 'rat_test_' + randomBytes(12).toString('hex'),
    ROOST_SERVICE_TOKEN: 'rst_test_' + randomBytes(12).toString('hex'),
    // suites make many calls and deliberate bad logins from one address; the tests of limits set their own
    ROOST_RATE_LIMIT_MAX: '1000000',
    ROOST_LOGIN_ADDRESS_FAILURES: '100000',
    ...extra,
  }
}

export async function startRoost (opts: StartOptions = {}): Promise<TestRoost> {
  const dataDir = opts.dataDir ?? freshDataDir()
  const env = testEnv(dataDir, opts.env)
  const config = resolveSecrets(loadConfig([], env)).config
  const log = createLogger(config.log.level)
  const platform = await startPlatform(config, log, opts.parts)
  const clients: MqttClient[] = []
  const mqttPort = platform.ports.mqtt ?? 0
  const httpPort = platform.ports.http ?? 0
  const adminToken = config.auth.adminToken as string
  const t: TestRoost = {
    platform,
    dataDir,
    adminToken,
    serviceToken: config.auth.serviceToken as string,
    mqttPort,
    httpPort,
    mqttUrl: `mqtt://127.0.0.1:${mqttPort}`,
    httpUrl: `http://127.0.0.1:${httpPort}`,
    async request (method, path, body, token) {
      const auth = token === null ? undefined : (token ?? adminToken)
      const headers: Record<string, string> = {}
      if (auth !== undefined) headers.authorization = `Bearer ${auth}`
      if (body !== undefined) headers['content-type'] = 'application/json'
      const res = await fetch(t.httpUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
      const text = await res.text()
      let parsed: unknown = text
      try { parsed = text === '' ? undefined : JSON.parse(text) } catch { parsed = text }
      return { status: res.status, body: parsed, headers: res.headers }
    },
    async addDevice (id) {
      const res = await t.request('POST', '/v1/devices', { id })
      if (res.status !== 201) throw new Error(`addDevice ${id}: ${res.status} ${JSON.stringify(res.body)}`)
      return res.body.token as string
    },
    async addUser (email, password = 'correct horse') {
      const created = await t.request('POST', '/v1/users', { email, password })
      if (created.status !== 201) throw new Error(`addUser ${email}: ${created.status} ${JSON.stringify(created.body)}`)
      const login = await t.request('POST', '/v1/auth/login', { email, password }, null)
      if (login.status !== 200) throw new Error(`login ${email}: ${login.status} ${JSON.stringify(login.body)}`)
      return login.body as UserLogin
    },
    async connect (o, url) {
      const client = await mqtt.connectAsync(url ?? t.mqttUrl, { reconnectPeriod: 0, connectTimeout: 5000, ...o })
      clients.push(client)
      return client
    },
    connectDevice (id, token, o) {
      return t.connect({ clientId: id, username: id, password: token, ...o })
    },
    async close () {
      await Promise.all(clients.map(c => c.endAsync(true).catch(() => {})))
      await platform.close()
      if (opts.keepDataDir !== true) rmSync(dataDir, { recursive: true, force: true })
    },
  }
  return t
}

/** Resolves with the first message on `topic` (or matching `filter`) within `ms`, else rejects. */
export function nextMessage (client: MqttClient, match: (topic: string, payload: Buffer) => boolean, ms = 5000): Promise<{ topic: string, payload: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { client.off('message', on); reject(new Error('no matching message within ' + ms + ' ms')) }, ms)
    function on (topic: string, payload: Buffer): void {
      if (!match(topic, payload)) return
      clearTimeout(timer)
      client.off('message', on)
      resolve({ topic, payload })
    }
    client.on('message', on)
  })
}

/** Collects every message a client receives until stop() is called. */
export function collect (client: MqttClient): { readonly messages: Array<{ topic: string, payload: Buffer }>, stop (): void } {
  const messages: Array<{ topic: string, payload: Buffer }> = []
  const on = (topic: string, payload: Buffer): void => { messages.push({ topic, payload }) }
  client.on('message', on)
  return { messages, stop: () => client.off('message', on) }
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Polls `check` until it returns a value other than undefined, or fails after `ms`. */
export async function eventually<T> (check: () => Promise<T | undefined> | T | undefined, ms = 5000, what = 'condition'): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = await check()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

/** The SUBACK return codes for `filters`; mqtt.js rejects a SUBACK holding 0x80 but keeps the packet on the error. */
export async function subscribeCodes (client: MqttClient, filters: string | string[]): Promise<number[]> {
  try {
    return (await client.subscribeAsync(filters, { qos: 1 })).map(g => g.qos)
  } catch (err) {
    const granted = (err as { packet?: { granted?: unknown } }).packet?.granted
    if (!Array.isArray(granted)) throw err
    return granted as number[]
  }
}
