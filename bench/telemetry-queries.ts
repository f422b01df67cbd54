// Telemetry query benchmark: one device with a million readings (4 keys × 250,000 over a year) in PGlite
// and in a Postgres server; times latest, raw range pages and aggregates, prints a table and writes
// bench/results/telemetry-queries.json. Not a test: `npx tsx bench/telemetry-queries.ts`.
//
// Options (environment): BENCH_ROWS_PER_KEY (default 250000), BENCH_BACKENDS (default "pglite,postgres"),
// BENCH_RUNS (timed runs per query, default 5), BENCH_EXPLAIN=1 prints EXPLAIN ANALYZE of the slow ones,
// Aggregates whose interval is whole hours read the telemetry_hourly rollup (see schemas/db/telemetry.ts).

import { existsSync, mkdirSync, mkdtempSync, cpSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openDatabase, type Database } from '../db/open.ts'
import { insertTelemetry, latestTelemetry, telemetryAggregate, telemetryRange, type RangeCursor, type StoredRow } from '../db/telemetry.ts'
import { pgliteTemplateDir } from '../test/template.ts'
import { postgresUnavailable, startPostgres, type PostgresServer } from '../test/postgres.ts'
import { recording } from '../test/recording-db.ts'

const ROWS_PER_KEY = Number(process.env.BENCH_ROWS_PER_KEY ?? 250_000)
const BACKENDS = (process.env.BENCH_BACKENDS ?? 'pglite,postgres').split(',')
const RUNS = Number(process.env.BENCH_RUNS ?? 5)
const EXPLAIN = process.env.BENCH_EXPLAIN === '1'

const DEVICE = 'bench-1'
const KEYS = ['temp', 'hum', 'volt', 'rssi']
const YEAR_START = Date.UTC(2025, 0, 1)
const YEAR_MS = 365 * 24 * 3600 * 1000
const DAY_MS = 24 * 3600 * 1000
const HOUR_MS = 3600 * 1000
// readings of one key are evenly spaced over the year: 250,000 a year is one every 126 s
const STEP_MS = Math.floor(YEAR_MS / ROWS_PER_KEY)
// large enough to amortise a statement, small enough that the six parameter arrays stay a few MB
const LOAD_BATCH_ROWS = 20_000
// a query slower than this gets its plan printed and a note in the results
const SLOW_MS = 1000

const RESULTS_DIR = fileURLToPath(new URL('./results', import.meta.url))

interface Timing {
  readonly backend: string
  readonly query: string
  readonly rows: number // rows or buckets returned
  readonly firstMs: number // the first run, with whatever the caches held
  readonly medianMs: number
  readonly minMs: number
  readonly rate?: number // rows/s, for the ingest lines of the rollup experiment
}

function valueOf (key: string, i: number): number | string {
  // mostly numbers, with a status string now and then that aggregates count but do not average
  if (i % 5000 === 4999) return 'sensor error'
  switch (key) {
    case 'temp': return 20 + 5 * Math.sin(i / 700) + (i % 7) / 10
    case 'hum': return 40 + (i % 30)
    case 'volt': return 3.3 - (i % 100) / 1000
    default: return -40 - (i % 50)
  }
}

async function load (db: Database): Promise<number> {
  const start = performance.now()
  let batch: StoredRow[] = []
  for (let i = 0; i < ROWS_PER_KEY; i++) {
    const ts = YEAR_START + i * STEP_MS
    for (const key of KEYS) batch.push({ deviceId: DEVICE, key, ts, value: valueOf(key, i) })
    if (batch.length >= LOAD_BATCH_ROWS) {
      await insertTelemetry(db, batch)
      batch = []
    }
  }
  if (batch.length > 0) await insertTelemetry(db, batch)
  return (performance.now() - start) / 1000
}

async function time<T> (backend: string, query: string, run: () => Promise<T>, count: (r: T) => number): Promise<Timing> {
  const ms: number[] = []
  let rows = 0
  for (let i = 0; i < RUNS + 1; i++) {
    const start = performance.now()
    const r = await run()
    ms.push(performance.now() - start)
    rows = count(r)
  }
  const timed = ms.slice(1).sort((a, b) => a - b)
  const t = { backend, query, rows, firstMs: ms[0]!, medianMs: timed[Math.floor(timed.length / 2)]!, minMs: timed[0]! }
  process.stdout.write(`  ${query.padEnd(44)} ${fmt(t.medianMs).padStart(9)} ms  (${rows} rows)\n`)
  return t
}

