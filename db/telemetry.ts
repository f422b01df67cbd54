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

// One statement stores the rows and moves "latest" and the hourly rollup forward, so a batch is atomic
// without BEGIN/COMMIT round trips. Parameters are six arrays whatever the batch size (unnest), so the
// statement text is constant and the server never hits the 65535-parameter limit.
const INSERT_SQL = `
WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[], $5::text[], $6::bool[])
    WITH ORDINALITY AS t(device_id, key, ts, num, str, bool, ord)
), stored AS (
  INSERT INTO telemetry (device_id, key, ts, num, str, bool)
  SELECT device_id, key, ts, num, str, bool FROM input
), hourly AS (
  INSERT INTO telemetry_hourly AS h (device_id, key, hour, count, num_count, sum, min, max)
  SELECT device_id, key, ts - ts % ${HOUR_MS}, count(*), count(num), sum(num), min(num), max(num)
  FROM input GROUP BY 1, 2, 3
  ON CONFLICT (device_id, key, hour) DO UPDATE SET
    count = h.count + excluded.count,
    num_count = h.num_count + excluded.num_count,
    -- sum is null while an hour has no numeric reading; LEAST/GREATEST already skip nulls
    sum = CASE WHEN h.sum IS NULL THEN excluded.sum WHEN excluded.sum IS NULL THEN h.sum ELSE h.sum + excluded.sum END,
    min = LEAST(h.min, excluded.min),
    max = GREATEST(h.max, excluded.max)
)
INSERT INTO telemetry_latest AS l (device_id, key, ts, num, str, bool)
SELECT DISTINCT ON (device_id, key) device_id, key, ts, num, str, bool
FROM input ORDER BY device_id, key, ts DESC, ord DESC
ON CONFLICT (device_id, key) DO UPDATE
  SET ts = excluded.ts, num = excluded.num, str = excluded.str, bool = excluded.bool
  WHERE excluded.ts >= l.ts`

export async function insertTelemetry (db: Database, rows: readonly StoredRow[]): Promise<void> {
  if (rows.length === 0) return
  const n = rows.length
  const ids = new Array<string>(n)
  const keys = new Array<string>(n)
  const ts = new Array<number>(n)
  const nums = new Array<number | null>(n)
  const strs = new Array<string | null>(n)
  const bools = new Array<boolean | null>(n)
  for (let i = 0; i < n; i++) {
    const r = rows[i] as StoredRow
    ids[i] = r.deviceId
    keys[i] = r.key
    ts[i] = r.ts
    const v = r.value
    nums[i] = typeof v === 'number' ? v : null
    strs[i] = typeof v === 'string' ? v : null
    bools[i] = typeof v === 'boolean' ? v : null
  }
  await db.query(INSERT_SQL, [ids, keys, ts, nums, strs, bools])
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
