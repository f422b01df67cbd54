// Server-Sent Events: presence, state and command changes, opt-in telemetry, filters, and Last-Event-ID resume.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, sleep, startRoost, type TestRoost } from './harness.ts'

interface Sse { id: number | undefined, event: string, data: any }

interface Stream {
  readonly status: number
  readonly contentType: string | null
  readonly events: Sse[]
  waitFor (match: (e: Sse) => boolean, ms?: number): Promise<Sse>
  close (): void
}

/** A real SSE reader over fetch: parses `id:`, `event:` and `data:` lines into events. */
async function openEvents (roost: TestRoost, query = '', lastEventId?: number, token?: string | null): Promise<Stream> {
  const controller = new AbortController()
  const headers: Record<string, string> = {}
  if (token !== null) headers.authorization = `Bearer ${token ?? roost.adminToken}`
  if (lastEventId !== undefined) headers['last-event-id'] = String(lastEventId)
  const res = await fetch(`${roost.httpUrl}/v1/events${query}`, { headers, signal: controller.signal })
  const events: Sse[] = []
  if (res.ok && res.body !== null) {
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let buffer = ''
    void (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read()
          if (done) return
          buffer += decoder.decode(value, { stream: true })
          for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
            const block = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            const fields = new Map<string, string>()
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue // a comment (heartbeat)
              const colon = line.indexOf(':')
              fields.set(line.slice(0, colon), line.slice(colon + 1).trimStart())
            }
            if (fields.has('data')) events.push({ id: fields.has('id') ? Number(fields.get('id')) : undefined, event: fields.get('event') ?? 'message', data: JSON.parse(fields.get('data') as string) })
          }
        }
      } catch { /* aborted */ }
    })()
  }
  return {
    status: res.status,
    contentType: res.headers.get('content-type'),
    events,
    waitFor: (match, ms = 5000) => eventually(() => events.find(match), ms, 'a matching event'),
    close: () => controller.abort(),
  }
}

describe('server-sent events', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_EVENTS_WINDOW: '50' } }) })
  afterAll(async () => { await roost?.close() })

  it('streams presence, desired and reported state, and command status as numbered events', async () => {
    const token = await roost.addDevice('ev-1')
    const stream = await openEvents(roost, '?devices=ev-1')
    expect(stream.status).toBe(200)
    expect(stream.contentType).toContain('text/event-stream')
    const device = await roost.connectDevice('ev-1', token)
    await stream.waitFor(e => e.event === 'presence' && e.data.online === true)
    await roost.request('PATCH', '/v1/devices/ev-1/state', { state: { led: 'red' } })
    await stream.waitFor(e => e.event === 'state' && e.data.side === 'desired' && e.data.version === 1 && e.data.state.led === 'red')
    await device.publishAsync('devices/ev-1/state/reported', '{"led":"red"}', { qos: 1 })
    await stream.waitFor(e => e.event === 'state' && e.data.side === 'reported' && e.data.patch.led === 'red')
    device.on('message', (topic) => { if (topic.includes('/commands/')) device.publish(`${topic}/result`, '{"ok":true,"result":1}', { qos: 1 }) })
    await device.subscribeAsync('devices/ev-1/commands/+', { qos: 1 })
    const cmd = (await roost.request('POST', '/v1/devices/ev-1/commands', { name: 'blink', waitMs: 5000 })).body
    // its device listens for commands, so it is stored as sent (a command for an offline device says queued)
    await stream.waitFor(e => e.event === 'command' && e.data.id === cmd.id && e.data.status === 'sent')
    await stream.waitFor(e => e.event === 'command' && e.data.id === cmd.id && e.data.status === 'succeeded' && e.data.result === 1)
    await device.endAsync()
    await stream.waitFor(e => e.event === 'presence' && e.data.online === false)
    expect(stream.events.every(e => e.data.deviceId === 'ev-1')).toBe(true)
    const ids = stream.events.map(e => e.id as number)
    expect([...ids].sort((a, b) => a - b)).toEqual(ids) // increasing
    stream.close()
  })

  it('telemetry is streamed only for the devices named in `telemetry`', async () => {
    const t1 = await roost.addDevice('tel-1')
    const t2 = await roost.addDevice('tel-2')
    const plain = await openEvents(roost)
    const opted = await openEvents(roost, '?telemetry=tel-1')
    const d1 = await roost.connectDevice('tel-1', t1)
    const d2 = await roost.connectDevice('tel-2', t2)
    await d1.publishAsync('devices/tel-1/telemetry', '{"temp":20}', { qos: 1 })
    await d2.publishAsync('devices/tel-2/telemetry', '{"temp":30}', { qos: 1 })
    await opted.waitFor(e => e.event === 'telemetry' && e.data.deviceId === 'tel-1' && e.data.readings.temp === 20)
    await sleep(300)
    expect(opted.events.some(e => e.event === 'telemetry' && e.data.deviceId === 'tel-2')).toBe(false)
    expect(plain.events.some(e => e.event === 'telemetry')).toBe(false)
    plain.close()
    opted.close()
  })

  it('a client reconnecting with Last-Event-ID receives exactly the events it missed', async () => {
    await roost.addDevice('resume')
    const first = await openEvents(roost, '?devices=resume&types=state')
    await roost.request('PATCH', '/v1/devices/resume/state', { state: { n: 1 } })
    const seen = await first.waitFor(e => e.data.version === 1)
    first.close()
    for (let n = 2; n <= 4; n++) await roost.request('PATCH', '/v1/devices/resume/state', { state: { n } })
    const second = await openEvents(roost, '?devices=resume&types=state', seen.id)
    await second.waitFor(e => e.data.version === 4)
    expect(second.events.map(e => e.data.version)).toEqual([2, 3, 4])
    second.close()
  })

  it('a Last-Event-ID older than the kept window is answered with a gap event before what is still held', async () => {
    await roost.addDevice('flood')
    const start = await openEvents(roost, '?devices=flood')
    await roost.request('PATCH', '/v1/devices/flood/state', { state: { n: 0 } })
    const mark = await start.waitFor(e => e.data.deviceId === 'flood')
    start.close()
    // the window holds 50 events; make many more
    for (let n = 1; n <= 60; n++) await roost.request('PATCH', '/v1/devices/flood/state', { state: { n } })
    const late = await openEvents(roost, '?devices=flood', mark.id)
    await late.waitFor(e => e.event === 'state' && e.data.version === 61)
    expect(late.events[0]?.event).toBe('gap')
    expect(late.events.filter(e => e.event === 'state').length).toBeLessThanOrEqual(50)
    late.close()
  })

  it('needs the admin token', async () => {
    expect((await openEvents(roost, '', undefined, null)).status).toBe(401)
  })
})