function fmt (ms: number): string {
  return ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)
}

/** Runs the statements of one library call under EXPLAIN ANALYZE and prints the plans. */
async function explainAnalyze (db: Database, label: string, call: (db: Database) => Promise<unknown>): Promise<void> {
  const { db: recorder, statements } = recording(db)
  await call(recorder)
  const last = statements[statements.length - 1]
  if (last === undefined) return
  const plan = await db.query<{ 'QUERY PLAN': string }>('EXPLAIN (ANALYZE, BUFFERS) ' + last.text, last.params)
  process.stdout.write(`\n--- EXPLAIN ANALYZE ${db.kind}: ${label}\n${plan.map(r => r['QUERY PLAN']).join('\n')}\n\n`)
}

async function queries (backend: string, db: Database): Promise<Timing[]> {
  const out: Timing[] = []
  const end = YEAR_START + YEAR_MS
  const mid = YEAR_START + YEAR_MS / 2
  const range = (keys: string[] | undefined, limit: number, after: RangeCursor | undefined, from = YEAR_START) =>
    telemetryRange(db, { deviceId: DEVICE, from, to: end, keys, limit, after })
  // a cursor from paging half-way through the year, as a client that pages from the start would hold
  const deep = (await range(undefined, 1000, undefined, mid)).next
  const deepOneKey = (await range(['temp'], 1000, undefined, mid)).next
  const agg = (from: number, to: number, interval: number, limit: number, keys?: string[]) =>
    telemetryAggregate(db, { deviceId: DEVICE, from, to, keys, interval, limit, afterTs: undefined })

  out.push(await time(backend, 'latest (4 keys)', () => latestTelemetry(db, DEVICE), r => r.length))
  out.push(await time(backend, 'range first page, 4 keys, limit 1000', () => range(undefined, 1000, undefined), r => r.rows.length))
  out.push(await time(backend, 'range deep page (cursor at mid-year), 4 keys', () => range(undefined, 1000, deep), r => r.rows.length))
  out.push(await time(backend, 'range first page, 1 key, limit 1000', () => range(['temp'], 1000, undefined), r => r.rows.length))
  out.push(await time(backend, 'range deep page (cursor at mid-year), 1 key', () => range(['temp'], 1000, deepOneKey), r => r.rows.length))
  out.push(await time(backend, 'range first page, 4 keys, limit 10000', () => range(undefined, 10_000, undefined), r => r.rows.length))
  out.push(await time(backend, 'aggregate year, 1 h, all buckets (4 keys)', () => agg(YEAR_START, end, HOUR_MS, 100_000), r => r.buckets.length))
  out.push(await time(backend, 'aggregate year, 1 h, first page of 1000', () => agg(YEAR_START, end, HOUR_MS, 1000), r => r.buckets.length))
  out.push(await time(backend, 'aggregate year, 1 d (4 keys)', () => agg(YEAR_START, end, DAY_MS, 10_000), r => r.buckets.length))
  out.push(await time(backend, 'aggregate year, 1 d, 1 key', () => agg(YEAR_START, end, DAY_MS, 10_000, ['temp']), r => r.buckets.length))
  out.push(await time(backend, 'aggregate one day, 1 h (4 keys)', () => agg(mid, mid + DAY_MS, HOUR_MS, 1000), r => r.buckets.length))
  out.push(await time(backend, 'aggregate one day, 1 d (4 keys)', () => agg(mid, mid + DAY_MS, DAY_MS, 1000), r => r.buckets.length))

  if (EXPLAIN || out.some(t => t.medianMs > SLOW_MS)) {
    await explainAnalyze(db, 'aggregate year, 1 h, all buckets', d => telemetryAggregate(d, { deviceId: DEVICE, from: YEAR_START, to: end, keys: undefined, interval: HOUR_MS, limit: 100_000, afterTs: undefined }))
    await explainAnalyze(db, 'aggregate year, 1 h, first page of 1000', d => telemetryAggregate(d, { deviceId: DEVICE, from: YEAR_START, to: end, keys: undefined, interval: HOUR_MS, limit: 1000, afterTs: undefined }))
    await explainAnalyze(db, 'range deep page, 4 keys', d => telemetryRange(d, { deviceId: DEVICE, from: YEAR_START, to: end, keys: undefined, limit: 1000, after: deep }))
  }
  return out
}

