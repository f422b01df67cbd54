// Account records: users, sessions, API keys, claim codes and provisioning nonces.

import { randomBytes } from 'node:crypto'
import { and, asc, eq, gt, isNull, lt, ne, sql } from 'drizzle-orm'
import { apiKeys, claimCodes, provisionNonces, userSessions, users, type ApiKeyRow, type ApiKeyScope, type SessionRow, type UserRow } from '../schemas/db/accounts.ts'
import { devices, type DeviceRow } from '../schemas/db/devices.ts'
import type { Database } from './open.ts'

export function newId (prefix: string): string {
  return prefix + randomBytes(12).toString('base64url')
}

// ---- users ----------------------------------------------------------------------------------------

/** undefined when the email is taken. */
export async function createUser (db: Database, email: string, passwordHash: string, now: number): Promise<UserRow | undefined> {
  const rows = await db.orm.insert(users).values({ id: newId('u_'), email: email.toLowerCase(), passwordHash, createdAt: now, passwordChangedAt: now })
    .onConflictDoNothing().returning()
  return rows[0]
}

export async function userByEmail (db: Database, email: string): Promise<UserRow | undefined> {
  return (await db.orm.select().from(users).where(eq(users.email, email.toLowerCase())).limit(1))[0]
}

export async function userById (db: Database, id: string): Promise<UserRow | undefined> {
  return (await db.orm.select().from(users).where(eq(users.id, id)).limit(1))[0]
}

/** Sets a new password and revokes every session of the user but `keep`; returns the revoked session ids. */
export async function changePassword (db: Database, userId: string, passwordHash: string, keep: string | undefined, now: number): Promise<string[]> {
  return await db.orm.transaction(async tx => {
    await tx.update(users).set({ passwordHash, passwordChangedAt: now }).where(eq(users.id, userId))
    const revoked = await tx.update(userSessions).set({ revokedAt: now })
      .where(and(eq(userSessions.userId, userId), isNull(userSessions.revokedAt), keep === undefined ? undefined : ne(userSessions.id, keep)))
      .returning({ id: userSessions.id })
    return revoked.map(r => r.id)
  })
}

// ---- sessions -------------------------------------------------------------------------------------

export async function createSession (db: Database, userId: string, refreshHash: string, now: number, expiresAt: number): Promise<SessionRow> {
  const rows = await db.orm.insert(userSessions).values({ id: newId('s_'), userId, refreshHash, createdAt: now, expiresAt }).returning()
  return rows[0] as SessionRow
}

export async function sessionById (db: Database, id: string): Promise<SessionRow | undefined> {
  return (await db.orm.select().from(userSessions).where(eq(userSessions.id, id)).limit(1))[0]
}

/** Swaps a live session's refresh token for a new one; undefined when the old one is unknown, used, revoked or expired. */
export async function rotateRefresh (db: Database, oldHash: string, newHash: string, now: number, expiresAt: number): Promise<SessionRow | undefined> {
  const rows = await db.orm.update(userSessions).set({ refreshHash: newHash, expiresAt })
    .where(and(eq(userSessions.refreshHash, oldHash), isNull(userSessions.revokedAt), gt(userSessions.expiresAt, now)))
    .returning()
  return rows[0]
}

export async function sessionByRefresh (db: Database, refreshHash: string): Promise<SessionRow | undefined> {
  return (await db.orm.select().from(userSessions).where(eq(userSessions.refreshHash, refreshHash)).limit(1))[0]
}

/** Revokes a session (again is a no-op). */
export async function revokeSession (db: Database, id: string, now: number): Promise<void> {
  await db.orm.update(userSessions).set({ revokedAt: now }).where(and(eq(userSessions.id, id), isNull(userSessions.revokedAt)))
}

// ---- API keys -------------------------------------------------------------------------------------

export interface NewApiKey { readonly userId: string, readonly name: string, readonly scopes: ApiKeyScope[], readonly keyHash: string, readonly expiresAt: number | null }

export async function createApiKey (db: Database, k: NewApiKey, now: number): Promise<ApiKeyRow> {
  const rows = await db.orm.insert(apiKeys).values({ id: newId('k_'), ...k, createdAt: now }).returning()
  return rows[0] as ApiKeyRow
}

export async function listApiKeys (db: Database, userId: string): Promise<ApiKeyRow[]> {
  return await db.orm.select().from(apiKeys).where(eq(apiKeys.userId, userId)).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id))
}

export async function apiKeyByHash (db: Database, keyHash: string): Promise<ApiKeyRow | undefined> {
  return (await db.orm.select().from(apiKeys).where(eq(apiKeys.keyHash, keyHash)).limit(1))[0]
}

/** Revokes one of the user's keys; undefined when the user has no such key. Revoking twice keeps the first time. */
export async function revokeApiKey (db: Database, userId: string, id: string, now: number): Promise<ApiKeyRow | undefined> {
  const rows = await db.orm.update(apiKeys).set({ revokedAt: sql`COALESCE(${apiKeys.revokedAt}, ${now})` })
    .where(and(eq(apiKeys.id, id), eq(apiKeys.userId, userId))).returning()
  return rows[0]
}

// ---- ownership, claim codes, provisioning ---------------------------------------------------------

export async function setClaimCode (db: Database, deviceId: string, codeHash: string, now: number, expiresAt: number): Promise<void> {
  await db.orm.insert(claimCodes).values({ deviceId, codeHash, createdAt: now, expiresAt })
    .onConflictDoUpdate({ target: claimCodes.deviceId, set: { codeHash, createdAt: now, expiresAt } })
}

export type ClaimOutcome = { readonly ok: true, readonly device: DeviceRow } | { readonly ok: false, readonly reason: 'no-code' | 'wrong' | 'expired' | 'owned' | 'no-device' }

/**
 * Gives an unowned device to `userId` when `codeHash` is its live claim code, and uses the code up:
 * both in one transaction, so two claims with the same code cannot both win.
 */
export async function claimDevice (db: Database, deviceId: string, userId: string, codeHash: string, now: number): Promise<ClaimOutcome> {
  return await db.orm.transaction(async tx => {
    const device = (await tx.select().from(devices).where(eq(devices.id, deviceId)).limit(1))[0]
    if (device === undefined) return { ok: false, reason: 'no-device' }
    if (device.ownerId !== null) return { ok: false, reason: 'owned' }
    const code = (await tx.select().from(claimCodes).where(eq(claimCodes.deviceId, deviceId)).limit(1))[0]
    if (code === undefined) return { ok: false, reason: 'no-code' }
    if (code.codeHash !== codeHash) return { ok: false, reason: 'wrong' }
    if (code.expiresAt <= now) return { ok: false, reason: 'expired' }
    await tx.delete(claimCodes).where(eq(claimCodes.deviceId, deviceId))
    const [owned] = await tx.update(devices).set({ ownerId: userId, updatedAt: now }).where(and(eq(devices.id, deviceId), isNull(devices.ownerId))).returning()
    return owned === undefined ? { ok: false, reason: 'owned' } : { ok: true, device: owned }
  })
}

/** Records a provisioning nonce; false when it was used before (a replay). Nonces older than `forgetBefore` are dropped. */
export async function useNonce (db: Database, nonce: string, deviceId: string, now: number, forgetBefore: number): Promise<boolean> {
  await db.orm.delete(provisionNonces).where(lt(provisionNonces.usedAt, forgetBefore))
  const rows = await db.orm.insert(provisionNonces).values({ nonce, deviceId, usedAt: now }).onConflictDoNothing().returning()
  return rows.length === 1
}
