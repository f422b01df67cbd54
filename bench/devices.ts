// Benchmark devices, inserted straight into the database in a few statements (10k REST calls would take
// longer than the benchmark), each with its own token as `roost device add` would issue.

import type { Database } from '../db/open.ts'
import { hashToken, newDeviceToken } from '../db/devices.ts'

export interface BenchDevice { readonly id: string, readonly token: string }

// rows per INSERT: six arrays of this many entries stay well under a megabyte per statement
const SEED_BATCH_ROWS = 5000

/** Ids `<prefix>00000`…: short enough for MQTT 3.1's 23-character client ids, and valid device ids. */
export function benchDeviceIds (prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => prefix + String(i).padStart(5, '0'))
}

export async function seedDevices (db: Database, ids: readonly string[], now = Date.now()): Promise<BenchDevice[]> {
  const devices = ids.map(id => ({ id, token: newDeviceToken() }))
  for (let i = 0; i < devices.length; i += SEED_BATCH_ROWS) {
    const batch = devices.slice(i, i + SEED_BATCH_ROWS)
    await db.query(`
      INSERT INTO devices (id, name, owner_id, token_hash, created_at, updated_at)
      SELECT id, NULL, NULL, hash, $3, $3 FROM unnest($1::text[], $2::text[]) AS t(id, hash)`,
    [batch.map(d => d.id), batch.map(d => hashToken(d.token)), now])
  }
  return devices
}
