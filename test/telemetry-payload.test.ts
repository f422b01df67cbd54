// The telemetry payload rules: parseTelemetry (what MQTT and HTTP both store through) on one table, and the
// JSON Schema published for the same payload (telemetryPayloadSchema, in OpenAPI) agreeing with it.

import { Ajv } from 'ajv'
import { describe, expect, it } from 'vitest'
import {
  parseTelemetry,
  telemetryPayloadSchema,
  TELEMETRY_KEY_MAX,
  TELEMETRY_STRING_MAX,
  TELEMETRY_TS_MAX_AHEAD_MS,
  TELEMETRY_TS_MIN,
  type TelemetryLimits,
  type TelemetryRow,
} from '../schemas/telemetry.ts'

// small limits so the edges are short to write; the rules scale with them
const LIMITS: TelemetryLimits = { maxKeys: 3, maxPayloadBytes: 2048, maxBatchRows: 3 }
const NOW = Date.UTC(2025, 5, 1, 12, 0, 0)
const T = Date.UTC(2025, 5, 1, 11, 0, 0)

// What the schema says about a case: it agrees with the parser, or it cannot know (and why).
type SchemaVerdict = 'agrees' | { readonly differs: string }

interface Case {
  readonly name: string
  readonly payload: unknown
  // the rows stored, or the code and a fragment of the detail
  readonly expected: { readonly rows: readonly TelemetryRow[] } | { readonly code: 'PAYLOAD_INVALID' | 'PAYLOAD_TOO_LARGE', readonly detail: string }
  readonly schema: SchemaVerdict
}

const NEEDS_CLOCK = { differs: 'the future limit is relative to the arrival time, which a schema cannot know' }

const keys = (n: number): Record<string, number> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]))

