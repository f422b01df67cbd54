// Topic access control seen from outside: real MQTT clients against a running Roost try to read and
// write what is not theirs, and must get nothing through. Anonymous logins are on, so the scratch
// space is part of the matrix too.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IClientOptions, MqttClient } from 'mqtt'
import { collect, eventually, nextMessage, sleep, startRoost, subscribeCodes, type TestRoost } from './harness.ts'
import { topicMatches } from './topic-match.ts'

// How long a test waits for a message that must not come. Deliveries on loopback take a few ms; the
// margin is for two shared cores under parallel test files.
const SILENCE_MS = 500

type Received = Array<{ topic: string, payload: Buffer }>


function json (payload: Buffer): unknown {
  return JSON.parse(payload.toString())
}

/** The error notice the broker publishes on devices/{id}/errors for `topic`. */
function errorFor (client: MqttClient, deviceId: string, topic: string): Promise<{ topic: string, payload: Buffer }> {
  return nextMessage(client, (t, p) => t === `devices/${deviceId}/errors` && (json(p) as { topic?: string }).topic === topic)
}


/** The CONNACK return code a refused login got (mqtt.js puts it on the error as `code`). */
async function refusedWith (connecting: Promise<MqttClient>): Promise<unknown> {
  try {
    await connecting
  } catch (err) {
    return (err as { code?: unknown }).code
  }
  throw new Error('the login was accepted')
}

