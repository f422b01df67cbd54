// Webhooks: where to send which events, and every delivery with its attempts, for retries and inspection.

import { sql } from 'drizzle-orm'
import { bigint, index, integer, jsonb, pgTable, text } from 'drizzle-orm/pg-core'

export const webhooks = pgTable('webhooks', {
  id: text('id').primaryKey(),
  url: text('url').notNull(),
  events: jsonb('events').$type<string[]>().notNull(), // event types, as in /v1/events
  deviceIds: jsonb('device_ids').$type<string[] | null>(), // null: every device
  // kept in clear because every delivery is signed with it (HMAC needs the key); shown once at creation
  secret: text('secret').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
})

export const DELIVERY_STATUSES = ['pending', 'succeeded', 'failed'] as const
export type DeliveryStatus = typeof DELIVERY_STATUSES[number]

export const webhookDeliveries = pgTable('webhook_deliveries', {
  id: text('id').primaryKey(),
  webhookId: text('webhook_id').notNull(),
  event: text('event').notNull(),
  deviceId: text('device_id').notNull(),
  body: text('body').notNull(), // the exact JSON sent (and signed) at every attempt
  status: text('status').$type<DeliveryStatus>().notNull(),
  attempts: integer('attempts').notNull().default(0),
  lastStatus: integer('last_status'), // HTTP status of the last attempt, null when it got no answer
  lastError: text('last_error'),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  nextAttemptAt: bigint('next_attempt_at', { mode: 'number' }).notNull(),
  finishedAt: bigint('finished_at', { mode: 'number' }),
}, t => [
  index('webhook_deliveries_hook_created_idx').on(t.webhookId, t.createdAt),
  // the dispatcher reads only pending deliveries that are due
  index('webhook_deliveries_due_idx').on(t.nextAttemptAt).where(sql`status = 'pending'`),
])

export type WebhookRow = typeof webhooks.$inferSelect
export type DeliveryRow = typeof webhookDeliveries.$inferSelect
