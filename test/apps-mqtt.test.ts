// Apps over MQTT (TCP and WebSocket): an app logs in as `app` with its user's access token or API key and
// reads live data of the devices its user owns, and nothing else; its reads stop the moment ownership
// changes or its credential is revoked or expires. Devices publish with the real mosquitto_pub.

import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { collect, eventually, nextMessage, sleep, startRoost, subscribeCodes, type TestRoost, type UserLogin as User } from './harness.ts'

const run = promisify(execFile)
const HAVE_MOSQUITTO_PUB = await run('mosquitto_pub', ['--help']).then(() => true, (err: { code?: unknown }) => err.code !== 'ENOENT')
if (!HAVE_MOSQUITTO_PUB) console.warn('apps-mqtt: mosquitto_pub is not installed (apt-get install mosquitto-clients); devices publish with MQTT.js instead')

/** A device publishes one reading, with mosquitto_pub when installed (as people test with it). */
async function devicePublish (r: TestRoost, id: string, token: string, payload: unknown): Promise<void> {
  const message = JSON.stringify(payload)
  if (HAVE_MOSQUITTO_PUB) {
    await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(r.mqttPort), '-i', id, '-u', id, '-P', token, '-t', `devices/${id}/telemetry`, '-q', '1', '-m', message])
    return
  }
  const c = await r.connectDevice(id, token)
  await c.publishAsync(`devices/${id}/telemetry`, message, { qos: 1 })
  await c.endAsync()
}

function connectApp (url: string, password: string, clientId = 'app-' + Math.random().toString(36).slice(2, 10)): Promise<MqttClient> {
  return mqtt.connectAsync(url, { username: 'app', password, clientId, reconnectPeriod: 0, connectTimeout: 5000 })
}

/** Resolves with the CONNACK return code of a refused login (0 never: that would be a login). */
function refusedCode (url: string, opts: mqtt.IClientOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts })
    c.on('connect', () => { c.end(true); reject(new Error('login accepted')) })
    c.on('error', (err: Error & { code?: number }) => { c.end(true); resolve(err.code ?? -1) })
  })
}

function closed (c: MqttClient, ms = 3000): Promise<void> {
  return eventually(() => (c.connected ? undefined : true), ms, 'app connection closed').then(() => undefined)
}

