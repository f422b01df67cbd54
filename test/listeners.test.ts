// The three ways in (MQTT over TCP, over TLS, over WebSocket at /mqtt) and both protocol levels Roost
// speaks (MQTT 3.1 and 3.1.1) log a device in the same way and lead to the same stored telemetry.

import type { MqttClient } from 'mqtt'
import WebSocket from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRoost, type TestRoost } from './harness.ts'
import { makeTestCert, type TestCert } from './tls.ts'
import { rawLogin, rawTcp, rawTls, rawWebSocket } from './raw-mqtt.ts'

describe('listeners', () => {
  let roost: TestRoost
  let cert: TestCert
  let mqttsUrl: string
  let wsUrl: string

  beforeAll(async () => {
    cert = makeTestCert()
    roost = await startRoost({ env: cert.env })
    const mqtts = roost.platform.ports.mqtts
    if (mqtts === undefined) throw new Error('the TLS listener did not start')
    mqttsUrl = `mqtts://127.0.0.1:${mqtts}`
    wsUrl = `ws://127.0.0.1:${roost.httpPort}/mqtt`
  })
  afterAll(async () => {
    await roost?.close()
    cert?.remove()
  })

  /** Publishes one reading at QoS 1 (acknowledged after it is stored) and reads it back over REST. */
  async function expectTelemetryStored (client: MqttClient, id: string, value: number): Promise<void> {
    await client.publishAsync(`devices/${id}/telemetry`, JSON.stringify({ temperature: value }), { qos: 1 })
    const latest = await roost.request('GET', `/v1/devices/${id}/telemetry/latest`)
    expect(latest.status).toBe(200)
    expect(latest.body.values.temperature.value).toBe(value)
  }

  it('a device logs in over TLS, verifying the server certificate, and its telemetry is stored', async () => {
    const token = await roost.addDevice('tls-dev')
    const tls = await roost.connect({ clientId: 'tls-dev', username: 'tls-dev', password: token, ca: cert.cert, servername: 'localhost', rejectUnauthorized: true }, mqttsUrl)
    expect(tls.connected).toBe(true)
    await expectTelemetryStored(tls, 'tls-dev', 19.5)
  })

  it('a wrong device token over TLS gets CONNACK 4 (bad user name or password)', async () => {
    await roost.addDevice('tls-wrong')
    const conn = await rawTls(roost.platform.ports.mqtts as number, cert.cert)
    expect(await rawLogin(conn, { clientId: 'tls-wrong', username: 'tls-wrong', password: Buffer.from('not-the-token') })).toBe(4)
    conn.destroy()
  })

  it('the WebSocket endpoint /mqtt agrees on the subprotocol "mqtt"', async () => {
    const ws = new WebSocket(wsUrl, 'mqtt')
    await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject) })
    expect(ws.protocol).toBe('mqtt')
    ws.terminate()
  })

  it('a device logs in over WebSocket at /mqtt and its telemetry is stored', async () => {
    const token = await roost.addDevice('ws-dev')
    const client = await roost.connect({ clientId: 'ws-dev', username: 'ws-dev', password: token }, wsUrl)
    expect(client.connected).toBe(true)
    await expectTelemetryStored(client, 'ws-dev', 22.25)
  })

  it('a wrong device token over WebSocket gets CONNACK 4 (bad user name or password)', async () => {
    await roost.addDevice('ws-wrong')
    const conn = await rawWebSocket(wsUrl)
    expect(await rawLogin(conn, { clientId: 'ws-wrong', username: 'ws-wrong', password: Buffer.from('not-the-token') })).toBe(4)
    conn.destroy()
  })

  const levels = [
    { name: 'MQTT 3.1 (MQIsdp, level 3)', protocolId: 'MQIsdp', protocolVersion: 3 },
    { name: 'MQTT 3.1.1 (MQTT, level 4)', protocolId: 'MQTT', protocolVersion: 4 },
  ] as const

  for (const level of levels) {
    for (const transport of ['TCP', 'WebSocket'] as const) {
      it(`${level.name} over ${transport}: a device logs in and its telemetry is stored`, async () => {
        // MQTT 3.1 limits client ids to 23 characters; these ids fit
        const id = `v${level.protocolVersion}-${transport === 'TCP' ? 'tcp' : 'ws'}`
        const token = await roost.addDevice(id)
        const opts = { clientId: id, username: id, password: token, protocolId: level.protocolId, protocolVersion: level.protocolVersion }
        const client = await roost.connect(opts, transport === 'TCP' ? roost.mqttUrl : wsUrl)
        expect(client.connected).toBe(true)
        await expectTelemetryStored(client, id, level.protocolVersion * 10 + 0.5)
      })
    }
  }

  it('MQTT 3.1.1: a device whose id is the longest allowed (64 characters) logs in', async () => {
    const id = 'L'.repeat(64)
    const token = await roost.addDevice(id)
    const client = await roost.connectDevice(id, token)
    expect(client.connected).toBe(true)
    await expectTelemetryStored(client, id, 64)
  })

  it('MQTT 3.1: a client id longer than 23 characters gets CONNACK 2 (identifier rejected), as that version requires', async () => {
    const id = 'x'.repeat(24)
    const token = await roost.addDevice(id)
    const conn = await rawTcp(roost.mqttPort)
    expect(await rawLogin(conn, { clientId: id, username: id, password: Buffer.from(token), protocolId: 'MQIsdp', protocolVersion: 3 })).toBe(2)
    conn.destroy()
  })
})
