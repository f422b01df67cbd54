// Telemetry over REST: readings stored through MQTT (a real device client, QoS 1) and through the HTTP
// fallback read back as latest values, raw ranges with cursor paging and per-interval aggregates.

import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { nextMessage, startRoost, type TestRoost } from './harness.ts'

let roost: TestRoost
beforeAll(async () => { roost = await startRoost() })
afterAll(async () => { await roost.close() })

type Reply = Awaited<ReturnType<TestRoost['request']>>
interface Row { key: string, ts: number, value: unknown }
interface Bucket { key: string, ts: number, min: number | null, max: number | null, avg: number | null, count: number }

function expectError (res: Reply, status: number, code: string): void {
  expect({ status: res.status, code: res.body?.code }).toEqual({ status, code })
  expect(res.body).toEqual({ statusCode: status, code, message: expect.any(String) })
}

// a whole day (so minute and hour buckets start on it), safely in the past and after 2000
const BASE = Date.UTC(2025, 0, 15)
const MINUTE = 60_000

/** Every page of a raw or aggregated range, following `next` as `cursor`. */
async function allPages (path: string, token?: string): Promise<Reply[]> {
  const pages: Reply[] = []
  let cursor: string | undefined
  for (let i = 0; i < 500; i++) {
    const res = await roost.request('GET', path + (cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`), undefined, token)
    expect(res.status).toBe(200)
    pages.push(res)
    cursor = res.body.next
    if (cursor === undefined) return pages
  }
  throw new Error('paging did not end')
}

function byTsThenKey (a: { ts: number, key: string }, b: { ts: number, key: string }): number {
  return a.ts - b.ts || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
}

describe('storing readings', () => {
  let token: string
  let device: MqttClient
  beforeAll(async () => {
    token = await roost.addDevice('meter')
    device = await roost.connectDevice('meter', token)
  })

  it('a QoS 1 publish from the device is stored by the time its PUBACK arrives', async () => {
    const before = Date.now()
    await device.publishAsync('devices/meter/telemetry', JSON.stringify({ temperature: 21.5, door: 'closed', armed: true, fault: null }), { qos: 1 })
    const latest = await roost.request('GET', '/v1/devices/meter/telemetry/latest')
    expect(latest.status).toBe(200)
    expect(latest.body.deviceId).toBe('meter')
    expect(latest.body.values).toEqual({
      temperature: { ts: expect.any(Number), value: 21.5 },
      door: { ts: expect.any(Number), value: 'closed' },
      armed: { ts: expect.any(Number), value: true },
      fault: { ts: expect.any(Number), value: null },
    })
    // without a ts the arrival time is used
    expect(latest.body.values.temperature.ts).toBeGreaterThanOrEqual(before)
    expect(latest.body.values.temperature.ts).toBeLessThanOrEqual(Date.now())
  })

  it('POST with the device token answers 201 {stored} and stores every value type exactly as sent', async () => {
    const res = await roost.request('POST', '/v1/devices/meter/telemetry', [
      { ts: BASE, humidity: 40 },
      { ts: BASE + 1, humidity: 41, label: '21.5', on: false, note: null, arr: 0 },
    ], token)
    expect(res.status).toBe(201)
    expect(res.body).toEqual({ stored: 6 })
    const latest = await roost.request('GET', '/v1/devices/meter/telemetry/latest?keys=humidity,label,on,note,arr', undefined, token)
    expect(latest.body.values).toEqual({
      humidity: { ts: BASE + 1, value: 41 },
      // a string that looks like a number stays a string; false and null are not turned into 0
      label: { ts: BASE + 1, value: '21.5' },
      on: { ts: BASE + 1, value: false },
      note: { ts: BASE + 1, value: null },
      arr: { ts: BASE + 1, value: 0 },
    })
  })

  it('latest with keys= returns only those keys, ignoring unknown ones', async () => {
    const res = await roost.request('GET', '/v1/devices/meter/telemetry/latest?keys=temperature,%20door,nosuchkey')
    expect(Object.keys(res.body.values).sort()).toEqual(['door', 'temperature'])
  })

  it('an older reading does not replace the latest value of its key', async () => {
    await roost.request('POST', '/v1/devices/meter/telemetry', { ts: BASE + 5000, level: 2 }, token)
    await roost.request('POST', '/v1/devices/meter/telemetry', { ts: BASE + 1000, level: 1 }, token)
    const res = await roost.request('GET', '/v1/devices/meter/telemetry/latest?keys=level')
    expect(res.body.values.level).toEqual({ ts: BASE + 5000, value: 2 })
  })

  it('a POSTed reading is also published on devices/{id}/telemetry for live subscribers', async () => {
    const service = await roost.connect({ clientId: 'svc-telemetry-watch', username: 'service:test', password: roost.serviceToken })
    await service.subscribeAsync('devices/meter/telemetry', { qos: 0 })
    const body = { ts: BASE + 2, watched: 7 }
    const seen = nextMessage(service, topic => topic === 'devices/meter/telemetry', 10_000)
    expect((await roost.request('POST', '/v1/devices/meter/telemetry', body, token)).status).toBe(201)
    expect(JSON.parse((await seen).payload.toString())).toEqual(body)
  })

  it('answers 404 DEVICE_NOT_FOUND for an unknown device on every telemetry route', async () => {
    expectError(await roost.request('GET', '/v1/devices/ghost/telemetry/latest'), 404, 'DEVICE_NOT_FOUND')
    expectError(await roost.request('GET', '/v1/devices/ghost/telemetry'), 404, 'DEVICE_NOT_FOUND')
    expectError(await roost.request('POST', '/v1/devices/ghost/telemetry', { a: 1 }), 404, 'DEVICE_NOT_FOUND')
  })
})

describe('invalid telemetry over HTTP', () => {
  let token: string
  let device: MqttClient
  beforeAll(async () => {
    token = await roost.addDevice('sloppy')
    device = await roost.connectDevice('sloppy', token)
    await device.subscribeAsync('devices/sloppy/errors', { qos: 0 })
  })

  async function postRaw (body: string, contentType = 'application/json'): Promise<Reply> {
    const res = await fetch(`${roost.httpUrl}/v1/devices/sloppy/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': contentType },
      body,
    })
    return { status: res.status, body: await res.json(), headers: res.headers }
  }

  // every payload problem is PAYLOAD_INVALID, as on MQTT, whichever check finds it
  const INVALID: Array<[string, string]> = [
    ['a nested object value', JSON.stringify({ gps: { lat: 1 } })],
    ['an array value', JSON.stringify({ v: [5] })],
    ['ts before 2000', JSON.stringify({ ts: 12345, a: 1 })],
    ['ts more than a day ahead', JSON.stringify({ ts: Date.now() + 3 * 86_400_000, a: 1 })],
    ['ts as a string', JSON.stringify({ ts: String(BASE), a: 1 })],
    ['a fractional ts', JSON.stringify({ ts: BASE + 0.5, a: 1 })],
    ['only a ts', JSON.stringify({ ts: BASE })],
    ['an empty object', '{}'],
    ['an empty array', '[]'],
    ['a key of 65 characters', JSON.stringify({ ['k'.repeat(65)]: 1 })],
    ['65 keys', JSON.stringify(Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, i])))],
    ['1001 readings', JSON.stringify(Array.from({ length: 1001 }, () => ({ a: 1 })))],
    ['a bare number', '42'],
    ['JSON null', 'null'],
    ['text that is not JSON', 'temperature=21'],
    ['truncated JSON', '{"a": 1'],
  ]
  it.each(INVALID)('%s is refused as 400 PAYLOAD_INVALID with the same message the MQTT errors topic gives', async (_what, payload) => {
    const res = await postRaw(payload)
    expectError(res, 400, 'PAYLOAD_INVALID')
    const notice = nextMessage(device, topic => topic === 'devices/sloppy/errors', 10_000)
    await device.publishAsync('devices/sloppy/telemetry', payload, { qos: 1 })
    expect(JSON.parse((await notice).payload.toString())).toEqual({ topic: 'devices/sloppy/telemetry', code: 'PAYLOAD_INVALID', message: res.body.message })
  })

  it('a refused array stores none of its readings', async () => {
    const res = await roost.request('POST', '/v1/devices/sloppy/telemetry', [{ ts: BASE, partial: 1 }, { ts: 5, partial: 2 }], token)
    expectError(res, 400, 'PAYLOAD_INVALID')
    expect(res.body.message).toContain('[1]')
    expect((await roost.request('GET', '/v1/devices/sloppy/telemetry/latest?keys=partial')).body.values).toEqual({})
  })

  it('a body over the telemetry size limit is refused as 413 PAYLOAD_TOO_LARGE', async () => {
    const big = JSON.stringify(Array.from({ length: 900 }, (_, i) => ({ ts: BASE + i, padding: 'x'.repeat(100) })))
    expect(Buffer.byteLength(big)).toBeGreaterThan(65_536)
    const res = await postRaw(big)
    expectError(res, 413, 'PAYLOAD_TOO_LARGE')
    expect(res.body.message).toContain('65536')
  })

  it('a body that is not declared as JSON is a malformed request, 400 VALIDATION_FAILED', async () => {
    expectError(await postRaw('{"a":1}', 'text/plain'), 400, 'VALIDATION_FAILED')
  })

  it('an impossible device id in the path is 400 VALIDATION_FAILED', async () => {
    expectError(await roost.request('POST', '/v1/devices/a+b/telemetry', { a: 1 }), 400, 'VALIDATION_FAILED')
  })
})

