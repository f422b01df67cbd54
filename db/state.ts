// Device state reads and writes: desired patches with optional version check, reported merges, rebuild at start.

import { eq, gt } from 'drizzle-orm'
import { deviceState, type DeviceStateRow } from '../schemas/db/state.ts'
import { mergePatch, stateProblem, type StateDoc } from '../schemas/state.ts'
import type { Database } from './open.ts'

export const EMPTY_STATE: Omit<DeviceStateRow, 'deviceId'> = {
  desired: {}, desiredVersion: 0, desiredAt: null, reported: {}, reportedVersion: 0, reportedAt: null,
}

export async function getState (db: Database, deviceId: string): Promise<DeviceStateRow> {
  const rows = await db.orm.select().from(deviceState).where(eq(deviceState.deviceId, deviceId)).limit(1)
  return rows[0] ?? { deviceId, ...EMPTY_STATE }
}

export type PatchResult =
  | { readonly ok: true, readonly row: DeviceStateRow }
  | { readonly ok: false, readonly reason: 'version', readonly currentVersion: number }
  | { readonly ok: false, readonly reason: 'invalid', readonly detail: string }

type Side = 'desired' | 'reported'

/**
 * Merges `patch` into one side of a device's state, in a transaction that locks the row, so concurrent
 * patches apply one after the other and a stated `expectedVersion` is checked against what is stored.
 */
async function mergeInto (db: Database, side: Side, deviceId: string, patch: StateDoc, expectedVersion: number | undefined, now: number): Promise<PatchResult> {
  return await db.orm.transaction(async tx => {
    await tx.insert(deviceState).values({ deviceId }).onConflictDoNothing()
    const [current] = await tx.select().from(deviceState).where(eq(deviceState.deviceId, deviceId)).for('update')
    if (current === undefined) throw new Error(`device_state row for ${deviceId} vanished inside its transaction`)
    const version = side === 'desired' ? current.desiredVersion : current.reportedVersion
    if (expectedVersion !== undefined && expectedVersion !== version) return { ok: false, reason: 'version', currentVersion: version } as const
    const merged = mergePatch(current[side], patch) as StateDoc
    const problem = stateProblem(merged)
    if (problem !== undefined) return { ok: false, reason: 'invalid', detail: problem } as const
    const set = side === 'desired'
      ? { desired: merged, desiredVersion: version + 1, desiredAt: now }
      : { reported: merged, reportedVersion: version + 1, reportedAt: now }
    const [row] = await tx.update(deviceState).set(set).where(eq(deviceState.deviceId, deviceId)).returning()
    return { ok: true, row: row as DeviceStateRow } as const
  })
}

export function patchDesired (db: Database, deviceId: string, patch: StateDoc, expectedVersion: number | undefined, now: number): Promise<PatchResult> {
  return mergeInto(db, 'desired', deviceId, patch, expectedVersion, now)
}

export function mergeReported (db: Database, deviceId: string, patch: StateDoc, now: number): Promise<PatchResult> {
  return mergeInto(db, 'reported', deviceId, patch, undefined, now)
}

/** Every device that has a desired document, for republishing the retained copies at start. */
export async function allDesired (db: Database): Promise<Array<{ deviceId: string, desired: StateDoc, desiredVersion: number }>> {
  return await db.orm.select({ deviceId: deviceState.deviceId, desired: deviceState.desired, desiredVersion: deviceState.desiredVersion })
    .from(deviceState).where(gt(deviceState.desiredVersion, 0))
}
