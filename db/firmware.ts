// Firmware records: create, find, list, delete, count downloads; and whether an image is in use.

import { and, desc, eq, inArray, sql } from 'drizzle-orm'
import { firmware, type FirmwareRow } from '../schemas/db/firmware.ts'
import { rollouts, UNFINISHED_ROLLOUT_STATES } from '../schemas/db/rollouts.ts'
import type { Database } from './open.ts'

export interface NewFirmware {
  readonly id: string
  readonly version: string
  readonly hardware: string
  readonly notes: string | null
  readonly size: number
  readonly sha256: string
  readonly signature: string
}

/** Records an uploaded image; undefined when (hardware, version) is taken already. */
export async function createFirmware (db: Database, f: NewFirmware, now: number): Promise<FirmwareRow | undefined> {
  const rows = await db.orm.insert(firmware).values({ ...f, createdAt: now }).onConflictDoNothing().returning()
  return rows[0]
}

export async function getFirmware (db: Database, id: string): Promise<FirmwareRow | undefined> {
  return (await db.orm.select().from(firmware).where(eq(firmware.id, id)).limit(1))[0]
}

export async function firmwareExists (db: Database, hardware: string, version: string): Promise<boolean> {
  const rows = await db.orm.select({ id: firmware.id }).from(firmware).where(and(eq(firmware.hardware, hardware), eq(firmware.version, version))).limit(1)
  return rows.length > 0
}

/** Newest first; `hardware` and `version` narrow to exact matches. */
export async function listFirmware (db: Database, filter: { hardware?: string | undefined, version?: string | undefined }): Promise<FirmwareRow[]> {
  const conditions = [
    filter.hardware === undefined ? undefined : eq(firmware.hardware, filter.hardware),
    filter.version === undefined ? undefined : eq(firmware.version, filter.version),
  ]
  return await db.orm.select().from(firmware).where(and(...conditions)).orderBy(desc(firmware.createdAt), desc(firmware.id))
}

/** Deletes the record; true when there was one. The caller removes the file. */
export async function deleteFirmware (db: Database, id: string): Promise<boolean> {
  const rows = await db.orm.delete(firmware).where(eq(firmware.id, id)).returning({ id: firmware.id })
  return rows.length > 0
}

export async function countDownload (db: Database, id: string): Promise<void> {
  await db.orm.update(firmware).set({ downloads: sql`${firmware.downloads} + 1` }).where(eq(firmware.id, id))
}

/** Whether a rollout still needs this image (one that is draft, running or paused), so it must not be deleted. */
export async function firmwareInUse (db: Database, id: string): Promise<boolean> {
  const rows = await db.orm.select({ id: rollouts.id }).from(rollouts)
    .where(and(eq(rollouts.firmwareId, id), inArray(rollouts.state, [...UNFINISHED_ROLLOUT_STATES]))).limit(1)
  return rows.length > 0
}
