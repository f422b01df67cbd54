// `roost bridge` in a process of its own: it logs in to the broker at ROOST_BROKER_URL as `service:bridge`,
// answers a device's hello there, and serves its own /metrics (admin token) and /health on ROOST_HTTP_PORT.
// Apart from the broker it shares the database with it (leases, settings), so both use a Postgres server:
// the embedded PGlite belongs to one process.

import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startFakeRealtime, type FakeRealtime } from './fake-realtime.ts'
import { nextMessage, startRoost, type TestRoost } from './harness.ts'
import { postgresUnavailable, startPostgres, type PostgresServer } from './postgres.ts'

const noPostgres = postgresUnavailable()
if (noPostgres !== undefined) console.warn(`standalone bridge tests skipped: ${noPostgres}`)

describe.skipIf(noPostgres !== undefined)('the voice bridge alone', () => {
  let pg: PostgresServer
  let fake: FakeRealtime
  let core: TestRoost
  let bridge: TestRoost
  let device: MqttClient
  beforeAll(async () => {
    pg = await startPostgres()
    fake = await startFakeRealtime()
    // broker and API without voice; the bridge joins them from outside
    core = await startRoost({ parts: ['broker', 'api'], env: { DATABASE_URL: pg.url } })
    bridge = await startRoost({
      parts: ['bridge'],
      env: { DATABASE_URL: pg.url, ROOST_BROKER_URL: core.mqttUrl, ROOST_SERVICE_TOKEN: core.serviceToken, OPENAI_API_KEY: fake.apiKey, OPENAI_BASE_URL: fake.url },
    })
    device = await core.connectDevice('alone-1', await core.addDevice('alone-1'))
    await device.subscribeAsync('devices/alone-1/audio/events', { qos: 1 })
  })
  afterAll(async () => {
    await bridge?.close()
    await core?.close()
    await fake?.close()
    await pg?.stop()
  })

  it('answers a hello on the other process\'s broker', async () => {
    const hello = nextMessage(device, (t, p) => t === 'devices/alone-1/audio/events' && (JSON.parse(p.toString()) as { type: string }).type === 'hello', 10_000)
    await device.publishAsync('devices/alone-1/audio/ctl', JSON.stringify({ type: 'hello', codecs: ['opus'], rates: { up: 16000, down: 24000 }, frame_ms: 40, aec: false }), { qos: 1 })
    expect(JSON.parse((await hello).payload.toString())).toMatchObject({ type: 'hello', codec: 'opus' })
  })

  it('serves the voice histograms on /metrics with the admin token, and /health', async () => {
    const metrics = await bridge.request('GET', '/metrics')
    expect(metrics.status).toBe(200)
    for (const name of ['roost_voice_uplink_frame_seconds', 'roost_voice_downlink_frame_seconds', 'roost_voice_first_reply_seconds']) expect(metrics.body).toContain(name)
    expect(metrics.body).toContain('roost_process_')
    const none = await bridge.request('GET', '/metrics', undefined, null)
    expect([none.status, none.body.code]).toEqual([401, 'AUTH_REQUIRED'])
    const wrong = await bridge.request('GET', '/metrics', undefined, core.adminToken)
    expect([wrong.status, wrong.body.code]).toEqual([401, 'AUTH_INVALID'])
    const health = await bridge.request('GET', '/health', undefined, null)
    expect([health.status, health.body]).toEqual([200, { status: 'ok', broker: 'ok' }])
    const other = await bridge.request('GET', '/v1/devices')
    expect([other.status, other.body.code]).toEqual([404, 'ROUTE_NOT_FOUND'])
  })
})
