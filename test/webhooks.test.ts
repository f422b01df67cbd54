// Webhooks: signed JSON deliveries to a real local HTTP receiver, retried with backoff, recorded, bounded
// in time, and never in the way of ingest.

import { createHmac } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'
import { backoff } from '../api/webhook-dispatch.ts'

interface Received { headers: IncomingMessage['headers'], body: string }

/** A real HTTP receiver; `answer` decides each reply (status, or 'hang' to never answer). */
async function receiver (answer: (n: number, r: Received) => number | 'hang' = () => 200): Promise<{ url: string, got: Received[], close (): Promise<void> }> {
  const got: Received[] = []
  const hanging: ServerResponse[] = []
  const server: Server = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => { body += c.toString() })
    req.on('end', () => {
      const r = { headers: req.headers, body }
      got.push(r)
      const a = answer(got.length, r)
      if (a === 'hang') { hanging.push(res); return }
      res.writeHead(a).end()
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    got,
    close: () => new Promise(resolve => { for (const r of hanging) r.destroy(); server.closeAllConnections(); server.close(() => resolve()) }),
  }
}

describe('webhooks', () => {
  let roost: TestRoost
  const receivers: Array<{ close (): Promise<void> }> = []
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_WEBHOOK_TIMEOUT_MS: '300' } }) })
  afterAll(async () => {
    await roost?.close()
    for (const r of receivers) await r.close()
  })

  it('a registered webhook receives matching events as JSON, signed with HMAC-SHA256 of the body under its secret', async () => {
    const rx = await receiver()
    receivers.push(rx)
    await roost.addDevice('wh-a')
    const created = await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['state'], deviceIds: ['wh-a'] })
    expect(created.status).toBe(201)
    expect(created.body.secret).toMatch(/^whsec_/)
    const listed = await roost.request('GET', '/v1/webhooks')
    expect(listed.body.items.find((w: { id: string }) => w.id === created.body.id)).not.toHaveProperty('secret')
    await roost.request('PATCH', '/v1/devices/wh-a/state', { state: { mode: 'eco' } })
    const delivery = await eventually(() => rx.got[0], 5000, 'a delivery')
    const body = JSON.parse(delivery.body)
    expect(body).toMatchObject({ event: 'state', data: { deviceId: 'wh-a', side: 'desired', version: 1, state: { mode: 'eco' } } })
    expect(delivery.headers['content-type']).toBe('application/json')
    expect(delivery.headers['x-roost-event']).toBe('state')
    const expected = 'sha256=' + createHmac('sha256', created.body.secret as string).update(delivery.body).digest('hex')
    expect(delivery.headers['x-roost-signature']).toBe(expected)
    const deliveries = await eventually(async () => {
      const d = (await roost.request('GET', `/v1/webhooks/${created.body.id}/deliveries`)).body.items
      return d[0]?.status === 'succeeded' ? d : undefined
    })
    expect(deliveries[0]).toMatchObject({ event: 'state', deviceId: 'wh-a', attempts: 1, lastStatus: 200, lastError: null })
  })

  it('events of other devices and other types are not delivered to a filtered webhook', async () => {
    const rx = await receiver()
    receivers.push(rx)
    await roost.addDevice('wh-b1')
    await roost.addDevice('wh-b2')
    await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['state'], deviceIds: ['wh-b1'] })
    await roost.request('PATCH', '/v1/devices/wh-b2/state', { state: { x: 1 } })
    await roost.request('POST', '/v1/devices/wh-b1/commands', { name: 'noop' }) // a command event, not a state one
    await roost.request('PATCH', '/v1/devices/wh-b1/state', { state: { x: 1 } })
    await eventually(() => rx.got[0], 5000, 'a delivery')
    await sleep(500)
    expect(rx.got.map(r => JSON.parse(r.body).data.deviceId)).toEqual(['wh-b1'])
    expect(rx.got.map(r => JSON.parse(r.body).event)).toEqual(['state'])
  })

  it('a failing receiver is retried with backoff until it accepts, and the delivery records every attempt', async () => {
    const rx = await receiver(n => (n <= 2 ? 503 : 200))
    receivers.push(rx)
    await roost.addDevice('wh-c')
    const hook = (await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['state'], deviceIds: ['wh-c'] })).body
    await roost.request('PATCH', '/v1/devices/wh-c/state', { state: { on: true } })
    const done = await eventually(async () => {
      const d = (await roost.request('GET', `/v1/webhooks/${hook.id}/deliveries`)).body.items[0]
      return d?.status === 'succeeded' ? d : undefined
    }, 15_000, 'success after retries')
    expect(done).toMatchObject({ attempts: 3, lastStatus: 200 })
    expect(rx.got).toHaveLength(3)
    expect(new Set(rx.got.map(r => r.headers['x-roost-delivery'])).size).toBe(1) // the same delivery each time
    expect(new Set(rx.got.map(r => r.body)).size).toBe(1)
  })

  it('a receiver that never answers does not slow ingest: QoS 1 telemetry is acknowledged as usual', async () => {
    const rx = await receiver(() => 'hang')
    receivers.push(rx)
    const token = await roost.addDevice('wh-d')
    const hook = (await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['telemetry'], deviceIds: ['wh-d'] })).body
    const device = await roost.connectDevice('wh-d', token)
    const start = Date.now()
    for (let i = 0; i < 200; i++) await device.publishAsync('devices/wh-d/telemetry', JSON.stringify({ i }), { qos: 1 })
    expect(Date.now() - start).toBeLessThan(10_000)
    expect((await roost.request('GET', '/v1/devices/wh-d/telemetry/latest')).body.values.i.value).toBe(199)
    const pending = await eventually(async () => {
      const items = (await roost.request('GET', `/v1/webhooks/${hook.id}/deliveries?status=pending&limit=1000`)).body.items
      return items.length === 200 && items.some((d: { lastError: string | null }) => d.lastError?.includes('no answer')) ? items : undefined
    }, 10_000, '200 recorded deliveries, some timed out')
    expect(pending.length).toBe(200)
  })

  it('deleting a webhook removes it and its deliveries; unknown ids and bad bodies are named errors', async () => {
    const rx = await receiver()
    receivers.push(rx)
    const hook = (await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['presence'] })).body
    expect((await roost.request('DELETE', `/v1/webhooks/${hook.id}`)).status).toBe(204)
    expect((await roost.request('GET', `/v1/webhooks/${hook.id}`)).body.code).toBe('WEBHOOK_NOT_FOUND')
    expect((await roost.request('GET', `/v1/webhooks/${hook.id}/deliveries`)).body.code).toBe('WEBHOOK_NOT_FOUND')
    expect((await roost.request('POST', '/v1/webhooks', { url: 'ftp://example.com', events: ['state'] })).status).toBe(400)
    expect((await roost.request('POST', '/v1/webhooks', { url: rx.url, events: [] })).status).toBe(400)
    expect((await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['weather'] })).status).toBe(400)
    const token = await roost.addDevice('wh-e')
    expect((await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['state'] }, token)).body.code).toBe('ADMIN_REQUIRED')
  })
})

