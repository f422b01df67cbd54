// The error catalogue and the OpenAPI document list the same codes, both ways: every REST code is documented
// on some route, every MQTT code in the MqttError schema, nothing documented is missing from the catalogue,
// and retired codes stay retired.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ERRORS, ERROR_CODES, RETIRED_CODES, type ErrorCode } from '../schemas/errors.ts'
import { startRoost, type TestRoost } from './harness.ts'

interface SchemaNode {
  readonly properties?: Record<string, { readonly enum?: readonly string[] } | undefined>
}
interface Operation {
  readonly responses?: Record<string, { readonly content?: Record<string, { readonly schema?: SchemaNode } | undefined> } | undefined>
}
interface OpenApiDocument {
  readonly paths: Record<string, Record<string, Operation | undefined>>
  readonly components: { readonly schemas: Record<string, SchemaNode | undefined> }
}

// Where a code is documented: "GET /v1/devices 401", or "MqttError".
interface Mention { readonly code: string, readonly where: string, readonly status: number | undefined }

const HTTP_METHODS = new Set(['get', 'put', 'post', 'delete', 'patch', 'head', 'options'])

function restMentions (doc: OpenApiDocument): Mention[] {
  const out: Mention[] = []
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!HTTP_METHODS.has(method) || op?.responses === undefined) continue
      for (const [status, response] of Object.entries(op.responses)) {
        for (const media of Object.values(response?.content ?? {})) {
          for (const code of media?.schema?.properties?.code?.enum ?? []) {
            out.push({ code, where: `${method.toUpperCase()} ${path} ${status}`, status: Number(status) })
          }
        }
      }
    }
  }
  return out
}

function surfaceCodes (...surfaces: Array<'rest' | 'mqtt' | 'both'>): ErrorCode[] {
  return ERROR_CODES.filter(c => (surfaces as string[]).includes(ERRORS[c].surface))
}

let roost: TestRoost
let doc: OpenApiDocument
let rest: Mention[]
let mqtt: readonly string[]

beforeAll(async () => {
  roost = await startRoost()
  const res = await roost.request('GET', '/docs/json', undefined, null)
  expect(res.status).toBe(200)
  doc = res.body as OpenApiDocument
  rest = restMentions(doc)
  mqtt = doc.components.schemas.MqttError?.properties?.code?.enum ?? []
})
afterAll(async () => { await roost.close() })

describe('the error catalogue against the OpenAPI document', () => {
  it('documents every REST code (surface rest or both) in some route\'s error reply', () => {
    const documented = new Set(rest.map(m => m.code))
    expect(surfaceCodes('rest', 'both').filter(c => !documented.has(c))).toEqual([])
  })

  it('documents every MQTT code (surface mqtt or both) in components.schemas.MqttError', () => {
    expect(mqtt.length).toBeGreaterThan(0)
    expect(surfaceCodes('mqtt', 'both').filter(c => !mqtt.includes(c))).toEqual([])
  })

  it('documents no code that is not in the catalogue', () => {
    const known = new Set<string>(ERROR_CODES)
    expect([...rest.map(m => `${m.code} (${m.where})`), ...mqtt.map(c => `${c} (MqttError)`)].filter(m => !known.has(m.split(' ')[0] as string))).toEqual([])
  })

  it('documents each code on its own surface only', () => {
    const mqttOnly = new Set<string>(surfaceCodes('mqtt'))
    const restOnly = new Set<string>(surfaceCodes('rest'))
    expect(rest.filter(m => mqttOnly.has(m.code)).map(m => `${m.code} (${m.where})`)).toEqual([])
    expect(mqtt.filter(c => restOnly.has(c))).toEqual([])
  })

  it('documents each REST code under the HTTP status the catalogue gives it', () => {
    const wrong = rest.filter(m => m.status !== ERRORS[m.code as ErrorCode]?.status).map(m => `${m.code} (${m.where}, catalogue says ${ERRORS[m.code as ErrorCode]?.status})`)
    expect(wrong).toEqual([])
  })

  it('a route documents AUTH_REQUIRED and AUTH_INVALID exactly when it refuses a request without a credential', async () => {
    const mismatches: string[] = []
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const method of Object.keys(item).filter(m => HTTP_METHODS.has(m))) {
        const route = `${method.toUpperCase()} ${path}`
        const documented = rest.filter(m => m.where.startsWith(route + ' ')).map(m => m.code)
        const claims = documented.includes('AUTH_REQUIRED') && documented.includes('AUTH_INVALID')
        // path parameters get a well-formed value; the credential check comes before anything else looks at it
        const res = await roost.request(method.toUpperCase(), path.replace(/\{[^}]+\}/g, 'catalogue-probe'), undefined, null)
        const refuses = res.status === 401 && res.body?.code === 'AUTH_REQUIRED'
        if (claims !== refuses) mismatches.push(`${route}: documents ${documented.join(', ') || 'no error codes'}, answers ${res.status} without a credential`)
      }
    }
    expect(mismatches).toEqual([])
  })
})

describe('the catalogue itself', () => {
  it('never gives a retired code a new meaning', () => {
    expect(ERROR_CODES.filter(c => RETIRED_CODES.includes(c))).toEqual([])
    expect([...rest.map(m => m.code), ...mqtt].filter(c => RETIRED_CODES.includes(c))).toEqual([])
  })

  it.each(ERROR_CODES.map(c => [c, ERRORS[c]] as const))('%s is an UPPER_SNAKE code with an error status and a message', (code, spec) => {
    expect(code).toMatch(/^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/)
    expect(spec.status).toBeGreaterThanOrEqual(400)
    expect(spec.status).toBeLessThan(600)
    expect(spec.message.length).toBeGreaterThan(0)
  })

  it('a REST error reply carries a catalogue code with the catalogue\'s status', async () => {
    const res = await roost.request('GET', '/v1/no/such/route')
    expect(res.body).toEqual({ statusCode: 404, code: 'ROUTE_NOT_FOUND', message: 'no route GET /v1/no/such/route' })
    expect(ERRORS.ROUTE_NOT_FOUND.status).toBe(res.status)
  })
})
