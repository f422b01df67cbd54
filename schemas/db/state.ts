// Device state ("twin"): the desired document the platform writes and the reported one the device merges into.

import { bigint, integer, jsonb, pgTable, text } from 'drizzle-orm/pg-core'

export const deviceState = pgTable('device_state', {
  deviceId: text('device_id').primaryKey(),
  // the whole desired document; published retained on devices/{id}/state/desired as {version, state}
  desired: jsonb('desired').$type<Record<string, unknown>>().notNull().default({}),
  // bumped by every change of desired; PATCH may name the version it read (optimistic concurrency)
  desiredVersion: integer('desired_version').notNull().default(0),
  desiredAt: bigint('desired_at', { mode: 'number' }),
  reported: jsonb('reported').$type<Record<string, unknown>>().notNull().default({}),
  reportedVersion: integer('reported_version').notNull().default(0),
  reportedAt: bigint('reported_at', { mode: 'number' }),
})

export type DeviceStateRow = typeof deviceState.$inferSelect
