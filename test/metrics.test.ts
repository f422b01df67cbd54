// /metrics: admin-only Prometheus text with the broker's connection, message, refusal and ingest series;
// and the JSON log, even at debug level, never carries a credential.

import { rmSync } from 'node:fs'
import { Writable } from 'node:stream'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, freshDataDir, nextMessage, startRoost, testEnv, type TestRoost } from './harness.ts'
import { parseSamples, sampleValue, scrape } from './prometheus.ts'
import { rawLogin, rawTcp, within } from './raw-mqtt.ts'
import { loadConfig } from '../schemas/config.ts'
import { resolveSecrets } from '../secrets.ts'
import { createLogger } from '../log.ts'
import { startPlatform, type Platform } from '../platform.ts'

describe('/metrics', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost() })
  afterAll(async () => { await roost?.close() })

  it('without a credential /metrics answers 401 AUTH_REQUIRED', async () => {
    const res = await roost.request('GET', '/metrics', undefined, null)
    expect(res.status).toBe(401)
    expect(res.body.code).toBe('AUTH_REQUIRED')
  })

  it('with a device token /metrics answers 403 ADMIN_REQUIRED, and with an unknown token 401 AUTH_INVALID', async () => {
    const token = await roost.addDevice('m-probe')
    const device = await roost.request('GET', '/metrics', undefined, token)
    expect(device.status).toBe(403)
    expect(device.body.code).toBe('ADMIN_REQUIRED')
    const unknown = await roost.request('GET', '/metrics', undefined, 'rdt_not_a_real_token_0000000000')
    expect(unknown.status).toBe(401)
    expect(unknown.body.code).toBe('AUTH_INVALID')
  })

  it('with the admin token /metrics is Prometheus text format 0.0.4', async () => {
    const res = await roost.request('GET', '/metrics')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4(;|$)/)
    const text = res.body as string
    expect(text).toContain('# TYPE roost_mqtt_connections gauge')
    expect(text).toContain('# TYPE roost_mqtt_messages_in_total counter')
    expect(text).toContain('# TYPE roost_ingest_batch_rows histogram')
    expect(text).toContain('# TYPE roost_ingest_commit_seconds histogram')
    expect(() => parseSamples(text)).not.toThrow()
  })

  it('after traffic it counts connections, telemetry in, refusals by code and ingest batches', async () => {
    const token = await roost.addDevice('m-dev')
    const device = await roost.connectDevice('m-dev', token)
    // connections are counted whichever listener they came through
    const viaWebSocket = await roost.connect({ clientId: 'svc-metrics', username: 'service:metrics', password: roost.serviceToken }, `ws://127.0.0.1:${roost.httpPort}/mqtt`)
    const readings = [20.5, 21, 21.5]
    for (const t of readings) await device.publishAsync('devices/m-dev/telemetry', JSON.stringify({ t }), { qos: 1 })
    // presence is the broker's alone: refused, and said so on the device's errors topic
    await device.subscribeAsync('devices/m-dev/errors', { qos: 0 })
    const notice = nextMessage(device, topic => topic === 'devices/m-dev/errors')
    await device.publishAsync('devices/m-dev/presence', '{"online":true,"ts":0}', { qos: 1 })
    expect(JSON.parse((await notice).payload.toString()).code).toBe('TOPIC_FORBIDDEN')
    // a login with a wrong token
    const wrong = await rawTcp(roost.mqttPort)
    expect(await rawLogin(wrong, { clientId: 'm-dev', username: 'm-dev', password: Buffer.from('wrong') })).toBe(4)
    await within(wrong.closed, 5000, 'the refused connection is closed by the broker')

    // the gauge follows the server side of the close, which may trail the client's view by a moment
    const s = await eventually(async () => {
      const now = await scrape(roost)
      return sampleValue(now, 'roost_mqtt_connections') === 2 ? now : undefined
    }, 5000, 'two open connections')
    expect(sampleValue(s, 'roost_devices_online')).toBe(1)
    expect(sampleValue(s, 'roost_mqtt_connects_total', { result: 'accepted' })).toBe(2)
    expect(sampleValue(s, 'roost_mqtt_connects_total', { result: 'refused' })).toBe(1)
    expect(sampleValue(s, 'roost_mqtt_messages_in_total', { family: 'telemetry' })).toBe(readings.length)
    expect(sampleValue(s, 'roost_mqtt_messages_in_total', { family: 'presence' })).toBeUndefined()
    expect(sampleValue(s, 'roost_mqtt_messages_out_total', { family: 'presence' })).toBeGreaterThanOrEqual(1)
    expect(sampleValue(s, 'roost_refusals_total', { code: 'TOPIC_FORBIDDEN' })).toBe(1)
    expect(sampleValue(s, 'roost_refusals_total', { code: 'AUTH_INVALID' })).toBe(1)
    // QoS 1 telemetry is acknowledged after its commit, so the batches are all observed by now
    expect(sampleValue(s, 'roost_ingest_rows_total')).toBe(readings.length)
    expect(sampleValue(s, 'roost_ingest_batch_rows_sum')).toBe(readings.length)
    const batches = sampleValue(s, 'roost_ingest_batch_rows_count') ?? 0
    expect(batches).toBeGreaterThanOrEqual(1)
    expect(sampleValue(s, 'roost_ingest_batch_rows_bucket', { le: '+Inf' })).toBe(batches)
    expect(sampleValue(s, 'roost_ingest_commit_seconds_count')).toBe(batches)
    expect(sampleValue(s, 'roost_ingest_commit_seconds_sum')).toBeGreaterThan(0)
    expect(sampleValue(s, 'roost_db_errors_total')).toBe(0)
    expect(sampleValue(s, 'roost_ingest_dropped_rows_total')).toBe(0)

    await device.endAsync()
    await viaWebSocket.endAsync()
    await eventually(async () => (sampleValue(await scrape(roost), 'roost_mqtt_connections') === 0 ? true : undefined), 5000, 'connections back to 0')
    expect(sampleValue(await scrape(roost), 'roost_devices_online')).toBe(0)
  })
})

