// Device records: create, read, update, delete, token rotation and batched last-seen writes.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { and, asc, eq, gt, sql } from 'drizzle-orm'
import { devices, type DeviceRow } from '../schemas/db/devices.ts'
import type { Database } from './open.ts'

// 24 random bytes = 192 bits, above the contract's 128-bit floor; base64url keeps it shell- and URL-safe.
const TOKEN_BYTES = 24
export const DEVICE_TOKEN_PREFIX = 'rdt_'

export function newDeviceToken (): string {
  return DEVICE_TOKEN_PREFIX + randomBytes(TOKEN_BYTES).toString('base64url')
}

export function hashToken (token: string | Buffer): string {
  return createHash('sha256').update(token).digest('hex')
}

/** Constant-time comparison of a presented token against a stored SHA-256 hex digest. */
export function tokenMatches (presented: string | Buffer, storedHash: string): boolean {
  const a = createHash('sha256').update(presented).digest()
  const b = Buffer.from(storedHash, 'hex')
  return a.length === b.length && timingSafeEqual(a, b)
}

export interface NewDevice { readonly id: string, readonly name?: string | null, readonly ownerId?: string | null, readonly tags?: string[] }

/** Creates a device; returns its row and the token, which is never stored or shown again. Undefined if the id exists. */
export async function createDevice (db: Database, input: NewDevice, now: number): Promise<{ row: DeviceRow, token: string } | undefined> {
  const token = newDeviceToken()
  const rows = await db.orm.insert(devices).values({
    id: input.id,
    name: input.name ?? null,
    ownerId: input.ownerId ?? null,
    tags: input.tags ?? [],
    tokenHash: hashToken(token),
    createdAt: now,
    updatedAt: now,
  }).onConflictDoNothing().returning()
  const row = rows[0]
  return row === undefined ? undefined : { row, token }
}

export async function getDevice (db: Database, id: string): Promise<DeviceRow | undefined> {
  const rows = await db.orm.select().from(devices).where(eq(devices.id, id)).limit(1)
  return rows[0]
}

/** In id order; `ownerId` lists one user's devices only. */
export async function listDevices (db: Database, opts: { limit: number, after: string | undefined, ownerId?: string }): Promise<DeviceRow[]> {
  return await db.orm.select().from(devices)
    .where(and(opts.after === undefined ? undefined : gt(devices.id, opts.after), opts.ownerId === undefined ? undefined : eq(devices.ownerId, opts.ownerId)))
    .orderBy(asc(devices.id)).limit(opts.limit)
}

export async function allDevices (db: Database): Promise<Array<{ id: string, lastSeen: number | null, tokenHash: string, ownerId: string | null }>> {
  return await db.orm.select({ id: devices.id, lastSeen: devices.lastSeen, tokenHash: devices.tokenHash, ownerId: devices.ownerId }).from(devices)
}

export async function updateDevice (db: Database, id: string, patch: { name?: string | null, ownerId?: string | null, tags?: string[] }, now: number): Promise<DeviceRow | undefined> {
  const rows = await db.orm.update(devices).set({ ...patch, updatedAt: now }).where(eq(devices.id, id)).returning()
  return rows[0]
}

export async function rotateDeviceToken (db: Database, id: string, now: number): Promise<string | undefined> {
  const token = newDeviceToken()
  const rows = await db.orm.update(devices).set({ tokenHash: hashToken(token), updatedAt: now }).where(eq(devices.id, id)).returning({ id: devices.id })
  return rows.length === 0 ? undefined : token
}

/** Deletes a device and all its telemetry in one statement, so nothing half-deleted remains. */
export async function deleteDevice (db: Database, id: string): Promise<boolean> {
  const rows = await db.query<{ id: string }>(`
    WITH t AS (DELETE FROM telemetry WHERE device_id = $1),
         l AS (DELETE FROM telemetry_latest WHERE device_id = $1),
         h AS (DELETE FROM telemetry_hourly WHERE device_id = $1),
         s AS (DELETE FROM device_state WHERE device_id = $1),
         c AS (DELETE FROM commands WHERE device_id = $1)
    DELETE FROM devices WHERE id = $1 RETURNING id`, [id])
  return rows.length > 0
}

/** Writes many last-seen times in one statement; a time never moves backwards. */
export async function writeLastSeen (db: Database, seen: ReadonlyMap<string, number>): Promise<void> {
  if (seen.size === 0) return
  await db.query(`
    UPDATE devices AS d SET last_seen = s.ts
    FROM unnest($1::text[], $2::int8[]) AS s(id, ts)
    WHERE d.id = s.id AND (d.last_seen IS NULL OR d.last_seen < s.ts)`, [[...seen.keys()], [...seen.values()]])
}

export async function countDevices (db: Database): Promise<number> {
  const rows = await db.orm.select({ n: sql<number>`count(*)` }).from(devices)
  return Number(rows[0]?.n ?? 0)
}

export async function deviceByTokenHash (db: Database, tokenHash: string): Promise<DeviceRow | undefined> {
  const rows = await db.orm.select().from(devices).where(eq(devices.tokenHash, tokenHash)).limit(1)
  return rows[0]
}

/** Token hashes of the given devices, in one statement (login lookups are grouped). */
export async function deviceCredentials (db: Database, ids: readonly string[]): Promise<Map<string, { tokenHash: string }>> {
  const rows = await db.query<{ id: string, token_hash: string }>('SELECT id, token_hash FROM devices WHERE id = ANY($1::text[])', [ids])
  return new Map(rows.map(r => [r.id, { tokenHash: r.token_hash }]))
}
