// Webhook records and their deliveries: create, list, delete, record, claim the due ones, record attempts.

import { randomBytes } from 'node:crypto'
import { and, asc, desc, eq } from 'drizzle-orm'
import { webhookDeliveries, webhooks, type DeliveryRow, type DeliveryStatus, type WebhookRow } from '../schemas/db/webhooks.ts'
import type { Database } from './open.ts'

export function newId (prefix: string): string {
  return prefix + randomBytes(12).toString('base64url')
}

export async function createWebhook (db: Database, w: { url: string, events: string[], deviceIds: string[] | null }, now: number): Promise<WebhookRow> {
  const rows = await db.orm.insert(webhooks).values({
    id: newId('wh_'), url: w.url, events: w.events, deviceIds: w.deviceIds, secret: 'whsec_' + randomBytes(24).toString('base64url'), createdAt: now,
  }).returning()
  return rows[0] as WebhookRow
}

export async function listWebhooks (db: Database): Promise<WebhookRow[]> {
  return await db.orm.select().from(webhooks).orderBy(asc(webhooks.createdAt))
}

export async function getWebhook (db: Database, id: string): Promise<WebhookRow | undefined> {
  return (await db.orm.select().from(webhooks).where(eq(webhooks.id, id)).limit(1))[0]
}

/** Deletes a webhook and its delivery records in one statement. */
export async function deleteWebhook (db: Database, id: string): Promise<boolean> {
  const rows = await db.query<{ id: string }>(`
    WITH d AS (DELETE FROM webhook_deliveries WHERE webhook_id = $1)
    DELETE FROM webhooks WHERE id = $1 RETURNING id`, [id])
  return rows.length > 0
}

export interface NewDelivery { readonly webhookId: string, readonly event: string, readonly deviceId: string, readonly body: string }

export async function insertDeliveries (db: Database, deliveries: readonly NewDelivery[], now: number): Promise<void> {
  if (deliveries.length === 0) return
  await db.orm.insert(webhookDeliveries).values(deliveries.map(d => ({
    id: newId('dl_'), webhookId: d.webhookId, event: d.event, deviceId: d.deviceId, body: d.body, status: 'pending' as const, createdAt: now, nextAttemptAt: now,
  })))
}

/**
 * Claims up to `limit` due deliveries, oldest first: their next attempt moves `leaseMs` ahead, so another
 * API process (or this one, after a crash mid-attempt) does not send them at the same time.
 */
export async function claimDue (db: Database, now: number, limit: number, leaseMs: number): Promise<DeliveryRow[]> {
  const rows = await db.query<Record<string, unknown>>(`
    UPDATE webhook_deliveries SET next_attempt_at = $2::int8
    WHERE id IN (
      SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1::int8
      ORDER BY next_attempt_at LIMIT $3::int4 FOR UPDATE SKIP LOCKED)
    RETURNING id, webhook_id, event, device_id, body, status, attempts, created_at`, [now, now + leaseMs, limit])
  return rows.map(r => ({
    id: r.id as string,
    webhookId: r.webhook_id as string,
    event: r.event as string,
    deviceId: r.device_id as string,
    body: r.body as string,
    status: r.status as DeliveryStatus,
    attempts: Number(r.attempts),
    lastStatus: null,
    lastError: null,
    createdAt: Number(r.created_at),
    nextAttemptAt: now + leaseMs,
    finishedAt: null,
  }))
}

export interface Attempt {
  readonly httpStatus: number | null
  readonly error: string | null
  // undefined: succeeded; a time: retry then; 'give-up': failed for good
  readonly next: number | 'give-up' | undefined
}

export async function recordAttempt (db: Database, id: string, a: Attempt, now: number): Promise<void> {
  const finished = a.next === undefined || a.next === 'give-up'
  await db.query(`
    UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $2, last_error = $3, status = $4,
      next_attempt_at = $5::int8, finished_at = $6::int8
    WHERE id = $1`,
  [id, a.httpStatus, a.error, a.next === undefined ? 'succeeded' : a.next === 'give-up' ? 'failed' : 'pending', typeof a.next === 'number' ? a.next : now, finished ? now : null])
}

export async function listDeliveries (db: Database, webhookId: string, opts: { status: DeliveryStatus | undefined, limit: number }): Promise<DeliveryRow[]> {
  const where = opts.status === undefined
    ? eq(webhookDeliveries.webhookId, webhookId)
    : and(eq(webhookDeliveries.webhookId, webhookId), eq(webhookDeliveries.status, opts.status))
  return await db.orm.select().from(webhookDeliveries).where(where).orderBy(desc(webhookDeliveries.createdAt), desc(webhookDeliveries.id)).limit(opts.limit)
}
