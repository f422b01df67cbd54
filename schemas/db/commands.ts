// Commands sent to devices: each one's lifecycle queued → sent → succeeded | failed | expired.

import { sql } from 'drizzle-orm'
import { bigint, index, jsonb, pgTable, text } from 'drizzle-orm/pg-core'

export const COMMAND_STATUSES = ['queued', 'sent', 'succeeded', 'failed', 'expired'] as const
export type CommandStatus = typeof COMMAND_STATUSES[number]
export const FINAL_STATUSES: readonly CommandStatus[] = ['succeeded', 'failed', 'expired']

export const commands = pgTable('commands', {
  id: text('id').primaryKey(), // generated; also the last level of devices/{id}/commands/{cmdId}
  deviceId: text('device_id').notNull(),
  name: text('name').notNull(),
  params: jsonb('params').$type<Record<string, unknown>>().notNull().default({}),
  status: text('status').$type<CommandStatus>().notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  expiresAt: bigint('expires_at', { mode: 'number' }).notNull(),
  sentAt: bigint('sent_at', { mode: 'number' }),
  finishedAt: bigint('finished_at', { mode: 'number' }),
  result: jsonb('result'),
  error: text('error'),
}, t => [
  // a device's commands in order: delivery at connect, the device's pending list, the admin's history
  index('commands_device_created_idx').on(t.deviceId, t.createdAt),
  // what is still to deliver, without reading a device's finished history (which only grows)
  index('commands_device_open_idx').on(t.deviceId, t.createdAt, t.id).where(sql`status IN ('queued', 'sent')`),
  // the expiry sweep reads only unfinished commands by expiry time
  index('commands_open_expiry_idx').on(t.expiresAt).where(sql`status IN ('queued', 'sent')`),
])

export type CommandRow = typeof commands.$inferSelect