describe('reading ranges', () => {
  // 12 readings of temp (over MQTT) and hum (over HTTP) every 10 s for two minutes, and a status string
  const TEMP = Array.from({ length: 12 }, (_, i) => ({ key: 'temp', ts: BASE + i * 10_000, value: i }))
  const HUM = Array.from({ length: 12 }, (_, i) => ({ key: 'hum', ts: BASE + i * 10_000, value: 50 + 2 * i }))
  const STATUS = [{ key: 'status', ts: BASE + 5_000, value: 'boot' }, { key: 'status', ts: BASE + 65_000, value: 'ok' }, { key: 'status', ts: BASE + 75_000, value: 'ok' }]
  const ALL = [...TEMP, ...HUM, ...STATUS].sort(byTsThenKey)
  const TO = BASE + 2 * MINUTE
  let token: string

  beforeAll(async () => {
    token = await roost.addDevice('ranger')
    const device = await roost.connectDevice('ranger', token)
    await device.publishAsync('devices/ranger/telemetry', JSON.stringify(TEMP.map(r => ({ ts: r.ts, temp: r.value }))), { qos: 1 })
    await device.endAsync()
    const posted = await roost.request('POST', '/v1/devices/ranger/telemetry', [...HUM, ...STATUS].map(r => ({ ts: r.ts, [r.key]: r.value })), token)
    expect(posted.body).toEqual({ stored: HUM.length + STATUS.length })
  })

  it('returns raw rows in time order (then key), from inclusive, to exclusive', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}`)
    expect(res.status).toBe(200)
    expect(res.body).toEqual({ deviceId: 'ranger', from: BASE, to: TO, rows: ALL })
    const edge = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE + 10_000}&to=${BASE + 20_000}`)
    expect(edge.body.rows).toEqual(ALL.filter(r => r.ts === BASE + 10_000))
  })

  it('takes from and to as ISO 8601 as well as epoch milliseconds', async () => {
    const iso = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${new Date(BASE).toISOString()}&to=${new Date(TO).toISOString()}`)
    expect(iso.body).toMatchObject({ from: BASE, to: TO, rows: ALL })
  })

  it('defaults from to 24 hours before to', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?to=${TO}`)
    expect(res.body.from).toBe(TO - 24 * 3600 * 1000)
    expect(res.body.rows).toEqual(ALL)
  })

  it('keys= limits the rows to those keys', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&keys=status,temp`)
    expect(res.body.rows).toEqual(ALL.filter(r => r.key === 'status' || r.key === 'temp'))
  })

  it('the device token reads its own range', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&keys=hum`, undefined, token)
    expect(res.body.rows).toEqual(HUM)
  })

  it.each([1, 2, 5, 7, 26, 27])('pages of %i rows, followed by cursor, return every row exactly once in order', async limit => {
    const pages = await allPages(`/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&limit=${limit}`)
    for (const p of pages.slice(0, -1)) expect(p.body.rows).toHaveLength(limit)
    expect(pages.flatMap(p => p.body.rows as Row[])).toEqual(ALL)
  })

  it('several readings of one key in the same millisecond are each returned once across page boundaries', async () => {
    const dupToken = await roost.addDevice('stutter')
    const at = BASE + 500
    // 7 readings of v and 3 of w at one millisecond, with neighbours on both sides, sent in a shuffled order
    const rows: Row[] = [
      ...[3, 0, 6, 1, 5, 2, 4].map(i => ({ key: 'v', ts: at, value: i })),
      ...[12, 10, 11].map(i => ({ key: 'w', ts: at, value: i })),
      { key: 'v', ts: at - 1, value: -1 },
      { key: 'w', ts: at - 1, value: -2 },
      { key: 'v', ts: at + 1, value: 100 },
      { key: 'u', ts: at, value: 'u-at' },
    ]
    expect((await roost.request('POST', '/v1/devices/stutter/telemetry', rows.map(r => ({ ts: r.ts, [r.key]: r.value })), dupToken)).status).toBe(201)
    const expected = [...rows].sort((a, b) => byTsThenKey(a, b) || String(a.value).localeCompare(String(b.value)))
    const canonical = (list: Row[]): Row[] => [...list].sort((a, b) => byTsThenKey(a, b) || String(a.value).localeCompare(String(b.value)))
    for (const limit of [1, 2, 3, 4, 5, 6, 8, 13]) {
      const pages = await allPages(`/v1/devices/stutter/telemetry?from=${at - 1}&to=${at + 2}&limit=${limit}`)
      const got = pages.flatMap(p => p.body.rows as Row[])
      // in (ts, key) order, and the same multiset of readings: nothing repeated, nothing skipped
      expect([...got].sort(byTsThenKey)).toEqual(got)
      expect({ limit, rows: canonical(got) }).toEqual({ limit, rows: expected })
    }
  })

  it('aggregates per interval: min, max, avg and count per key and bucket', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&interval=1m`)
    expect(res.status).toBe(200)
    expect(res.body).toMatchObject({ deviceId: 'ranger', from: BASE, to: TO, interval: MINUTE })
    expect(res.body.rows).toBeUndefined()
    // by hand: temp is 0..5 then 6..11, hum 50..60 then 62..72 in steps of 2, status is text (counted only)
    expect(res.body.buckets).toEqual([
      { key: 'hum', ts: BASE, min: 50, max: 60, avg: 55, count: 6 },
      { key: 'status', ts: BASE, min: null, max: null, avg: null, count: 1 },
      { key: 'temp', ts: BASE, min: 0, max: 5, avg: 2.5, count: 6 },
      { key: 'hum', ts: BASE + MINUTE, min: 62, max: 72, avg: 67, count: 6 },
      { key: 'status', ts: BASE + MINUTE, min: null, max: null, avg: null, count: 2 },
      { key: 'temp', ts: BASE + MINUTE, min: 6, max: 11, avg: 8.5, count: 6 },
    ] satisfies Bucket[])
  })

  it('buckets start on multiples of the interval and cover only readings inside from..to', async () => {
    // from 25 s in: the first minute's bucket holds only readings at 30, 40 and 50 s
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE + 25_000}&to=${BASE + 95_000}&interval=60000&keys=temp`)
    expect(res.body.buckets).toEqual([
      { key: 'temp', ts: BASE, min: 3, max: 5, avg: 4, count: 3 },
      { key: 'temp', ts: BASE + MINUTE, min: 6, max: 9, avg: 7.5, count: 4 },
    ])
  })

  it.each([['60000'], ['60s'], ['1m']])('interval %s means one minute', async interval => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&interval=${interval}&keys=temp`)
    expect(res.body.interval).toBe(MINUTE)
    expect(res.body.buckets.map((b: Bucket) => b.count)).toEqual([6, 6])
  })

  it('a day interval puts the whole range in one bucket per key', async () => {
    const res = await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&interval=1d&keys=temp,hum`)
    expect(res.body.buckets).toEqual([
      { key: 'hum', ts: BASE, min: 50, max: 72, avg: 61, count: 12 },
      { key: 'temp', ts: BASE, min: 0, max: 11, avg: 5.5, count: 12 },
    ])
  })

  it('aggregated pages end on whole buckets, and following next returns every bucket once', async () => {
    const whole = (await roost.request('GET', `/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&interval=10s&keys=temp,hum`)).body.buckets as Bucket[]
    expect(whole).toHaveLength(24)
    for (const limit of [1, 2, 5]) {
      const pages = await allPages(`/v1/devices/ranger/telemetry?from=${BASE}&to=${TO}&interval=10s&keys=temp,hum&limit=${limit}`)
      for (const page of pages) {
        const buckets = page.body.buckets as Bucket[]
        // never half a bucket: both keys of each interval are on the same page
        for (const ts of new Set(buckets.map(b => b.ts))) expect(buckets.filter(b => b.ts === ts).map(b => b.key)).toEqual(['hum', 'temp'])
      }
      expect(pages.flatMap(p => p.body.buckets as Bucket[])).toEqual(whole)
    }
  })

  const BAD: Array<[string, string]> = [
    ['from equal to to', `from=${BASE}&to=${BASE}`],
    ['from after to', `from=${TO}&to=${BASE}`],
    ['from that is no time', 'from=yesterday'],
    ['to that is no time', 'to=2025-13-45T99:00:00Z'],
    ['an interval with an unknown unit', 'interval=5x'],
    ['an interval under a second', 'interval=500ms'],
    ['a zero interval', 'interval=0'],
    ['a negative interval', 'interval=-1m'],
    ['a cursor that is not base64 JSON', 'cursor=not-a-cursor'],
    ['a cursor of the wrong shape', `cursor=${Buffer.from(JSON.stringify({ page: 2 })).toString('base64url')}`],
    ['an aggregate cursor on a raw range', `cursor=${Buffer.from(JSON.stringify({ bucket: BASE })).toString('base64url')}`],
    ['a raw cursor on an aggregate range', `interval=1m&cursor=${Buffer.from(JSON.stringify({ ts: BASE, key: 'temp', n: 1 })).toString('base64url')}`],
  ]
  it.each(BAD)('%s is refused as 400 QUERY_INVALID', async (_what, query) => {
    expectError(await roost.request('GET', `/v1/devices/ranger/telemetry?${query}`), 400, 'QUERY_INVALID')
  })

  it.each([['limit=0'], ['limit=10001'], ['limit=many']])('%s is refused as 400 VALIDATION_FAILED (the query schema)', async query => {
    expectError(await roost.request('GET', `/v1/devices/ranger/telemetry?${query}`), 400, 'VALIDATION_FAILED')
  })
})
