// Rollout records: picking target devices, stage bookkeeping and every state change of a rollout (each in
// one transaction holding the rollout's row lock), devices' status reports, and what firmware devices run.

import { and, asc, desc, eq, exists, inArray, isNotNull, lte, ne, notExists, notInArray, sql } from 'drizzle-orm'
import { devices } from '../schemas/db/devices.ts'
import { firmware } from '../schemas/db/firmware.ts'
import {
  deviceFirmware, rolloutDevices, rollouts, UNFINISHED_ROLLOUT_STATES,
  type RolloutDeviceRow, type RolloutDeviceState, type RolloutRow, type RolloutState, type RolloutTarget, type StageSpec,
} from '../schemas/db/rollouts.ts'
import { emptyCounts, judgeStage, nextRolloutState, type OtaStatus, type RolloutAction, type StageCounts } from '../schemas/rollouts.ts'
import type { Database, Orm } from './open.ts'

type Tx = Parameters<Parameters<Orm['transaction']>[0]>[0]

// rows per INSERT: 7 parameters each stays far below Postgres' 65,535 parameters per statement
const INSERT_CHUNK = 1000
const PAUSED_BY_ADMIN = 'paused by the admin'

/** Code-unit order, the same on every backend (ORDER BY would follow the database's collation). */
function byId (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

// ---- creating and reading -------------------------------------------------------------------------------

export interface TargetQuery {
  readonly hardware: string
  readonly version: string // the rollout's version: devices already on it are not picked
  readonly fromVersions?: readonly string[] | undefined
  readonly deviceIds?: readonly string[] | undefined
  readonly tags?: readonly string[] | undefined // a device must carry every one
}

/**
 * Devices a new rollout targets, sorted by id: known hardware equal to the target's, a known version other
 * than the rollout's (and among `fromVersions` when given), among `deviceIds` when given, and not already in
 * another unfinished rollout (a device follows one rollout at a time).
 */
export async function pickDevices (db: Database, q: TargetQuery): Promise<Array<{ deviceId: string, version: string }>> {
  const busy = db.orm.select({ one: sql`1` }).from(rolloutDevices)
    .innerJoin(rollouts, eq(rollouts.id, rolloutDevices.rolloutId))
    .where(and(eq(rolloutDevices.deviceId, deviceFirmware.deviceId), inArray(rollouts.state, [...UNFINISHED_ROLLOUT_STATES])))
  const rows = await db.orm.select({ deviceId: deviceFirmware.deviceId, version: deviceFirmware.version }).from(deviceFirmware).where(and(
    eq(deviceFirmware.hardware, q.hardware),
    isNotNull(deviceFirmware.version),
    ne(deviceFirmware.version, q.version),
    q.fromVersions === undefined ? undefined : inArray(deviceFirmware.version, [...q.fromVersions]),
    q.deviceIds === undefined ? undefined : inArray(deviceFirmware.deviceId, [...q.deviceIds]),
    q.tags === undefined || q.tags.length === 0 ? undefined : exists(db.orm.select({ one: sql`1` }).from(devices).where(and(eq(devices.id, deviceFirmware.deviceId), sql`${devices.tags} @> ${JSON.stringify(q.tags)}::jsonb`))),
    notExists(busy),
  ))
  return rows.map(r => ({ deviceId: r.deviceId, version: r.version as string })).sort((a, b) => byId(a.deviceId, b.deviceId))
}

export interface NewRollout {
  readonly id: string
  readonly firmwareId: string
  readonly version: string
  readonly hardware: string
  readonly target: RolloutTarget
  readonly stages: StageSpec[]
  readonly failureThreshold: number
}

/** Records a draft rollout and its devices, each with its stage. */
export async function createRollout (db: Database, r: NewRollout, devices: ReadonlyArray<{ deviceId: string, version: string, stage: number }>, now: number): Promise<RolloutRow> {
  return await db.orm.transaction(async tx => {
    const [row] = await tx.insert(rollouts).values({ ...r, state: 'draft', currentStage: 0, createdAt: now, updatedAt: now }).returning()
    for (let i = 0; i < devices.length; i += INSERT_CHUNK) {
      await tx.insert(rolloutDevices).values(devices.slice(i, i + INSERT_CHUNK).map(d => ({
        rolloutId: r.id, deviceId: d.deviceId, stage: d.stage, state: 'pending' as const, fromVersion: d.version, updatedAt: now,
      })))
    }
    return row as RolloutRow
  })
}

export async function getRollout (db: Database, id: string): Promise<RolloutRow | undefined> {
  return (await db.orm.select().from(rollouts).where(eq(rollouts.id, id)).limit(1))[0]
}

/** Newest first. */
export async function listRollouts (db: Database, state: RolloutState | undefined): Promise<RolloutRow[]> {
  return await db.orm.select().from(rollouts).where(state === undefined ? undefined : eq(rollouts.state, state)).orderBy(desc(rollouts.createdAt), desc(rollouts.id))
}

/** Per rollout, per stage: devices by state. */
export async function stageCounts (db: Database, ids: readonly string[]): Promise<Map<string, Map<number, StageCounts>>> {
  const out = new Map<string, Map<number, StageCounts>>()
  if (ids.length === 0) return out
  const rows = await db.orm.select({ rolloutId: rolloutDevices.rolloutId, stage: rolloutDevices.stage, state: rolloutDevices.state, n: sql<number>`count(*)::int` })
    .from(rolloutDevices).where(inArray(rolloutDevices.rolloutId, [...ids]))
    .groupBy(rolloutDevices.rolloutId, rolloutDevices.stage, rolloutDevices.state)
  for (const r of rows) {
    const stages = out.get(r.rolloutId) ?? new Map<number, StageCounts>()
    out.set(r.rolloutId, stages)
    const counts = stages.get(r.stage) ?? emptyCounts()
    stages.set(r.stage, counts)
    counts[r.state] = Number(r.n)
  }
  return out
}

/** A rollout's devices in stage order, then by id. */
export async function rolloutDeviceList (db: Database, id: string): Promise<RolloutDeviceRow[]> {
  const rows = await db.orm.select().from(rolloutDevices).where(eq(rolloutDevices.rolloutId, id))
  return rows.sort((a, b) => a.stage - b.stage || byId(a.deviceId, b.deviceId))
}

// ---- state changes ------------------------------------------------------------------------------------

/**
 * What a state change asks of the broker once it has committed: devices to send the rollout's notice to,
 * and devices whose retained notice is withdrawn.
 */
export interface RolloutEffects {
  readonly rollout: RolloutRow
  readonly notify: string[]
  readonly clear: string[]
}

export type ActionResult =
  | ({ readonly ok: true } & RolloutEffects)
  | { readonly ok: false, readonly reason: 'not-found' }
  | { readonly ok: false, readonly reason: 'invalid', readonly state: RolloutState }

async function lock (tx: Tx, id: string): Promise<RolloutRow | undefined> {
  return (await tx.select().from(rollouts).where(eq(rollouts.id, id)).for('update'))[0]
}

async function update (tx: Tx, id: string, set: Partial<RolloutRow>, now: number): Promise<RolloutRow> {
  const [row] = await tx.update(rollouts).set({ ...set, updatedAt: now }).where(eq(rollouts.id, id)).returning()
  return row as RolloutRow
}

async function devicesWhere (tx: Tx, id: string, stage: number, states: readonly RolloutDeviceState[] | 'started'): Promise<string[]> {
  const rows = await tx.select({ deviceId: rolloutDevices.deviceId }).from(rolloutDevices).where(and(
    eq(rolloutDevices.rolloutId, id),
    states === 'started' ? lte(rolloutDevices.stage, stage) : eq(rolloutDevices.stage, stage),
    states === 'started' ? ne(rolloutDevices.state, 'pending') : inArray(rolloutDevices.state, [...states]),
  ))
  return rows.map(r => r.deviceId).sort(byId)
}

/**
 * Opens stage `stage`: its devices already running the rollout's version count as succeeded at once, the
 * others become `notified`; returns those to notify.
 */
async function openStage (tx: Tx, r: RolloutRow, stage: number, now: number): Promise<string[]> {
  const there = await tx.select({ deviceId: rolloutDevices.deviceId }).from(rolloutDevices)
    .innerJoin(deviceFirmware, eq(deviceFirmware.deviceId, rolloutDevices.deviceId))
    .where(and(eq(rolloutDevices.rolloutId, r.id), eq(rolloutDevices.stage, stage), eq(rolloutDevices.state, 'pending'), eq(deviceFirmware.version, r.version)))
  if (there.length > 0) {
    await tx.update(rolloutDevices).set({ state: 'succeeded', updatedAt: now })
      .where(and(eq(rolloutDevices.rolloutId, r.id), inArray(rolloutDevices.deviceId, there.map(d => d.deviceId))))
  }
  const notified = await tx.update(rolloutDevices).set({ state: 'notified', updatedAt: now })
    .where(and(eq(rolloutDevices.rolloutId, r.id), eq(rolloutDevices.stage, stage), eq(rolloutDevices.state, 'pending')))
    .returning({ deviceId: rolloutDevices.deviceId })
  return notified.map(d => d.deviceId).sort(byId)
}

async function countsOf (tx: Tx, id: string, stage: number): Promise<StageCounts> {
  const counts = emptyCounts()
  const rows = await tx.select({ state: rolloutDevices.state, n: sql<number>`count(*)::int` }).from(rolloutDevices)
    .where(and(eq(rolloutDevices.rolloutId, id), eq(rolloutDevices.stage, stage))).groupBy(rolloutDevices.state)
  for (const r of rows) counts[r.state] = Number(r.n)
  return counts
}

/**
 * Moves a running rollout on as far as its devices allow: while the current stage has passed, the next one
 * opens (an empty stage, or one whose devices all run the version already, passes at once); after the last,
 * the rollout is finished. A stage with more failures than the threshold pauses it with the reason.
 */
async function settle (tx: Tx, start: RolloutRow, now: number, notify: string[], clear: string[]): Promise<RolloutRow> {
  let r = start
  while (r.state === 'running') {
    const verdict = judgeStage(await countsOf(tx, r.id, r.currentStage), r.failureThreshold, r.currentStage, r.stages.length)
    if (verdict.kind === 'waiting') break
    if (verdict.kind === 'failed') {
      r = await update(tx, r.id, { state: 'paused', pausedReason: verdict.reason }, now)
      // devices that have not begun are not told while paused; those mid-update carry on
      clear.push(...await devicesWhere(tx, r.id, r.currentStage, ['notified', 'failed']))
      break
    }
    if (r.currentStage + 1 >= r.stages.length) {
      r = await update(tx, r.id, { state: 'finished', finishedAt: now }, now)
      clear.push(...await devicesWhere(tx, r.id, r.currentStage, 'started'))
      break
    }
    r = await update(tx, r.id, { currentStage: r.currentStage + 1 }, now)
    notify.push(...await openStage(tx, r, r.currentStage, now))
  }
  return r
}

/** start, pause, resume or cancel, as the transition table allows. */
export async function applyAction (db: Database, id: string, action: RolloutAction, now: number): Promise<ActionResult> {
  return await db.orm.transaction(async (tx): Promise<ActionResult> => {
    const current = await lock(tx, id)
    if (current === undefined) return { ok: false, reason: 'not-found' }
    const next = nextRolloutState(current.state, action)
    if (next === undefined) return { ok: false, reason: 'invalid', state: current.state }
    const notify: string[] = []
    const clear: string[] = []
    let r: RolloutRow
    switch (action) {
      case 'start':
        r = await update(tx, id, { state: next, currentStage: 0, startedAt: now, pausedReason: null }, now)
        notify.push(...await openStage(tx, r, 0, now))
        r = await settle(tx, r, now, notify, clear)
        break
      case 'pause':
        r = await update(tx, id, { state: next, pausedReason: PAUSED_BY_ADMIN }, now)
        clear.push(...await devicesWhere(tx, id, r.currentStage, ['notified', 'failed']))
        break
      case 'resume':
        r = await update(tx, id, { state: next, pausedReason: null }, now)
        // the stage's failed devices are told again: a resumed stage is judged afresh
        await tx.update(rolloutDevices).set({ state: 'notified', progress: null, error: null, updatedAt: now })
          .where(and(eq(rolloutDevices.rolloutId, id), eq(rolloutDevices.stage, r.currentStage), eq(rolloutDevices.state, 'failed')))
        notify.push(...await devicesWhere(tx, id, r.currentStage, ['notified']))
        r = await settle(tx, r, now, notify, clear)
        break
      case 'cancel':
        r = await update(tx, id, { state: next, finishedAt: now }, now)
        if (current.startedAt !== null) clear.push(...await devicesWhere(tx, id, r.currentStage, 'started'))
        break
    }
    return { ok: true, rollout: r, notify, clear }
  })
}

/** Judges a running rollout's current stage again (after device reports); undefined when it is not running. */
export async function advanceRollout (db: Database, id: string, now: number): Promise<RolloutEffects | undefined> {
  return await db.orm.transaction(async tx => {
    const current = await lock(tx, id)
    if (current?.state !== 'running') return undefined
    const notify: string[] = []
    const clear: string[] = []
    const r = await settle(tx, current, now, notify, clear)
    return { rollout: r, notify, clear }
  })
}

/** Running rollouts, oldest first (judged again at start: reports may have come while the API was away). */
export async function runningRollouts (db: Database): Promise<string[]> {
  const rows = await db.orm.select({ id: rollouts.id }).from(rollouts).where(eq(rollouts.state, 'running')).orderBy(asc(rollouts.createdAt))
  return rows.map(r => r.id)
}

/** The running rollouts a device is in (at most one, unless two were created at the same moment). */
export async function runningRolloutsOf (db: Database, deviceId: string): Promise<string[]> {
  const rows = await db.orm.select({ id: rollouts.id }).from(rolloutDevices)
    .innerJoin(rollouts, eq(rollouts.id, rolloutDevices.rolloutId))
    .where(and(eq(rolloutDevices.deviceId, deviceId), eq(rollouts.state, 'running')))
  return rows.map(r => r.id)
}

// ---- notices ------------------------------------------------------------------------------------------

export interface NoticeSource {
  readonly deviceId: string
  readonly rolloutId: string
  readonly firmwareId: string
  readonly version: string
  readonly size: number
  readonly sha256: string
  readonly signature: string
}

/**
 * Which devices hold a rollout's notice, as a projection of the database: in a running rollout, every
 * device of a started stage; in a paused one, only devices mid-update (downloading to rebooting) and those
 * done (the others were withdrawn at the pause). Narrowed to one rollout, or to some devices, when given.
 */
export async function activeNotices (db: Database, only: { rolloutId?: string, deviceIds?: readonly string[] } = {}): Promise<NoticeSource[]> {
  if (only.deviceIds !== undefined && only.deviceIds.length === 0) return []
  const rows = await db.orm.select({
    deviceId: rolloutDevices.deviceId, rolloutId: rollouts.id, firmwareId: firmware.id, version: firmware.version,
    size: firmware.size, sha256: firmware.sha256, signature: firmware.signature,
  }).from(rolloutDevices)
    .innerJoin(rollouts, eq(rollouts.id, rolloutDevices.rolloutId))
    .innerJoin(firmware, eq(firmware.id, rollouts.firmwareId))
    .where(and(
      ne(rolloutDevices.state, 'pending'),
      lte(rolloutDevices.stage, rollouts.currentStage),
      sql`(${rollouts.state} = 'running' OR (${rollouts.state} = 'paused' AND ${rolloutDevices.state} NOT IN ('notified', 'failed')))`,
      only.rolloutId === undefined ? undefined : eq(rollouts.id, only.rolloutId),
      only.deviceIds === undefined ? undefined : inArray(rolloutDevices.deviceId, [...only.deviceIds]),
    ))
  return rows.sort((a, b) => byId(a.deviceId, b.deviceId))
}

/**
 * What GET /v1/ota/check offers a device: the image of the running rollout it is in, when its stage has
 * started and it has not yet succeeded.
 */
export async function offerFor (db: Database, deviceId: string): Promise<(NoticeSource & { hardware: string }) | undefined> {
  const rows = await db.orm.select({
    deviceId: rolloutDevices.deviceId, rolloutId: rollouts.id, firmwareId: firmware.id, version: firmware.version,
    size: firmware.size, sha256: firmware.sha256, signature: firmware.signature, hardware: firmware.hardware,
  }).from(rolloutDevices)
    .innerJoin(rollouts, eq(rollouts.id, rolloutDevices.rolloutId))
    .innerJoin(firmware, eq(firmware.id, rollouts.firmwareId))
    .where(and(
      eq(rolloutDevices.deviceId, deviceId),
      eq(rollouts.state, 'running'),
      lte(rolloutDevices.stage, rollouts.currentStage),
      notInArray(rolloutDevices.state, ['pending', 'succeeded']),
    )).limit(1)
  return rows[0]
}

// ---- device reports -----------------------------------------------------------------------------------

/** The hardware and version a device last reported running. */
export async function deviceFirmwareOf (db: Database, deviceId: string): Promise<{ hardware: string | null, version: string | null } | undefined> {
  return (await db.orm.select({ hardware: deviceFirmware.hardware, version: deviceFirmware.version }).from(deviceFirmware).where(eq(deviceFirmware.deviceId, deviceId)).limit(1))[0]
}

// fields not given keep their stored value
async function upsertFirmware (tx: Tx, deviceId: string, facts: { hardware?: string | undefined, version?: string | undefined }, now: number): Promise<void> {
  const set: { updatedAt: number, hardware?: string, version?: string } = { updatedAt: now }
  if (facts.hardware !== undefined) set.hardware = facts.hardware
  if (facts.version !== undefined) set.version = facts.version
  await tx.insert(deviceFirmware).values({ deviceId, hardware: facts.hardware ?? null, version: facts.version ?? null, updatedAt: now })
    .onConflictDoUpdate({ target: deviceFirmware.deviceId, set })
}

/** Marks the device succeeded in unfinished started rollouts of `version`; returns them. */
async function succeedIn (tx: Tx, deviceId: string, version: string, now: number): Promise<Array<{ rolloutId: string, hardware: string }>> {
  const rows = await tx.update(rolloutDevices).set({ state: 'succeeded', error: null, updatedAt: now })
    .from(rollouts)
    .where(and(
      eq(rolloutDevices.rolloutId, rollouts.id),
      eq(rolloutDevices.deviceId, deviceId),
      inArray(rollouts.state, ['running', 'paused']),
      eq(rollouts.version, version),
      notInArray(rolloutDevices.state, ['pending', 'succeeded']),
    ))
    .returning({ rolloutId: rolloutDevices.rolloutId, hardware: rollouts.hardware })
  return rows
}

/**
 * Records what firmware a device says it runs. Reporting the version of a rollout it is being updated by
 * (its stage started) counts as that update having succeeded. Returns the rollouts it succeeded in.
 */
export async function recordFirmware (db: Database, deviceId: string, facts: { hardware?: string | undefined, version?: string | undefined }, now: number): Promise<string[]> {
  return await db.orm.transaction(async tx => {
    await upsertFirmware(tx, deviceId, facts, now)
    return facts.version === undefined ? [] : (await succeedIn(tx, deviceId, facts.version, now)).map(r => r.rolloutId)
  })
}

/**
 * Stores a device's ota/status report: the device's state in the unfinished rollout of that version whose
 * stage has started (a succeeded device stays succeeded). `succeeded` also records the version as the one
 * the device runs. Returns the rollouts the report counted in (none for a version no rollout offers it).
 */
export async function recordOtaStatus (db: Database, deviceId: string, status: OtaStatus, now: number): Promise<string[]> {
  return await db.orm.transaction(async tx => {
    if (status.state === 'succeeded') {
      const done = await succeedIn(tx, deviceId, status.version, now)
      // the rollout picked the device by its hardware, so that is what it runs the new version on
      await upsertFirmware(tx, deviceId, { version: status.version, hardware: done[0]?.hardware }, now)
      return done.map(r => r.rolloutId)
    }
    const rows = await tx.update(rolloutDevices)
      .set({ state: status.state, progress: status.progress ?? null, error: status.state === 'failed' ? (status.error ?? null) : null, updatedAt: now })
      .from(rollouts)
      .where(and(
        eq(rolloutDevices.rolloutId, rollouts.id),
        eq(rolloutDevices.deviceId, deviceId),
        inArray(rollouts.state, ['running', 'paused']),
        eq(rollouts.version, status.version),
        notInArray(rolloutDevices.state, ['pending', 'succeeded']),
      ))
      .returning({ rolloutId: rolloutDevices.rolloutId })
    return rows.map(r => r.rolloutId)
  })
}
