// Presence: the broker's retained {online, ts} on devices/{id}/presence at connect, at every kind of
// disconnect, across a session takeover and a restart; and lastSeen written in batches, not per message.

import { rmSync } from 'node:fs'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, freshDataDir, sleep, startRoost, type TestRoost } from './harness.ts'
import { rawLogin, rawTcp, within } from './raw-mqtt.ts'

interface Presence { readonly online: boolean, readonly ts: number }
interface Seen { readonly deviceId: string, readonly presence: Presence }

let serviceClients = 0

function connectService (roost: TestRoost): Promise<MqttClient> {
  const n = ++serviceClients
  return roost.connect({ clientId: `svc-presence-${n}`, username: `service:presence-test-${n}`, password: roost.serviceToken })
}

/** A service login subscribed to devices/+/presence that records every presence message it receives. */
async function watchPresence (roost: TestRoost): Promise<{ seen: Seen[], next (deviceId: string, online: boolean, ms?: number): Promise<Seen> }> {
  const client = await connectService(roost)
  const seen: Seen[] = []
  const waiters = new Set<() => void>()
  client.on('message', (topic, payload) => {
    const deviceId = topic.split('/')[1] as string
    if (payload.length === 0) return
    seen.push({ deviceId, presence: JSON.parse(payload.toString()) as Presence })
    for (const w of waiters) w()
  })
  await client.subscribeAsync('devices/+/presence', { qos: 1 })
  return {
    seen,
    // the first message for this device and state arriving from now on
    next (deviceId, online, ms = 5000) {
      let from = seen.length
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no presence online=${online} for ${deviceId} within ${ms} ms`)) }, ms)
        function check (): void {
          for (; from < seen.length; from++) {
            const s = seen[from] as Seen
            if (s.deviceId === deviceId && s.presence.online === online) {
              clearTimeout(timer)
              waiters.delete(check)
              resolve(s)
              return
            }
          }
        }
        waiters.add(check)
      })
    },
  }
}

/** What a new subscriber gets as the retained presence of `deviceId` (fails when nothing is retained). */
async function retainedPresence (roost: TestRoost, deviceId: string): Promise<Presence> {
  const client = await connectService(roost)
  try {
    const got = new Promise<Presence>(resolve => {
      client.on('message', (_topic, payload, packet) => {
        if (packet.retain && payload.length > 0) resolve(JSON.parse(payload.toString()) as Presence)
      })
    })
    await client.subscribeAsync(`devices/${deviceId}/presence`, { qos: 1 })
    return await within(got, 5000, `retained presence of ${deviceId}`)
  } finally {
    await client.endAsync()
  }
}

async function lastSeenOf (roost: TestRoost, id: string): Promise<number | null> {
  const res = await roost.request('GET', `/v1/devices/${id}`)
  expect(res.status).toBe(200)
  return res.body.lastSeen as number | null
}

describe('presence', () => {
  let roost: TestRoost
  let watch: Awaited<ReturnType<typeof watchPresence>>

  beforeAll(async () => {
    roost = await startRoost({ env: { ROOST_LAST_SEEN_FLUSH_MS: '50' } })
    watch = await watchPresence(roost)
  })
  afterAll(async () => { await roost?.close() })

  it('a device that connects is announced {online: true, ts} and that value is retained', async () => {
    const token = await roost.addDevice('p-connect')
    const before = Date.now()
    const online = watch.next('p-connect', true)
    await roost.connectDevice('p-connect', token)
    const seen = await online // announced once the session is ready, just after CONNACK
    const after = Date.now()
    expect(seen.presence.ts).toBeGreaterThanOrEqual(before)
    expect(seen.presence.ts).toBeLessThanOrEqual(after)
    expect(await retainedPresence(roost, 'p-connect')).toEqual({ online: true, ts: seen.presence.ts })
  })

  it('a clean DISCONNECT is announced {online: false} and retained', async () => {
    const token = await roost.addDevice('p-clean')
    const device = await roost.connectDevice('p-clean', token)
    await retainedPresence(roost, 'p-clean').then(p => expect(p.online).toBe(true))
    const offline = watch.next('p-clean', false)
    const before = Date.now()
    await device.endAsync()
    const seen = await offline
    expect(seen.presence.ts).toBeGreaterThanOrEqual(before)
    expect(await retainedPresence(roost, 'p-clean')).toEqual({ online: false, ts: seen.presence.ts })
  })

  it('a device whose socket is lost without DISCONNECT is announced {online: false}', async () => {
    const token = await roost.addDevice('p-lost')
    const device = await roost.connectDevice('p-lost', token)
    await retainedPresence(roost, 'p-lost').then(p => expect(p.online).toBe(true))
    const offline = watch.next('p-lost', false)
    device.stream.destroy()
    expect((await offline).presence.online).toBe(false)
    expect((await retainedPresence(roost, 'p-lost')).online).toBe(false)
  })

  it('[MQTT-3.1.2-24] a device silent for 1.5 × its keepalive of 1 s is cut off and announced {online: false}', async () => {
    const token = await roost.addDevice('p-silent')
    const conn = await rawTcp(roost.mqttPort)
    const online = watch.next('p-silent', true)
    expect(await rawLogin(conn, { clientId: 'p-silent', username: 'p-silent', password: Buffer.from(token), keepalive: 1 })).toBe(0)
    await online
    const silentSince = Date.now()
    const offline = watch.next('p-silent', false, 6000)
    // no PINGREQ from here on
    const seen = await offline
    const waited = Date.now() - silentSince
    expect(seen.presence.online).toBe(false)
    expect(waited).toBeGreaterThanOrEqual(1000) // not before the keepalive allowed
    expect(waited).toBeLessThan(6000)
    await within(conn.closed, 2000, 'the broker closes the silent connection')
  })

  it('[MQTT-3.1.4-2] a device that reconnects while its old session is open ends online: the old session\'s late offline does not win', async () => {
    const token = await roost.addDevice('p-takeover')
    let current = await roost.connectDevice('p-takeover', token)
    // a plain takeover, then the old socket lost just before and just after the new CONNECT (a device on flaky Wi-Fi)
    for (const oldSocket of ['open', 'lost before', 'lost after'] as const) {
      const old = current
      const oldClosed = new Promise<void>(resolve => old.once('close', () => resolve()))
      if (oldSocket === 'lost before') old.stream.destroy()
      const next = roost.connectDevice('p-takeover', token)
      if (oldSocket === 'lost after') setImmediate(() => old.stream.destroy())
      current = await next
      await within(oldClosed, 5000, 'the old session is closed')
      // let any late publish of the old session land before looking
      await sleep(300)
      expect(current.connected, oldSocket).toBe(true)
      expect((await retainedPresence(roost, 'p-takeover')).online, oldSocket).toBe(true)
      const last = watch.seen.filter(s => s.deviceId === 'p-takeover').at(-1)
      expect(last?.presence.online, oldSocket).toBe(true)
    }
    const rest = await roost.request('GET', '/v1/devices/p-takeover')
    expect(rest.body.online).toBe(true)
  })

  it('deleting a connected device closes its session and clears its retained presence', async () => {
    const token = await roost.addDevice('p-deleted')
    const device = await roost.connectDevice('p-deleted', token)
    expect((await retainedPresence(roost, 'p-deleted')).online).toBe(true)
    const closed = new Promise<void>(resolve => device.once('close', () => resolve()))
    expect((await roost.request('DELETE', '/v1/devices/p-deleted')).status).toBe(204)
    await within(closed, 5000, 'the deleted device is disconnected')

    // an empty retained payload removes the retained message [MQTT-3.3.1-10]: a new subscriber gets nothing
    const client = await connectService(roost)
    const got: Buffer[] = []
    client.on('message', (_topic, payload, packet) => { if (packet.retain) got.push(payload) })
    await client.subscribeAsync('devices/p-deleted/presence', { qos: 1 })
    await sleep(500)
    await client.endAsync()
    expect(got).toEqual([])
  })

  it('GET /v1/devices/{id} shows lastSeen once the batched flush has run', async () => {
    const token = await roost.addDevice('p-seen')
    expect(await lastSeenOf(roost, 'p-seen')).toBeNull()
    const before = Date.now()
    const device = await roost.connectDevice('p-seen', token)
    await device.publishAsync('devices/p-seen/telemetry', '{"t":1}', { qos: 1 })
    const seen = await eventually(async () => (await lastSeenOf(roost, 'p-seen')) ?? undefined, 5000, 'lastSeen')
    expect(seen).toBeGreaterThanOrEqual(before)
    expect(seen).toBeLessThanOrEqual(Date.now())
  })
})

describe('presence after a restart', () => {
  const dataDir = freshDataDir()
  afterAll(() => { rmSync(dataDir, { recursive: true, force: true }) })

  it('every device\'s retained presence is {online: false, ts: its lastSeen} after a restart on the same data dir', async () => {
    const first = await startRoost({ dataDir, keepDataDir: true, env: { ROOST_LAST_SEEN_FLUSH_MS: '50' } })
    try {
      const left = await first.addDevice('r-left')
      const stayed = await first.addDevice('r-stayed')
      await first.addDevice('r-never')
      const a = await first.connectDevice('r-left', left)
      await a.publishAsync('devices/r-left/telemetry', '{"t":1}', { qos: 1 })
      await a.endAsync()
      await first.connectDevice('r-stayed', stayed) // still connected when the platform stops
      await eventually(async () => (await lastSeenOf(first, 'r-left')) ?? undefined, 5000, 'lastSeen written')
    } finally {
      await first.close()
    }

    const second = await startRoost({ dataDir, keepDataDir: true })
    try {
      for (const id of ['r-left', 'r-stayed', 'r-never']) {
        const lastSeen = await lastSeenOf(second, id)
        if (id !== 'r-never') expect(lastSeen).not.toBeNull()
        expect(await retainedPresence(second, id), id).toEqual({ online: false, ts: lastSeen ?? 0 })
      }
    } finally {
      await second.close()
    }
  })
})

describe('lastSeen batching', () => {
  const FLUSH_MS = 2000
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_LAST_SEEN_FLUSH_MS: String(FLUSH_MS) } }) })
  afterAll(async () => { await roost?.close() })

  it('lastSeen is written by the periodic flush, not per connect or message', async () => {
    const tokenA = await roost.addDevice('lb-pacer')
    const tokenB = await roost.addDevice('lb-device')

    // find the flush's phase: the moment the pacer's lastSeen appears, a flush has just run
    await roost.connectDevice('lb-pacer', tokenA)
    await eventually(async () => (await lastSeenOf(roost, 'lb-pacer')) ?? undefined, 3 * FLUSH_MS, 'first flush')

    const connectedAt = Date.now()
    const device = await roost.connectDevice('lb-device', tokenB)
    await device.publishAsync('devices/lb-device/telemetry', '{"t":1}', { qos: 1 })
    expect(await lastSeenOf(roost, 'lb-device')).toBeNull() // connect and message are held in memory

    const first = await eventually(async () => (await lastSeenOf(roost, 'lb-device')) ?? undefined, 3 * FLUSH_MS, 'flush of lb-device')
    const appearedAfter = Date.now() - connectedAt
    expect(first).toBeGreaterThanOrEqual(connectedAt)
    expect(appearedAfter).toBeGreaterThanOrEqual(FLUSH_MS / 2) // it waited for the flush

    // right after a flush: more messages do not move lastSeen until the next one
    for (let i = 0; i < 3; i++) await device.publishAsync('devices/lb-device/telemetry', `{"t":${i}}`, { qos: 1 })
    expect(await lastSeenOf(roost, 'lb-device')).toBe(first)
    const later = await eventually(async () => {
      const v = await lastSeenOf(roost, 'lb-device')
      return v !== null && v > first ? v : undefined
    }, 3 * FLUSH_MS, 'the next flush')
    expect(later).toBeGreaterThan(first)
  })
})
