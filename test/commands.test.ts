// Commands: stored first, delivered at QoS 1 to online devices and in order at their next connect,
// answered over MQTT or HTTP, waited for synchronously, expired, never delivered late.

import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { collect, eventually, nextMessage, sleep, startRoost, type TestRoost } from './harness.ts'

describe('commands', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost() })
  afterAll(async () => { await roost?.close() })

  /** A device that answers every command it receives with {ok: true, result: {echo: name}}. */
  async function answeringDevice (id: string, token: string): Promise<MqttClient> {
    const device = await roost.connectDevice(id, token)
    device.on('message', (topic, payload) => {
      const m = /^devices\/[^/]+\/commands\/([^/]+)$/.exec(topic)
      if (m === null) return
      const { name } = JSON.parse(payload.toString()) as { name: string }
      device.publish(`${topic}/result`, JSON.stringify({ ok: true, result: { echo: name } }), { qos: 1 })
    })
    await device.subscribeAsync(`devices/${id}/commands/+`, { qos: 1 })
    return device
  }

  it('an online device receives {name, params, expiresAt} at QoS 1, and its result makes the command succeeded', async () => {
    const token = await roost.addDevice('relay-1')
    const device = await roost.connectDevice('relay-1', token)
    await device.subscribeAsync('devices/relay-1/commands/+', { qos: 1 })
    const received = nextMessage(device, t => t.startsWith('devices/relay-1/commands/'))
    const sent = await roost.request('POST', '/v1/devices/relay-1/commands', { name: 'switch', params: { pin: 'v0', on: true } })
    expect(sent.status).toBe(201)
    const msg = await received
    expect(msg.topic).toBe(`devices/relay-1/commands/${sent.body.id}`)
    const body = JSON.parse(msg.payload.toString())
    expect(body).toEqual({ name: 'switch', params: { pin: 'v0', on: true }, expiresAt: sent.body.expiresAt })
    await eventually(async () => ((await roost.request('GET', `/v1/devices/relay-1/commands/${sent.body.id}`)).body.status === 'sent' ? true : undefined))
    await device.publishAsync(`${msg.topic}/result`, JSON.stringify({ ok: true, result: { state: 'on' } }), { qos: 1 })
    const done = await roost.request('GET', `/v1/devices/relay-1/commands/${sent.body.id}`)
    expect(done.body).toMatchObject({ status: 'succeeded', result: { state: 'on' }, error: null })
    expect(typeof done.body.finishedAt).toBe('number')
  })

  it('with waitMs the POST answers with the device\'s result (a synchronous RPC)', async () => {
    const token = await roost.addDevice('rpc-1')
    await answeringDevice('rpc-1', token)
    const res = await roost.request('POST', '/v1/devices/rpc-1/commands', { name: 'ping', waitMs: 10_000 })
    expect(res.status).toBe(201)
    expect(res.body).toMatchObject({ status: 'succeeded', result: { echo: 'ping' } })
  })

  it('with waitMs and a silent device the POST answers "sent" once the wait is over', async () => {
    const token = await roost.addDevice('mute-1')
    const device = await roost.connectDevice('mute-1', token)
    await device.subscribeAsync('devices/mute-1/commands/+', { qos: 1 })
    const start = Date.now()
    const res = await roost.request('POST', '/v1/devices/mute-1/commands', { name: 'ping', waitMs: 400 })
    expect(Date.now() - start).toBeGreaterThanOrEqual(390)
    expect(res.body.status).toBe('sent')
  })

  it('commands for an offline device wait, and arrive in order when it connects and subscribes with a clean session', async () => {
    const token = await roost.addDevice('sleeper-c')
    const ids: string[] = []
    for (const name of ['one', 'two', 'three']) ids.push((await roost.request('POST', '/v1/devices/sleeper-c/commands', { name })).body.id)
    for (const id of ids) expect((await roost.request('GET', `/v1/devices/sleeper-c/commands/${id}`)).body.status).toBe('queued')
    const device = await roost.connectDevice('sleeper-c', token, { clean: true })
    const got = collect(device)
    await device.subscribeAsync('devices/sleeper-c/commands/+', { qos: 1 })
    await eventually(() => (got.messages.length >= 3 ? true : undefined), 5000, 'three commands')
    expect(got.messages.map(m => JSON.parse(m.payload.toString()).name)).toEqual(['one', 'two', 'three'])
    expect(got.messages.map(m => m.topic.split('/')[3])).toEqual(ids)
  })

  it('a listening device\'s command is stored as sent; commands sent while older ones still queue arrive after them, in order', async () => {
    const token = await roost.addDevice('burst-1')
    // stored while the device is away: queued
    const early: string[] = []
    for (const name of ['a0', 'a1']) early.push((await roost.request('POST', '/v1/devices/burst-1/commands', { name })).body.id)
    const device = await roost.connectDevice('burst-1', token, { clean: true })
    const got = collect(device)
    // a burst sent the moment the device subscribes races its first delivery of a0 and a1
    const subscribed = device.subscribeAsync('devices/burst-1/commands/+', { qos: 1 })
    const burst = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      await sleep(i % 5)
      return (await roost.request('POST', '/v1/devices/burst-1/commands', { name: `b${i}` })).body as { id: string, status: string }
    }))
    await subscribed
    const all = [...early, ...burst.map(b => b.id)].sort()
    await eventually(() => (new Set(got.messages.map(m => m.topic)).size >= all.length ? true : undefined), 5000, 'every command')
    // at least once: a command may come twice (a repeat of the first delivery), but the first sightings are in creation order
    const firstSeen = [...new Set(got.messages.map(m => m.topic.split('/')[3] as string))]
    expect(firstSeen).toEqual(all)
    // once the device listens and nothing queues, a command is stored as sent with no claim after it
    const later = await roost.request('POST', '/v1/devices/burst-1/commands', { name: 'c' })
    expect(later.body.status).toBe('sent')
    expect(later.body.sentAt).toBe(later.body.createdAt)
  })

  it('a persistent-session device gets its queued commands in order right at reconnect, from the database', async () => {
    const token = await roost.addDevice('sleeper-p')
    const first = await roost.connectDevice('sleeper-p', token, { clean: false })
    await first.subscribeAsync('devices/sleeper-p/commands/+', { qos: 1 })
    await first.endAsync()
    await eventually(async () => ((await roost.request('GET', '/v1/devices/sleeper-p')).body.online === false ? true : undefined))
    for (const name of ['a', 'b', 'c', 'd']) await roost.request('POST', '/v1/devices/sleeper-p/commands', { name })
    const names: string[] = []
    const device = await roost.connect({ clientId: 'sleeper-p', username: 'sleeper-p', password: token, clean: false }, undefined)
    device.on('message', (_t, p) => names.push(JSON.parse(p.toString()).name))
    await eventually(() => (names.length >= 4 ? true : undefined), 5000, 'four commands')
    await sleep(300)
    expect(names).toEqual(['a', 'b', 'c', 'd'])
  })

  it('a command whose TTL passes while the device is away expires and is never delivered', async () => {
    const token = await roost.addDevice('late-1')
    const res = await roost.request('POST', '/v1/devices/late-1/commands', { name: 'unlock', ttlMs: 1000 })
    await eventually(async () => ((await roost.request('GET', `/v1/devices/late-1/commands/${res.body.id}`)).body.status === 'expired' ? true : undefined), 5000, 'expiry')
    const device = await roost.connectDevice('late-1', token)
    const got = collect(device)
    await device.subscribeAsync('devices/late-1/commands/+', { qos: 1 })
    await sleep(500)
    expect(got.messages).toEqual([])
  })

  it('results for unknown, foreign or already answered commands are refused with a named code', async () => {
    const tokenA = await roost.addDevice('res-a')
    const tokenB = await roost.addDevice('res-b')
    const a = await answeringDevice('res-a', tokenA)
    const cmd = (await roost.request('POST', '/v1/devices/res-a/commands', { name: 'x', waitMs: 5000 })).body
    expect(cmd.status).toBe('succeeded')
    await a.subscribeAsync('devices/res-a/errors', { qos: 0 })
    const again = nextMessage(a, t => t === 'devices/res-a/errors')
    await a.publishAsync(`devices/res-a/commands/${cmd.id}/result`, '{"ok":false,"error":"late"}', { qos: 1 })
    expect(JSON.parse((await again).payload.toString())).toMatchObject({ code: 'COMMAND_FINAL' })
    const unknown = nextMessage(a, t => t === 'devices/res-a/errors')
    await a.publishAsync('devices/res-a/commands/nosuchcommand/result', '{"ok":true}', { qos: 1 })
    expect(JSON.parse((await unknown).payload.toString())).toMatchObject({ code: 'COMMAND_NOT_FOUND' })
    // device B answering A's command under its own topic: not its command
    const b = await roost.connectDevice('res-b', tokenB)
    await b.subscribeAsync('devices/res-b/errors', { qos: 0 })
    const foreign = nextMessage(b, t => t === 'devices/res-b/errors')
    await b.publishAsync(`devices/res-b/commands/${cmd.id}/result`, '{"ok":true}', { qos: 1 })
    expect(JSON.parse((await foreign).payload.toString())).toMatchObject({ code: 'COMMAND_NOT_FOUND' })
    const invalid = nextMessage(a, t => t === 'devices/res-a/errors')
    await a.publishAsync(`devices/res-a/commands/${cmd.id}/result`, '{"ok":"yes"}', { qos: 1 })
    expect(JSON.parse((await invalid).payload.toString())).toMatchObject({ code: 'PAYLOAD_INVALID' })
    expect((await roost.request('GET', `/v1/devices/res-a/commands/${cmd.id}`)).body).toMatchObject({ status: 'succeeded', result: { echo: 'x' } })
  })

  it('a device without MQTT polls its pending commands over HTTP, in order, and posts results', async () => {
    const token = await roost.addDevice('http-dev')
    const c1 = (await roost.request('POST', '/v1/devices/http-dev/commands', { name: 'first' })).body
    const c2 = (await roost.request('POST', '/v1/devices/http-dev/commands', { name: 'second' })).body
    const pending = await roost.request('GET', '/v1/devices/http-dev/commands?status=pending', undefined, token)
    expect(pending.status).toBe(200)
    expect(pending.body.items.map((c: { id: string }) => c.id)).toEqual([c1.id, c2.id])
    expect(pending.body.items.every((c: { status: string }) => c.status === 'sent')).toBe(true)
    const ok = await roost.request('POST', `/v1/devices/http-dev/commands/${c1.id}/result`, { ok: true, result: 42 }, token)
    expect(ok.body).toMatchObject({ status: 'succeeded', result: 42 })
    const fail = await roost.request('POST', `/v1/devices/http-dev/commands/${c2.id}/result`, { ok: false, error: 'relay stuck' }, token)
    expect(fail.body).toMatchObject({ status: 'failed', error: 'relay stuck' })
    const twice = await roost.request('POST', `/v1/devices/http-dev/commands/${c1.id}/result`, { ok: true }, token)
    expect(twice.status).toBe(409)
    expect(twice.body.code).toBe('COMMAND_FINAL')
    expect((await roost.request('POST', '/v1/devices/http-dev/commands/nope/result', { ok: true }, token)).body.code).toBe('COMMAND_NOT_FOUND')
    expect((await roost.request('GET', '/v1/devices/http-dev/commands?status=pending', undefined, token)).body.items).toEqual([])
    const history = await roost.request('GET', '/v1/devices/http-dev/commands')
    expect(history.body.items.map((c: { name: string }) => c.name)).toEqual(['second', 'first'])
  })

  it('sending a command needs the admin or the owner (not the device), and an unknown device is DEVICE_NOT_FOUND', async () => {
    const token = await roost.addDevice('auth-c')
    const res = await roost.request('POST', '/v1/devices/auth-c/commands', { name: 'x' }, token)
    expect(res.status).toBe(403)
    expect(res.body.code).toBe('USER_REQUIRED')
    expect((await roost.request('POST', '/v1/devices/ghost/commands', { name: 'x' })).body.code).toBe('DEVICE_NOT_FOUND')
    expect((await roost.request('POST', '/v1/devices/auth-c/commands', { name: 'x', waitMs: 999_999 })).status).toBe(400)
  })
})
