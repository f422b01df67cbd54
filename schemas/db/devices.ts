// The devices table: identity, hashed credential, ownership and last-seen time of every device.

import { bigint, index, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core'

export const devices = pgTable('devices', {
  // the device id is also its MQTT client id and username; see DEVICE_ID_PATTERN
  id: text('id').primaryKey(),
  name: text('name'),
  ownerId: text('owner_id'),
  // SHA-256 of the device token, hex. The token is 192 random bits, so a fast hash is enough:
  // there is nothing to brute-force that a slow KDF would protect.
  tokenHash: text('token_hash').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  updatedAt: bigint('updated_at', { mode: 'number' }).notNull(),
  // epoch ms of the last connect, message or disconnect; written in batches, so up to
  // ROOST_LAST_SEEN_FLUSH_MS behind what the broker knows
  lastSeen: bigint('last_seen', { mode: 'number' }),
  // free labels ("kitchen", "beta") that rollouts can target
  tags: jsonb('tags').$type<string[]>().notNull().default([]),
}, t => [
  index('devices_owner_idx').on(t.ownerId),
  // a device token on REST names no device; this finds its device in one probe
  uniqueIndex('devices_token_hash_idx').on(t.tokenHash),
])

export type DeviceRow = typeof devices.$inferSelect
