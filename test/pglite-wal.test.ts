// The embedded database's write-ahead log: PGlite has no checkpointer process, so Roost checkpoints it
// (db/maintenance.ts) to keep pg_wal from growing for as long as it runs, and starts it with
// wal_init_zero off so a new WAL segment does not stop the event loop while 16 MiB of zeros are written.

import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { openDatabase, type Database } from '../db/open.ts'
import { WalCheckpointer } from '../db/maintenance.ts'
import { createLogger } from '../log.ts'
import { freshDataDir } from './harness.ts'

const MIB = 1024 * 1024
const SEGMENT_BYTES = 16 * MIB
// WAL written by each test that fills it: five segments' worth
const FILL_BYTES = 5 * SEGMENT_BYTES
// rows of about 1 KiB per statement: WAL grows by a little over that per row
const ROWS_PER_BATCH = 2000

const opened: Array<{ db: Database, dir: string }> = []
afterAll(async () => {
  for (const { db, dir } of opened) {
    await db.close()
    rmSync(dir, { recursive: true, force: true })
  }
})

async function open (): Promise<{ db: Database, walDir: string }> {
  const dir = freshDataDir()
  const db = await openDatabase({ url: undefined, dataDir: dir })
  opened.push({ db, dir })
  await db.query('CREATE TABLE wal_filler (id bigserial PRIMARY KEY, body text NOT NULL)')
  return { db, walDir: join(dir, 'pglite', 'pg_wal') }
}

function segments (walDir: string): number {
  return readdirSync(walDir).filter(f => /^[0-9A-F]{24}$/.test(f)).length
}

async function walLsn (db: Database): Promise<string> {
  const [row] = await db.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')
  return row?.lsn as string
}

async function walSince (db: Database, lsn: string): Promise<number> {
  const [row] = await db.query<{ d: string | number }>('SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn) AS d', [lsn])
  return Number(row?.d)
}

async function lastCheckpoint (db: Database): Promise<string> {
  const [row] = await db.query<{ lsn: string }>('SELECT checkpoint_lsn::text AS lsn FROM pg_control_checkpoint()')
  return row?.lsn as string
}

/** Writes at least `bytes` of WAL, calling `between` after every statement. */
async function fillWal (db: Database, bytes: number, between: () => Promise<unknown> = async () => {}): Promise<void> {
  const start = await walLsn(db)
  while (await walSince(db, start) < bytes) {
    await db.query(`INSERT INTO wal_filler (body) SELECT repeat(md5(i::text), 32) FROM generate_series(1, ${ROWS_PER_BATCH}) AS i`)
    await between()
  }
}

describe('PGlite write-ahead log', () => {
  it('starts with wal_init_zero off and Roost\'s search path', async () => {
    const { db } = await open()
    const [row] = await db.query<{ zero: string, path: string }>("SELECT current_setting('wal_init_zero') AS zero, current_setting('search_path') AS path")
    expect(row).toEqual({ zero: 'off', path: 'public' })
  })

  it('without checkpoints pg_wal grows with every segment written; with the checkpointer it stays bounded', async () => {
    const log = createLogger('silent')
    const bare = await open()
    const before = segments(bare.walDir)
    await fillWal(bare.db, FILL_BYTES)
    const grown = segments(bare.walDir)
    // the control: nothing recycles segments while PGlite runs
    expect(grown - before).toBeGreaterThanOrEqual(4)

    const kept = await open()
    const checkpointer = new WalCheckpointer(kept.db, log, { walBytes: SEGMENT_BYTES, everyMs: Number.POSITIVE_INFINITY, now: Date.now })
    expect(await checkpointer.checkIfDue()).toBe(false) // the first call notes where the WAL is
    let checkpoints = 0
    let most = segments(kept.walDir)
    await fillWal(kept.db, FILL_BYTES, async () => {
      if (await checkpointer.checkIfDue()) checkpoints++
      most = Math.max(most, segments(kept.walDir))
    })
    expect(checkpoints).toBeGreaterThanOrEqual(4)
    expect(most).toBeLessThan(grown)
    expect(most).toBeLessThanOrEqual(4)
    // the data is all there
    const [count] = await kept.db.query<{ n: number }>('SELECT count(*)::int AS n FROM wal_filler')
    const [bareCount] = await bare.db.query<{ n: number }>('SELECT count(*)::int AS n FROM wal_filler')
    expect(count?.n).toBeGreaterThan(0)
    expect(Math.abs((count?.n ?? 0) - (bareCount?.n ?? 0))).toBeLessThanOrEqual(ROWS_PER_BATCH)
  })

  it('checkpoints after its interval when WAL was written, and not when none was', async () => {
    const { db } = await open()
    let now = 1_000_000
    const checkpointer = new WalCheckpointer(db, createLogger('silent'), { walBytes: 1024 * MIB, everyMs: 60_000, now: () => now })
    await checkpointer.checkIfDue()
    await db.query("INSERT INTO wal_filler (body) VALUES ('one row')")
    now += 59_000
    expect(await checkpointer.checkIfDue()).toBe(false) // some WAL, but too soon and too little
    const at = await lastCheckpoint(db)
    now += 2_000
    expect(await checkpointer.checkIfDue()).toBe(true)
    const after = await lastCheckpoint(db)
    expect(after).not.toBe(at)
    now += 120_000
    expect(await checkpointer.checkIfDue()).toBe(false) // nothing written since
    expect(await lastCheckpoint(db)).toBe(after)
  })
})
