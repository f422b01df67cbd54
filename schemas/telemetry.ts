// Telemetry payloads: the JSON shape devices send, its limits, and the parser that turns it into rows.

import { Type, type Static } from '@sinclair/typebox'

export interface TelemetryLimits {
  readonly maxKeys: number
  readonly maxPayloadBytes: number
  readonly maxBatchRows: number
}

// Keys are short names like `temp` or `v0`; 64 characters leaves room for `battery.cell3.voltage`.
export const TELEMETRY_KEY_MAX = 64
// A value string is a status word or a short message, not a document.
export const TELEMETRY_STRING_MAX = 1024
// Devices without a synced clock send seconds since boot; anything before 2000 is such a clock, not a time.
export const TELEMETRY_TS_MIN = Date.UTC(2000, 0, 1)
// A day of clock skew is generous; a time further ahead would hide real data behind it in "latest".
export const TELEMETRY_TS_MAX_AHEAD_MS = 24 * 3600 * 1000

export const TelemetryValue = Type.Union([Type.Number(), Type.String({ maxLength: TELEMETRY_STRING_MAX }), Type.Boolean(), Type.Null()])

export function telemetryObjectSchema (limits: TelemetryLimits) {
  return Type.Object(
    { ts: Type.Optional(Type.Integer({ minimum: TELEMETRY_TS_MIN, description: 'epoch milliseconds; arrival time when absent' })) },
    {
      additionalProperties: TelemetryValue,
      propertyNames: { minLength: 1, maxLength: TELEMETRY_KEY_MAX },
      // ts is not a key: 1 to maxKeys keys, with or without a ts (as parseTelemetry counts them)
      anyOf: [
        { required: ['ts'], minProperties: 2, maxProperties: limits.maxKeys + 1 },
        { not: { required: ['ts'] }, minProperties: 1, maxProperties: limits.maxKeys },
      ],
      description: `key → number | string | boolean | null; 1–${limits.maxKeys} keys of 1–${TELEMETRY_KEY_MAX} characters besides ts`,
    })
}

export function telemetryPayloadSchema (limits: TelemetryLimits) {
  const object = telemetryObjectSchema(limits)
  return Type.Union([object, Type.Array(object, { minItems: 1, maxItems: limits.maxBatchRows })],
    { description: 'one reading, or an array of readings stored together' })
}

export type TelemetryScalar = number | string | boolean | null

export interface TelemetryRow {
  readonly key: string
  readonly ts: number
  readonly value: TelemetryScalar
}

export type ParseResult = { readonly ok: true, readonly rows: TelemetryRow[] } | { readonly ok: false, readonly code: 'PAYLOAD_INVALID' | 'PAYLOAD_TOO_LARGE', readonly detail: string }

/**
 * Parses a telemetry payload (bytes or already-decoded JSON) into rows, all or nothing.
 * Agrees with telemetryPayloadSchema; test/telemetry-payload.test.ts checks both on one table.
 */
export function parseTelemetry (payload: Buffer | unknown, limits: TelemetryLimits, now: number): ParseResult {
  let doc: unknown = payload
  if (Buffer.isBuffer(payload)) {
    if (payload.length > limits.maxPayloadBytes) return { ok: false, code: 'PAYLOAD_TOO_LARGE', detail: String(limits.maxPayloadBytes) }
    try {
      doc = JSON.parse(payload.toString('utf8'))
    } catch {
      return invalid('not JSON')
    }
  }
  const rows: TelemetryRow[] = []
  if (Array.isArray(doc)) {
    if (doc.length === 0) return invalid('empty array')
    if (doc.length > limits.maxBatchRows) return invalid(`${doc.length} readings in one array; the limit is ${limits.maxBatchRows}`)
    for (let i = 0; i < doc.length; i++) {
      const problem = addRows(doc[i], limits, now, rows)
      if (problem !== undefined) return invalid(`[${i}]: ${problem}`)
    }
  } else {
    const problem = addRows(doc, limits, now, rows)
    if (problem !== undefined) return invalid(problem)
  }
  return { ok: true, rows }
}

function invalid (detail: string): ParseResult {
  return { ok: false, code: 'PAYLOAD_INVALID', detail }
}

function addRows (obj: unknown, limits: TelemetryLimits, now: number, rows: TelemetryRow[]): string | undefined {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return 'each reading must be a JSON object'
  const record = obj as Record<string, unknown>
  let ts = now
  const tsValue = record.ts
  if (tsValue !== undefined) {
    if (typeof tsValue !== 'number' || !Number.isSafeInteger(tsValue)) return 'ts must be an integer (epoch milliseconds)'
    if (tsValue < TELEMETRY_TS_MIN) return 'ts must be epoch milliseconds after 2000-01-01 (is the device clock synced?)'
    if (tsValue > now + TELEMETRY_TS_MAX_AHEAD_MS) return 'ts is more than a day in the future'
    ts = tsValue
  }
  const start = rows.length
  for (const key in record) {
    if (key === 'ts') continue
    if (key.length === 0 || key.length > TELEMETRY_KEY_MAX) return `key "${key.slice(0, 80)}" must be 1–${TELEMETRY_KEY_MAX} characters`
    const value = record[key]
    if (typeof value === 'string') {
      if (value.length > TELEMETRY_STRING_MAX) return `value of "${key}" is longer than ${TELEMETRY_STRING_MAX} characters`
    } else if (typeof value === 'number') {
      if (!Number.isFinite(value)) return `value of "${key}" must be a finite number`
    } else if (typeof value !== 'boolean' && value !== null) {
      return `value of "${key}" must be a number, string, boolean or null`
    }
    if (rows.length - start >= limits.maxKeys) return `more than ${limits.maxKeys} keys in one reading`
    rows.push({ key, ts, value: value as TelemetryScalar })
  }
  if (rows.length === start) return 'a reading needs at least one key besides ts'
  return undefined
}

export type TelemetryPayload = Static<ReturnType<typeof telemetryPayloadSchema>>