const CASES: readonly Case[] = [
  // ---- accepted shapes
  { name: 'one object with a number is one row at the arrival time', payload: { temp: 21.5 }, expected: { rows: [{ key: 'temp', ts: NOW, value: 21.5 }] }, schema: 'agrees' },
  {
    name: 'every value type is kept as sent: number, string, boolean and null',
    payload: { n: -3.25, s: 'on', b: false },
    expected: { rows: [{ key: 'n', ts: NOW, value: -3.25 }, { key: 's', ts: NOW, value: 'on' }, { key: 'b', ts: NOW, value: false }] },
    schema: 'agrees',
  },
  { name: 'null is a value, not a missing key', payload: { error: null }, expected: { rows: [{ key: 'error', ts: NOW, value: null }] }, schema: 'agrees' },
  { name: 'a numeric-looking string stays a string', payload: { v: '21.5' }, expected: { rows: [{ key: 'v', ts: NOW, value: '21.5' }] }, schema: 'agrees' },
  { name: 'an explicit ts is used for every key of its object', payload: { ts: T, a: 1, b: 2 }, expected: { rows: [{ key: 'a', ts: T, value: 1 }, { key: 'b', ts: T, value: 2 }] }, schema: 'agrees' },
  {
    name: 'an array stores each object, each with its own or the arrival time',
    payload: [{ ts: T, a: 1 }, { a: 2 }],
    expected: { rows: [{ key: 'a', ts: T, value: 1 }, { key: 'a', ts: NOW, value: 2 }] },
    schema: 'agrees',
  },
  { name: 'an array of exactly maxBatchRows objects is accepted', payload: [{ a: 1 }, { a: 2 }, { a: 3 }], expected: { rows: [1, 2, 3].map(v => ({ key: 'a', ts: NOW, value: v })) }, schema: 'agrees' },
  { name: 'ts at 2000-01-01T00:00:00Z exactly is accepted', payload: { ts: TELEMETRY_TS_MIN, a: 1 }, expected: { rows: [{ key: 'a', ts: TELEMETRY_TS_MIN, value: 1 }] }, schema: 'agrees' },
  {
    name: 'ts exactly one day ahead of arrival is accepted (clock skew)',
    payload: { ts: NOW + TELEMETRY_TS_MAX_AHEAD_MS, a: 1 },
    expected: { rows: [{ key: 'a', ts: NOW + TELEMETRY_TS_MAX_AHEAD_MS, value: 1 }] },
    schema: 'agrees',
  },
  { name: 'maxKeys keys plus ts are accepted', payload: { ts: T, ...keys(3) }, expected: { rows: [0, 1, 2].map(i => ({ key: `k${i}`, ts: T, value: i })) }, schema: 'agrees' },
  { name: 'a key of exactly 64 characters is accepted', payload: { ['k'.repeat(TELEMETRY_KEY_MAX)]: 1 }, expected: { rows: [{ key: 'k'.repeat(TELEMETRY_KEY_MAX), ts: NOW, value: 1 }] }, schema: 'agrees' },
  { name: 'a string value of exactly 1024 characters is accepted', payload: { s: 'x'.repeat(TELEMETRY_STRING_MAX) }, expected: { rows: [{ key: 's', ts: NOW, value: 'x'.repeat(TELEMETRY_STRING_MAX) }] }, schema: 'agrees' },

  // ---- ts rules
  { name: 'ts of seconds since boot (before 2000) is refused', payload: { ts: 12345, a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'after 2000-01-01' }, schema: 'agrees' },
  { name: 'ts one millisecond before 2000 is refused', payload: { ts: TELEMETRY_TS_MIN - 1, a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'after 2000-01-01' }, schema: 'agrees' },
  { name: 'ts in epoch seconds (a 2025 time) is refused', payload: { ts: Math.floor(T / 1000), a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'after 2000-01-01' }, schema: 'agrees' },
  { name: 'ts more than a day ahead of arrival is refused', payload: { ts: NOW + TELEMETRY_TS_MAX_AHEAD_MS + 1, a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'more than a day in the future' }, schema: NEEDS_CLOCK },
  { name: 'a fractional ts is refused', payload: { ts: T + 0.5, a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'ts must be an integer' }, schema: 'agrees' },
  { name: 'ts as a string is refused, not converted', payload: { ts: String(T), a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'ts must be an integer' }, schema: 'agrees' },
  { name: 'ts null is refused', payload: { ts: null, a: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'ts must be an integer' }, schema: 'agrees' },
  { name: 'a bad ts in one array element refuses the whole array', payload: [{ a: 1 }, { ts: 5, a: 2 }], expected: { code: 'PAYLOAD_INVALID', detail: '[1]: ts must be epoch milliseconds' }, schema: 'agrees' },

  // ---- keys
  { name: 'an object with only ts is refused', payload: { ts: T }, expected: { code: 'PAYLOAD_INVALID', detail: 'at least one key besides ts' }, schema: 'agrees' },
  { name: 'an empty object is refused', payload: {}, expected: { code: 'PAYLOAD_INVALID', detail: 'at least one key besides ts' }, schema: 'agrees' },
  { name: 'more than maxKeys keys are refused', payload: keys(4), expected: { code: 'PAYLOAD_INVALID', detail: 'more than 3 keys' }, schema: 'agrees' },
  { name: 'more than maxKeys keys with a ts are refused', payload: { ts: T, ...keys(4) }, expected: { code: 'PAYLOAD_INVALID', detail: 'more than 3 keys' }, schema: 'agrees' },
  { name: 'an empty key is refused', payload: { '': 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'must be 1–64 characters' }, schema: 'agrees' },
  { name: 'a key of 65 characters is refused', payload: { ['k'.repeat(TELEMETRY_KEY_MAX + 1)]: 1 }, expected: { code: 'PAYLOAD_INVALID', detail: 'must be 1–64 characters' }, schema: 'agrees' },

  // ---- values
  { name: 'a nested object value is refused', payload: { gps: { lat: 1, lon: 2 } }, expected: { code: 'PAYLOAD_INVALID', detail: 'value of "gps" must be a number, string, boolean or null' }, schema: 'agrees' },
  { name: 'an array value is refused, even of one element', payload: { v: [5] }, expected: { code: 'PAYLOAD_INVALID', detail: 'value of "v" must be' }, schema: 'agrees' },
  { name: 'a string value over 1024 characters is refused', payload: { s: 'x'.repeat(TELEMETRY_STRING_MAX + 1) }, expected: { code: 'PAYLOAD_INVALID', detail: 'longer than 1024' }, schema: 'agrees' },

  // ---- document shape
  { name: 'an empty array is refused', payload: [], expected: { code: 'PAYLOAD_INVALID', detail: 'empty array' }, schema: 'agrees' },
  { name: 'more than maxBatchRows objects are refused', payload: [{ a: 1 }, { a: 2 }, { a: 3 }, { a: 4 }], expected: { code: 'PAYLOAD_INVALID', detail: '4 readings in one array; the limit is 3' }, schema: 'agrees' },
  { name: 'a bare number is refused', payload: 42, expected: { code: 'PAYLOAD_INVALID', detail: 'must be a JSON object' }, schema: 'agrees' },
  { name: 'a bare string is refused', payload: 'temp=21', expected: { code: 'PAYLOAD_INVALID', detail: 'must be a JSON object' }, schema: 'agrees' },
  { name: 'JSON null is refused', payload: null, expected: { code: 'PAYLOAD_INVALID', detail: 'must be a JSON object' }, schema: 'agrees' },
  { name: 'an array of arrays is refused', payload: [[{ a: 1 }]], expected: { code: 'PAYLOAD_INVALID', detail: '[0]: each reading must be a JSON object' }, schema: 'agrees' },
  { name: 'an array holding a scalar is refused', payload: [{ a: 1 }, 7], expected: { code: 'PAYLOAD_INVALID', detail: '[1]: each reading must be a JSON object' }, schema: 'agrees' },
]

