// Command records: create, read, list, deliver (queued → sent), finish with a result, expire.

import { randomBytes } from 'node:crypto'
import { and, asc, desc, eq, gt, inArray, lt, sql } from 'drizzle-orm'
import { commands, type CommandRow, type CommandStatus } from '../schemas/db/commands.ts'
import type { Database } from './open.ts'
import { Batcher } from './batch.ts'
import { devices } from '../schemas/db/devices.ts'

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
    // literal statuses, so the planner can prove the partial index commands_device_open_idx applies
    .where(and(eq(commands.deviceId, deviceId), resend ? sql`${commands.status} IN ('queued', 'sent')` : sql`${commands.status} = 'queued'`, gt(commands.expiresAt, now)))
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

// ---- batched: what concurrent senders, deliveries and results share -------------------------------

export interface CommandOutcome { readonly ok: boolean, readonly result?: unknown, readonly error?: string }

interface RawCommand {
  id: string, device_id: string, name: string, params: Record<string, unknown>, status: CommandStatus,
  created_at: number | string, expires_at: number | string, sent_at: number | string | null,
  finished_at: number | string | null, result: unknown, error: string | null
}

const nullableNumber = (x: number | string | null): number | null => x === null ? null : Number(x)

function fromRaw (r: RawCommand): CommandRow {
  return {
    id: r.id, deviceId: r.device_id, name: r.name, params: r.params, status: r.status,
    createdAt: Number(r.created_at), expiresAt: Number(r.expires_at), sentAt: nullableNumber(r.sent_at),
    finishedAt: nullableNumber(r.finished_at), result: r.result ?? null, error: r.error,
  }
}

/** Records many answers in one statement; answers for commands not open (or repeated in the batch) come back undefined. */
async function finishOpen (db: Database, items: ReadonlyArray<{ deviceId: string, id: string, outcome: CommandOutcome }>, now: number): Promise<Map<string, CommandRow>> {
  const values = items.map(i => ({
    id: i.id,
    device_id: i.deviceId,
    status: i.outcome.ok ? 'succeeded' : 'failed',
    result: i.outcome.ok ? (i.outcome.result ?? null) : null,
    error: i.outcome.ok ? null : (i.outcome.error ?? 'failed'),
  }))
  const rows = await db.query<RawCommand>(
    `UPDATE commands c SET status = x.status, result = x.result, error = x.error, finished_at = $2
       FROM jsonb_to_recordset($1::jsonb) AS x(id text, device_id text, status text, result jsonb, error text)
      WHERE c.id = x.id AND c.device_id = x.device_id AND c.status IN ('queued', 'sent') AND c.expires_at > $2
      RETURNING c.*`,
    [JSON.stringify(values), now])
  return new Map(rows.map(r => [r.id, fromRaw(r)]))
}

/**
 * The command calls of the REST API and the broker, micro-batched (db/batch.ts) in raw SQL: a hundred
 * devices sending and answering at once cost a statement per step, not a few hundred. One store per database.
 */
export class CommandStore {
  private readonly creates: Batcher<NewCommand & { id: string, send?: boolean }, CommandRow | undefined>
  private readonly claims: Batcher<{ deviceId: string, resend: boolean, now: number }, CommandRow[]>
  private readonly finishes: Batcher<{ deviceId: string, id: string, outcome: CommandOutcome, now: number }, FinishResult>

