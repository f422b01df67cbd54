// What the platform publishes itself (presence, voice events and frames, errors) reaches a subscribed device
// whole and in per-QoS order, even when QoS 0 messages follow a QoS 1 one at once: Aedes' duplicate guard
// would drop the QoS 1 message that the QoS 0 ones overtook (broker/index.ts, NOTHING_REMEMBERED).

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, startRoost, type TestRoost } from './harness.ts'

describe('platform publishes', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ parts: ['broker', 'api'] }) })
  afterAll(async () => { await roost?.close() })

  it('a burst mixing QoS 1 events and QoS 0 frames to one device loses nothing and keeps each QoS in order', async () => {
    const token = await roost.addDevice('mix-1')
    const device = await roost.connectDevice('mix-1', token)
    await device.subscribeAsync({ 'devices/mix-1/audio/events': { qos: 1 }, 'devices/mix-1/audio/down': { qos: 0 } })
    const events: number[] = []
    const frames: number[] = []
    device.on('message', (topic, payload) => {
      if (topic.endsWith('/events')) events.push((JSON.parse(payload.toString()) as { i: number }).i)
      else frames.push(payload.readUInt32BE(0))
    })
    const broker = roost.platform.broker
    if (broker === undefined) throw new Error('no broker in this platform')
    const sent: Array<Promise<void>> = []
    for (let i = 0; i < 50; i++) {
      sent.push(broker.publish('devices/mix-1/audio/events', JSON.stringify({ i }), { qos: 1, retain: false }))
      for (let k = 0; k < 3; k++) {
        const frame = Buffer.alloc(64)
        frame.writeUInt32BE(i * 3 + k, 0)
        sent.push(broker.publish('devices/mix-1/audio/down', frame, { qos: 0, retain: false }))
      }
    }
    await Promise.all(sent)
    await eventually(() => (events.length >= 50 && frames.length >= 150 ? true : undefined), 5000, 'every message')
    expect(events).toEqual(Array.from({ length: 50 }, (_, i) => i))
    expect(frames).toEqual(Array.from({ length: 150 }, (_, i) => i))
  })
})
