// The device REST surface: create, list, get, patch, delete and token rotation, with real MQTT clients
// for what a change does to a live session, and the bearer-credential rules on every route.

import mqtt from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'

let roost: TestRoost
beforeAll(async () => { roost = await startRoost({ env: { ROOST_LAST_SEEN_FLUSH_MS: '50' } }) })
afterAll(async () => { await roost.close() })

type Reply = Awaited<ReturnType<TestRoost['request']>>

function expectError (res: Reply, status: number, code: string): void {
  expect({ status: res.status, code: res.body?.code }).toEqual({ status, code })
  expect(res.body).toEqual({ statusCode: status, code, message: expect.any(String) })
}

/** Tries an MQTT login as device `id`: 'accepted', or the CONNACK return code of the refusal. */
async function mqttLogin (id: string, token: string): Promise<'accepted' | number> {
  try {
    const client = await mqtt.connectAsync(roost.mqttUrl, { clientId: id, username: id, password: token, reconnectPeriod: 0, connectTimeout: 5000 })
    await client.endAsync()
    return 'accepted'
  } catch (err) {
    return (err as { code?: number }).code ?? -1
  }
}

const CONNACK_BAD_CREDENTIALS = 4

describe('creating a device', () => {
  it('answers 201 with the id, a token shown this once and the MQTT login to use', async () => {
    const res = await roost.request('POST', '/v1/devices', { id: 'porch-1', name: 'Porch', ownerId: 'user-7' })
    expect(res.status).toBe(201)
    expect(res.body).toEqual({
      id: 'porch-1',
      token: expect.stringMatching(/^\S{28,}$/),
      mqtt: { host: 'localhost', port: roost.mqttPort, username: 'porch-1' },
    })
    // the token logs in over MQTT...
    expect(await mqttLogin('porch-1', res.body.token)).toBe('accepted')
    // ...and is never shown again: neither the device nor the list carries it or its hash
    const got = await roost.request('GET', '/v1/devices/porch-1')
    expect(got.body).toMatchObject({ id: 'porch-1', name: 'Porch', ownerId: 'user-7' })
    expect(JSON.stringify(got.body)).not.toContain(res.body.token)
    expect(Object.keys(got.body).sort()).toEqual(['createdAt', 'id', 'lastSeen', 'name', 'online', 'ownerId', 'tags', 'updatedAt'])
    const list = await roost.request('GET', '/v1/devices?limit=1000')
    expect(JSON.stringify(list.body)).not.toMatch(/token/i)
  })

  it('without an id, generates distinct ids in the seed format ABCD1234', async () => {
    const ids = new Set<string>()
    for (let i = 0; i < 5; i++) {
      const res = await roost.request('POST', '/v1/devices', {})
      expect(res.status).toBe(201)
      expect(res.body.id).toMatch(/^[A-Z]{4}[0-9]{4}$/)
      expect(res.body.mqtt.username).toBe(res.body.id)
      ids.add(res.body.id as string)
    }
    expect(ids.size).toBe(5)
  })

  it('with an id that exists answers 409 DEVICE_EXISTS and leaves the existing device and its token alone', async () => {
    const first = await roost.request('POST', '/v1/devices', { id: 'twin', name: 'first' })
    expect(first.status).toBe(201)
    const again = await roost.request('POST', '/v1/devices', { id: 'twin', name: 'second' })
    expectError(again, 409, 'DEVICE_EXISTS')
    expect(again.body.message).toContain('twin')
    expect((await roost.request('GET', '/v1/devices/twin')).body.name).toBe('first')
    expect(await mqttLogin('twin', first.body.token)).toBe('accepted')
  })

  it('accepts an id of exactly 64 characters of letters, digits, _ and -', async () => {
    const id = 'aZ0_-'.repeat(12) + 'abcd'
    expect(id).toHaveLength(64)
    const res = await roost.request('POST', '/v1/devices', { id })
    expect(res.status).toBe(201)
    expect(res.body.id).toBe(id)
  })

  const badIds: Array<[string, unknown]> = [
    ['a topic separator', 'a/b'],
    ['a single-level wildcard', '+'],
    ['a multi-level wildcard', 'room#1'],
    ['a $ prefix', '$SYS'],
    ['an empty id', ''],
    ['65 characters', 'x'.repeat(65)],
    ['a space', 'a b'],
    ['a non-ASCII letter', 'küche'],
    ['a number instead of a string', 123],
    ['null', null],
  ]
  it.each(badIds)('refuses an id with %s as 400 VALIDATION_FAILED', async (_what, id) => {
    const res = await roost.request('POST', '/v1/devices', { id })
    expectError(res, 400, 'VALIDATION_FAILED')
    expect((await roost.request('GET', '/v1/devices?limit=1000')).body.items.map((d: { id: string }) => d.id)).not.toContain(String(id))
  })

  it('refuses unknown properties and over-long names as 400 VALIDATION_FAILED', async () => {
    expectError(await roost.request('POST', '/v1/devices', { id: 'extra-prop', token: 'mine' }), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('POST', '/v1/devices', { id: 'long-name', name: 'n'.repeat(201) }), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('GET', '/v1/devices/extra-prop'), 404, 'DEVICE_NOT_FOUND')
  })

  it('refuses a body that is not JSON as 400 VALIDATION_FAILED', async () => {
    const res = await fetch(roost.httpUrl + '/v1/devices', {
      method: 'POST',
      headers: { authorization: `Bearer ${roost.adminToken}`, 'content-type': 'application/json' },
      body: '{"id": "half',
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toMatchObject({ statusCode: 400, code: 'VALIDATION_FAILED' })
  })
})

describe('listing devices', () => {
  beforeAll(async () => {
    for (const id of ['list-a', 'list-b', 'list-c', 'list-d', 'list-e']) await roost.addDevice(id)
  })

  it('pages in id order with limit and after; following next visits every device exactly once', async () => {
    const all = await roost.request('GET', '/v1/devices?limit=1000')
    expect(all.status).toBe(200)
    expect(all.body.next).toBeUndefined()
    const ids = (all.body.items as Array<{ id: string }>).map(d => d.id)
    expect(ids).toEqual([...ids].sort())
    expect(ids).toEqual(expect.arrayContaining(['list-a', 'list-b', 'list-c', 'list-d', 'list-e']))

    const paged: string[] = []
    let after: string | undefined
    for (let pages = 0; pages < 100; pages++) {
      const res = await roost.request('GET', `/v1/devices?limit=2${after === undefined ? '' : `&after=${after}`}`)
      expect(res.status).toBe(200)
      expect(res.body.items.length).toBeLessThanOrEqual(2)
      paged.push(...res.body.items.map((d: { id: string }) => d.id))
      if (res.body.next === undefined) break
      // next is the last id of the page: the client passes it back as `after`
      expect(res.body.next).toBe(res.body.items[res.body.items.length - 1].id)
      after = res.body.next
    }
    expect(paged).toEqual(ids)
  })

  it('after an id returns only the ids sorting after it', async () => {
    const res = await roost.request('GET', '/v1/devices?after=list-b&limit=3')
    expect(res.body.items.map((d: { id: string }) => d.id)).toEqual(['list-c', 'list-d', 'list-e'])
    expect(res.body.next).toBe('list-e')
  })

  it('each listed device carries online and lastSeen', async () => {
    const res = await roost.request('GET', '/v1/devices?after=list-a&limit=1')
    expect(res.body.items).toEqual([{
      id: 'list-b', name: null, ownerId: null, tags: [], online: false, lastSeen: null, createdAt: expect.any(Number), updatedAt: expect.any(Number),
    }])
  })

  it.each(['limit=0', 'limit=1001', 'limit=ten', 'after=a/b'])('refuses %s as 400 VALIDATION_FAILED', async query => {
    expectError(await roost.request('GET', `/v1/devices?${query}`), 400, 'VALIDATION_FAILED')
  })
})

describe('getting a device', () => {
  it('answers 404 DEVICE_NOT_FOUND for an unknown id and 400 VALIDATION_FAILED for an impossible one', async () => {
    const missing = await roost.request('GET', '/v1/devices/nobody-here')
    expectError(missing, 404, 'DEVICE_NOT_FOUND')
    expect(missing.body.message).toContain('nobody-here')
    expectError(await roost.request('GET', '/v1/devices/a+b'), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('GET', '/v1/devices/' + 'x'.repeat(65)), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('GET', '/v1/devices/a%2Fb'), 400, 'VALIDATION_FAILED')
  })

  it('shows online while a real MQTT client is connected as the device, and offline after it disconnects', async () => {
    const token = await roost.addDevice('presence-1')
    expect((await roost.request('GET', '/v1/devices/presence-1')).body.online).toBe(false)
    const client = await roost.connectDevice('presence-1', token)
    await eventually(async () => (await roost.request('GET', '/v1/devices/presence-1')).body.online === true || undefined, 10_000, 'online')
    // the device may read itself with its own token
    const own = await roost.request('GET', '/v1/devices/presence-1', undefined, token)
    expect(own.body).toMatchObject({ id: 'presence-1', online: true })
    await client.endAsync()
    await eventually(async () => (await roost.request('GET', '/v1/devices/presence-1')).body.online === false || undefined, 10_000, 'offline')
  })

  it('sets lastSeen once the batched last-seen flush has run after a connection', async () => {
    const token = await roost.addDevice('seen-1')
    expect((await roost.request('GET', '/v1/devices/seen-1')).body.lastSeen).toBeNull()
    const before = Date.now()
    const client = await roost.connectDevice('seen-1', token)
    const lastSeen = await eventually(async () => {
      const v = (await roost.request('GET', '/v1/devices/seen-1')).body.lastSeen as number | null
      return v === null ? undefined : v
    }, 10_000, 'lastSeen')
    expect(lastSeen).toBeGreaterThanOrEqual(before)
    expect(lastSeen).toBeLessThanOrEqual(Date.now())
    // a message moves it forward (the pause makes the message's millisecond a later one)
    await sleep(5)
    await client.publishAsync('devices/seen-1/telemetry', JSON.stringify({ t: 1 }), { qos: 1 })
    await eventually(async () => {
      const v = (await roost.request('GET', '/v1/devices/seen-1')).body.lastSeen as number
      return v > lastSeen ? v : undefined
    }, 10_000, 'lastSeen to move on a message')
  })
})

describe('changing a device', () => {
  beforeAll(async () => { await roost.request('POST', '/v1/devices', { id: 'patch-1', name: 'Old', ownerId: 'owner-1' }) })

  it('patches the name and owner and bumps updatedAt', async () => {
    const before = (await roost.request('GET', '/v1/devices/patch-1')).body
    const res = await roost.request('PATCH', '/v1/devices/patch-1', { name: 'New', ownerId: 'owner-2' })
    expect(res.status).toBe(200)
    expect(res.body).toMatchObject({ id: 'patch-1', name: 'New', ownerId: 'owner-2', createdAt: before.createdAt })
    expect(res.body.updatedAt).toBeGreaterThanOrEqual(before.updatedAt)
    expect((await roost.request('GET', '/v1/devices/patch-1')).body).toEqual(res.body)
  })

  it('sets and replaces tags; tags with spaces, duplicates or too many are refused', async () => {
    expect((await roost.request('GET', '/v1/devices/patch-1')).body.tags).toEqual([])
    expect((await roost.request('PATCH', '/v1/devices/patch-1', { tags: ['kitchen', 'beta'] })).body.tags).toEqual(['kitchen', 'beta'])
    expect((await roost.request('PATCH', '/v1/devices/patch-1', { tags: ['garage'] })).body.tags).toEqual(['garage'])
    for (const tags of [['has space'], ['a', 'a'], Array.from({ length: 33 }, (_, i) => `t${i}`)]) {
      expectError(await roost.request('PATCH', '/v1/devices/patch-1', { tags }), 400, 'VALIDATION_FAILED')
    }
    const made = await roost.request('POST', '/v1/devices', { id: 'tagged-1', tags: ['lab'] })
    expect(made.status).toBe(201)
    expect((await roost.request('GET', '/v1/devices/tagged-1')).body.tags).toEqual(['lab'])
  })

  it('patches only the fields given', async () => {
    const res = await roost.request('PATCH', '/v1/devices/patch-1', { name: 'Only name' })
    expect(res.body).toMatchObject({ name: 'Only name', ownerId: 'owner-2' })
  })

  it('clears a field with null (stored as null, not as an empty string)', async () => {
    const res = await roost.request('PATCH', '/v1/devices/patch-1', { name: null })
    expect(res.status).toBe(200)
    expect(res.body.name).toBeNull()
    expect((await roost.request('GET', '/v1/devices/patch-1')).body.name).toBeNull()
  })

  it('refuses an empty patch, unknown fields and wrong types as 400 VALIDATION_FAILED', async () => {
    expectError(await roost.request('PATCH', '/v1/devices/patch-1', {}), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('PATCH', '/v1/devices/patch-1', { id: 'renamed' }), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('PATCH', '/v1/devices/patch-1', { name: 42 }), 400, 'VALIDATION_FAILED')
    expectError(await roost.request('PATCH', '/v1/devices/patch-1', { name: 'n'.repeat(201) }), 400, 'VALIDATION_FAILED')
    expect((await roost.request('GET', '/v1/devices/patch-1')).body).toMatchObject({ id: 'patch-1', name: null })
  })

  it('answers 404 DEVICE_NOT_FOUND for an unknown device', async () => {
    expectError(await roost.request('PATCH', '/v1/devices/nobody-here', { name: 'x' }), 404, 'DEVICE_NOT_FOUND')
  })
})

describe('deleting a device', () => {
  it('answers 204, closes its MQTT session, removes its telemetry and retires its token', async () => {
    const token = await roost.addDevice('doomed')
    const client = await roost.connectDevice('doomed', token)
    await client.publishAsync('devices/doomed/telemetry', JSON.stringify({ temp: 20 }), { qos: 1 })
    expect((await roost.request('GET', '/v1/devices/doomed/telemetry/latest')).body.values.temp.value).toBe(20)

    const res = await roost.request('DELETE', '/v1/devices/doomed')
    expect(res.status).toBe(204)
    expect(res.body).toBeUndefined()

    await eventually(() => (client.connected ? undefined : true), 10_000, 'the device session to be closed')
    expectError(await roost.request('GET', '/v1/devices/doomed'), 404, 'DEVICE_NOT_FOUND')
    expectError(await roost.request('GET', '/v1/devices/doomed/telemetry/latest'), 404, 'DEVICE_NOT_FOUND')
    expectError(await roost.request('GET', '/v1/devices/doomed/telemetry'), 404, 'DEVICE_NOT_FOUND')
    expect(await mqttLogin('doomed', token)).toBe(CONNACK_BAD_CREDENTIALS)
    expectError(await roost.request('GET', '/v1/devices/doomed', undefined, token), 401, 'AUTH_INVALID')
    expectError(await roost.request('DELETE', '/v1/devices/doomed'), 404, 'DEVICE_NOT_FOUND')

    // a new device under the same id starts empty: the telemetry was deleted, not hidden
    const reborn = await roost.addDevice('doomed')
    expect(reborn).not.toBe(token)
    const latest = await roost.request('GET', '/v1/devices/doomed/telemetry/latest')
    expect(latest.body).toEqual({ deviceId: 'doomed', values: {} })
    const range = await roost.request('GET', `/v1/devices/doomed/telemetry?from=0&to=${Date.now() + 1000}`)
    expect(range.body.rows).toEqual([])
  })
})

describe('rotating a device token', () => {
  it('refuses the old token on MQTT and REST, disconnects the open session and accepts the new token', async () => {
    const old = await roost.addDevice('rotor')
    const client = await roost.connectDevice('rotor', old)
    expect(client.connected).toBe(true)

    const res = await roost.request('POST', '/v1/devices/rotor/token')
    expect(res.status).toBe(200)
    expect(res.body).toEqual({ id: 'rotor', token: expect.any(String) })
    const fresh = res.body.token as string
    expect(fresh).not.toBe(old)

    await eventually(() => (client.connected ? undefined : true), 10_000, 'the old session to be closed')
    expect(await mqttLogin('rotor', old)).toBe(CONNACK_BAD_CREDENTIALS)
    expectError(await roost.request('GET', '/v1/devices/rotor', undefined, old), 401, 'AUTH_INVALID')

    expect(await mqttLogin('rotor', fresh)).toBe('accepted')
    const own = await roost.request('GET', '/v1/devices/rotor', undefined, fresh)
    expect(own.status).toBe(200)
    expect(own.body.id).toBe('rotor')
  })

  it('answers 404 DEVICE_NOT_FOUND for an unknown device', async () => {
    expectError(await roost.request('POST', '/v1/devices/nobody-here/token'), 404, 'DEVICE_NOT_FOUND')
  })
})

describe('bearer credentials', () => {
  let tokenA: string
  let tokenB: string
  beforeAll(async () => {
    tokenA = await roost.addDevice('auth-a')
    tokenB = await roost.addDevice('auth-b')
  })

  // every route that takes a credential, acting on device auth-a, as device credentials see it: `admin`
  // routes take only the admin token, `user` and `owner` routes a user's credential too (test/accounts.test.ts
  // covers users), `device` routes also the token of the device they name
  type Rule = 'admin' | 'user' | 'owner' | 'device'
  const ROUTES: Array<{ method: string, path: string, body?: unknown, rule: Rule }> = [
    { method: 'POST', path: '/v1/devices', body: { id: 'auth-made' }, rule: 'admin' },
    { method: 'GET', path: '/v1/devices', rule: 'user' },
    { method: 'GET', path: '/v1/devices/auth-a', rule: 'device' },
    { method: 'PATCH', path: '/v1/devices/auth-a', body: { name: 'x' }, rule: 'owner' },
    { method: 'DELETE', path: '/v1/devices/auth-a', rule: 'admin' },
    { method: 'POST', path: '/v1/devices/auth-a/token', rule: 'owner' },
    { method: 'GET', path: '/v1/devices/auth-a/telemetry/latest', rule: 'device' },
    { method: 'GET', path: '/v1/devices/auth-a/telemetry', rule: 'device' },
    { method: 'POST', path: '/v1/devices/auth-a/telemetry', body: { auth: 1 }, rule: 'device' },
    { method: 'GET', path: '/metrics', rule: 'admin' },
  ]

  type Credential = 'none' | 'wrong' | 'own device' | 'other device'
  // what each credential gets on each kind of route: [status, code], or 'allowed'
  const EXPECT: Record<Credential, Record<Rule, [number, string] | 'allowed'>> = {
    none: { admin: [401, 'AUTH_REQUIRED'], user: [401, 'AUTH_REQUIRED'], owner: [401, 'AUTH_REQUIRED'], device: [401, 'AUTH_REQUIRED'] },
    wrong: { admin: [401, 'AUTH_INVALID'], user: [401, 'AUTH_INVALID'], owner: [401, 'AUTH_INVALID'], device: [401, 'AUTH_INVALID'] },
    'own device': { admin: [403, 'ADMIN_REQUIRED'], user: [403, 'USER_REQUIRED'], owner: [403, 'USER_REQUIRED'], device: 'allowed' },
    'other device': { admin: [403, 'ADMIN_REQUIRED'], user: [403, 'USER_REQUIRED'], owner: [403, 'USER_REQUIRED'], device: [403, 'DEVICE_TOKEN_SCOPE'] },
  }

  const table = ROUTES.flatMap(r => (Object.keys(EXPECT) as Credential[]).map(c => [`${r.method} ${r.path}`, c, r, EXPECT[c][r.rule]] as const))
  it.each(table)('%s with %s credential', async (_route, credential, route, expected) => {
    const token = { none: null, wrong: 'rdt_not-a-real-token', 'own device': tokenA, 'other device': tokenB }[credential]
    const res = await roost.request(route.method, route.path, route.body, token)
    if (expected === 'allowed') expect(res.status).toBeLessThan(300)
    else expectError(res, expected[0], expected[1])
  })

  it('the refused requests changed nothing: auth-a still exists with its token and auth-made was not created', async () => {
    expect(await mqttLogin('auth-a', tokenA)).toBe('accepted')
    expect((await roost.request('GET', '/v1/devices/auth-a')).body.name).toBeNull()
    expectError(await roost.request('GET', '/v1/devices/auth-made'), 404, 'DEVICE_NOT_FOUND')
  })

  it('an Authorization header that is not a bearer credential counts as none (401 AUTH_REQUIRED)', async () => {
    for (const header of [`Basic ${Buffer.from('admin:' + roost.adminToken).toString('base64')}`, roost.adminToken, 'Bearer']) {
      const res = await fetch(roost.httpUrl + '/v1/devices', { headers: { authorization: header } })
      expect(res.status).toBe(401)
      expect(await res.json()).toMatchObject({ code: 'AUTH_REQUIRED' })
    }
  })

  it('the admin token is accepted on every route, and /health needs no credential', async () => {
    expect((await roost.request('GET', '/v1/devices/auth-b')).status).toBe(200)
    const health = await roost.request('GET', '/health', undefined, null)
    expect(health.status).toBe(200)
    expect(health.body).toEqual({ status: 'ok', db: 'ok', broker: 'ok' })
  })
})
