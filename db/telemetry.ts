// Telemetry reads and writes: the batch insert used by ingest, latest values, raw ranges and aggregates.

import type { Database } from './open.ts'
import type { TelemetryScalar } from '../schemas/telemetry.ts'
import { HOUR_MS } from '../schemas/db/telemetry.ts'

export interface StoredRow {
  readonly deviceId: string
  readonly key: string
  readonly ts: number
  readonly value: TelemetryScalar
}

// Latest values and the hourly rollup are grouped here, in JavaScript, before they reach the database:
// the statements then only upsert one row per (device, key) and per (device, key, hour) of the batch,
// instead of sorting and grouping every row in SQL. Parameters are arrays whatever the batch size
// (unnest), so statement texts are constant and never hit the 65535-parameter limit.
const UPSERT_ROLLUP = `
  INSERT INTO telemetry_hourly AS h (device_id, key, hour, count, num_count, sum, min, max)
  SELECT * FROM unnest($7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::float8[], $13::float8[], $14::float8[])
  ON CONFLICT (device_id, key, hour) DO UPDATE SET
    count = h.count + excluded.count,
    num_count = h.num_count + excluded.num_count,
    -- sum is null while an hour has no numeric reading; LEAST/GREATEST already skip nulls
    sum = CASE WHEN h.sum IS NULL THEN excluded.sum WHEN excluded.sum IS NULL THEN h.sum ELSE h.sum + excluded.sum END,
    min = LEAST(h.min, excluded.min),
    max = GREATEST(h.max, excluded.max)`
const UPSERT_LATEST = `
  INSERT INTO telemetry_latest AS l (device_id, key, ts, num, str, bool)
  SELECT * FROM unnest($15::text[], $16::text[], $17::int8[], $18::float8[], $19::text[], $20::bool[])
  ON CONFLICT (device_id, key) DO UPDATE
    SET ts = excluded.ts, num = excluded.num, str = excluded.str, bool = excluded.bool
    WHERE excluded.ts >= l.ts`

// Postgres server: one statement stores the rows and advances rollup and latest, atomic without a
// BEGIN/COMMIT round trip. The groups arrive sorted, so concurrent batches lock rows in one order.
const INSERT_SQL = `
WITH stored AS (
  INSERT INTO telemetry (device_id, key, ts, num, str, bool)
  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[], $5::text[], $6::bool[])
), hourly AS (${UPSERT_ROLLUP}
)${UPSERT_LATEST}`

// Embedded PGlite: COPY the rows, then the two upserts, in one transaction (parameters renumbered from $1).
const COPY_SQL = "COPY telemetry (device_id, key, ts, num, str, bool) FROM '/dev/blob'"
const renumber = (sql: string, by: number): string => sql.replace(/\$(\d+)/g, (_m, n: string) => `$${Number(n) - by}`)
const UPSERT_ROLLUP_ALONE = renumber(UPSERT_ROLLUP, 6)
const UPSERT_LATEST_ALONE = renumber(UPSERT_LATEST, 14)

// booleans travel as 't'/'f': postgres.js types an array whose first element is a boolean as a scalar
// boolean, which the ::bool[] cast then refuses; text converts on both drivers
interface Columns { ids: string[], keys: string[], ts: number[], nums: Array<number | null>, strs: Array<string | null>, bools: Array<'t' | 'f' | null> }

function columns (rows: readonly StoredRow[]): Columns {
  const c: Columns = { ids: [], keys: [], ts: [], nums: [], strs: [], bools: [] }
  for (const r of rows) {
    const v = r.value
    c.ids.push(r.deviceId)
    c.keys.push(r.key)
    c.ts.push(r.ts)
    c.nums.push(typeof v === 'number' ? v : null)
    c.strs.push(typeof v === 'string' ? v : null)
    c.bools.push(typeof v === 'boolean' ? (v ? 't' : 'f') : null)
  }
  return c
}

interface HourGroup { deviceId: string, key: string, hour: number, count: number, numCount: number, sum: number | null, min: number | null, max: number | null }

interface KeyGroups { latest: StoredRow, hours: Map<number, HourGroup> }

