// Server-Sent Events at GET /v1/events for apps that cannot speak MQTT: presence, state and command
// changes (and telemetry, per device, on request), numbered so a client resumes with Last-Event-ID.

import type { ServerResponse } from 'node:http'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { EVENT_TYPES, errorResponses, type EventType } from '../schemas/rest.ts'
import { parseTopic } from '../schemas/topics.ts'
import type { CommandRow } from '../schemas/db/commands.ts'
import type { BrokerPort } from './broker-port.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'


export interface HubEvent {
  readonly id: number
  readonly type: EventType
  readonly deviceId: string
  readonly data: string // the JSON sent as the event's data
}

type Listener = (e: HubEvent) => void

// a comment line every 15 s keeps proxies and load balancers from closing an idle stream
const HEARTBEAT_MS = 15_000
// a client this far behind (bytes queued in its socket) is cut off; it resumes with Last-Event-ID
const MAX_BUFFERED_BYTES = 1024 * 1024

/** Numbers every event, keeps the last `window` of them for resuming clients, and fans them out. */
export class EventHub {
  private nextId = 1
  private readonly ring: HubEvent[] = []
  private readonly listeners = new Set<Listener>()

  constructor (private readonly window: number) {}

  publish (type: EventType, deviceId: string, payload: Record<string, unknown>): void {
    const event: HubEvent = { id: this.nextId++, type, deviceId, data: JSON.stringify({ deviceId, ...payload }) }
    this.ring.push(event)
    if (this.ring.length > this.window) this.ring.shift()
    for (const l of this.listeners) l(event)
  }

  /** Events after `lastId` still held, and whether some after it were already dropped from the window. */
  since (lastId: number): { events: HubEvent[], missed: boolean } {
    const oldest = this.ring[0]?.id ?? this.nextId
    const events = this.ring.filter(e => e.id > lastId)
    return { events, missed: lastId + 1 < oldest && lastId < this.nextId - 1 }
  }

  listen (l: Listener): () => void {
    this.listeners.add(l)
    return () => { this.listeners.delete(l) }
  }

  /** Feeds the hub from the broker's topics and the command lifecycle. */
  async connect (broker: BrokerPort): Promise<void> {
    const json = (payload: Buffer): unknown => { try { return JSON.parse(payload.toString('utf8')) } catch { return undefined } }
    await broker.subscribe('devices/+/presence', (topic, payload) => {
      const p = parseTopic(topic)
      const body = json(payload) as { online?: boolean, ts?: number } | undefined
      if (p.space === 'device' && body !== undefined) this.publish('presence', p.deviceId, { online: body.online === true, ts: body.ts })
    })
    await broker.subscribe('devices/+/state/+', (topic, payload) => {
      const p = parseTopic(topic)
      const body = json(payload)
      if (p.space !== 'device' || body === undefined) return
      if (p.family === 'state/desired') this.publish('state', p.deviceId, { side: 'desired', ...(body as object) })
      if (p.family === 'state/reported') this.publish('state', p.deviceId, { side: 'reported', patch: body })
    })
    await broker.subscribe('devices/+/telemetry', (topic, payload) => {
      const p = parseTopic(topic)
      const body = json(payload)
      if (p.space === 'device' && body !== undefined) this.publish('telemetry', p.deviceId, { readings: body })
    })
    broker.onCommandFinished(row => this.command(row))
  }

  command (row: CommandRow): void {
    this.publish('command', row.deviceId, {
      id: row.id,
      name: row.name,
      status: row.status,
      ...(row.result === null ? {} : { result: row.result }),
      ...(row.error === null ? {} : { error: row.error }),
    })
  }
}

const EventsQuery = Type.Object({
  types: Type.Optional(Type.String({ description: `comma-separated, of ${EVENT_TYPES.filter(t => t !== 'telemetry').join(', ')}; default all of them` })),
  devices: Type.Optional(Type.String({ description: 'comma-separated device ids; default every device' })),
  telemetry: Type.Optional(Type.String({ description: 'comma-separated device ids whose telemetry is streamed too (opt-in: it is the busiest kind)' })),
})

function list (v: string | undefined): Set<string> | undefined {
  if (v === undefined) return undefined
  return new Set(v.split(',').map(s => s.trim()).filter(s => s !== ''))
}

function write (res: ServerResponse, e: HubEvent): boolean {
  return res.write(`id: ${e.id}\nevent: ${e.type}\ndata: ${e.data}\n\n`)
}

export const eventRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const hub = ctx.events
  app.get('/v1/events', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Server-Sent Events: presence, state and command changes, and telemetry of the devices named in `telemetry`; resume with Last-Event-ID',
      description: `Each event has an \`id\`, an \`event\` type (${EVENT_TYPES.join(', ')}) and JSON \`data\` with its \`deviceId\`. The last ${ctx.eventsWindow} events are kept: a client reconnecting with \`Last-Event-ID\` receives what it missed, or first an event \`gap\` when some of it is no longer held.`,
      tags: ['events'],
      querystring: EventsQuery,
      response: { 200: Type.String({ description: 'text/event-stream' }), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED']) },
    },
  }, async (request, reply) => {
    const types = list(request.query.types) ?? new Set(EVENT_TYPES.filter(t => t !== 'telemetry'))
    const devices = list(request.query.devices)
    const telemetry = list(request.query.telemetry) ?? new Set<string>()
    const wanted = (e: HubEvent): boolean => e.type === 'telemetry'
      ? telemetry.has(e.deviceId)
      : types.has(e.type) && (devices === undefined || devices.has(e.deviceId))

    reply.hijack()
    const res = reply.raw
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // nginx: do not buffer the stream
    })
    res.write(': roost events\n\n')
    const header = request.headers['last-event-id']
    const lastId = typeof header === 'string' && /^\d+$/.test(header) ? Number(header) : undefined
    if (lastId !== undefined) {
      const { events, missed } = hub.since(lastId)
      if (missed) res.write(`event: gap\ndata: ${JSON.stringify({ after: lastId, resumedAt: events[0]?.id ?? null })}\n\n`)
      for (const e of events) if (wanted(e)) write(res, e)
    }
    const stop = hub.listen(e => {
      if (!wanted(e)) return
      write(res, e)
      if (res.writableLength > MAX_BUFFERED_BYTES) {
        request.log.warn({ buffered: res.writableLength }, 'events client too slow; closing its stream (it resumes with Last-Event-ID)')
        res.destroy()
      }
    })
    const heartbeat = setInterval(() => res.write(': ping\n\n'), HEARTBEAT_MS)
    res.on('close', () => {
      stop()
      clearInterval(heartbeat)
    })
  })
}
