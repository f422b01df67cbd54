// ROOST_OFFLINE_QUEUE_LIMIT: a persistent session keeps at most that many QoS 1 messages while its device
// is away; the oldest are kept, the rest dropped and counted in /metrics.

import mqtt from 'mqtt'
import mqttPacket, { type IPublishPacket } from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'
import { sampleValue, scrape } from './prometheus.ts'
import { rawLogin, rawTcp, within } from './raw-mqtt.ts'

const LIMIT = 5
const SENT = 20

describe('offline queue bound', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_OFFLINE_QUEUE_LIMIT: String(LIMIT) } }) })
  afterAll(async () => { await roost?.close() })

  async function waitOffline (id: string): Promise<void> {
    await eventually(async () => ((await roost.request('GET', `/v1/devices/${id}`)).body.online === false ? true : undefined), 5000, `${id} offline`)
  }

  it(`a sleeping persistent-session device gets the first ${LIMIT} of ${SENT} QoS 1 commands and the other ${SENT - LIMIT} are counted as dropped`, async () => {
    const id = 'sleeper'
    const token = await roost.addDevice(id)
    const filter = `devices/${id}/commands/+`

    // [MQTT-3.1.2-4] clean: false keeps the session, and its subscriptions, after the device leaves
    const first = await roost.connectDevice(id, token, { clean: false })
    const granted = await first.subscribeAsync(filter, { qos: 1 })
    expect(granted[0]?.qos).toBe(1)
    await first.endAsync()
    await waitOffline(id)

    const service = await roost.connect({ clientId: 'svc-commander', username: 'service:commander', password: roost.serviceToken })
    for (let i = 1; i <= SENT; i++) {
      await service.publishAsync(`devices/${id}/commands/c${i}`, JSON.stringify({ name: 'blink', params: { n: i } }), { qos: 1 })
    }

    // listen before CONNECT: the queued messages follow the CONNACK at once
    const received: string[] = []
    const device = mqtt.connect(roost.mqttUrl, { clientId: id, username: id, password: token, clean: false, reconnectPeriod: 0 })
    device.on('message', topic => { received.push(topic) })
    try {
      const sessionPresent = await new Promise<boolean>((resolve, reject) => {
        device.once('connect', connack => resolve(connack.sessionPresent))
        device.once('error', reject)
      })
      expect(sessionPresent).toBe(true)
      await eventually(() => (received.length >= LIMIT ? true : undefined), 5000, `${LIMIT} queued commands`)
      await sleep(500) // anything beyond the limit would arrive in this time
      expect(received).toEqual(Array.from({ length: LIMIT }, (_v, i) => `devices/${id}/commands/c${i + 1}`))
    } finally {
      await device.endAsync(true)
    }

    expect(sampleValue(await scrape(roost), 'roost_offline_queue_dropped_total')).toBe(SENT - LIMIT)
  })

  it('once the device has acknowledged its queue, a new absence gets the full bound again', async () => {
    const id = 'sleeper-2'
    const token = await roost.addDevice(id)
    const filter = `devices/${id}/commands/+`
    const droppedBefore = sampleValue(await scrape(roost), 'roost_offline_queue_dropped_total') ?? 0
    const service = await roost.connect({ clientId: 'svc-commander-2', username: 'service:commander', password: roost.serviceToken })

    const setup = await roost.connectDevice(id, token, { clean: false })
    await setup.subscribeAsync(filter, { qos: 1 })
    await setup.endAsync()
    await waitOffline(id)

    for (let round = 1; round <= 2; round++) {
      for (let i = 1; i <= LIMIT + 2; i++) {
        await service.publishAsync(`devices/${id}/commands/r${round}-${i}`, JSON.stringify({ name: 'blink' }), { qos: 1 })
      }
      const received: string[] = []
      const device = mqtt.connect(roost.mqttUrl, { clientId: id, username: id, password: token, clean: false, reconnectPeriod: 0 })
      device.on('message', topic => { received.push(topic) })
      await eventually(() => (received.length >= LIMIT ? true : undefined), 5000, `round ${round}: ${LIMIT} queued commands`)
      await sleep(300)
      // MQTT.js acknowledges each QoS 1 message on receipt, which frees its place in the queue
      expect(received, `round ${round}`).toEqual(Array.from({ length: LIMIT }, (_v, i) => `devices/${id}/commands/r${round}-${i + 1}`))
      await device.endAsync()
      await waitOffline(id)
    }
    expect(sampleValue(await scrape(roost), 'roost_offline_queue_dropped_total')).toBe(droppedBefore + 2 * 2)
  })

  it('[MQTT-3.1.2-6] a clean-session login discards the queue, and a later persistent session has the whole bound again', async () => {
    const id = 'sleeper-3'
    const token = await roost.addDevice(id)
    const filter = `devices/${id}/commands/+`
    const service = await roost.connect({ clientId: 'svc-commander-3', username: 'service:commander', password: roost.serviceToken })
    const persist = async (): Promise<void> => {
      const c = await roost.connectDevice(id, token, { clean: false })
      await c.subscribeAsync(filter, { qos: 1 })
      await c.endAsync()
      await waitOffline(id)
    }

    await persist()
    for (let i = 1; i <= LIMIT; i++) await service.publishAsync(`devices/${id}/commands/old-${i}`, '{"name":"blink"}', { qos: 1 })
    // a clean login throws the old session away with its full queue, without delivering it
    const fresh = await roost.connectDevice(id, token, { clean: true })
    const discarded: string[] = []
    fresh.on('message', topic => { discarded.push(topic) })
    await sleep(300)
    expect(discarded).toEqual([])
    await fresh.endAsync()
    await waitOffline(id)

    await persist()
    for (let i = 1; i <= 3; i++) await service.publishAsync(`devices/${id}/commands/new-${i}`, '{"name":"blink"}', { qos: 1 })
    const received: string[] = []
    const device = mqtt.connect(roost.mqttUrl, { clientId: id, username: id, password: token, clean: false, reconnectPeriod: 0 })
    device.on('message', topic => { received.push(topic) })
    try {
      await eventually(() => (received.length >= 3 ? true : undefined), 5000, 'the 3 new commands')
      expect(received).toEqual([1, 2, 3].map(i => `devices/${id}/commands/new-${i}`))
    } finally {
      await device.endAsync(true)
    }
  })

  it(`a connected persistent-session device with ${LIMIT} commands unacknowledged stays connected and still gets further commands live`, async () => {
    const id = 'slow-acker'
    const token = await roost.addDevice(id)
    const droppedBefore = sampleValue(await scrape(roost), 'roost_offline_queue_dropped_total') ?? 0
    // a raw client, so that no PUBACK goes out until the test sends it
    const conn = await rawTcp(roost.mqttPort)
    expect(await rawLogin(conn, { clientId: id, username: id, password: Buffer.from(token), clean: false })).toBe(0)
    const suback = conn.next('suback')
    await conn.send(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${id}/commands/+`, qos: 1 }] }))
    await suback

    const service = await roost.connect({ clientId: 'svc-commander-4', username: 'service:commander', password: roost.serviceToken })
    const burst = 2 * LIMIT
    for (let i = 1; i <= burst; i++) await service.publishAsync(`devices/${id}/commands/live-${i}`, '{"name":"blink"}', { qos: 1 })
    const publishes = (): IPublishPacket[] => conn.packets.filter((p): p is IPublishPacket => p.cmd === 'publish')
    await eventually(() => (publishes().length >= burst || conn.isClosed() ? true : undefined), 5000, 'the burst')
    await sleep(300)
    expect(conn.isClosed()).toBe(false)
    expect(publishes().map(p => p.topic)).toEqual(Array.from({ length: burst }, (_v, i) => `devices/${id}/commands/live-${i + 1}`))
    // the queue held the first LIMIT; the rest went out live, unstored, and are counted as not queued
    expect(sampleValue(await scrape(roost), 'roost_offline_queue_dropped_total')).toBe(droppedBefore + burst - LIMIT)

    for (const p of publishes()) await conn.send(mqttPacket.generate({ cmd: 'puback', messageId: p.messageId as number }))
    await conn.send(mqttPacket.generate({ cmd: 'disconnect' }))
    await within(conn.closed, 5000, 'the device disconnects')
    await waitOffline(id)

    // everything was acknowledged: nothing is redelivered, and the next absence has the whole bound
    for (let i = 1; i <= LIMIT; i++) await service.publishAsync(`devices/${id}/commands/later-${i}`, '{"name":"blink"}', { qos: 1 })
    const received: string[] = []
    const device = mqtt.connect(roost.mqttUrl, { clientId: id, username: id, password: token, clean: false, reconnectPeriod: 0 })
    device.on('message', topic => { received.push(topic) })
    try {
      await eventually(() => (received.length >= LIMIT ? true : undefined), 5000, 'the later commands')
      await sleep(300)
      expect(received).toEqual(Array.from({ length: LIMIT }, (_v, i) => `devices/${id}/commands/later-${i + 1}`))
    } finally {
      await device.endAsync(true)
    }
  })
  it('deleting a device drops its persistent session: a new device with the same id starts with no subscriptions and no queued commands', async () => {
    const id = 'reborn'
    const oldToken = await roost.addDevice(id)
    const setup = await roost.connectDevice(id, oldToken, { clean: false })
    await setup.subscribeAsync(`devices/${id}/commands/+`, { qos: 1 })
    await setup.endAsync()
    await waitOffline(id)
    const service = await roost.connect({ clientId: 'svc-reborn', username: 'service:commander', password: roost.serviceToken })
    for (let i = 1; i <= 3; i++) await service.publishAsync(`devices/${id}/commands/old${i}`, '{"name":"unlock"}', { qos: 1 })

    expect((await roost.request('DELETE', `/v1/devices/${id}`)).status).toBe(204)
    const newToken = await roost.addDevice(id)
    const received: string[] = []
    const device = mqtt.connect(roost.mqttUrl, { clientId: id, username: id, password: newToken, clean: false, reconnectPeriod: 0 })
    device.on('message', topic => { received.push(topic) })
    try {
      const sessionPresent = await new Promise<boolean>((resolve, reject) => {
        device.once('connect', connack => resolve(connack.sessionPresent))
        device.once('error', reject)
      })
      expect(sessionPresent).toBe(false) // [MQTT-3.2.2-3] no session was kept for this client id
      await sleep(500)
      expect(received).toEqual([])
    } finally {
      await device.endAsync(true)
    }
  })
})
