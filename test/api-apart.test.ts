// `roost api` in a process of its own: it stores a command and asks the broker, over
// roost/control/devices/{id}, to deliver it; the broker process publishes it and records the device's
// result, which the API hears on the result topic. Both share a Postgres server (PGlite is one process's).

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRoost, type TestRoost } from './harness.ts'
import { postgresUnavailable, startPostgres, type PostgresServer } from './postgres.ts'

const noPostgres = postgresUnavailable()
if (noPostgres !== undefined) console.warn(`separate API tests skipped: ${noPostgres}`)

describe.skipIf(noPostgres !== undefined)('the API apart from the broker', () => {
  let pg: PostgresServer
  let broker: TestRoost
  let api: TestRoost
  beforeAll(async () => {
    pg = await startPostgres()
    broker = await startRoost({ parts: ['broker'], env: { DATABASE_URL: pg.url } })
    api = await startRoost({
      parts: ['api'],
      env: { DATABASE_URL: pg.url, ROOST_BROKER_URL: broker.mqttUrl, ROOST_SERVICE_TOKEN: broker.serviceToken },
    })
  })
  afterAll(async () => {
    await api?.close()
    await broker?.close()
    await pg?.stop()
  })

  it('a command sent through the API reaches a device on the broker, queued first, and its result answers the wait', async () => {
    const token = await api.addDevice('apart-1')
    const device = await broker.connectDevice('apart-1', token)
    device.on('message', (topic, payload) => {
      if (!/^devices\/apart-1\/commands\/[^/]+$/.test(topic)) return
      const { name } = JSON.parse(payload.toString()) as { name: string }
      device.publish(`${topic}/result`, JSON.stringify({ ok: true, result: { echo: name } }), { qos: 1 })
    })
    await device.subscribeAsync('devices/apart-1/commands/+', { qos: 1 })
    const sent = await api.request('POST', '/v1/devices/apart-1/commands', { name: 'ping', waitMs: 10_000 })
    expect(sent.status).toBe(201)
    expect(sent.body).toMatchObject({ status: 'succeeded', result: { echo: 'ping' } })
    // stored queued by the API (it never stores one as sent), then claimed and sent by the broker
    expect(typeof sent.body.sentAt).toBe('number')
  })
})