/** The batch's contribution to each (device, key, hour) of the rollup, and its newest value per (device, key). */
function groups (rows: readonly StoredRow[]): { hours: HourGroup[], latest: StoredRow[] } {
  // nested maps rather than concatenated string keys: no allocation per row on this hot path
  const byDevice = new Map<string, Map<string, KeyGroups>>()
  for (const r of rows) {
    let byKey = byDevice.get(r.deviceId)
    if (byKey === undefined) byDevice.set(r.deviceId, byKey = new Map())
    let k = byKey.get(r.key)
    if (k === undefined) byKey.set(r.key, k = { latest: r, hours: new Map() })
    else if (r.ts >= k.latest.ts) k.latest = r // a later reading of the same ms wins
    const hour = r.ts - (r.ts % HOUR_MS)
    let g = k.hours.get(hour)
    if (g === undefined) k.hours.set(hour, g = { deviceId: r.deviceId, key: r.key, hour, count: 0, numCount: 0, sum: null, min: null, max: null })
    g.count++
    const v = r.value
    if (typeof v === 'number') {
      g.numCount++
      g.sum = g.sum === null ? v : g.sum + v
      g.min = g.min === null || v < g.min ? v : g.min
      g.max = g.max === null || v > g.max ? v : g.max
    }
  }
  // sorted by device, key and hour, so concurrent batches lock rows in one order
  const hours: HourGroup[] = []
  const latest: StoredRow[] = []
  for (const deviceId of [...byDevice.keys()].sort()) {
    const byKey = byDevice.get(deviceId) as Map<string, KeyGroups>
    for (const key of [...byKey.keys()].sort()) {
      const k = byKey.get(key) as KeyGroups
      latest.push(k.latest)
      for (const hour of [...k.hours.keys()].sort((x, y) => x - y)) hours.push(k.hours.get(hour) as HourGroup)
    }
  }
  return { hours, latest }
}

function upsertParams (rows: readonly StoredRow[]): unknown[] {
  const { hours, latest } = groups(rows)
  const l = columns(latest)
  return [
    hours.map(h => h.deviceId), hours.map(h => h.key), hours.map(h => h.hour), hours.map(h => h.count),
    hours.map(h => h.numCount), hours.map(h => h.sum), hours.map(h => h.min), hours.map(h => h.max),
    l.ids, l.keys, l.ts, l.nums, l.strs, l.bools,
  ]
}

// COPY text format: tab-separated, \N for null; backslash, tab, newline and carriage return escaped
function copyText (s: string): string {
  return /[\\\t\n\r]/.test(s) ? s.replace(/[\\\t\n\r]/g, c => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r')) : s
}

function copyRows (rows: readonly StoredRow[]): string {
  let out = ''
  for (const r of rows) {
    const v = r.value
    const num = typeof v === 'number' ? String(v) : '\\N'
    const str = typeof v === 'string' ? copyText(v) : '\\N'
    const bool = typeof v === 'boolean' ? (v ? 't' : 'f') : '\\N'
    out += `${r.deviceId}\t${copyText(r.key)}\t${r.ts}\t${num}\t${str}\t${bool}\n`
  }
  return out
}

export async function insertTelemetry (db: Database, rows: readonly StoredRow[]): Promise<void> {
  if (rows.length === 0) return
  const upserts = upsertParams(rows)
  if (db.copyThen !== undefined) {
    await db.copyThen(COPY_SQL, copyRows(rows), [[UPSERT_ROLLUP_ALONE, upserts.slice(0, 8)], [UPSERT_LATEST_ALONE, upserts.slice(8)]])
    return
  }
  const c = columns(rows)
  await db.query(INSERT_SQL, [c.ids, c.keys, c.ts, c.nums, c.strs, c.bools, ...upserts])
}

interface ValueColumns { num: number | null, str: string | null, bool: boolean | null }

function valueOf (r: ValueColumns): TelemetryScalar {
  if (r.num !== null) return Number(r.num)
  if (r.str !== null) return r.str
  if (r.bool !== null) return r.bool
  return null
}

export interface LatestValue { readonly key: string, readonly ts: number, readonly value: TelemetryScalar }

export async function latestTelemetry (db: Database, deviceId: string, keys?: readonly string[]): Promise<LatestValue[]> {
  const rows = keys === undefined
    ? await db.query<ValueColumns & { key: string, ts: number }>(
      'SELECT key, ts, num, str, bool FROM telemetry_latest WHERE device_id = $1 ORDER BY key', [deviceId])
    : await db.query<ValueColumns & { key: string, ts: number }>(
      'SELECT key, ts, num, str, bool FROM telemetry_latest WHERE device_id = $1 AND key = ANY($2::text[]) ORDER BY key', [deviceId, keys])
  return rows.map(r => ({ key: r.key, ts: Number(r.ts), value: valueOf(r) }))
}

async function deviceKeys (db: Database, deviceId: string): Promise<string[]> {
  const rows = await db.query<{ key: string }>('SELECT key FROM telemetry_latest WHERE device_id = $1 ORDER BY key', [deviceId])
  return rows.map(r => r.key)
}

// A page position: the (ts, key) of the last row returned and how many rows with exactly that
// (ts, key) were returned, since two readings of one key may share a millisecond.
export interface RangeCursor { readonly ts: number, readonly key: string, readonly n: number }

export interface RangeQuery {
  readonly deviceId: string
  readonly from: number
  readonly to: number
  readonly keys: readonly string[] | undefined
  readonly limit: number
  readonly after: RangeCursor | undefined
}

export interface RangePage { readonly rows: LatestValue[], readonly next: RangeCursor | undefined }

// A total order of the readings of one (key, ts), identical readings aside; str in byte order, like keys.
const VALUE_ORDER = 'num, str COLLATE "C", bool'

// Keys sort by their UTF-8 bytes (COLLATE "C") in SQL and here alike, whatever the database's collation:
// the cursor logic decides in JS which keys sort after the cursor's.
function compareKeys (a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b))
}