  constructor (db: Database) {
    // as telemetry ingest: statements overlap on a server database, not on the embedded one
    const concurrency = db.kind === 'postgres' ? 3 : 1
    this.creates = new Batcher(async items => {
      // Behind a command of the same device in this batch that has to queue, a later one queues too: the
      // statement below cannot see rows it inserts itself.
      const queues = new Set(items.filter(i => i.send !== true).map(i => i.deviceId))
      // The join drops commands for devices that do not exist. A command whose device is listening goes in
      // as sent (saving the UPDATE that would claim it) unless a queued one of that device is still open:
      // then it queues behind it, and `deliver` sends both in order.
      const rows = await db.query<RawCommand>(
        `INSERT INTO commands (id, device_id, name, params, status, created_at, expires_at, sent_at)
         SELECT x.id, x.device_id, x.name, x.params, s.status, x.created_at, x.expires_at,
                CASE WHEN s.status = 'sent' THEN x.created_at END
           FROM jsonb_to_recordset($1::jsonb) AS x(id text, device_id text, name text, params jsonb, created_at bigint, expires_at bigint, send boolean)
           JOIN devices d ON d.id = x.device_id
           CROSS JOIN LATERAL (SELECT CASE WHEN x.send AND NOT EXISTS (
               SELECT 1 FROM commands o WHERE o.device_id = x.device_id AND o.status = 'queued' AND o.expires_at > x.created_at)
             THEN 'sent' ELSE 'queued' END AS status) s
         RETURNING *`,
        [JSON.stringify(items.map(i => ({
          id: i.id, device_id: i.deviceId, name: i.name, params: i.params, created_at: i.now, expires_at: i.expiresAt,
          send: i.send === true && !queues.has(i.deviceId),
        })))])
      const byId = new Map(rows.map(r => [r.id, fromRaw(r)]))
      return items.map(i => byId.get(i.id))
    }, concurrency)
    this.claims = new Batcher(async items => {
      const now = Math.max(...items.map(i => i.now))
      const all = [...new Set(items.map(i => i.deviceId))]
      const resend = [...new Set(items.filter(i => i.resend).map(i => i.deviceId))]
      // literal statuses, so the planner can prove the partial index commands_device_open_idx applies
      const rows = (await db.query<RawCommand>(
        `UPDATE commands SET status = 'sent', sent_at = COALESCE(sent_at, $3)
          WHERE device_id IN (SELECT jsonb_array_elements_text($1::jsonb)) AND status IN ('queued', 'sent') AND expires_at > $3
            AND (status = 'queued' OR device_id IN (SELECT jsonb_array_elements_text($2::jsonb)))
          RETURNING *`,
        [JSON.stringify(all), JSON.stringify(resend), now])).map(fromRaw)
      rows.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      // a device in the batch twice gets its commands once, with the first call
      const given = new Set<string>()
      return items.map(i => {
        if (given.has(i.deviceId)) return []
        given.add(i.deviceId)
        return rows.filter(r => r.deviceId === i.deviceId)
      })
    }, concurrency)
    this.finishes = new Batcher(async items => {
      // one answer per command in a statement; a repeated one is judged after it, alone (and refused as final)
      const firstById = new Map<string, typeof items[number]>()
      for (const i of items) if (!firstById.has(i.id)) firstById.set(i.id, i)
      const done = await finishOpen(db, [...firstById.values()], Math.max(...items.map(i => i.now)))
      const out: FinishResult[] = []
      for (const i of items) {
        const row = firstById.get(i.id) === i ? done.get(i.id) : undefined
        // not open, not this device's, expired, or repeated: the single path says which
        out.push(row !== undefined ? { ok: true, row } : await finishCommand(db, i.deviceId, i.id, i.outcome, i.now))
      }
      return out
    }, concurrency)
  }

  /**
   * Stores a command; undefined when the device does not exist. With `send` (its device is listening for
   * commands now) it is stored as sent when nothing of that device is queued before it, and the caller
   * publishes it; otherwise it is queued.
   */
  create (c: NewCommand & { readonly send?: boolean }): Promise<CommandRow | undefined> {
    return this.creates.submit({ ...c, id: newCommandId(c.now) })
  }

  /**
   * Marks a device's queued commands sent and returns them, oldest first, to be published; with
   * `resend` (at connect) also the sent but unanswered ones. Marked before they are published: a
   * command the device never got stays open and goes out again at its next connect.
   */
  claimDeliverable (deviceId: string, resend: boolean, now: number): Promise<CommandRow[]> {
    return this.claims.submit({ deviceId, resend, now })
  }

  finish (deviceId: string, id: string, outcome: CommandOutcome, now: number): Promise<FinishResult> {
    return this.finishes.submit({ deviceId, id, outcome, now })
  }
}

const stores = new WeakMap<Database, CommandStore>()

/** The database's command store, shared by the API and the broker of one process. */
export function commandStore (db: Database): CommandStore {
  let store = stores.get(db)
  if (store === undefined) stores.set(db, store = new CommandStore(db))
  return store
}
