// Bearer credentials on REST: the admin token, a user's access token or API key, or a device token on
// that device's own endpoints. A route declares what it accepts in `config.auth`; one hook enforces it,
// ownership included, before the handler runs.

import type { FastifyInstance, FastifyRequest } from 'fastify'
import { RoostError, type ErrorCode } from '../schemas/errors.ts'
import { deviceByTokenHash, getDevice, hashToken, DEVICE_TOKEN_PREFIX } from '../db/devices.ts'
import type { Database } from '../db/open.ts'
import type { ApiKeyScope } from '../schemas/db/accounts.ts'
import type { UserAuth, UserCredential } from './user-auth.ts'
import { secretEquals } from '../broker/identity.ts'

export type Principal =
  | { readonly kind: 'admin' }
  | { readonly kind: 'device', readonly deviceId: string }
  | { readonly kind: 'user', readonly userId: string, readonly credential: UserCredential }

/**
 * none: public. admin: the admin token. user: the admin or any user. owner: the admin or the user who
 * owns the device in `:id`. device: those, or the token of the device in `:id`. device-self: the admin
 * or the device itself (what only a device does, e.g. answering its commands). device-token: a device token
 * only, on a route that names no device: the device is the token's (e.g. a device asking for its update).
 * A user's credential needs the route's scope: `read` for GET, `write` otherwise, unless `scope` says.
 * A device a user does not own answers 404, as if it did not exist, so ids do not leak.
 */
export type AuthRule = 'none' | 'admin' | 'user' | 'owner' | 'device' | 'device-self' | 'device-token'

declare module 'fastify' {
  interface FastifyContextConfig { auth?: AuthRule, scope?: ApiKeyScope }
  interface FastifyRequest { principal: Principal | null }
}

/** The error codes a route with this rule can answer, for its OpenAPI responses. */
export function authErrors (rule: AuthRule): ErrorCode[] {
  // every credentialed route is rate limited (api/index.ts)
  switch (rule) {
    case 'none': return []
    case 'admin': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'ADMIN_REQUIRED', 'RATE_LIMITED']
    case 'user': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'USER_REQUIRED', 'SCOPE_REQUIRED', 'RATE_LIMITED']
    case 'owner': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'USER_REQUIRED', 'SCOPE_REQUIRED', 'DEVICE_NOT_FOUND', 'RATE_LIMITED']
    case 'device': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'DEVICE_TOKEN_SCOPE', 'SCOPE_REQUIRED', 'DEVICE_NOT_FOUND', 'RATE_LIMITED']
    case 'device-self': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'DEVICE_TOKEN_SCOPE', 'DEVICE_CREDENTIAL_REQUIRED', 'RATE_LIMITED']
    case 'device-token': return ['AUTH_REQUIRED', 'AUTH_INVALID', 'DEVICE_TOKEN_REQUIRED', 'RATE_LIMITED']
  }
}

export function bearerToken (request: FastifyRequest): string | undefined {
  return bearerOf(request.headers.authorization)
}

/** The token of an `Authorization: Bearer …` header, or undefined when there is none. */
export function bearerOf (header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header)
  return m?.[1]
}

/** Who a bearer token is, or undefined when it is nobody's. */
export async function principalOf (token: string, opts: { adminToken: string, db: Database, users: UserAuth }): Promise<Principal | undefined> {
  if (secretEquals(token, opts.adminToken)) return { kind: 'admin' }
  if (token.startsWith(DEVICE_TOKEN_PREFIX)) {
    const device = await deviceByTokenHash(opts.db, hashToken(token))
    return device === undefined ? undefined : { kind: 'device', deviceId: device.id }
  }
  const credential = await opts.users.verify(token)
  return credential === undefined ? undefined : { kind: 'user', userId: credential.userId, credential }
}

export function installAuth (app: FastifyInstance, opts: { adminToken: string, db: Database, users: UserAuth }): void {
  app.decorateRequest('principal', null)
  app.addHook('onRequest', async request => {
    const rule = request.routeOptions.config.auth ?? 'none'
    if (rule === 'none') return
    const token = bearerToken(request)
    if (token === undefined) throw new RoostError('AUTH_REQUIRED')
    const principal = await principalOf(token, opts)
    if (principal === undefined) throw new RoostError('AUTH_INVALID')
    await authorize(request, rule, principal, opts.db)
    request.principal = principal
  })
}

async function authorize (request: FastifyRequest, rule: Exclude<AuthRule, 'none'>, principal: Principal, db: Database): Promise<void> {
  // the route acts for the device the token belongs to: nobody else can stand in for it, the admin included
  if (rule === 'device-token') {
    if (principal.kind !== 'device') throw new RoostError('DEVICE_TOKEN_REQUIRED')
    return
  }
  if (principal.kind === 'admin') return
  const target = (request.params as { id?: string } | undefined)?.id
  if (principal.kind === 'device') {
    if (rule === 'admin') throw new RoostError('ADMIN_REQUIRED')
    if (rule === 'user' || rule === 'owner') throw new RoostError('USER_REQUIRED')
    if (target !== principal.deviceId) throw new RoostError('DEVICE_TOKEN_SCOPE')
    return
  }
  if (rule === 'admin') throw new RoostError('ADMIN_REQUIRED')
  if (rule === 'device-self') throw new RoostError('DEVICE_CREDENTIAL_REQUIRED')
  const scope = request.routeOptions.config.scope ?? (request.method === 'GET' || request.method === 'HEAD' ? 'read' : 'write')
  if (!principal.credential.scopes.includes(scope)) throw new RoostError('SCOPE_REQUIRED', { scope })
  if (rule === 'user') return
  const device = target === undefined ? undefined : await getDevice(db, target)
  if (device === undefined || device.ownerId !== principal.userId) throw new RoostError('DEVICE_NOT_FOUND', { id: target ?? '' })
}

/** The user a request acts for, when it is a user's (undefined for the admin). */
export function requestUser (request: FastifyRequest): string | undefined {
  return request.principal?.kind === 'user' ? request.principal.userId : undefined
}