function bytes (doc: unknown): Buffer {
  return Buffer.from(JSON.stringify(doc))
}

describe('parseTelemetry', () => {
  it.each(CASES.map(c => [c.name, c] as const))('%s', (_name, c) => {
    // the MQTT path hands over bytes, the HTTP path a decoded body: both must give the same answer
    for (const input of [bytes(c.payload), c.payload]) {
      const result = parseTelemetry(input, LIMITS, NOW)
      if ('rows' in c.expected) {
        expect(result).toEqual({ ok: true, rows: c.expected.rows })
      } else {
        expect(result.ok).toBe(false)
        if (result.ok) continue
        expect(result.code).toBe(c.expected.code)
        expect(result.detail).toContain(c.expected.detail)
      }
    }
  })

  // Cases that only exist as bytes or as decoded values that JSON cannot carry.
  it('bytes that are not JSON are refused as PAYLOAD_INVALID "not JSON"', () => {
    for (const text of ['temp=21', '{"a":1', '', '{a:1}', "{'a':1}"]) {
      expect(parseTelemetry(Buffer.from(text), LIMITS, NOW)).toEqual({ ok: false, code: 'PAYLOAD_INVALID', detail: 'not JSON' })
    }
  })

  it('a payload over maxPayloadBytes is PAYLOAD_TOO_LARGE before it is parsed', () => {
    const big = Buffer.from(JSON.stringify({ s: 'x'.repeat(LIMITS.maxPayloadBytes) }))
    expect(parseTelemetry(big, LIMITS, NOW)).toEqual({ ok: false, code: 'PAYLOAD_TOO_LARGE', detail: String(LIMITS.maxPayloadBytes) })
    // even bytes that are not JSON: the size is checked first, so nothing oversized is ever parsed
    expect(parseTelemetry(Buffer.alloc(LIMITS.maxPayloadBytes + 1, 0x7b), LIMITS, NOW)).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' })
  })

  it('a payload of exactly maxPayloadBytes is parsed', () => {
    // two strings, each under the 1024-character value limit, fill the payload to the byte
    const frame = '{"a":"","b":""}'.length
    const a = Math.floor((LIMITS.maxPayloadBytes - frame) / 2)
    const exact = Buffer.from(JSON.stringify({ a: 'x'.repeat(a), b: 'x'.repeat(LIMITS.maxPayloadBytes - frame - a) }))
    expect(exact.length).toBe(LIMITS.maxPayloadBytes)
    expect(parseTelemetry(exact, LIMITS, NOW).ok).toBe(true)
  })

  it('non-finite numbers (possible only in decoded input) are refused', () => {
    for (const v of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      expect(parseTelemetry({ v }, LIMITS, NOW)).toMatchObject({ ok: false, code: 'PAYLOAD_INVALID', detail: 'value of "v" must be a finite number' })
    }
  })

  it('the limits come from configuration, not constants', () => {
    const wide: TelemetryLimits = { maxKeys: 10, maxPayloadBytes: 4096, maxBatchRows: 10 }
    expect(parseTelemetry(bytes(keys(10)), wide, NOW).ok).toBe(true)
    expect(parseTelemetry(bytes(keys(11)), wide, NOW).ok).toBe(false)
    expect(parseTelemetry(bytes(Array.from({ length: 10 }, () => ({ a: 1 }))), wide, NOW).ok).toBe(true)
  })
})

describe('telemetryPayloadSchema (the JSON Schema in OpenAPI) agrees with parseTelemetry', () => {
  // the options the API validates JSON bodies with: types as sent, no coercion
  const ajv = new Ajv({ coerceTypes: false, useDefaults: true, removeAdditional: false, allErrors: false })
  const validate = ajv.compile(telemetryPayloadSchema(LIMITS))

  const agreeing = CASES.filter(c => c.schema === 'agrees')
  it.each(agreeing.map(c => [c.name, c] as const))('%s', (_name, c) => {
    const accepted = validate(structuredClone(c.payload))
    expect({ accepted, errors: accepted ? null : validate.errors }).toMatchObject({ accepted: 'rows' in c.expected })
  })

  it('the cases where they differ are only those a schema cannot decide', () => {
    const differing = CASES.filter(c => c.schema !== 'agrees')
    expect(differing.map(c => c.name)).toEqual(['ts more than a day ahead of arrival is refused'])
    for (const c of differing) {
      // the schema accepts what only the clock refuses
      expect(validate(structuredClone(c.payload))).toBe(true)
      expect(parseTelemetry(c.payload, LIMITS, NOW).ok).toBe(false)
    }
  })

  it('the schema does not change the payload while validating it', () => {
    const payload = [{ ts: T, a: null, b: true, c: '1' }, { d: 0 }]
    const copy = structuredClone(payload)
    expect(validate(payload)).toBe(true)
    expect(payload).toEqual(copy)
  })
})
