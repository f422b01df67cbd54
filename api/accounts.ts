// Account routes: users and logins (access + refresh tokens), password change, API keys, claiming a
// device with its one-time code, and fleet provisioning.

import { createHmac, randomInt, timingSafeEqual } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from '@sinclair/typebox'
import {
  ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyParams, ClaimBody, ClaimCode, Device, DeviceParams, Login,
  PasswordChange, Provisioned, ProvisionBody, RefreshBody, Tokens, User, UserCreate, errorResponses,
} from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import type { ApiKeyRow } from '../schemas/db/accounts.ts'
import {
  changePassword, claimDevice, createApiKey, createUser, listApiKeys, revokeApiKey, setClaimCode, useNonce, userByEmail, userById,
} from '../db/accounts.ts'
import { createDevice, getDevice, hashToken } from '../db/devices.ts'
import { hashPassword, verifyPassword, decoyHash, PASSWORD_MIN_LENGTH } from './passwords.ts'
import { newApiKeySecret } from './user-auth.ts'
import { authErrors, bearerToken, requestUser } from './auth.ts'
import { deviceView } from './devices.ts'
import { APP_USERNAME } from '../broker/identity.ts'
import type { ApiContext } from './index.ts'

// the contract: a provisioning timestamp within 5 minutes of the server clock
const PROVISION_WINDOW_MS = 5 * 60_000
// claim codes are typed by people: 10 characters of an alphabet without look-alikes (0/O, 1/I/L), ~50 bits
const CLAIM_ALPHABET = '23456789ABCDEFGHJKMNPQRSTUVWXYZ'
const CLAIM_LENGTH = 10
// refresh tokens are 36 characters; anything far longer is not one
const MAX_TOKEN_LENGTH = 512

export function newClaimCode (): string {
  let code = ''
  for (let i = 0; i < CLAIM_LENGTH; i++) code += CLAIM_ALPHABET[randomInt(CLAIM_ALPHABET.length)]
  return code
}

/** Claim codes are compared without case, spaces or dashes, as people type them. */
export function claimCodeHash (code: string): string {
  return hashToken(code.toUpperCase().replace(/[\s-]/g, ''))
}

function keyView (k: ApiKeyRow): typeof ApiKey.static {
  return { id: k.id, name: k.name, scopes: k.scopes, createdAt: k.createdAt, expiresAt: k.expiresAt, revokedAt: k.revokedAt }
}

