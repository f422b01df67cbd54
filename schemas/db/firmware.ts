// The firmware table: every uploaded image's identity, digest and signature; the bytes live on disk in
// <data dir>/firmware/<id>.bin.

import { bigint, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core'

export const firmware = pgTable('firmware', {
  id: text('id').primaryKey(),
  version: text('version').notNull(), // semver, as uploaded
  hardware: text('hardware').notNull(), // the board family the image is built for
  notes: text('notes'),
  size: bigint('size', { mode: 'number' }).notNull(), // bytes
  sha256: text('sha256').notNull(), // hex digest of the image
  // base64 Ed25519 signature over the 32 raw digest bytes, with the data dir's firmware signing key
  signature: text('signature').notNull(),
  createdAt: bigint('created_at', { mode: 'number' }).notNull(),
  // completed downloads: full 200s, and ranged 206s that reached the last byte
  downloads: bigint('downloads', { mode: 'number' }).notNull().default(0),
}, t => [
  // one image per (hardware, version): a device asking for "1.4.2 for esp32-s3" gets exactly one answer
  uniqueIndex('firmware_hardware_version_idx').on(t.hardware, t.version),
])

export type FirmwareRow = typeof firmware.$inferSelect
