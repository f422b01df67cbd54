// Command records: create, read, list, deliver (queued → sent), finish with a result, expire.

import { randomBytes } from 'node:crypto'
import { and, asc, desc, eq, gt, inArray, lt } from 'drizzle-orm'
import { commands, type CommandRow, type CommandStatus } from '../schemas/db/commands.ts'
import type { Database } from './open.ts'

const OPEN: CommandStatus[] = ['queued', 'sent']

let lastMs = 0
let sequence = 0
/**
 * Ids sort in creation order within a process (time, then a counter, then randomness), so commands
 * created in the same millisecond are still delivered in the order they were made.
 */
export function newCommandId (now: number): string {
  sequence = now === lastMs ? sequence + 1 : 0
  lastMs = now
  return now.toString(36).padStart(9, '0') + sequence.toString(36).padStart(3, '0') + randomBytes(6).toString('base64url')
}

export interface NewCommand {
  readonly deviceId: string
  readonly name: string
  readonly params: Record<string, unknown>
  readonly now: number
  readonly expiresAt: number
}

export async function createCommand (db: Database, c: NewCommand): Promise<CommandRow> {
  const rows = await db.orm.insert(commands).values({
    id: newCommandId(c.now), deviceId: c.deviceId, name: c.name, params: c.params, status: 'queued', createdAt: c.now, expiresAt: c.expiresAt,
  }).returning()
  return rows[0] as CommandRow
}

export async function getCommand (db: Database, deviceId: string, id: string): Promise<CommandRow | undefined> {
  const rows = await db.orm.select().from(commands).where(and(eq(commands.id, id), eq(commands.deviceId, deviceId))).limit(1)
  return rows[0]
}

/** Newest first; `pending` means queued or sent and not yet expired. */
export async function listCommands (db: Database, deviceId: string, opts: { status: CommandStatus | 'pending' | undefined, limit: number, now: number }): Promise<CommandRow[]> {
  const byStatus = opts.status === undefined
    ? undefined
    : opts.status === 'pending'
      ? and(inArray(commands.status, OPEN), gt(commands.expiresAt, opts.now))
      : eq(commands.status, opts.status)
  const order = opts.status === 'pending' ? [asc(commands.createdAt), asc(commands.id)] : [desc(commands.createdAt), desc(commands.id)]
  return await db.orm.select().from(commands).where(and(eq(commands.deviceId, deviceId), byStatus)).orderBy(...order).limit(opts.limit)
}

/** What to deliver to a device now, oldest first: queued ones, and with `resend` also sent but unanswered ones. */
export async function deliverable (db: Database, deviceId: string, resend: boolean, now: number): Promise<CommandRow[]> {
  return await db.orm.select().from(commands)
    .where(and(eq(commands.deviceId, deviceId), inArray(commands.status, resend ? OPEN : ['queued']), gt(commands.expiresAt, now)))
    .orderBy(asc(commands.createdAt), asc(commands.id))
}

export async function markSent (db: Database, ids: readonly string[], now: number): Promise<void> {
  if (ids.length === 0) return
  await db.orm.update(commands).set({ status: 'sent', sentAt: now }).where(and(inArray(commands.id, [...ids]), eq(commands.status, 'queued')))
}

export type FinishResult =
  | { readonly ok: true, readonly row: CommandRow }
  | { readonly ok: false, readonly reason: 'not-found' }
  | { readonly ok: false, readonly reason: 'final', readonly status: CommandStatus, readonly expired?: CommandRow }

/** Records a device's answer to one of its own open commands. A command past its expiry is expired instead. */
export async function finishCommand (db: Database, deviceId: string, id: string, outcome: { ok: boolean, result?: unknown, error?: string }, now: number): Promise<FinishResult> {
  const rows = await db.orm.update(commands)
    .set({ status: outcome.ok ? 'succeeded' : 'failed', result: outcome.ok ? (outcome.result ?? null) : null, error: outcome.ok ? null : (outcome.error ?? 'failed'), finishedAt: now })
    .where(and(eq(commands.id, id), eq(commands.deviceId, deviceId), inArray(commands.status, OPEN), gt(commands.expiresAt, now)))
    .returning()
  if (rows[0] !== undefined) return { ok: true, row: rows[0] }
  const row = await getCommand(db, deviceId, id)
  // another device's command answers as unknown, so command ids cannot be probed
  if (row === undefined) return { ok: false, reason: 'not-found' }
  if (OPEN.includes(row.status)) {
    // still open but past its expiry (the sweep has not run yet): it expires now, the answer came too late
    const [expired] = await db.orm.update(commands).set({ status: 'expired', finishedAt: now })
      .where(and(eq(commands.id, id), inArray(commands.status, OPEN))).returning()
    return { ok: false, reason: 'final', status: 'expired', ...(expired === undefined ? {} : { expired }) }
  }
  return { ok: false, reason: 'final', status: row.status }
}

/** Expires every open command past its expiry time; returns them. */
export async function expireDue (db: Database, now: number): Promise<CommandRow[]> {
  return await db.orm.update(commands).set({ status: 'expired', finishedAt: now })
    .where(and(inArray(commands.status, OPEN), lt(commands.expiresAt, now + 1)))
    .returning()
}