/**
 * Raw rows in time order (then key). Each key is read with its own index range scan, already in ts
 * order and cut at `limit`, so the cost follows `limit`, not the device's history; the few rows they
 * return are then sorted together.
 */
export async function telemetryRange (db: Database, q: RangeQuery): Promise<RangePage> {
  const keys = q.keys ?? await deviceKeys(db, q.deviceId)
  if (keys.length === 0) return { rows: [], next: undefined }
  const params: unknown[] = [q.deviceId, q.from, q.to, q.limit + (q.after?.n ?? 0)]
  // every number is cast: a parameter's type is inferred where it first appears, and inside GREATEST()
  // that is text (or int4 next to `- 1`), which breaks the comparison with the bigint ts
  const parts = keys.map(key => {
    params.push(key)
    const k = `$${params.length}`
    let lower = 'ts >= $2::int8'
    if (q.after !== undefined) {
      // rows at the cursor's ts come after it only for keys sorting after the cursor's key (or equal, minus n)
      params.push(q.after.ts)
      const t = `$${params.length}::int8`
      lower = compareKeys(key, q.after.key) >= 0 ? `ts >= GREATEST($2::int8, ${t})` : `ts > GREATEST($2::int8 - 1, ${t})`
    }
    // WITH TIES: readings of one key may share a millisecond, and the cut must not fall inside such a
    // group, or two queries could keep different members of it; the index scan needs no sort for this
    return `SELECT key, ts, num, str, bool FROM telemetry WHERE device_id = $1 AND key = ${k} AND ${lower} AND ts < $3::int8 ORDER BY ts FETCH FIRST ($4::int8) ROWS WITH TIES`
  })
  // Within a group of one (ts, key) the values give the order, so every page agrees on which members
  // the cursor's `n` skips (identical readings are interchangeable).
  const sql = `SELECT * FROM (${parts.map(p => `(${p})`).join(' UNION ALL ')}) AS r ORDER BY ts, key COLLATE "C", ${VALUE_ORDER} LIMIT $4::int8`
  let rows = await db.query<ValueColumns & { key: string, ts: number }>(sql, params)
  if (q.after !== undefined) {
    // drop the rows the previous page already returned at exactly the cursor's (ts, key)
    let skip = q.after.n
    rows = rows.filter(r => !(Number(r.ts) === q.after!.ts && r.key === q.after!.key && skip-- > 0))
  }
  rows = rows.slice(0, q.limit)
  const out = rows.map(r => ({ key: r.key, ts: Number(r.ts), value: valueOf(r) }))
  let next: RangeCursor | undefined
  const last = out[out.length - 1]
  if (out.length === q.limit && last !== undefined) {
    let n = 0
    for (let i = out.length - 1; i >= 0 && out[i]!.ts === last.ts && out[i]!.key === last.key; i--) n++
    if (q.after !== undefined && q.after.ts === last.ts && q.after.key === last.key) n += q.after.n
    next = { ts: last.ts, key: last.key, n }
  }
  return { rows: out, next }
}

export interface Bucket {
  readonly key: string
  readonly ts: number // start of the interval, epoch ms
  readonly min: number | null
  readonly max: number | null
  readonly avg: number | null
  readonly count: number
}

export interface AggregateQuery {
  readonly deviceId: string
  readonly from: number
  readonly to: number
  readonly keys: readonly string[] | undefined
  readonly interval: number
  readonly limit: number // intervals per page
  readonly afterTs: number | undefined // the last bucket start of the previous page
}

