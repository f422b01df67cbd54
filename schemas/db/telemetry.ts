// Telemetry storage: one row per (device, key, time), plus a small "latest value per key" table.
//
// Index design, for one device with a million rows:
// - `telemetry_device_key_ts_idx` (device_id, key, ts) is the only index on the big table. A range
//   query for some keys is one index range scan per key (`device_id = $1 AND key = ANY($2) AND ts
//   BETWEEN`), and per-interval min/max/avg/count groups the rows of that scan by
//   `ts - ts % interval` without a sort of the whole device. No primary key: a surrogate id would be
//   a second index to maintain on every insert for no query that uses it.
// - "Latest per key" never scans history: `telemetry_latest` holds one row per (device, key),
//   upserted in the same transaction as the rows (only when the new ts is not older), so reading it
//   costs as many rows as the device has keys.
// - Times are epoch milliseconds in bigint: the wire format, and bucketing is integer arithmetic.
// - A value lands in one of three typed columns (num, str, bool); JSON null leaves all three null.
//   Aggregates use `num` only.
// - Aggregates over long ranges never read every reading: `telemetry_hourly` keeps, per (device, key,
//   hour), the count of readings and the count, sum, min and max of numeric ones, advanced in the same
//   statement as the rows. An interval that is a whole number of hours reads whole hours from it and
//   only the partial hours at the range's edges from `telemetry` (a year at 1 d: 8,760 rows per key
//   instead of every reading). Shorter intervals read `telemetry` through the index, one page's time
//   window at a time.

import { bigint, boolean, doublePrecision, index, pgTable, primaryKey, text } from 'drizzle-orm/pg-core'

export const HOUR_MS = 3_600_000

// one reading: which device and key, when, and its value in one of three typed columns
function readingColumns () {
  return {
    deviceId: text('device_id').notNull(),
    key: text('key').notNull(),
    ts: bigint('ts', { mode: 'number' }).notNull(),
    num: doublePrecision('num'),
    str: text('str'),
    bool: boolean('bool'),
  }
}

export const telemetry = pgTable('telemetry', readingColumns(), t => [
  index('telemetry_device_key_ts_idx').on(t.deviceId, t.key, t.ts),
])

export const telemetryLatest = pgTable('telemetry_latest', readingColumns(), t => [
  primaryKey({ columns: [t.deviceId, t.key] }),
])

export const telemetryHourly = pgTable('telemetry_hourly', {
  deviceId: text('device_id').notNull(),
  key: text('key').notNull(),
  hour: bigint('hour', { mode: 'number' }).notNull(), // start of the hour, epoch ms
  count: bigint('count', { mode: 'number' }).notNull(), // readings of any type
  numCount: bigint('num_count', { mode: 'number' }).notNull(), // numeric readings
  sum: doublePrecision('sum'), // null while the hour has no numeric reading
  min: doublePrecision('min'),
  max: doublePrecision('max'),
}, t => [
  primaryKey({ columns: [t.deviceId, t.key, t.hour] }),
])
