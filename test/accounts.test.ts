// Accounts over real HTTP: users and sessions, API keys, ownership on every device route (a table of
// route × role), claiming, fleet provisioning, lockouts, rate limits and security headers.

import { createHmac } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startRoost, sleep, type TestRoost, type UserLogin as Login } from './harness.ts'
import { claimDevice } from '../db/accounts.ts'
import { claimCodeHash } from '../api/accounts.ts'

function expectCode (res: { status: number, body: any }, status: number, code: string): void {
  expect({ status: res.status, code: res.body?.code }).toEqual({ status, code })
}

describe('users and sessions', () => {
  let r: TestRoost
  beforeAll(async () => { r = await startRoost() })
  afterAll(async () => { await r?.close() })

  it('the admin creates users; self sign-up is off by default; an email is one account whatever its case', async () => {
    expectCode(await r.request('POST', '/v1/users', { email: 'self@example.com', password: 'long enough' }, null), 403, 'SIGNUP_DISABLED')
    const made = await r.request('POST', '/v1/users', { email: 'Ann@Example.com', password: 'long enough' })
    expect(made.status).toBe(201)
    expect(made.body).toMatchObject({ email: 'ann@example.com' })
    expect(made.body.password).toBeUndefined()
    expectCode(await r.request('POST', '/v1/users', { email: 'ANN@example.com', password: 'long enough' }), 409, 'USER_EXISTS')
    expectCode(await r.request('POST', '/v1/users', { email: 'short@example.com', password: 'short' }), 400, 'PASSWORD_TOO_SHORT')
    expectCode(await r.request('POST', '/v1/users', { email: 'not an email', password: 'long enough' }), 400, 'VALIDATION_FAILED')
  })

  it('fleet provisioning is off without a fleet secret', async () => {
    expectCode(await r.request('POST', '/v1/provision', { deviceId: 'nofleet-1', nonce: 'nonce-0001', ts: Date.now(), hmac: '0'.repeat(64) }, null), 404, 'PROVISIONING_DISABLED')
    expectCode(await r.request('GET', '/v1/devices/nofleet-1'), 404, 'DEVICE_NOT_FOUND')
  })

  it('login gives an access token that works and a refresh token that works once; wrong passwords and unknown emails get the same answer', async () => {
    const s = await r.addUser('bo@example.com')
    expect((await r.request('GET', '/v1/devices', undefined, s.accessToken)).status).toBe(200)
    expectCode(await r.request('POST', '/v1/auth/login', { email: 'bo@example.com', password: 'wrong password' }, null), 401, 'LOGIN_FAILED')
    expectCode(await r.request('POST', '/v1/auth/login', { email: 'nobody@example.com', password: 'wrong password' }, null), 401, 'LOGIN_FAILED')
    const next = await r.request('POST', '/v1/auth/refresh', { refreshToken: s.refreshToken }, null)
    expect(next.status).toBe(200)
    expect(next.body.refreshToken).not.toBe(s.refreshToken)
    expect((await r.request('GET', '/v1/devices', undefined, next.body.accessToken)).status).toBe(200)
    expectCode(await r.request('POST', '/v1/auth/refresh', { refreshToken: s.refreshToken }, null), 401, 'REFRESH_INVALID')
  })

  it('logout ends the session at once and answers 204 again and again', async () => {
    const s = await r.addUser('cy@example.com')
    expect((await r.request('POST', '/v1/auth/logout', undefined, s.accessToken)).status).toBe(204)
    expectCode(await r.request('GET', '/v1/devices', undefined, s.accessToken), 401, 'AUTH_INVALID')
    expect((await r.request('POST', '/v1/auth/logout', undefined, s.accessToken)).status).toBe(204)
    expect((await r.request('POST', '/v1/auth/logout', { refreshToken: s.refreshToken }, null)).status).toBe(204)
    expectCode(await r.request('POST', '/v1/auth/refresh', { refreshToken: s.refreshToken }, null), 401, 'REFRESH_INVALID')
    expect((await r.request('POST', '/v1/auth/logout', undefined, 'not-a-token')).status).toBe(204)
  })

  it('a password change keeps the session that made it and ends every other one', async () => {
    const a = await r.addUser('di@example.com')
    const b = (await r.request('POST', '/v1/auth/login', { email: 'di@example.com', password: 'correct horse' }, null)).body as Login
    expectCode(await r.request('POST', '/v1/auth/password', { currentPassword: 'wrong one!', newPassword: 'new password' }, a.accessToken), 401, 'LOGIN_FAILED')
    expect((await r.request('POST', '/v1/auth/password', { currentPassword: 'correct horse', newPassword: 'new password' }, a.accessToken)).status).toBe(204)
    expect((await r.request('GET', '/v1/devices', undefined, a.accessToken)).status).toBe(200)
    expectCode(await r.request('GET', '/v1/devices', undefined, b.accessToken), 401, 'AUTH_INVALID')
    expectCode(await r.request('POST', '/v1/auth/refresh', { refreshToken: b.refreshToken }, null), 401, 'REFRESH_INVALID')
    expect((await r.request('POST', '/v1/auth/login', { email: 'di@example.com', password: 'new password' }, null)).status).toBe(200)
  })

  it('API keys: the secret is shown once, scopes limit what a key does, and revoking stops it at once', async () => {
    const s = await r.addUser('ed@example.com')
    await r.addDevice('ed-lamp')
    await r.request('PATCH', '/v1/devices/ed-lamp', { ownerId: s.userId })
    const readKey = await r.request('POST', '/v1/api-keys', { name: 'dashboard' }, s.accessToken)
    expect(readKey.status).toBe(201)
    expect(readKey.body).toMatchObject({ name: 'dashboard', scopes: ['read'], revokedAt: null })
    const list = await r.request('GET', '/v1/api-keys', undefined, s.accessToken)
    expect(list.body.items.map((k: any) => k.id)).toEqual([readKey.body.id])
    expect(JSON.stringify(list.body)).not.toContain(readKey.body.key)
    expect((await r.request('GET', '/v1/devices/ed-lamp', undefined, readKey.body.key)).status).toBe(200)
    expectCode(await r.request('PATCH', '/v1/devices/ed-lamp/state', { state: { on: true } }, readKey.body.key), 403, 'SCOPE_REQUIRED')
    expectCode(await r.request('POST', '/v1/api-keys', { name: 'more' }, readKey.body.key), 403, 'SCOPE_REQUIRED')
    const writeKey = await r.request('POST', '/v1/api-keys', { name: 'automation', scopes: ['read', 'write'] }, s.accessToken)
    expect((await r.request('PATCH', '/v1/devices/ed-lamp/state', { state: { on: true } }, writeKey.body.key)).status).toBe(200)
    expect((await r.request('DELETE', `/v1/api-keys/${writeKey.body.id}`, undefined, s.accessToken)).body.revokedAt).toEqual(expect.any(Number))
    expectCode(await r.request('GET', '/v1/devices/ed-lamp', undefined, writeKey.body.key), 401, 'AUTH_INVALID')
    expectCode(await r.request('DELETE', '/v1/api-keys/k_nope', undefined, s.accessToken), 404, 'API_KEY_NOT_FOUND')
    const expired = await r.request('POST', '/v1/api-keys', { name: 'old', expiresAt: Date.now() - 1 }, s.accessToken)
    expectCode(await r.request('GET', '/v1/devices', undefined, expired.body.key), 401, 'AUTH_INVALID')
  })
})

