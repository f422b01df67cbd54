// A viewer that stops reading a busy feed and then leaves must not take the broker down with it.

import { connect } from 'node:net'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, nextMessage, startRoost, type TestRoost } from './harness.ts'

const PUBLISHERS = 10
const MESSAGES_EACH = 6000
// enough queued messages that draining them one stack frame after another would overflow the stack
const BACKLOG = 20_000

describe('slow subscriber', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_ANONYMOUS: 'true' } }) })
  afterAll(async () => { await roost?.close() })

  it('a QoS 0 subscriber that stops reading while a backlog of tens of thousands builds, then disconnects, leaves the broker serving', async () => {
    // a raw subscriber: subscribe, then stop reading so the socket fills and deliveries back up
    const viewer = connect(roost.mqttPort, '127.0.0.1')
    await new Promise<void>(resolve => viewer.once('connect', () => resolve()))
    viewer.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'slow-viewer', keepalive: 0 }))
    viewer.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'feed/#', qos: 0 }] }))
    await new Promise<void>(resolve => viewer.once('data', () => resolve()))
    await new Promise(resolve => setTimeout(resolve, 200)) // CONNACK and SUBACK may come in two reads
    viewer.pause()

    const publishers = await Promise.all(Array.from({ length: PUBLISHERS }, (_v, i) => roost.connect({ clientId: `feeder-${i}` })))
    for (const [i, p] of publishers.entries()) {
      for (let n = 0; n < MESSAGES_EACH; n++) p.publish(`feed/${i}`, 'x', { qos: 0 })
    }
    const mq = (roost.platform.broker!.aedes as unknown as { mq: { length: number } }).mq
    await eventually(() => (mq.length >= BACKLOG ? true : undefined), 30_000, `a backlog of ${BACKLOG} queued messages (have ${mq.length})`)

    viewer.destroy()

    // the broker drains the backlog (now with no subscriber) and keeps serving
    const watcher = await roost.connect({ clientId: 'watcher' })
    await watcher.subscribeAsync('after/ping', { qos: 1 })
    const got = nextMessage(watcher, topic => topic === 'after/ping', 20_000)
    await publishers[0]!.publishAsync('after/ping', 'still here', { qos: 1 })
    expect((await got).payload.toString()).toBe('still here')
    await eventually(() => (mq.length === 0 ? true : undefined), 20_000, 'the backlog to drain')
  })
})
