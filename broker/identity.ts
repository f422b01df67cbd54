// Who a connection is, and the login decision that establishes it. Pure apart from the device lookup passed in.

import { timingSafeEqual, createHash } from 'node:crypto'
import { isDeviceId } from '../schemas/topics.ts'
import { tokenMatches } from '../db/devices.ts'
import type { ErrorCode } from '../schemas/errors.ts'

export type Identity =
  | { readonly kind: 'device', readonly deviceId: string }
  | { readonly kind: 'service', readonly name: string }
  | { readonly kind: 'anonymous' }
  // a user's app or viewer: reads the devices its user owns; `credential` is what it logged in with
  | { readonly kind: 'app', readonly userId: string, readonly credential: { readonly kind: 'session' | 'apikey', readonly id: string }, readonly expiresAt: number | null }

export const SERVICE_PREFIX = 'service:'
export const APP_USERNAME = 'app'

/** A verified user credential, as api/user-auth.ts gives it. */
export interface AppCredential {
  readonly userId: string
  readonly kind: 'session' | 'apikey'
  readonly id: string
  readonly scopes: readonly string[]
  readonly expiresAt: number | null
}

export interface LoginRequest {
  readonly clientId: string // as sent; '' when the client sent none
  readonly username: string | undefined
  readonly password: Buffer | undefined
  readonly clean: boolean
}

export interface DeviceCredential { readonly tokenHash: string }

export interface LoginContext {
  // undefined when no device has this id; cached by the caller
  readonly lookupDevice: (id: string) => Promise<DeviceCredential | undefined>
  readonly serviceToken: string
  readonly anonymous: boolean
  // an access token or API key → its user; undefined when app logins are not served here
  readonly verifyApp?: (token: string) => Promise<AppCredential | undefined>
}

// CONNACK return codes of MQTT 3.1.1 §3.2.2.3
export const CONNACK_IDENTIFIER_REJECTED = 2
export const CONNACK_BAD_CREDENTIALS = 4
export const CONNACK_NOT_AUTHORIZED = 5

export type LoginResult =
  | { readonly ok: true, readonly identity: Identity }
  | { readonly ok: false, readonly returnCode: 2 | 4 | 5, readonly code: ErrorCode }

function refuse (returnCode: 2 | 4 | 5, code: ErrorCode): LoginResult {
  return { ok: false, returnCode, code }
}

/** Constant-time comparison of a presented secret with a configured one (the service or admin token). */
export function secretEquals (presented: string | Buffer, expected: string): boolean {
  // hash both sides so the comparison is constant-time whatever the lengths
  const a = createHash('sha256').update(presented).digest()
  const b = createHash('sha256').update(expected).digest()
  return timingSafeEqual(a, b)
}

/**
 * The login rules of the contract: a device logs in as itself with its token and its id as client id;
 * services with `service:<name>` and the service token; anonymous only when enabled. Nobody else may
 * use a device id as client id, so no one can take over (and cut off) a device's session.
 */
export async function decideLogin (req: LoginRequest, ctx: LoginContext): Promise<LoginResult> {
  // [MQTT-3.1.3-8] an empty client id is only allowed with a clean session
  if (req.clientId === '' && !req.clean) return refuse(CONNACK_IDENTIFIER_REJECTED, 'CLIENT_ID_REQUIRED')

  const { username, password } = req
  if (username === undefined) {
    if (!ctx.anonymous) return refuse(CONNACK_NOT_AUTHORIZED, 'AUTH_INVALID')
    if (await clientIdIsDevice(req.clientId, ctx)) return refuse(CONNACK_IDENTIFIER_REJECTED, 'CLIENT_ID_RESERVED')
    return { ok: true, identity: { kind: 'anonymous' } }
  }

  if (username.startsWith(SERVICE_PREFIX)) {
    const name = username.slice(SERVICE_PREFIX.length)
    if (name === '' || password === undefined || !secretEquals(password, ctx.serviceToken)) return refuse(CONNACK_BAD_CREDENTIALS, 'AUTH_INVALID')
    if (await clientIdIsDevice(req.clientId, ctx)) return refuse(CONNACK_IDENTIFIER_REJECTED, 'CLIENT_ID_RESERVED')
    return { ok: true, identity: { kind: 'service', name } }
  }

  if (username === APP_USERNAME) {
    const credential = password === undefined || ctx.verifyApp === undefined ? undefined : await ctx.verifyApp(password.toString('utf8'))
    // reading live data is the `read` scope
    if (credential === undefined || !credential.scopes.includes('read')) return refuse(CONNACK_BAD_CREDENTIALS, 'AUTH_INVALID')
    if (await clientIdIsDevice(req.clientId, ctx)) return refuse(CONNACK_IDENTIFIER_REJECTED, 'CLIENT_ID_RESERVED')
    return { ok: true, identity: { kind: 'app', userId: credential.userId, credential: { kind: credential.kind, id: credential.id }, expiresAt: credential.expiresAt } }
  }

  if (!isDeviceId(username)) return refuse(CONNACK_BAD_CREDENTIALS, 'AUTH_INVALID')
  const device = await ctx.lookupDevice(username)
  // same answer for unknown device and wrong token, so ids cannot be probed
  if (device === undefined || password === undefined || !tokenMatches(password, device.tokenHash)) return refuse(CONNACK_BAD_CREDENTIALS, 'AUTH_INVALID')
  if (req.clientId !== username) return refuse(CONNACK_IDENTIFIER_REJECTED, 'CLIENT_ID_MISMATCH')
  return { ok: true, identity: { kind: 'device', deviceId: username } }
}

async function clientIdIsDevice (clientId: string, ctx: LoginContext): Promise<boolean> {
  return isDeviceId(clientId) && await ctx.lookupDevice(clientId) !== undefined
}

export function describeIdentity (identity: Identity): string {
  switch (identity.kind) {
    case 'device': return `device ${identity.deviceId}`
    case 'service': return `service ${identity.name}`
    case 'anonymous': return 'anonymous'
    case 'app': return `app of user ${identity.userId}`
  }
}
