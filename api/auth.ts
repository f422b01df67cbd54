// Bearer credentials on REST: the admin token, or a device token on that device's own endpoints.
// A route declares what it accepts in `config.auth`; one hook enforces it before the handler runs.

import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { RoostError, type ErrorCode } from '../schemas/errors.ts'
import { deviceByTokenHash, hashToken } from '../db/devices.ts'
import type { Database } from '../db/open.ts'

export type Principal = { readonly kind: 'admin' } | { readonly kind: 'device', readonly deviceId: string }

// none: public; admin: the admin token; device: the admin token, or the token of the device in `:id`
export type AuthRule = 'none' | 'admin' | 'device'

declare module 'fastify' {
  interface FastifyContextConfig { auth?: AuthRule }
  interface FastifyRequest { principal: Principal | null }
}

/** The error codes a route with this rule can answer, for its OpenAPI responses. */
export function authErrors (rule: AuthRule): ErrorCode[] {
  if (rule === 'none') return []
  if (rule === 'admin') return ['AUTH_REQUIRED', 'AUTH_INVALID', 'ADMIN_REQUIRED']
  return ['AUTH_REQUIRED', 'AUTH_INVALID', 'DEVICE_TOKEN_SCOPE']
}

function sameSecret (presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b)
}

export function bearerToken (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (header === undefined) return undefined
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header)
  return m?.[1]
}

export function installAuth (app: FastifyInstance, opts: { adminToken: string, db: Database }): void {
  app.decorateRequest('principal', null)
  app.addHook('onRequest', async request => {
    const rule = request.routeOptions.config.auth ?? 'none'
    if (rule === 'none') return
    const token = bearerToken(request)
    if (token === undefined) throw new RoostError('AUTH_REQUIRED')
    if (sameSecret(token, opts.adminToken)) {
      request.principal = { kind: 'admin' }
      return
    }
    const device = await deviceByTokenHash(opts.db, hashToken(token))
    if (device === undefined) throw new RoostError('AUTH_INVALID')
    if (rule === 'admin') throw new RoostError('ADMIN_REQUIRED')
    const target = (request.params as { id?: string } | undefined)?.id
    if (target !== device.id) throw new RoostError('DEVICE_TOKEN_SCOPE')
    request.principal = { kind: 'device', deviceId: device.id }
  })
}