type BucketRow = { key: string, bucket: number, min: number | null, max: number | null, avg: number | null, count: number }

/**
 * Per-interval min/max/avg over numeric values and count of readings, buckets aligned to the epoch.
 * A page is a time window of `limit` intervals, so it reads only that window; empty windows in sparse
 * data are skipped to the next reading rather than returned as empty pages.
 */
export async function telemetryAggregate (db: Database, q: AggregateQuery): Promise<{ buckets: Bucket[], nextTs: number | undefined }> {
  const keys = q.keys ?? await deviceKeys(db, q.deviceId)
  if (keys.length === 0) return { buckets: [], nextTs: undefined }
  const bucketOf = (ts: number): number => ts - (ts % q.interval)
  let start = q.afterTs === undefined ? q.from : Math.max(q.from, q.afterTs + q.interval)
  for (;;) {
    if (start >= q.to) return { buckets: [], nextTs: undefined }
    const end = Math.min(q.to, bucketOf(start) + q.limit * q.interval)
    const rows = await aggregateWindow(db, q.deviceId, keys, start, end, q.interval)
    const nextTs = end < q.to ? end - q.interval : undefined
    if (rows.length > 0 || nextTs === undefined) return { buckets: rows.map(toBucket), nextTs }
    const next = await nextReading(db, q.deviceId, keys, end, q.to)
    if (next === undefined) return { buckets: [], nextTs: undefined }
    start = bucketOf(next)
  }
}

function toBucket (r: BucketRow): Bucket {
  return {
    key: r.key,
    ts: Number(r.bucket),
    min: r.min === null ? null : Number(r.min),
    max: r.max === null ? null : Number(r.max),
    avg: r.avg === null ? null : Number(r.avg),
    count: Number(r.count),
  }
}

async function aggregateWindow (db: Database, deviceId: string, keys: readonly string[], from: number, to: number, interval: number): Promise<BucketRow[]> {
  const firstHour = Math.ceil(from / HOUR_MS) * HOUR_MS
  const lastHour = Math.floor(to / HOUR_MS) * HOUR_MS
  if (interval % HOUR_MS !== 0 || firstHour >= lastHour) {
    return await db.query<BucketRow>(
      `SELECT key, ts - ts % $5::int8 AS bucket, min(num) AS min, max(num) AS max, avg(num) AS avg, count(*) AS count
       FROM telemetry WHERE device_id = $1 AND key = ANY($2::text[]) AND ts >= $3::int8 AND ts < $4::int8
       GROUP BY key, bucket ORDER BY bucket, key COLLATE "C"`,
      [deviceId, keys, from, to, interval])
  }
  // whole hours from the rollup; the partial hours at either edge from the readings themselves
  return await db.query<BucketRow>(
    `SELECT key, bucket, min(mn) AS min, max(mx) AS max, sum(sm) / NULLIF(sum(nc), 0) AS avg, sum(cnt) AS count FROM (
       SELECT key, hour - hour % $5::int8 AS bucket, min AS mn, max AS mx, sum AS sm, num_count AS nc, count AS cnt
       FROM telemetry_hourly WHERE device_id = $1 AND key = ANY($2::text[]) AND hour >= $6::int8 AND hour < $7::int8
       UNION ALL
       SELECT key, ts - ts % $5::int8, num, num, num, CASE WHEN num IS NULL THEN 0 ELSE 1 END, 1
       FROM telemetry WHERE device_id = $1 AND key = ANY($2::text[])
         AND ((ts >= $3::int8 AND ts < $6::int8) OR (ts >= $7::int8 AND ts < $4::int8))
     ) AS parts GROUP BY key, bucket ORDER BY bucket, key COLLATE "C"`,
    [deviceId, keys, from, to, interval, firstHour, lastHour])
}

/** The time of the first reading of any of `keys` in [from, to): one index probe per key. */
async function nextReading (db: Database, deviceId: string, keys: readonly string[], from: number, to: number): Promise<number | undefined> {
  const rows = await db.query<{ ts: number | null }>(
    `SELECT min((SELECT ts FROM telemetry t WHERE t.device_id = $1 AND t.key = k.key AND t.ts >= $3::int8 AND t.ts < $4::int8 ORDER BY ts LIMIT 1)) AS ts
     FROM unnest($2::text[]) AS k(key)`,
    [deviceId, keys, from, to])
  const ts = rows[0]?.ts
  return ts === null || ts === undefined ? undefined : Number(ts)
}
