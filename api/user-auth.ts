// User credentials: short-lived signed access tokens (JWT, HS256, via `jose`), refresh tokens that work
// once each, and API keys. Verifies either kind for REST and for app logins on the broker, and tells
// listeners when a session or key is revoked, so open MQTT connections made with it are closed at once.

import { createHash, randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose'
import type { Database } from '../db/open.ts'
import type { Config } from '../schemas/config.ts'
import { hashToken } from '../db/devices.ts'
import { apiKeyByHash, createSession, revokeSession, rotateRefresh, sessionById, sessionByRefresh } from '../db/accounts.ts'
import { API_KEY_SCOPES, type ApiKeyScope } from '../schemas/db/accounts.ts'

export const API_KEY_PREFIX = 'rak_'
const REFRESH_PREFIX = 'rrt_'
const ISSUER = 'roost'
const AUDIENCE = 'roost-access'
// a session's revocation is looked up at most this often per session; revocations made in this process
// take effect at once (the cache is updated), those made by another API process within this time
const SESSION_CACHE_MS = 5000
// sessions whose state is cached; beyond it, entries older than an access token's lifetime are dropped
const SESSION_CACHE_MAX = 10_000

export type CredentialKind = 'session' | 'apikey'

/** A verified user credential. `expiresAt` (epoch ms) is when it stops working by itself, null for never. */
export interface UserCredential {
  readonly userId: string
  readonly kind: CredentialKind
  readonly id: string // session id or key id
  readonly scopes: readonly ApiKeyScope[]
  readonly expiresAt: number | null
}

export interface Revocation { readonly kind: CredentialKind, readonly id: string, readonly userId: string }

export interface UserAuthOptions {
  readonly db: Database
  readonly secret: string // signs access tokens
  readonly accessTtlMs: number
  readonly refreshTtlMs: number
  readonly now?: () => number
}

export interface IssuedTokens { readonly accessToken: string, readonly refreshToken: string, readonly expiresIn: number, readonly sessionId: string, readonly userId: string }

export function newApiKeySecret (): string {
  return API_KEY_PREFIX + randomBytes(24).toString('base64url')
}

export class UserAuth extends EventEmitter<{ revoked: [Revocation] }> {
  private readonly key: Uint8Array
  private readonly now: () => number
  private readonly sessions = new Map<string, { revoked: boolean, checkedAt: number }>()
  private sweptAt = Number.NEGATIVE_INFINITY

  constructor (private readonly opts: UserAuthOptions) {
    super()
    this.key = createHash('sha256').update('roost access tokens\0' + opts.secret).digest()
    this.now = opts.now ?? Date.now
  }

  /** A new session: an access token and its refresh token. */
  async issue (userId: string): Promise<IssuedTokens> {
    const refreshToken = REFRESH_PREFIX + randomBytes(24).toString('base64url')
    const t = this.now()
    const session = await createSession(this.opts.db, userId, hashToken(refreshToken), t, t + this.opts.refreshTtlMs)
    return { accessToken: await this.sign(userId, session.id, t), refreshToken, expiresIn: Math.floor(this.opts.accessTtlMs / 1000), sessionId: session.id, userId }
  }

  /** Trades a refresh token for new tokens of the same session; undefined when it is not live (used, revoked, expired, unknown). */
  async refresh (refreshToken: string): Promise<IssuedTokens | undefined> {
    const next = REFRESH_PREFIX + randomBytes(24).toString('base64url')
    const t = this.now()
    const session = await rotateRefresh(this.opts.db, hashToken(refreshToken), hashToken(next), t, t + this.opts.refreshTtlMs)
    if (session === undefined) return undefined
    return { accessToken: await this.sign(session.userId, session.id, t), refreshToken: next, expiresIn: Math.floor(this.opts.accessTtlMs / 1000), sessionId: session.id, userId: session.userId }
  }

  /**
   * Ends the session an access token (expired or not, as long as we signed it) or a refresh token
   * belongs to. Anything else is ignored: logging out twice is not an error.
   */
  async logout (token: string): Promise<void> {
    let sessionId: string | undefined
    let userId: string | undefined
    if (token.startsWith(REFRESH_PREFIX)) {
      const s = await sessionByRefresh(this.opts.db, hashToken(token))
      sessionId = s?.id
      userId = s?.userId
    } else {
      const claims = await this.claims(token, { ignoreExpiry: true })
      sessionId = claims?.sid
      userId = claims?.sub
    }
    if (sessionId !== undefined && userId !== undefined) await this.revokeSession(sessionId, userId)
  }

  async revokeSession (sessionId: string, userId: string): Promise<void> {
    await revokeSession(this.opts.db, sessionId, this.now())
    this.sessionsRevoked([sessionId], userId)
  }

  /** Call after sessions were revoked in the database by other means (a password change). */
  sessionsRevoked (ids: readonly string[], userId: string): void {
    for (const id of ids) {
      this.remember(id, true, this.now())
      this.emit('revoked', { kind: 'session', id, userId })
    }
  }

  /** Call after a key was revoked, so connections made with it are closed. */
  keyRevoked (id: string, userId: string): void {
    this.emit('revoked', { kind: 'apikey', id, userId })
  }

  /** The credential an access token or API key stands for, or undefined when it is not (or no longer) valid. */
  async verify (token: string): Promise<UserCredential | undefined> {
    if (token.startsWith(API_KEY_PREFIX)) {
      const key = await apiKeyByHash(this.opts.db, hashToken(token))
      if (key === undefined || key.revokedAt !== null || (key.expiresAt !== null && key.expiresAt <= this.now())) return undefined
      return { userId: key.userId, kind: 'apikey', id: key.id, scopes: key.scopes, expiresAt: key.expiresAt }
    }
    const claims = await this.claims(token, { ignoreExpiry: false })
    if (claims === undefined || await this.sessionRevoked(claims.sid)) return undefined
    return { userId: claims.sub, kind: 'session', id: claims.sid, scopes: API_KEY_SCOPES, expiresAt: claims.exp * 1000 }
  }

  private async sign (userId: string, sessionId: string, now: number): Promise<string> {
    return await new SignJWT({ sid: sessionId })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(userId)
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt(Math.floor(now / 1000))
      .setExpirationTime(Math.floor((now + this.opts.accessTtlMs) / 1000))
      .sign(this.key)
  }

  private async claims (token: string, opts: { ignoreExpiry: boolean }): Promise<{ sub: string, sid: string, exp: number } | undefined> {
    try {
      const { payload } = await jwtVerify(token, this.key, {
        algorithms: ['HS256'],
        issuer: ISSUER,
        audience: AUDIENCE,
        currentDate: new Date(this.now()),
        // an expired token may still end its session (logout), nothing else
        ...(opts.ignoreExpiry ? { clockTolerance: Number.MAX_SAFE_INTEGER } : {}),
      })
      if (typeof payload.sub !== 'string' || typeof payload.sid !== 'string' || typeof payload.exp !== 'number') return undefined
      return { sub: payload.sub, sid: payload.sid, exp: payload.exp }
    } catch (err) {
      if (err instanceof joseErrors.JOSEError) return undefined
      throw err
    }
  }

  /**
   * Caches a session's state. Past SESSION_CACHE_MAX entries, those older than an access token's lifetime
   * go: no token of theirs can still be valid, so forgetting them changes no answer.
   */
  private remember (id: string, revoked: boolean, at: number): void {
    this.sessions.set(id, { revoked, checkedAt: at })
    // swept at most once per cache period, so a large live fleet of sessions does not scan on every miss
    if (this.sessions.size <= SESSION_CACHE_MAX || at - this.sweptAt < SESSION_CACHE_MS) return
    this.sweptAt = at
    for (const [k, v] of this.sessions) if (at - v.checkedAt > this.opts.accessTtlMs) this.sessions.delete(k)
  }

  private async sessionRevoked (id: string): Promise<boolean> {
    const t = this.now()
    const cached = this.sessions.get(id)
    if (cached !== undefined && (cached.revoked || t - cached.checkedAt < SESSION_CACHE_MS)) return cached.revoked
    const row = await sessionById(this.opts.db, id)
    const revoked = row === undefined || row.revokedAt !== null
    this.remember(id, revoked, t)
    return revoked
  }
}

/** The user credential service of a config (built by the platform once, so broker and API share it). */
export function userAuthFor (config: Config, db: Database): UserAuth {
  const secret = config.auth.sessionSecret
  if (secret === undefined) throw new Error('user logins need config.auth.sessionSecret (resolveSecrets fills it)')
  return new UserAuth({ db, secret, accessTtlMs: config.accounts.accessTtlMs, refreshTtlMs: config.accounts.refreshTtlMs })
}