describe('apps over MQTT', () => {
  let r: TestRoost
  let ann: User
  let ben: User
  const tokens: Record<string, string> = {}
  const apps: MqttClient[] = []
  beforeAll(async () => {
    r = await startRoost()
    ann = await r.addUser('ann@example.com')
    ben = await r.addUser('ben@example.com')
    for (const [id, owner] of [['ann-lamp', ann], ['ann-fan', ann], ['ben-lamp', ben]] as const) {
      tokens[id] = await r.addDevice(id)
      await r.request('PATCH', `/v1/devices/${id}`, { ownerId: owner.userId })
    }
  })
  afterAll(async () => {
    for (const a of apps) a.end(true)
    await r?.close()
  })

  async function app (password: string, url = r.mqttUrl, clientId?: string): Promise<MqttClient> {
    const c = await connectApp(url, password, clientId)
    apps.push(c)
    return c
  }

  it('a browser-style app over WebSocket gets its own device\'s live telemetry from mosquitto_pub and nothing of another user\'s device', async () => {
    const viewer = await app(ann.accessToken, `ws://127.0.0.1:${r.httpPort}/mqtt`)
    const seen = collect(viewer)
    const granted = await viewer.subscribeAsync('devices/#', { qos: 1 })
    expect(granted.map(g => g.qos)).toEqual([1]) // narrowed, not refused
    await devicePublish(r, 'ben-lamp', tokens['ben-lamp'] as string, { lux: 999 })
    await devicePublish(r, 'ann-lamp', tokens['ann-lamp'] as string, { lux: 42 })
    await eventually(() => seen.messages.find(m => m.topic === 'devices/ann-lamp/telemetry'), 5000, 'own telemetry')
    await sleep(200)
    const topics = seen.messages.map(m => m.topic)
    expect(topics.some(t => t.startsWith('devices/ben-lamp/'))).toBe(false)
    expect(JSON.parse(seen.messages.find(m => m.topic === 'devices/ann-lamp/telemetry')?.payload.toString() ?? '{}')).toMatchObject({ lux: 42 })
    // retained presence of own devices comes too, of others' never
    expect(topics).toContain('devices/ann-lamp/presence')
  })

  it('over TCP with an API key: another user\'s device and device-bound topics are refused; an app cannot publish', async () => {
    const key = (await r.request('POST', '/v1/api-keys', { name: 'tcp' }, ann.accessToken)).body.key as string
    const c = await app(key)
    expect(await subscribeCodes(c, ['devices/ben-lamp/telemetry', 'devices/ann-lamp/commands/+', 'devices/ann-lamp/telemetry', '$SYS/#', 'other/#'])).toEqual([128, 128, 1, 128, 128])
    const seen = collect(c)
    await c.publishAsync('devices/ann-lamp/telemetry', JSON.stringify({ fake: 1 }), { qos: 1 })
    await sleep(300)
    expect(seen.messages).toEqual([])
    const stored = await r.request('GET', '/v1/devices/ann-lamp/telemetry/latest')
    expect(JSON.stringify(stored.body)).not.toContain('fake')
  })

  it('when a device changes owner, the old owner\'s app stops receiving it at once and the new owner\'s starts', async () => {
    const annApp = await app(ann.accessToken)
    const benApp = await app(ben.accessToken)
    await annApp.subscribeAsync('devices/+/telemetry', { qos: 1 })
    await benApp.subscribeAsync('devices/+/telemetry', { qos: 1 })
    // listen first: the message can reach the app before mosquitto_pub has exited
    const annGot = nextMessage(annApp, t => t === 'devices/ann-fan/telemetry')
    await devicePublish(r, 'ann-fan', tokens['ann-fan'] as string, { rpm: 1 })
    await annGot
    expect((await r.request('PATCH', '/v1/devices/ann-fan', { ownerId: ben.userId })).status).toBe(200)
    const annSeen = collect(annApp)
    const benGot = nextMessage(benApp, t => t === 'devices/ann-fan/telemetry')
    await devicePublish(r, 'ann-fan', tokens['ann-fan'] as string, { rpm: 2 })
    await benGot
    await sleep(200)
    expect(annSeen.messages.filter(m => m.topic === 'devices/ann-fan/telemetry')).toEqual([])
  })

  it('revoking the API key closes the app connection made with it; logging out closes the session\'s', async () => {
    const key = (await r.request('POST', '/v1/api-keys', { name: 'revoke-me' }, ann.accessToken)).body
    const byKey = await app(key.key)
    const session = (await r.request('POST', '/v1/auth/login', { email: 'ann@example.com', password: 'correct horse' }, null)).body as User
    const bySession = await app(session.accessToken)
    expect((await r.request('DELETE', `/v1/api-keys/${key.id}`, undefined, ann.accessToken)).status).toBe(200)
    await closed(byKey)
    expect(bySession.connected).toBe(true)
    expect((await r.request('POST', '/v1/auth/logout', undefined, session.accessToken)).status).toBe(204)
    await closed(bySession)
    expect(await refusedCode(r.mqttUrl, { username: 'app', password: key.key, clientId: 'app-after-revoke' })).toBe(4)
  })

  it('refuses a wrong or missing credential, and an app using a device\'s client id (the device stays connected)', async () => {
    expect(await refusedCode(r.mqttUrl, { username: 'app', password: 'not-a-token', clientId: 'app-wrong' })).toBe(4)
    expect(await refusedCode(r.mqttUrl, { username: 'app', clientId: 'app-nopass' })).toBe(4)
    const device = await r.connectDevice('ann-lamp', tokens['ann-lamp'] as string)
    expect(await refusedCode(r.mqttUrl, { username: 'app', password: ann.accessToken, clientId: 'ann-lamp' })).toBe(2)
    await sleep(100)
    expect(device.connected).toBe(true)
  })
})

describe('an app whose access token expires', () => {
  let r: TestRoost
  beforeAll(async () => { r = await startRoost({ env: { ROOST_ACCESS_TOKEN_TTL_S: '1' } }) })
  afterAll(async () => { await r?.close() })

  it('is disconnected when the token expires', async () => {
    const u = await r.addUser('exp@example.com')
    const c = await connectApp(r.mqttUrl, u.accessToken)
    try {
      expect(c.connected).toBe(true)
      await closed(c, 4000)
    } finally {
      c.end(true)
    }
  })
})

describe('MQTT login lockout', () => {
  let r: TestRoost
  beforeAll(async () => { r = await startRoost() })
  afterAll(async () => { await r?.close() })

  it('five wrong tokens for a device lock its username: the right token is refused too, and the lockout is counted', async () => {
    const token = await r.addDevice('locked-dev')
    for (let i = 0; i < 5; i++) expect(await refusedCode(r.mqttUrl, { clientId: 'locked-dev', username: 'locked-dev', password: `rdt_wrong${i}` })).toBe(4)
    expect(await refusedCode(r.mqttUrl, { clientId: 'locked-dev', username: 'locked-dev', password: token })).toBe(5)
    const metrics = await fetch(r.httpUrl + '/metrics', { headers: { authorization: `Bearer ${r.adminToken}` } })
    expect(await metrics.text()).toMatch(/roost_login_lockouts_total [1-9]/)
    await sleep(1100)
    const device = await r.connectDevice('locked-dev', token)
    expect(device.connected).toBe(true)
  })
})