async function bench (backend: string, db: Database): Promise<{ loadSeconds: number, analyzedSeconds: number, timings: Timing[] }> {
  process.stdout.write(`\n${backend}: loading ${KEYS.length} × ${ROWS_PER_KEY.toLocaleString('en')} rows for ${DEVICE} …\n`)
  const loadSeconds = await load(db)
  process.stdout.write(`  loaded in ${loadSeconds.toFixed(1)} s (${Math.round(KEYS.length * ROWS_PER_KEY / loadSeconds).toLocaleString('en')} rows/s)\n`)
  // as loaded: the planner has no statistics yet (PGlite runs no autovacuum, so in production it never will)
  process.stdout.write(`${backend}, as loaded (no ANALYZE):\n`)
  const timings = await queries(`${backend}, as loaded`, db)
  const start = performance.now()
  await db.query('VACUUM ANALYZE telemetry')
  const analyzedSeconds = (performance.now() - start) / 1000
  process.stdout.write(`${backend}, after VACUUM ANALYZE (${analyzedSeconds.toFixed(1)} s):\n`)
  timings.push(...await queries(`${backend}, analyzed`, db))
  return { loadSeconds, analyzedSeconds, timings }
}

function pgliteDataDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'roost-bench-pglite-'))
  // the migrated template of the test suite saves PGlite's initdb when it exists
  if (existsSync(pgliteTemplateDir())) cpSync(pgliteTemplateDir(), dir, { recursive: true })
  return dir
}

async function main (): Promise<void> {
  const results: Record<string, { loadSeconds: number, analyzedSeconds: number }> = {}
  const timings: Timing[] = []
  const skipped: Record<string, string> = {}

  if (BACKENDS.includes('pglite')) {
    const dir = pgliteDataDir()
    const db = await openDatabase({ url: undefined, dataDir: dir })
    try {
      const r = await bench('pglite', db)
      results.pglite = { loadSeconds: r.loadSeconds, analyzedSeconds: r.analyzedSeconds }
      timings.push(...r.timings)
    } finally {
      await db.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }

  if (BACKENDS.includes('postgres')) {
    const why = postgresUnavailable()
    if (why !== undefined) {
      skipped.postgres = why
      process.stdout.write(`\npostgres skipped: ${why}\n`)
    } else {
      // settings of a small real server rather than the test default of 64 MB shared buffers
      const server: PostgresServer = await startPostgres({ settings: { shared_buffers: "'256MB'", work_mem: "'16MB'" } })
      const dir = mkdtempSync(join(tmpdir(), 'roost-bench-pg-'))
      const db = await openDatabase({ url: server.url, dataDir: dir })
      try {
        const r = await bench('postgres', db)
        results.postgres = { loadSeconds: r.loadSeconds, analyzedSeconds: r.analyzedSeconds }
        timings.push(...r.timings)
      } finally {
        await db.close()
        await server.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    }
  }

  process.stdout.write('\n| backend | query | rows | first ms | median ms | min ms |\n| --- | --- | ---: | ---: | ---: | ---: |\n')
  for (const t of timings) {
    if (t.rate !== undefined) process.stdout.write(`| ${t.backend} | ${t.query} | ${t.rate} rows/s | | | |\n`)
    else process.stdout.write(`| ${t.backend} | ${t.query} | ${t.rows} | ${fmt(t.firstMs)} | ${fmt(t.medianMs)} | ${fmt(t.minMs)} |\n`)
  }
  const slow = timings.filter(t => t.rate === undefined && t.medianMs > SLOW_MS)
  if (slow.length > 0) process.stdout.write(`\nslower than ${SLOW_MS} ms: ${slow.map(t => `${t.backend} / ${t.query}`).join('; ')}\n`)

  mkdirSync(RESULTS_DIR, { recursive: true })
  const file = join(RESULTS_DIR, 'telemetry-queries.json')
  writeFileSync(file, JSON.stringify({
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    dataset: { device: DEVICE, keys: KEYS, rowsPerKey: ROWS_PER_KEY, rows: KEYS.length * ROWS_PER_KEY, stepMs: STEP_MS, from: YEAR_START, to: YEAR_START + YEAR_MS },
    runs: RUNS,
    backends: results,
    skipped,
    timings,
  }, null, 2) + '\n')
  process.stdout.write(`\nwrote ${file}\n`)
}

await main()
