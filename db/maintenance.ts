// Housekeeping that a Postgres server's autovacuum and checkpointer do by themselves and embedded PGlite
// never does: vacuum the tables every telemetry batch updates in place, refresh the planner's statistics,
// and checkpoint so that the write-ahead log is recycled instead of growing for as long as Roost runs.

import type { Logger } from 'pino'
import type { Database } from './open.ts'

// telemetry_latest and telemetry_hourly rows are rewritten by every batch; without VACUUM their dead
// versions pile up and every read walks past them. Ten minutes keeps that small; each run takes
// milliseconds on these compact tables (PGlite runs it on the event loop, so it must stay short).
export const PGLITE_MAINTENANCE_MS = 10 * 60 * 1000

const STATEMENTS = [
  'VACUUM (ANALYZE) telemetry_latest',
  'VACUUM (ANALYZE) telemetry_hourly',
  'VACUUM (ANALYZE) devices',
  // the big append-only table only needs statistics (ANALYZE samples; it does not read every row)
  'ANALYZE telemetry',
]

export async function maintain (db: Database, log: Logger): Promise<void> {
  const start = Date.now()
  for (const statement of STATEMENTS) await db.query(statement)
  log.debug({ ms: Date.now() - start }, 'database maintenance done')
}

// PGlite runs Postgres as a single process, without the checkpointer that a server starts: no checkpoint
// ever happens while it runs, so pg_wal grew by a 16 MiB segment per 16 MiB written (500 MiB after 1.5M
// small rows) until a restart. Roost checkpoints as a server would: after this much WAL (a server's
// max_wal_size is a soft limit of the same kind), or after PGLITE_CHECKPOINT_MS with any WAL at all. A
// checkpoint writes the dirty pages on the event loop: about 30–40 ms per 25 MiB of WAL, measured.
export const PGLITE_CHECKPOINT_WAL_BYTES = 64 * 1024 * 1024
export const PGLITE_CHECKPOINT_MS = 5 * 60 * 1000
// how often the WAL position is read (one cheap query)
const CHECKPOINT_POLL_MS = 10_000

/** Checkpoints a PGlite database when enough WAL or time has gone by since the last one. */
export class WalCheckpointer {
  private lastLsn: string | undefined
  private lastAt: number

  constructor (
    private readonly db: Database,
    private readonly log: Logger,
    private readonly opts: { walBytes: number, everyMs: number, now: () => number } = { walBytes: PGLITE_CHECKPOINT_WAL_BYTES, everyMs: PGLITE_CHECKPOINT_MS, now: Date.now },
  ) {
    this.lastAt = opts.now()
  }

  /** Checkpoints if due; says whether it did. The first call only notes where the WAL is. */
  async checkIfDue (): Promise<boolean> {
    const [row] = await this.db.query<{ lsn: string, since: string | number | null }>(
      'SELECT pg_current_wal_insert_lsn()::text AS lsn, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn) AS since',
      [this.lastLsn ?? '0/0'])
    if (row === undefined) return false
    if (this.lastLsn === undefined) { this.lastLsn = row.lsn; return false }
    const since = Number(row.since ?? 0)
    const elapsed = this.opts.now() - this.lastAt
    if (since < this.opts.walBytes && (since === 0 || elapsed < this.opts.everyMs)) return false
    const start = performance.now()
    await this.db.query('CHECKPOINT')
    const [after] = await this.db.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')
    this.lastLsn = after?.lsn ?? row.lsn
    this.lastAt = this.opts.now()
    this.log.debug({ walBytes: since, ms: Math.round(performance.now() - start) }, 'database checkpoint done')
    return true
  }
}

/** Runs maintain() and the checkpointer periodically for PGlite; a Postgres server has its own. Returns a stop function. */
export function scheduleMaintenance (db: Database, log: Logger, everyMs = PGLITE_MAINTENANCE_MS): () => void {
  if (db.kind !== 'pglite') return () => {}
  const checkpointer = new WalCheckpointer(db, log)
  let stopped = false
  let checking = false
  const check = (): void => {
    if (checking) return
    checking = true
    checkpointer.checkIfDue()
      // a reading cut short by the database closing at shutdown is not a failure
      .catch((err: unknown) => { if (!stopped) log.warn({ err }, 'database checkpoint failed') })
      .finally(() => { checking = false })
  }
  const timers = [
    setInterval(() => {
      maintain(db, log).catch((err: unknown) => log.warn({ err }, 'database maintenance failed'))
    }, everyMs),
    setInterval(check, CHECKPOINT_POLL_MS),
  ]
  for (const t of timers) t.unref()
  check() // the first reading, so the first checkpoint counts the WAL written from start
  return () => { stopped = true; for (const t of timers) clearInterval(t) }
}
