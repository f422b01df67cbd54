// Housekeeping that a Postgres server's autovacuum does by itself and embedded PGlite never does: vacuum
// the tables every telemetry batch updates in place, and refresh the planner's statistics.

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

/** Runs maintain() periodically for PGlite; a Postgres server has autovacuum. Returns a stop function. */
export function scheduleMaintenance (db: Database, log: Logger, everyMs = PGLITE_MAINTENANCE_MS): () => void {
  if (db.kind !== 'pglite') return () => {}
  const timer = setInterval(() => {
    maintain(db, log).catch((err: unknown) => log.warn({ err }, 'database maintenance failed'))
  }, everyMs)
  timer.unref()
  return () => clearInterval(timer)
}
