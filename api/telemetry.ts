// Telemetry REST routes: latest values, raw or aggregated ranges with paging, and the HTTP fallback for devices.

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DeviceParams, TelemetryLatest, TelemetryLatestQuery, TelemetryRange, TelemetryRangeQuery, TelemetryStored, errorResponses } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import { parseTelemetry, telemetryPayloadSchema, type TelemetryScalar } from '../schemas/telemetry.ts'
import { deviceTopic } from '../schemas/topics.ts'
import { getDevice } from '../db/devices.ts'
import { latestTelemetry, telemetryAggregate, telemetryRange, type RangeCursor } from '../db/telemetry.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

const DAY_MS = 24 * 3600 * 1000
const DEFAULT_LIMIT = 1000
// an interval shorter than a second over a day is 86,400 buckets per key; below that, ask for raw rows
const MIN_INTERVAL_MS = 1000
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: DAY_MS }

function parseTime (value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback
  const n = /^\d+$/.test(value) ? Number(value) : Date.parse(value)
  if (!Number.isSafeInteger(n) || n < 0) throw new RoostError('QUERY_INVALID', { detail: `${name} must be epoch milliseconds or an ISO 8601 time` })
  return n
}

function parseInterval (value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(value)
  const ms = m === null ? NaN : Number(m[1]) * (UNIT_MS[m[2] ?? 'ms'] as number)
  if (!Number.isSafeInteger(ms) || ms < MIN_INTERVAL_MS) throw new RoostError('QUERY_INVALID', { detail: 'interval must be at least 1s, e.g. 60000, 30s, 5m, 1h, 1d' })
  return ms
}

function parseKeys (value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined
  const keys = value.split(',').map(k => k.trim()).filter(k => k !== '')
  return keys.length === 0 ? undefined : keys
}

function encodeCursor (c: unknown): string {
  return Buffer.from(JSON.stringify(c)).toString('base64url')
}

function decodeCursor<T> (value: string | undefined, valid: (c: unknown) => c is T): T | undefined {
  if (value === undefined) return undefined
  let c: unknown
  try { c = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) } catch { c = undefined }
  if (!valid(c)) throw new RoostError('QUERY_INVALID', { detail: 'cursor is not one this server gave out' })
  return c
}

function isRangeCursor (c: unknown): c is RangeCursor {
  const r = c as RangeCursor | null
  return typeof r === 'object' && r !== null && Number.isSafeInteger(r.ts) && typeof r.key === 'string' && Number.isSafeInteger(r.n)
}

function isBucketCursor (c: unknown): c is { bucket: number } {
  return typeof c === 'object' && c !== null && Number.isSafeInteger((c as { bucket?: unknown }).bucket)
}

export const telemetryRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, broker, now } = ctx

  async function mustExist (id: string): Promise<void> {
    if (await getDevice(db, id) === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
  }

  app.get('/v1/devices/:id/telemetry/latest', {
    config: { auth: 'device' },
    schema: {
      summary: 'The latest value of each key',
      tags: ['telemetry'],
      params: DeviceParams,
      querystring: TelemetryLatestQuery,
      response: { 200: TelemetryLatest, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    await mustExist(request.params.id)
    const rows = await latestTelemetry(db, request.params.id, parseKeys(request.query.keys))
    const values: Record<string, { ts: number, value: TelemetryScalar }> = {}
    for (const r of rows) values[r.key] = { ts: r.ts, value: r.value }
    return { deviceId: request.params.id, values }
  })

  app.get('/v1/devices/:id/telemetry', {
    config: { auth: 'device' },
    schema: {
      summary: 'Telemetry in a time range: raw rows in time order, or per-interval min/max/avg/count with `interval`',
      tags: ['telemetry'],
      params: DeviceParams,
      querystring: TelemetryRangeQuery,
      response: { 200: TelemetryRange, ...errorResponses([...authErrors('device'), 'VALIDATION_FAILED', 'QUERY_INVALID', 'DEVICE_NOT_FOUND']) },
    },
  }, async request => {
    const q = request.query
    const id = request.params.id
    const to = parseTime(q.to, 'to', now())
    const from = parseTime(q.from, 'from', to - DAY_MS)
    if (from >= to) throw new RoostError('QUERY_INVALID', { detail: 'from must be before to' })
    const keys = parseKeys(q.keys)
    const limit = q.limit ?? DEFAULT_LIMIT
    const interval = parseInterval(q.interval)
    await mustExist(id)
    if (interval === undefined) {
      const after = decodeCursor(q.cursor, isRangeCursor)
      const page = await telemetryRange(db, { deviceId: id, from, to, keys, limit, after })
      return { deviceId: id, from, to, rows: page.rows, ...(page.next === undefined ? {} : { next: encodeCursor(page.next) }) }
    }
    const after = decodeCursor(q.cursor, isBucketCursor)
    const page = await telemetryAggregate(db, { deviceId: id, from, to, keys, interval, limit, afterTs: after?.bucket })
    return { deviceId: id, from, to, interval, buckets: page.buckets, ...(page.nextTs === undefined ? {} : { next: encodeCursor({ bucket: page.nextTs }) }) }
  })

  // A telemetry body takes the path an MQTT payload takes: parseTelemetry reads the bytes, so every payload
  // problem is PAYLOAD_INVALID (or PAYLOAD_TOO_LARGE) with the detail the device's errors topic gives,
  // whichever rule it breaks; the body schema then only sees payloads the parser accepted and stays as the
  // OpenAPI description. This parser serves this plugin's routes only, and only the POST has a body.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => {
    const parsed = parseTelemetry(body, ctx.telemetryLimits, now())
    if (!parsed.ok) return done(new RoostError(parsed.code, { detail: parsed.detail, limit: parsed.detail }), undefined)
    done(null, JSON.parse(body.toString('utf8')))
  })

  const payloadSchema = telemetryPayloadSchema(ctx.telemetryLimits)
  app.post('/v1/devices/:id/telemetry', {
    config: { auth: 'device-self' },
    bodyLimit: ctx.telemetryLimits.maxPayloadBytes,
    schema: {
      summary: 'Store telemetry over HTTP (for devices that cannot keep MQTT up); same validation and storage as MQTT',
      description: 'Any problem with the readings is `PAYLOAD_INVALID` (a body over the size limit `PAYLOAD_TOO_LARGE`), with the message the device\'s MQTT `errors` topic gives for the same payload; `VALIDATION_FAILED` is for the request around it (device id, content type).',
      tags: ['telemetry'],
      params: DeviceParams,
      body: payloadSchema,
      response: { 201: TelemetryStored, ...errorResponses([...authErrors('device-self'), 'VALIDATION_FAILED', 'PAYLOAD_INVALID', 'PAYLOAD_TOO_LARGE', 'DEVICE_NOT_FOUND', 'DB_UNAVAILABLE']) },
    },
  }, async (request, reply) => {
    const id = request.params.id
    await mustExist(id)
    const parsed = parseTelemetry(request.body, ctx.telemetryLimits, now())
    if (!parsed.ok) throw new RoostError(parsed.code, { detail: parsed.detail, limit: parsed.detail })
    await broker.storeTelemetry(parsed.rows.map(r => ({ deviceId: id, key: r.key, ts: r.ts, value: r.value })))
    // live viewers see HTTP telemetry on the same topic as MQTT telemetry
    await broker.publish(deviceTopic(id, 'telemetry'), Buffer.from(JSON.stringify(request.body)), { qos: 0, retain: false })
    return reply.status(201).send({ stored: parsed.rows.length })
  })
}