describe('webhook backoff', () => {
  it('doubles from about a second, with jitter between half and all of it, and stops growing at five minutes', () => {
    expect(backoff(1, () => 0)).toBe(500)
    expect(backoff(1, () => 1)).toBe(1000)
    expect(backoff(4, () => 0.5)).toBe(6000)
    expect(backoff(30, () => 1)).toBe(300_000)
    for (let attempt = 1; attempt <= 12; attempt++) {
      const full = Math.min(1000 * 2 ** (attempt - 1), 300_000)
      const d = backoff(attempt)
      expect(d).toBeGreaterThanOrEqual(full / 2)
      expect(d).toBeLessThanOrEqual(full)
    }
  })
})

describe('webhook retry bound', () => {
  it('a receiver that keeps failing is given up on once the retry window has passed: the delivery is failed, with its last error', async () => {
    const roost = await startRoost({ env: { ROOST_WEBHOOK_RETRY_WINDOW_MS: '2500' } })
    const rx = await receiver(() => 500)
    try {
      await roost.addDevice('wh-f')
      const hook = (await roost.request('POST', '/v1/webhooks', { url: rx.url, events: ['state'] })).body
      await roost.request('PATCH', '/v1/devices/wh-f/state', { state: { a: 1 } })
      const failed = await eventually(async () => {
        const d = (await roost.request('GET', `/v1/webhooks/${hook.id}/deliveries`)).body.items[0]
        return d?.status === 'failed' ? d : undefined
      }, 15_000, 'the delivery to be given up')
      expect(failed.attempts).toBeGreaterThanOrEqual(2)
      expect(failed).toMatchObject({ lastStatus: 500, lastError: 'HTTP 500', nextAttemptAt: null })
      const attempts = rx.got.length
      await sleep(1500)
      expect(rx.got.length).toBe(attempts) // no attempt after giving up
    } finally {
      await roost.close()
      await rx.close()
    }
  })
})