describe('logs and credentials', () => {
  const dataDir = freshDataDir()
  let platform: Platform
  let log = ''
  const clients: MqttClient[] = []

  beforeAll(async () => {
    const sink = new Writable({ write (chunk: Buffer, _enc, cb) { log += chunk.toString(); cb() } })
    const config = resolveSecrets(loadConfig([], testEnv(dataDir, { ROOST_LOG_LEVEL: 'debug' }))).config
    platform = await startPlatform(config, createLogger('debug', sink))
  })
  afterAll(async () => {
    await Promise.all(clients.map(c => c.endAsync(true).catch(() => {})))
    await platform?.close()
    rmSync(dataDir, { recursive: true, force: true })
  })

  it('at debug level, no admin, service or device token appears in the log after logins, rotations and REST calls with credentials', async () => {
    const adminToken = platform.config.auth.adminToken as string
    const serviceToken = platform.config.auth.serviceToken as string
    const http = `http://127.0.0.1:${platform.ports.http}`
    const mqttUrl = `mqtt://127.0.0.1:${platform.ports.mqtt}`
    const rest = async (method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number, body: any }> => { // any: REST bodies of several shapes, checked field by field
      const headers: Record<string, string> = {}
      if (token !== undefined) headers.authorization = `Bearer ${token}`
      if (body !== undefined) headers['content-type'] = 'application/json'
      const res = await fetch(http + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
      const text = await res.text()
      return { status: res.status, body: text === '' || !text.startsWith('{') ? text : JSON.parse(text) }
    }
    const login = async (opts: mqtt.IClientOptions): Promise<'accepted' | 'refused'> => {
      try {
        clients.push(await mqtt.connectAsync(mqttUrl, { reconnectPeriod: 0, connectTimeout: 5000, ...opts }))
        return 'accepted'
      } catch {
        return 'refused'
      }
    }

    const a = await rest('POST', '/v1/devices', adminToken, { id: 'log-a' })
    const b = await rest('POST', '/v1/devices', adminToken, { id: 'log-b' })
    expect([a.status, b.status]).toEqual([201, 201])
    const firstA = a.body.token as string
    const tokenB = b.body.token as string
    const rotated = await rest('POST', '/v1/devices/log-a/token', adminToken)
    expect(rotated.status).toBe(200)
    const tokenA = rotated.body.token as string
    expect(tokenA).not.toBe(firstA)

    expect(await login({ clientId: 'log-a', username: 'log-a', password: tokenA })).toBe('accepted')
    expect(await login({ clientId: 'log-a', username: 'log-a', password: firstA })).toBe('refused') // the rotated-out token
    expect(await login({ clientId: 'log-a', username: 'log-a', password: tokenB })).toBe('refused') // another device's token
    expect(await login({ clientId: 'svc-log', username: 'service:log', password: serviceToken })).toBe('accepted')
    expect(await login({ clientId: 'svc-log-2', username: 'service:log', password: adminToken })).toBe('refused')
    const device = clients[0] as MqttClient
    await device.publishAsync('devices/log-a/telemetry', '{"t":1}', { qos: 1 })

    expect((await rest('GET', '/v1/devices/log-a', adminToken)).status).toBe(200)
    expect((await rest('GET', '/v1/devices/log-a/telemetry/latest', tokenA)).status).toBe(200)
    expect((await rest('GET', '/v1/devices/log-a/telemetry/latest', firstA)).status).toBe(401)
    expect((await rest('GET', '/v1/devices/log-a/telemetry/latest', tokenB)).status).toBe(403)
    expect((await rest('GET', '/metrics', tokenA)).status).toBe(403)
    expect((await rest('GET', '/metrics', serviceToken)).status).toBe(401)
    expect((await rest('GET', '/metrics', adminToken)).status).toBe(200)

    // the log did record all this, at debug level
    expect(log).toContain('"level":20')
    expect(log).toContain('MQTT login refused')
    expect(log).toContain('device connected')
    expect(log).toContain('device token rotated')
    expect(log).toContain('incoming request')

    const secrets = { adminToken, serviceToken, firstA, tokenA, tokenB }
    for (const [name, secret] of Object.entries(secrets)) {
      expect(secret.length, name).toBeGreaterThanOrEqual(24)
      expect(log.includes(secret), `${name} appears in the log`).toBe(false)
      // a cut-down or re-encoded copy would still leak its random tail
      expect(log.includes(secret.slice(-16)), `the tail of ${name} appears in the log`).toBe(false)
    }
  })
})