describe('topic access control between devices, services and anonymous clients', () => {
  let roost: TestRoost
  const tokens = new Map<string, string>()
  let service: MqttClient
  let serviceSeen: Received

  function serviceLogin (clientId: string, extra: IClientOptions = {}): Promise<MqttClient> {
    return roost.connect({ clientId, username: 'service:acl-test', password: roost.serviceToken, ...extra })
  }
  function device (id: string, extra: IClientOptions = {}): Promise<MqttClient> {
    return roost.connectDevice(id, tokens.get(id) as string, extra)
  }

  beforeAll(async () => {
    roost = await startRoost({ env: { ROOST_ANONYMOUS: 'true' } })
    const ids = ['dev-A', 'dev-B', 'dev-C', 'w-hash', 'w-plus-me', 'w-devices', 'w-cmd', 'w-plus-cmd', 'w-me', 'w-two', 'w-four', 'w-three', 'w-desired']
    for (const id of ids) tokens.set(id, await roost.addDevice(id))
    // a service that sees everything: the positive control that the traffic below really flowed
    service = await serviceLogin('acl-observer')
    await service.subscribeAsync(['#', '$SYS/forged/#'], { qos: 1 })
    serviceSeen = collect(service).messages
  })
  afterAll(async () => { await roost.close() })

  describe('device A and device B', () => {
    let a: MqttClient
    let aSeen: Received
    beforeAll(async () => {
      a = await device('dev-A')
      await a.subscribeAsync('devices/dev-A/errors', { qos: 0 })
      aSeen = collect(a).messages
    })

    it('a device cannot subscribe to another device\'s topics, nor to its own device → platform topics: SUBACK 0x80 for each', async () => {
      const refused = [
        'devices/dev-B/commands/+',
        'devices/dev-B/commands/c1',
        'devices/dev-B/state/desired',
        'devices/dev-B/ota',
        'devices/dev-B/errors',
        'devices/dev-B/#',
        'devices/+/telemetry',
        'devices/dev-A/telemetry',
        'devices/dev-A/presence',
        '$SYS/#',
        'scratch/#',
      ]
      expect(await subscribeCodes(a, refused)).toEqual(refused.map(() => 128))
    })

    it('a refused subscribe tells the device why on devices/{id}/errors', async () => {
      const notice = errorFor(a, 'dev-A', 'devices/dev-B/state/desired')
      expect(await subscribeCodes(a, 'devices/dev-B/state/desired')).toEqual([128])
      const body = json((await notice).payload) as { topic: string, code: string, message: string }
      expect(body.code).toBe('TOPIC_FORBIDDEN')
      expect(body.message).toContain('devices/dev-B/state/desired')
    })

    it('a device\'s publishes to another device\'s topics are dropped, never stored, and answered on its errors topic', async () => {
      const forged = [
        'devices/dev-B/telemetry',
        'devices/dev-B/state/reported',
        'devices/dev-B/commands/c1/result',
        'devices/dev-B/ota/status',
        'devices/dev-B/audio/ctl',
        'devices/dev-B/commands/c1',
        'devices/dev-B/state/desired',
      ]
      const since = serviceSeen.length
      for (const topic of forged) {
        const notice = errorFor(a, 'dev-A', topic)
        // MQTT 3.1.1 has no negative PUBACK: the publish is acknowledged, then dropped
        await a.publishAsync(topic, '{"forged":1,"ok":true}', { qos: 1 })
        expect(json((await notice).payload)).toEqual({ topic, code: 'TOPIC_FORBIDDEN', message: expect.stringContaining(topic) })
      }
      await sleep(SILENCE_MS)
      expect(serviceSeen.slice(since).filter(m => m.topic.startsWith('devices/dev-B/'))).toEqual([])
      const latest = await roost.request('GET', '/v1/devices/dev-B/telemetry/latest')
      expect(latest.status).toBe(200)
      expect(latest.body.values).toEqual({})
    })

    it('a device\'s publish to a topic outside devices/ is dropped: devices have no scratch space', async () => {
      const since = serviceSeen.length
      const notice = errorFor(a, 'dev-A', 'scratch/from-device')
      await a.publishAsync('scratch/from-device', 'x', { qos: 1 })
      expect((json((await notice).payload) as { code: string }).code).toBe('TOPIC_FORBIDDEN')
      await sleep(SILENCE_MS)
      expect(serviceSeen.slice(since).filter(m => m.topic === 'scratch/from-device')).toEqual([])
    })

    it('a device does not receive another device\'s error notices', async () => {
      const b = await device('dev-B')
      const notice = errorFor(b, 'dev-B', 'devices/dev-A/telemetry')
      await b.subscribeAsync('devices/dev-B/errors')
      const since = aSeen.length
      await b.publishAsync('devices/dev-A/telemetry', '{"t":1}', { qos: 1 })
      await notice
      await sleep(SILENCE_MS)
      expect(aSeen.slice(since)).toEqual([])
      await b.endAsync()
    })
  })

  describe('wildcard subscriptions never deliver another device\'s messages', () => {
    // Each watcher is its own device ({me}) holding one filter; device dev-C is the victim.
    const filters: ReadonlyArray<readonly [string, string]> = [
      ['w-hash', '#'],
      ['w-plus-me', '+/{me}/#'],
      ['w-devices', 'devices/#'],
      ['w-cmd', 'devices/+/commands/+'],
      ['w-plus-cmd', '+/+/commands/+'],
      ['w-me', 'devices/{me}/#'],
      ['w-two', 'devices/+/+'],
      ['w-four', '+/+/+/+'],
      ['w-three', '+/+/+'],
      ['w-desired', 'devices/+/state/desired'],
    ]
    const seen = new Map<string, Received>()
    let anonSeen: Received
    // topics the platform may send to a device: one of them is the watcher's own positive control
    const controls = (me: string): string[] => [`devices/${me}/commands/ctl`, `devices/${me}/ota`, `devices/${me}/state/desired`]

    beforeAll(async () => {
      // retained messages of the victim exist before anyone subscribes: presence (broker), desired state and OTA (service)
      const victim = await device('dev-C')
      await service.publishAsync('devices/dev-C/state/desired', '{"version":1,"state":{"led":"on"}}', { qos: 1, retain: true })
      await service.publishAsync('devices/dev-C/ota', '{"version":"9.9.9","url":"http://x","size":1,"sha256":"00"}', { qos: 1, retain: true })

      const watchers = await Promise.all(filters.map(async ([id, filter]) => {
        const client = await device(id)
        seen.set(id, collect(client).messages)
        expect(await subscribeCodes(client, filter.replace('{me}', id)), `${id} subscribing to ${filter}`).toEqual([1])
        return client
      }))
      const anon = await roost.connect({ clientId: 'anon-watcher' })
      anonSeen = collect(anon).messages
      await anon.subscribeAsync(['#', '+/+/+', '+/+/commands/+'], { qos: 1 })

      // live traffic of the victim: everything it writes, everything the platform writes to it
      const deviceTopics = ['telemetry', 'state/reported', 'commands/c1/result', 'ota/status', 'audio/up', 'audio/ctl', 'stream/frames']
      for (const t of deviceTopics) await victim.publishAsync(`devices/dev-C/${t}`, t === 'telemetry' ? '{"t":1}' : '{"ok":true}', { qos: 1 })
      const platformTopics = ['commands/c1', 'state/desired', 'ota', 'audio/down', 'audio/events']
      for (const t of platformTopics) await service.publishAsync(`devices/dev-C/${t}`, '{"x":1}', { qos: 1 })
      // an error notice for the victim, and its presence going offline and online again
      await victim.publishAsync('devices/dev-C/presence', '{"online":false}', { qos: 1 })
      await victim.endAsync()
      await device('dev-C')

      // each watcher's own control message, which its filter must deliver
      await Promise.all(filters.map(async ([id, filter]) => {
        const control = controls(id).find(t => topicMatches(filter.replace('{me}', id), t)) as string
        const client = watchers[filters.findIndex(f => f[0] === id)] as MqttClient
        const arrived = nextMessage(client, t => t === control)
        await service.publishAsync(control, '{"control":true}', { qos: 1 })
        await arrived
      }))
      const anonControl = nextMessage(anon, t => t === 'scratch/anon-control')
      await service.publishAsync('scratch/anon-control', 'x', { qos: 1 })
      await anonControl
      await sleep(SILENCE_MS)
    })

    it('the victim\'s traffic really flowed: a service subscribed to # saw its telemetry, commands and presence', () => {
      const topics = new Set(serviceSeen.map(m => m.topic))
      for (const t of ['devices/dev-C/telemetry', 'devices/dev-C/commands/c1', 'devices/dev-C/presence', 'devices/dev-C/errors', 'devices/dev-C/audio/up']) {
        expect(topics.has(t), t).toBe(true)
      }
    })

    it.each(filters)('device %s subscribed to %s receives only its own platform → device topics', (id, filter) => {
      const received = seen.get(id) as Received
      expect(received.length, `${filter} delivered its control message`).toBeGreaterThan(0)
      for (const m of received) {
        expect(m.topic.startsWith(`devices/${id}/`), `${filter} delivered ${m.topic}`).toBe(true)
        expect(controls(id).concat(`devices/${id}/errors`, `devices/${id}/audio/down`, `devices/${id}/audio/events`)).toContain(m.topic)
      }
    })

    it('an anonymous client subscribed to #, +/+/+ and +/+/commands/+ receives the scratch space only', () => {
      expect(anonSeen.map(m => m.topic)).toContain('scratch/anon-control')
      expect(anonSeen.filter(m => !topicMatches('scratch/#', m.topic))).toEqual([])
    })
  })

  describe('nobody but the platform publishes presence, state/desired, ota or $SYS', () => {
    const reserved = (id: string): string[] => [
      `devices/${id}/presence`,
      `devices/${id}/state/desired`,
      `devices/${id}/ota`,
      `devices/${id}/errors`,
      `devices/${id}/audio/down`,
      '$SYS/forged/uptime',
    ]
    // a payload nothing legitimate sends: if it reaches the observer (subscribed to # and $SYS/forged/#), a forgery got through
    const FORGED = '{"online":false,"version":99,"forged":true}'
    const forgeries = (since: number): Received => serviceSeen.slice(since).filter(m => m.payload.toString() === FORGED)

    it('a device\'s retained publishes to its own platform-written topics are dropped, and its retained presence stays the broker\'s', async () => {
      const a = await device('dev-A')
      await a.subscribeAsync('devices/dev-A/errors')
      const since = serviceSeen.length
      for (const topic of reserved('dev-A')) {
        const notice = errorFor(a, 'dev-A', topic)
        await a.publishAsync(topic, FORGED, { qos: 1, retain: true })
        expect((json((await notice).payload) as { code: string }).code).toBe('TOPIC_FORBIDDEN')
      }
      await sleep(SILENCE_MS)
      expect(forgeries(since)).toEqual([])

      // a late subscriber gets the broker's retained presence, not the forged one, and no forged desired state or OTA
      const late = await serviceLogin('acl-late')
      const retained = collect(late).messages
      await late.subscribeAsync(['devices/dev-A/presence', 'devices/dev-A/state/desired', 'devices/dev-A/ota', '$SYS/forged/#'], { qos: 1 })
      const presence = await eventually(() => retained.find(m => m.topic === 'devices/dev-A/presence'), 5000, 'retained presence')
      expect(json(presence.payload)).toMatchObject({ online: true })
      await sleep(SILENCE_MS)
      expect(retained.map(m => m.topic)).toEqual(['devices/dev-A/presence'])
      await late.endAsync()
    })

    it('a service may not publish presence, errors or $SYS either, and an anonymous client none of the platform-written topics', async () => {
      const publisher = await serviceLogin('acl-forger')
      const anon = await roost.connect({ clientId: 'anon-forger' })
      const since = serviceSeen.length
      for (const topic of ['devices/dev-A/presence', 'devices/dev-A/errors', '$SYS/forged/uptime']) await publisher.publishAsync(topic, FORGED, { qos: 1 })
      for (const topic of reserved('dev-A')) await anon.publishAsync(topic, FORGED, { qos: 1 })
      // positive control: the same publisher's allowed publish does arrive
      const control = nextMessage(service, t => t === 'devices/dev-A/state/desired')
      await publisher.publishAsync('devices/dev-A/state/desired', '{"version":1,"state":{}}', { qos: 1 })
      await control
      await sleep(SILENCE_MS)
      expect(forgeries(since)).toEqual([])
      // both connections survive: a refused publish is dropped, not a protocol violation
      expect(publisher.connected && anon.connected).toBe(true)
      await Promise.all([publisher.endAsync(), anon.endAsync()])
    })
  })

  describe('nobody takes over a device\'s client id', () => {
    let a: MqttClient
    let closes = 0
    beforeAll(async () => {
      a = await device('dev-A')
      a.on('close', () => { closes++ })
    })

    it('a service login using a device id as client id is refused with CONNACK 2', async () => {
      expect(await refusedWith(serviceLogin('dev-A'))).toBe(2)
    })

    it('an anonymous login using a device id as client id is refused with CONNACK 2', async () => {
      expect(await refusedWith(roost.connect({ clientId: 'dev-A' }))).toBe(2)
    })

    it('another device logging in with device A\'s client id is refused with CONNACK 2', async () => {
      expect(await refusedWith(roost.connect({ clientId: 'dev-A', username: 'dev-B', password: tokens.get('dev-B') as string }))).toBe(2)
    })

    it('a login with device A\'s id and a wrong token is refused with CONNACK 4', async () => {
      expect(await refusedWith(roost.connect({ clientId: 'dev-A', username: 'dev-A', password: 'rdt_wrong' }))).toBe(4)
    })

    it('device A stays connected through all of it and still receives its commands', async () => {
      await a.subscribeAsync('devices/dev-A/commands/+', { qos: 1 })
      const command = nextMessage(a, t => t === 'devices/dev-A/commands/after-takeover')
      await service.publishAsync('devices/dev-A/commands/after-takeover', '{"name":"ping"}', { qos: 1 })
      await command
      expect(closes).toBe(0)
      expect(a.connected).toBe(true)
      const rest = await roost.request('GET', '/v1/devices/dev-A')
      expect(rest.body.online).toBe(true)
    })
  })
})