export const accountRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, users, lockout, now } = ctx

  function mustBeUser (request: FastifyRequest): string {
    const userId = requestUser(request)
    if (userId === undefined) throw new RoostError('USER_REQUIRED')
    return userId
  }

  function checkPassword (password: string): void {
    if ([...password].length < PASSWORD_MIN_LENGTH) throw new RoostError('PASSWORD_TOO_SHORT', { min: PASSWORD_MIN_LENGTH })
  }

  /** Refuses while the account or the address is locked out. */
  function notLocked (account: string, address: string): void {
    const wait = lockout.retryAfter(account, address)
    if (wait > 0) throw new RoostError('LOGIN_LOCKED', { seconds: Math.ceil(wait / 1000) }, { 'retry-after': String(Math.ceil(wait / 1000)) })
  }

  function failed (request: FastifyRequest, account: string, address: string, what: string): void {
    const locked = lockout.fail(account, address)
    if (locked.length > 0) request.log.warn({ keys: locked, what }, 'locked out after repeated failures')
  }

  app.post('/v1/users', {
    schema: {
      summary: 'Create an account: by the admin, or by anyone when self sign-up is on (ROOST_SIGNUP)',
      tags: ['accounts'],
      body: UserCreate,
      response: { 201: User, ...errorResponses(['VALIDATION_FAILED', 'SIGNUP_DISABLED', 'ADMIN_REQUIRED', 'PASSWORD_TOO_SHORT', 'USER_EXISTS', 'RATE_LIMITED']) },
    },
  }, async (request, reply) => {
    const token = bearerToken(request)
    const byAdmin = token !== undefined && ctx.isAdminToken(token)
    // with sign-up on, anyone may create an account, whatever credential it sends along
    if (!byAdmin && !ctx.accounts.signup) throw new RoostError(token === undefined ? 'SIGNUP_DISABLED' : 'ADMIN_REQUIRED')
    checkPassword(request.body.password)
    const user = await createUser(db, request.body.email, await hashPassword(request.body.password), now())
    if (user === undefined) throw new RoostError('USER_EXISTS')
    request.log.info({ userId: user.id, byAdmin }, 'user created')
    return reply.status(201).send({ id: user.id, email: user.email, createdAt: user.createdAt })
  })

  app.post('/v1/auth/login', {
    schema: {
      summary: 'Log in with email and password: a short-lived access token and a one-use refresh token',
      tags: ['accounts'],
      body: Login,
      response: { 200: Tokens, ...errorResponses(['VALIDATION_FAILED', 'LOGIN_FAILED', 'LOGIN_LOCKED']) },
    },
  }, async request => {
    const account = `email:${request.body.email.toLowerCase()}`
    const address = `ip:${request.ip}`
    notLocked(account, address)
    const user = await userByEmail(db, request.body.email)
    // an unknown email costs the same hash as a wrong password, so timing does not tell accounts apart
    const ok = await verifyPassword(request.body.password, user?.passwordHash ?? await decoyHash())
    if (user === undefined || !ok) {
      failed(request, account, address, 'login')
      throw new RoostError('LOGIN_FAILED')
    }
    lockout.succeed(account)
    const tokens = await users.issue(user.id)
    request.log.info({ userId: user.id, sessionId: tokens.sessionId }, 'user logged in')
    return { accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, expiresIn: tokens.expiresIn, userId: user.id }
  })

  app.post('/v1/auth/refresh', {
    schema: {
      summary: 'Trade a refresh token for a new access token and a new refresh token (the old one stops working)',
      tags: ['accounts'],
      body: RefreshBody,
      response: { 200: Tokens, ...errorResponses(['VALIDATION_FAILED', 'REFRESH_INVALID']) },
    },
  }, async request => {
    const tokens = await users.refresh(request.body.refreshToken)
    if (tokens === undefined) throw new RoostError('REFRESH_INVALID')
    return { accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, expiresIn: tokens.expiresIn, userId: tokens.userId }
  })

  app.post('/v1/auth/logout', {
    schema: {
      summary: 'End the session of the bearer access token (even an expired one) and/or of a refresh token in an optional body {"refreshToken": "…"}; always 204, also when already logged out',
      tags: ['accounts'],
      // the body is optional, which a body schema cannot say: checked here instead
      response: { 204: Type.Null(), ...errorResponses(['VALIDATION_FAILED']) },
    },
  }, async (request, reply) => {
    const bearer = bearerToken(request)
    if (bearer !== undefined) await users.logout(bearer)
    const body = request.body as { refreshToken?: unknown } | null | undefined
    const refresh = body?.refreshToken
    if (refresh !== undefined && (typeof refresh !== 'string' || refresh.length > MAX_TOKEN_LENGTH)) throw new RoostError('VALIDATION_FAILED', { detail: 'refreshToken must be a string' })
    if (refresh !== undefined) await users.logout(refresh)
    return reply.status(204).send(null)
  })

  app.post('/v1/auth/password', {
    config: { auth: 'user', scope: 'admin' },
    schema: {
      summary: 'Change the password; every other session of the user ends',
      tags: ['accounts'],
      body: PasswordChange,
      response: { 204: Type.Null(), ...errorResponses([...authErrors('user'), 'VALIDATION_FAILED', 'LOGIN_FAILED', 'LOGIN_LOCKED', 'PASSWORD_TOO_SHORT']) },
    },
  }, async (request, reply) => {
    const userId = mustBeUser(request)
    const account = `user:${userId}`
    const address = `ip:${request.ip}`
    notLocked(account, address)
    const user = await userById(db, userId)
    if (user === undefined || !await verifyPassword(request.body.currentPassword, user.passwordHash)) {
      failed(request, account, address, 'password change')
      throw new RoostError('LOGIN_FAILED')
    }
    checkPassword(request.body.newPassword)
    const principal = request.principal
    const keep = principal?.kind === 'user' && principal.credential.kind === 'session' ? principal.credential.id : undefined
    const revoked = await changePassword(db, userId, await hashPassword(request.body.newPassword), keep, now())
    users.sessionsRevoked(revoked, userId)
    request.log.info({ userId, revokedSessions: revoked.length }, 'password changed')
    return reply.status(204).send(null)
  })

  app.post('/v1/api-keys', {
    config: { auth: 'user', scope: 'admin' },
    schema: {
      summary: 'Create an API key for the calling user; the key is in this reply only',
      tags: ['accounts'],
      body: ApiKeyCreate,
      response: { 201: ApiKeyCreated, ...errorResponses([...authErrors('user'), 'VALIDATION_FAILED']) },
    },
  }, async (request, reply) => {
    const userId = mustBeUser(request)
    const key = newApiKeySecret()
    const row = await createApiKey(db, { userId, name: request.body.name, scopes: request.body.scopes ?? ['read'], keyHash: hashToken(key), expiresAt: request.body.expiresAt ?? null }, now())
    request.log.info({ userId, keyId: row.id }, 'API key created')
    return reply.status(201).send({ ...keyView(row), key })
  })

  app.get('/v1/api-keys', {
    config: { auth: 'user', scope: 'admin' },
    schema: { summary: 'The calling user\'s API keys (never the keys themselves)', tags: ['accounts'], response: { 200: ApiKeyList, ...errorResponses(authErrors('user')) } },
  }, async request => ({ items: (await listApiKeys(db, mustBeUser(request))).map(keyView) }))

  app.delete('/v1/api-keys/:keyId', {
    config: { auth: 'user', scope: 'admin' },
    schema: {
      summary: 'Revoke an API key: REST calls and MQTT connections made with it stop at once',
      tags: ['accounts'],
      params: ApiKeyParams,
      response: { 200: ApiKey, ...errorResponses([...authErrors('user'), 'VALIDATION_FAILED', 'API_KEY_NOT_FOUND']) },
    },
  }, async request => {
    const userId = mustBeUser(request)
    const row = await revokeApiKey(db, userId, request.params.keyId, now())
    if (row === undefined) throw new RoostError('API_KEY_NOT_FOUND', { id: request.params.keyId })
    users.keyRevoked(row.id, userId)
    request.log.info({ userId, keyId: row.id }, 'API key revoked')
    return keyView(row)
  })

  app.post('/v1/devices/:id/claim-code', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Issue a one-time claim code for a device (replacing any earlier one), e.g. to print on its box',
      tags: ['accounts'],
      params: DeviceParams,
      response: { 201: ClaimCode, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'DEVICE_NOT_FOUND']) },
    },
  }, async (request, reply) => {
    const id = request.params.id
    if (await getDevice(db, id) === undefined) throw new RoostError('DEVICE_NOT_FOUND', { id })
    const code = newClaimCode()
    const t = now()
    await setClaimCode(db, id, claimCodeHash(code), t, t + ctx.accounts.claimCodeTtlMs)
    return reply.status(201).send({ deviceId: id, code, expiresAt: t + ctx.accounts.claimCodeTtlMs })
  })

  app.post('/v1/devices/:id/claim', {
    config: { auth: 'user', scope: 'write' },
    schema: {
      summary: 'Become the owner of an unowned device with its one-time claim code; wrong codes count toward a lockout',
      tags: ['accounts'],
      params: DeviceParams,
      body: ClaimBody,
      response: { 200: Device, ...errorResponses([...authErrors('user'), 'VALIDATION_FAILED', 'CLAIM_CODE_INVALID', 'CLAIM_CODE_EXPIRED', 'DEVICE_OWNED', 'LOGIN_LOCKED']) },
    },
  }, async request => {
    const userId = mustBeUser(request)
    const id = request.params.id
    // wrong codes count per device (5) and per user (as many as per address)
    const account = `claim:${id}`
    const address = `claim-user:${userId}`
    notLocked(account, address)
    const outcome = await claimDevice(db, id, userId, claimCodeHash(request.body.code), now())
    if (!outcome.ok) {
      if (outcome.reason === 'owned') throw new RoostError('DEVICE_OWNED', { id })
      failed(request, account, address, 'claim')
      // an unknown device answers as a wrong code: ids are not confirmed to someone without a code
      throw new RoostError(outcome.reason === 'expired' ? 'CLAIM_CODE_EXPIRED' : 'CLAIM_CODE_INVALID')
    }
    lockout.succeed(account)
    await ctx.broker.deviceChanged(id, 'owner')
    request.log.info({ userId, deviceId: id }, 'device claimed')
    return deviceView(outcome.device, ctx.broker.isOnline(id))
  })

  app.post('/v1/provision', {
    schema: {
      summary: 'Fleet provisioning: a device proves it knows the fleet secret and gets its own token and a claim code',
      tags: ['accounts'],
      body: ProvisionBody,
      response: { 201: Provisioned, ...errorResponses(['VALIDATION_FAILED', 'PROVISIONING_DISABLED', 'PROVISION_SIGNATURE_INVALID', 'PROVISION_STALE', 'PROVISION_REPLAYED', 'DEVICE_EXISTS']) },
    },
  }, async (request, reply) => {
    const secret = ctx.fleetSecret
    if (secret === undefined) throw new RoostError('PROVISIONING_DISABLED')
    const { deviceId, nonce, ts, hmac } = request.body
    if (deviceId === APP_USERNAME) throw new RoostError('VALIDATION_FAILED', { detail: `"${APP_USERNAME}" is the MQTT username of apps and cannot be a device id` })
    const expected = createHmac('sha256', secret).update(`${deviceId}:${nonce}:${ts}`).digest()
    if (!timingSafeEqual(expected, Buffer.from(hmac, 'hex'))) throw new RoostError('PROVISION_SIGNATURE_INVALID')
    const t = now()
    if (Math.abs(t - ts) > PROVISION_WINDOW_MS) throw new RoostError('PROVISION_STALE', { window: PROVISION_WINDOW_MS / 1000 })
    // nonces are kept for twice the window: a replay of anything older is stale anyway
    if (!await useNonce(db, nonce, deviceId, t, t - 2 * PROVISION_WINDOW_MS)) throw new RoostError('PROVISION_REPLAYED')
    const created = await createDevice(db, { id: deviceId }, t)
    if (created === undefined) throw new RoostError('DEVICE_EXISTS', { id: deviceId })
    const code = newClaimCode()
    await setClaimCode(db, deviceId, claimCodeHash(code), t, t + ctx.accounts.claimCodeTtlMs)
    await ctx.broker.deviceChanged(deviceId, 'changed')
    request.log.info({ deviceId }, 'device provisioned')
    return reply.status(201).send({ id: deviceId, token: created.token, claimCode: code, claimCodeExpiresAt: t + ctx.accounts.claimCodeTtlMs, mqtt: { host: ctx.mqtt.host, port: ctx.mqtt.port, username: deviceId } })
  })
}