describe('an access token past its lifetime', () => {
  let r: TestRoost
  beforeAll(async () => { r = await startRoost({ env: { ROOST_ACCESS_TOKEN_TTL_S: '1' } }) })
  afterAll(async () => { await r?.close() })

  it('stops working, and logging out with it still answers 204 and ends its session', async () => {
    const s = await r.addUser('fay@example.com')
    await sleep(2100)
    expectCode(await r.request('GET', '/v1/devices', undefined, s.accessToken), 401, 'AUTH_INVALID')
    expect((await r.request('POST', '/v1/auth/logout', undefined, s.accessToken)).status).toBe(204)
    expectCode(await r.request('POST', '/v1/auth/refresh', { refreshToken: s.refreshToken }, null), 401, 'REFRESH_INVALID')
  })
})

describe('who may use which route (route × role)', () => {
  let r: TestRoost
  const creds: Record<string, string | null> = {}
  let commandId = ''
  beforeAll(async () => {
    r = await startRoost()
    const owner = await r.addUser('owner@example.com')
    const other = await r.addUser('other@example.com')
    creds.admin = r.adminToken
    creds.owner = owner.accessToken
    creds['other user'] = other.accessToken
    for (const scopes of [['read'], ['read', 'write'], ['read', 'write', 'admin']]) {
      creds[`key ${scopes.join('+')}`] = (await r.request('POST', '/v1/api-keys', { name: scopes.join('+'), scopes }, owner.accessToken)).body.key
    }
    creds.device = await r.addDevice('mx-dev')
    await r.addDevice('mx-spare')
    creds.none = null
    for (const id of ['mx-dev', 'mx-spare']) await r.request('PATCH', `/v1/devices/${id}`, { ownerId: owner.userId })
    commandId = (await r.request('POST', '/v1/devices/mx-dev/commands', { name: 'probe' })).body.id
  })
  afterAll(async () => { await r?.close() })

  type Role = 'admin' | 'owner' | 'other user' | 'key read' | 'key read+write' | 'key read+write+admin' | 'device' | 'none'
  // ok: a 2xx; pass: the credential was let through (the route then answered on its own terms, e.g. 400
  // for a missing body or 409 for a command already answered), anything else: that status and code
  type Want = 'ok' | 'pass' | [number, string]
  const NO: Want = [401, 'AUTH_REQUIRED']
  const HIDDEN: Want = [404, 'DEVICE_NOT_FOUND']
  const ADMIN: Want = [403, 'ADMIN_REQUIRED']
  const USER: Want = [403, 'USER_REQUIRED']
  const SCOPE: Want = [403, 'SCOPE_REQUIRED']
  const SELF: Want = [403, 'DEVICE_CREDENTIAL_REQUIRED']
  const TOKEN: Want = [403, 'DEVICE_TOKEN_REQUIRED']
  // one row per route acting on device mx-dev (owned by `owner`): what each role gets
  const MATRIX: Array<{ route: string, body?: unknown, want: Record<Role, Want> }> = [
    { route: 'POST /v1/devices', body: { id: 'mx-new' }, want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/devices', want: { admin: 'ok', owner: 'ok', 'other user': 'ok', 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'GET /v1/devices/mx-dev', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'PATCH /v1/devices/mx-dev', body: { name: 'lamp' }, want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': SCOPE, 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'GET /v1/devices/mx-dev/telemetry/latest', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'GET /v1/devices/mx-dev/telemetry', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'POST /v1/devices/mx-dev/telemetry', body: { t: 1 }, want: { admin: 'ok', owner: SELF, 'other user': SELF, 'key read': SELF, 'key read+write': SELF, 'key read+write+admin': SELF, device: 'ok', none: NO } },
    { route: 'GET /v1/devices/mx-dev/state', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'PATCH /v1/devices/mx-dev/state', body: { state: { a: 1 } }, want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': SCOPE, 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'POST /v1/devices/mx-dev/commands', body: { name: 'blink' }, want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': SCOPE, 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'GET /v1/devices/mx-dev/commands', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'GET /v1/api-keys', want: { admin: USER, owner: 'ok', 'other user': 'ok', 'key read': SCOPE, 'key read+write': SCOPE, 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'POST /v1/devices/mx-dev/claim-code', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/events', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/webhooks', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'POST /v1/devices/mx-spare/token', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': SCOPE, 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'DELETE /v1/devices/mx-spare', want: { admin: ADMIN, owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/devices/mx-dev/commands/{cmd}', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'POST /v1/devices/mx-dev/commands/{cmd}/result', body: { ok: true }, want: { admin: 'pass', owner: SELF, 'other user': SELF, 'key read': SELF, 'key read+write': SELF, 'key read+write+admin': SELF, device: 'pass', none: NO } },
    { route: 'POST /v1/users', body: { email: 'x@example.com', password: 'long enough' }, want: { admin: 'pass', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: [403, 'SIGNUP_DISABLED'] } },
    { route: 'POST /v1/api-keys', body: { name: 'm' }, want: { admin: USER, owner: 'ok', 'other user': 'ok', 'key read': SCOPE, 'key read+write': SCOPE, 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'DELETE /v1/api-keys/k_unknown', want: { admin: USER, owner: [404, 'API_KEY_NOT_FOUND'], 'other user': [404, 'API_KEY_NOT_FOUND'], 'key read': SCOPE, 'key read+write': SCOPE, 'key read+write+admin': [404, 'API_KEY_NOT_FOUND'], device: USER, none: NO } },
    { route: 'POST /v1/auth/password', body: { currentPassword: 'not it at all', newPassword: 'whatever long' }, want: { admin: USER, owner: [401, 'LOGIN_FAILED'], 'other user': [401, 'LOGIN_FAILED'], 'key read': SCOPE, 'key read+write': SCOPE, 'key read+write+admin': [401, 'LOGIN_FAILED'], device: USER, none: NO } },
    { route: 'POST /v1/devices/mx-spare/claim', body: { code: 'NOPE' }, want: { admin: USER, owner: [409, 'DEVICE_OWNED'], 'other user': [409, 'DEVICE_OWNED'], 'key read': SCOPE, 'key read+write': [409, 'DEVICE_OWNED'], 'key read+write+admin': [409, 'DEVICE_OWNED'], device: USER, none: NO } },
    { route: 'GET /v1/firmware', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'POST /v1/firmware', want: { admin: 'pass', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'POST /v1/webhooks', body: { url: 'http://127.0.0.1:9/hook', events: ['presence'] }, want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/devices/mx-dev/voice', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'PUT /v1/devices/mx-dev/voice', body: {}, want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': SCOPE, 'key read+write': 'ok', 'key read+write+admin': 'ok', device: USER, none: NO } },
    { route: 'GET /v1/devices/mx-dev/conversations', want: { admin: 'ok', owner: 'ok', 'other user': HIDDEN, 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: NO } },
    { route: 'GET /v1/rollouts', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
    { route: 'GET /v1/ota/check?hardware=esp32&version=1.0.0', want: { admin: TOKEN, owner: TOKEN, 'other user': TOKEN, 'key read': TOKEN, 'key read+write': TOKEN, 'key read+write+admin': TOKEN, device: 'ok', none: NO } },
    { route: 'GET /v1/firmware/signing-key', want: { admin: 'ok', owner: 'ok', 'other user': 'ok', 'key read': 'ok', 'key read+write': 'ok', 'key read+write+admin': 'ok', device: 'ok', none: 'ok' } },
    { route: 'GET /metrics', want: { admin: 'ok', owner: ADMIN, 'other user': ADMIN, 'key read': ADMIN, 'key read+write': ADMIN, 'key read+write+admin': ADMIN, device: ADMIN, none: NO } },
  ]
  // DELETE's admin case would remove the device the other rows use; the admin's delete is in devices-api.test.ts
  const rows = MATRIX.flatMap(m => (Object.keys(m.want) as Role[]).map(role => [m.route, role, m.body, m.want[role]] as const))

  it.each(rows)('%s as %s', async (route, role, body, want) => {
    const [method, template] = route.split(' ') as [string, string]
    const path = template.replace('{cmd}', commandId)
    if (route === 'DELETE /v1/devices/mx-spare' && role === 'admin') return
    // SSE never ends by itself: ask with a HEAD-less GET and drop the stream once the status is known
    const res = path === '/v1/events'
      ? await sseStatus(r.httpUrl + path, creds[role] ?? null)
      : await r.request(method, path, body, creds[role] ?? null)
    if (want === 'ok') expect(res.status, JSON.stringify(res.body)).toBeLessThan(300)
    else if (want === 'pass') expect([401, 403].includes(res.status) || res.body?.code === 'DEVICE_NOT_FOUND', JSON.stringify(res.body)).toBe(false)
    else expectCode(res, want[0], want[1])
  })

  it('a user lists only the devices it owns', async () => {
    const mine = await r.request('GET', '/v1/devices', undefined, creds.owner)
    expect(mine.body.items.map((d: any) => d.id)).toEqual(['mx-dev', 'mx-spare'])
    expect((await r.request('GET', '/v1/devices', undefined, creds['other user'])).body.items).toEqual([])
    const all = await r.request('GET', '/v1/devices')
    expect(all.body.items.length).toBeGreaterThan(2)
  })

  it('only the admin changes an owner', async () => {
    expectCode(await r.request('PATCH', '/v1/devices/mx-dev', { ownerId: null }, creds.owner), 403, 'ADMIN_REQUIRED')
  })
})

async function sseStatus (url: string, token: string | null): Promise<{ status: number, body: any }> {
  const ctrl = new AbortController()
  const res = await fetch(url, { headers: token === null ? {} : { authorization: `Bearer ${token}` }, signal: ctrl.signal })
  const body = res.status < 300 ? undefined : await res.json()
  ctrl.abort()
  return { status: res.status, body }
}

describe('claiming and provisioning', () => {
  const FLEET = 'fleet-secret-for-tests'
  let r: TestRoost
  beforeAll(async () => { r = await startRoost({ env: { ROOST_FLEET_SECRET: FLEET } }) })
  afterAll(async () => { await r?.close() })

  const sign = (deviceId: string, nonce: string, ts: number, secret = FLEET): string => createHmac('sha256', secret).update(`${deviceId}:${nonce}:${ts}`).digest('hex')

  it('a user claims an unowned device once with its code; a wrong code is refused, a used one finds the device owned', async () => {
    const ann = await r.addUser('claim-ann@example.com')
    const ben = await r.addUser('claim-ben@example.com')
    await r.addDevice('bear-1')
    const issued = await r.request('POST', '/v1/devices/bear-1/claim-code')
    expect(issued.status).toBe(201)
    expectCode(await r.request('POST', '/v1/devices/bear-1/claim', { code: 'WRONGCODE1' }, ann.accessToken), 403, 'CLAIM_CODE_INVALID')
    // people type codes in lower case and with dashes
    const typed = issued.body.code.toLowerCase().replace(/(.{5})/, '$1-')
    const claimed = await r.request('POST', '/v1/devices/bear-1/claim', { code: typed }, ann.accessToken)
    expect(claimed.status).toBe(200)
    expect(claimed.body).toMatchObject({ id: 'bear-1', ownerId: ann.userId })
    expectCode(await r.request('POST', '/v1/devices/bear-1/claim', { code: issued.body.code }, ben.accessToken), 409, 'DEVICE_OWNED')
    expect((await r.request('GET', '/v1/devices/bear-1', undefined, ann.accessToken)).status).toBe(200)
    expectCode(await r.request('GET', '/v1/devices/bear-1', undefined, ben.accessToken), 404, 'DEVICE_NOT_FOUND')
  })

  it('an expired code is refused as expired', async () => {
    await r.addDevice('bear-2')
    const issued = await r.request('POST', '/v1/devices/bear-2/claim-code')
    const outcome = await claimDevice(r.platform.db, 'bear-2', 'u_someone', claimCodeHash(issued.body.code), issued.body.expiresAt)
    expect(outcome).toEqual({ ok: false, reason: 'expired' })
  })

  it('five wrong codes lock the device out: the right code is refused too, with Retry-After', async () => {
    const cy = await r.addUser('claim-cy@example.com')
    await r.addDevice('bear-3')
    const issued = await r.request('POST', '/v1/devices/bear-3/claim-code')
    for (let i = 0; i < 5; i++) expectCode(await r.request('POST', '/v1/devices/bear-3/claim', { code: `WRONG${i}` }, cy.accessToken), 403, 'CLAIM_CODE_INVALID')
    const locked = await r.request('POST', '/v1/devices/bear-3/claim', { code: issued.body.code }, cy.accessToken)
    expectCode(locked, 429, 'LOGIN_LOCKED')
    expect(Number(locked.headers.get('retry-after'))).toBeGreaterThan(0)
  })

  it('fleet provisioning gives a working device token and a claim code; replays, stale times and bad HMACs are refused by name', async () => {
    const ts = Date.now()
    const ok = await r.request('POST', '/v1/provision', { deviceId: 'prov-1', nonce: 'nonce-0001', ts, hmac: sign('prov-1', 'nonce-0001', ts) }, null)
    expect(ok.status, JSON.stringify(ok.body)).toBe(201)
    expect(ok.body).toMatchObject({ id: 'prov-1', mqtt: { username: 'prov-1' } })
    const device = await r.connectDevice('prov-1', ok.body.token)
    expect(device.connected).toBe(true)
    const dee = await r.addUser('prov-dee@example.com')
    expect((await r.request('POST', '/v1/devices/prov-1/claim', { code: ok.body.claimCode }, dee.accessToken)).status).toBe(200)
    expectCode(await r.request('POST', '/v1/provision', { deviceId: 'prov-1', nonce: 'nonce-0001', ts, hmac: sign('prov-1', 'nonce-0001', ts) }, null), 409, 'PROVISION_REPLAYED')
    const old = ts - 6 * 60_000
    expectCode(await r.request('POST', '/v1/provision', { deviceId: 'prov-2', nonce: 'nonce-0002', ts: old, hmac: sign('prov-2', 'nonce-0002', old) }, null), 401, 'PROVISION_STALE')
    expectCode(await r.request('POST', '/v1/provision', { deviceId: 'prov-3', nonce: 'nonce-0003', ts, hmac: sign('prov-3', 'nonce-0003', ts, 'another secret') }, null), 401, 'PROVISION_SIGNATURE_INVALID')
    expectCode(await r.request('POST', '/v1/provision', { deviceId: 'prov-1', nonce: 'nonce-0004', ts, hmac: sign('prov-1', 'nonce-0004', ts) }, null), 409, 'DEVICE_EXISTS')
  })
})

describe('limits and headers', () => {
  let r: TestRoost
  let plain: TestRoost
  beforeAll(async () => {
    r = await startRoost({ env: { ROOST_RATE_LIMIT_MAX: '5', ROOST_LOGIN_ADDRESS_FAILURES: '1000', ROOST_CORS_ORIGINS: 'https://app.example.com', ROOST_TRUST_PROXY: 'true' } })
    plain = await startRoost()
  })
  afterAll(async () => { await r?.close(); await plain?.close() })

  it('the sixth request of a credential in a window gets 429 RATE_LIMITED with Retry-After; /health is never limited', async () => {
    for (let i = 0; i < 5; i++) expect((await r.request('GET', '/v1/devices')).status).toBe(200)
    const limited = await r.request('GET', '/v1/devices')
    expectCode(limited, 429, 'RATE_LIMITED')
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0)
    for (let i = 0; i < 8; i++) expect((await fetch(r.httpUrl + '/health')).status).toBe(200)
  })

  it('repeated wrong passwords lock the account: then even the right password is refused', async () => {
    await plain.request('POST', '/v1/users', { email: 'lock@example.com', password: 'right password' })
    for (let i = 0; i < 5; i++) expectCode(await plain.request('POST', '/v1/auth/login', { email: 'lock@example.com', password: `wrong ${i}!!` }, null), 401, 'LOGIN_FAILED')
    const locked = await plain.request('POST', '/v1/auth/login', { email: 'lock@example.com', password: 'right password' }, null)
    expectCode(locked, 429, 'LOGIN_LOCKED')
    expect(Number(locked.headers.get('retry-after'))).toBeGreaterThan(0)
    await sleep(1100)
    // the first lock lasts a second: then the right password works and clears the count
    expect((await plain.request('POST', '/v1/auth/login', { email: 'lock@example.com', password: 'right password' }, null)).status).toBe(200)
  })

  it('security headers on every reply; CORS answers the configured origin only', async () => {
    const res = await fetch(plain.httpUrl + '/health')
    expect(res.headers.get('x-content-type-options')).toBe('nosniff')
    expect(res.headers.get('x-frame-options')).toBe('SAMEORIGIN')
    expect(res.headers.get('strict-transport-security')).toBeNull() // plain HTTP
    const pre = await fetch(r.httpUrl + '/health', { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET' } })
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example.com')
    const other = await fetch(r.httpUrl + '/health', { headers: { origin: 'https://evil.example.com' } })
    expect(other.headers.get('access-control-allow-origin')).toBeNull()
    const forged = await fetch(plain.httpUrl + '/health', { headers: { 'x-forwarded-proto': 'https' } })
    expect(forged.headers.get('strict-transport-security')).toBeNull() // not trusted without ROOST_TRUST_PROXY
    // behind a TLS-terminating proxy (ROOST_TRUST_PROXY=true) the API is served over TLS: HSTS
    const proxied = await fetch(r.httpUrl + '/health', { headers: { 'x-forwarded-proto': 'https' } })
    expect(proxied.headers.get('strict-transport-security')).toBe('max-age=31536000; includeSubDomains')
  })
})
