// Device state: desired patches (merge, version, retained publish, rebuilt at restart) and reported merges.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { collect, eventually, nextMessage, sleep, startRoost, type TestRoost } from './harness.ts'

describe('device state', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost() })
  afterAll(async () => { await roost?.close() })

  it('PATCH merges into desired (null deletes a key), bumps the version, and GET shows desired, reported and the delta', async () => {
    await roost.addDevice('lamp')
    const first = await roost.request('PATCH', '/v1/devices/lamp/state', { state: { power: 'on', brightness: 40, schedule: { from: '07:00', to: '22:00' } } })
    expect(first.status).toBe(200)
    expect(first.body.desired).toMatchObject({ version: 1, state: { power: 'on', brightness: 40, schedule: { from: '07:00', to: '22:00' } } })
    const second = await roost.request('PATCH', '/v1/devices/lamp/state', { state: { brightness: null, schedule: { to: '23:00' } } })
    expect(second.body.desired.version).toBe(2)
    expect(second.body.desired.state).toEqual({ power: 'on', schedule: { from: '07:00', to: '23:00' } })
    const got = await roost.request('GET', '/v1/devices/lamp/state')
    expect(got.status).toBe(200)
    expect(got.body).toMatchObject({ deviceId: 'lamp', reported: { version: 0, state: {}, updatedAt: null } })
    expect(typeof got.body.desired.updatedAt).toBe('number')
    expect(got.body.delta).toEqual({ power: 'on', schedule: { from: '07:00', to: '23:00' } })
  })

  it('the device receives the whole desired document retained on state/desired, also when it connects after the change', async () => {
    const token = await roost.addDevice('heater')
    await roost.request('PATCH', '/v1/devices/heater/state', { state: { target: 21 } })
    const device = await roost.connectDevice('heater', token)
    const retained = nextMessage(device, t => t === 'devices/heater/state/desired')
    await device.subscribeAsync('devices/heater/state/desired', { qos: 1 })
    expect(JSON.parse((await retained).payload.toString())).toEqual({ version: 1, state: { target: 21 } })
    const live = nextMessage(device, t => t === 'devices/heater/state/desired')
    await roost.request('PATCH', '/v1/devices/heater/state', { state: { eco: true } })
    expect(JSON.parse((await live).payload.toString())).toEqual({ version: 2, state: { target: 21, eco: true } })
  })

  it('device reports merge into reported before they are acknowledged, and the delta shrinks to what is left', async () => {
    const token = await roost.addDevice('valve')
    await roost.request('PATCH', '/v1/devices/valve/state', { state: { open: true, flow: 3 } })
    const device = await roost.connectDevice('valve', token)
    await device.publishAsync('devices/valve/state/reported', JSON.stringify({ open: true, firmware: '1.4.2' }), { qos: 1 })
    // QoS 1: acknowledged only after the merge committed, so it is visible at once
    const after = await roost.request('GET', '/v1/devices/valve/state')
    expect(after.body.reported).toMatchObject({ version: 1, state: { open: true, firmware: '1.4.2' } })
    expect(after.body.delta).toEqual({ flow: 3 })
    await device.publishAsync('devices/valve/state/reported', JSON.stringify({ flow: 3, firmware: null }), { qos: 1 })
    const done = await roost.request('GET', '/v1/devices/valve/state')
    expect(done.body.reported).toMatchObject({ version: 2, state: { open: true, flow: 3 } })
    expect(done.body.delta).toEqual({})
  })

  it('reports arriving back to back are merged in the order they were sent', async () => {
    const token = await roost.addDevice('counter')
    const device = await roost.connectDevice('counter', token)
    await Promise.all(Array.from({ length: 20 }, (_v, i) => device.publishAsync('devices/counter/state/reported', JSON.stringify({ n: i }), { qos: 1 })))
    const state = await roost.request('GET', '/v1/devices/counter/state')
    expect(state.body.reported).toMatchObject({ version: 20, state: { n: 19 } })
  })

  it.each([
    ['not JSON', 'on'],
    ['an array', '[1,2]'],
    ['a string', '"on"'],
    ['too large', JSON.stringify({ blob: 'x'.repeat(20_000) })],
  ])('a report that is %s is refused with PAYLOAD_INVALID on the errors topic and merges nothing', async (_name, payload) => {
    const id = 'bad-' + Math.random().toString(36).slice(2, 8)
    const token = await roost.addDevice(id)
    const device = await roost.connectDevice(id, token)
    await device.subscribeAsync(`devices/${id}/errors`, { qos: 0 })
    const error = nextMessage(device, t => t === `devices/${id}/errors`)
    await device.publishAsync(`devices/${id}/state/reported`, payload, { qos: 1 })
    expect(JSON.parse((await error).payload.toString())).toMatchObject({ topic: `devices/${id}/state/reported`, code: 'PAYLOAD_INVALID' })
    expect((await roost.request('GET', `/v1/devices/${id}/state`)).body.reported.version).toBe(0)
  })

  it('a PATCH made against a stale version answers 409 STATE_VERSION_CONFLICT and changes nothing; against the current one it applies', async () => {
    await roost.addDevice('door')
    await roost.request('PATCH', '/v1/devices/door/state', { state: { locked: true } })
    const stale = await roost.request('PATCH', '/v1/devices/door/state', { state: { locked: false }, version: 0 })
    expect(stale.status).toBe(409)
    expect(stale.body.code).toBe('STATE_VERSION_CONFLICT')
    expect((await roost.request('GET', '/v1/devices/door/state')).body.desired).toMatchObject({ version: 1, state: { locked: true } })
    const fresh = await roost.request('PATCH', '/v1/devices/door/state', { state: { locked: false }, version: 1 })
    expect(fresh.status).toBe(200)
    expect(fresh.body.desired).toMatchObject({ version: 2, state: { locked: false } })
  })

  it('twenty concurrent PATCHes all apply, and the retained document ends at the newest version', async () => {
    await roost.addDevice('board')
    const results = await Promise.all(Array.from({ length: 20 }, (_v, i) => roost.request('PATCH', '/v1/devices/board/state', { state: { [`pin${i}`]: i } })))
    expect(results.every(r => r.status === 200)).toBe(true)
    expect(new Set(results.map(r => r.body.desired.version)).size).toBe(20)
    const watcher = await roost.connect({ clientId: 'svc-board', username: 'service:watch', password: roost.serviceToken })
    const retained = nextMessage(watcher, t => t === 'devices/board/state/desired')
    await watcher.subscribeAsync('devices/board/state/desired', { qos: 1 })
    const doc = JSON.parse((await retained).payload.toString())
    expect(doc.version).toBe(20)
    expect(Object.keys(doc.state)).toHaveLength(20)
  })

  it('PATCH needs the admin or the owner; a device reads its own state with its token', async () => {
    const token = await roost.addDevice('thermo')
    const patch = await roost.request('PATCH', '/v1/devices/thermo/state', { state: { a: 1 } }, token)
    expect(patch.status).toBe(403)
    expect(patch.body.code).toBe('USER_REQUIRED')
    expect((await roost.request('GET', '/v1/devices/thermo/state', undefined, token)).status).toBe(200)
    expect((await roost.request('PATCH', '/v1/devices/nobody/state', { state: { a: 1 } })).body.code).toBe('DEVICE_NOT_FOUND')
    expect((await roost.request('PATCH', '/v1/devices/thermo/state', { state: [1] })).status).toBe(400)
  })

  it('deleting a device removes its state and clears its retained desired document', async () => {
    await roost.addDevice('gone')
    await roost.request('PATCH', '/v1/devices/gone/state', { state: { x: 1 } })
    expect((await roost.request('DELETE', '/v1/devices/gone')).status).toBe(204)
    await roost.addDevice('gone')
    expect((await roost.request('GET', '/v1/devices/gone/state')).body.desired).toMatchObject({ version: 0, state: {} })
    const watcher = await roost.connect({ clientId: 'svc-gone', username: 'service:watch', password: roost.serviceToken })
    const seen = collect(watcher)
    await watcher.subscribeAsync('devices/gone/state/desired', { qos: 1 })
    await sleep(300)
    expect(seen.messages).toEqual([])
  })
})

describe('device state across a restart', () => {
  it('a device connecting after a restart receives its current desired document, rebuilt from the database', async () => {
    const first = await startRoost({ keepDataDir: true })
    const token = await first.addDevice('sleepy')
    await first.request('PATCH', '/v1/devices/sleepy/state', { state: { interval: 60 } })
    await first.request('PATCH', '/v1/devices/sleepy/state', { state: { interval: 300 } })
    const dataDir = first.dataDir
    const env = { ROOST_ADMIN_TOKEN: first.adminToken, ROOST_SERVICE_TOKEN: first.serviceToken }
    await first.close()
    const second = await startRoost({ dataDir, env })
    try {
      const device = await second.connectDevice('sleepy', token)
      const retained = nextMessage(device, t => t === 'devices/sleepy/state/desired')
      await device.subscribeAsync('devices/sleepy/state/desired', { qos: 1 })
      expect(JSON.parse((await retained).payload.toString())).toEqual({ version: 2, state: { interval: 300 } })
      await eventually(async () => ((await second.request('GET', '/v1/devices/sleepy/state')).body.desired.version === 2 ? true : undefined))
    } finally {
      await second.close()
    }
  })
})
