// Opens the database: embedded PGlite under the data dir by default, a Postgres server when DATABASE_URL
// is set. Both run the same committed migrations and answer the same Database interface; the contract
// suite in test/db-contract.test.ts runs against each.

import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { PGlite } from '@electric-sql/pglite'
import postgres from 'postgres'
import { preparedQuery } from './pglite-statements.ts'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator'
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js'
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator'
import * as devicesSchema from '../schemas/db/devices.ts'
import * as telemetrySchema from '../schemas/db/telemetry.ts'
import * as stateSchema from '../schemas/db/state.ts'
import * as commandsSchema from '../schemas/db/commands.ts'
import * as webhooksSchema from '../schemas/db/webhooks.ts'
import * as firmwareSchema from '../schemas/db/firmware.ts'
import * as accountsSchema from '../schemas/db/accounts.ts'
import * as voiceSchema from '../schemas/db/voice.ts'
import * as rolloutsSchema from '../schemas/db/rollouts.ts'

export const schema = { ...devicesSchema, ...telemetrySchema, ...stateSchema, ...commandsSchema, ...webhooksSchema, ...firmwareSchema, ...accountsSchema, ...voiceSchema, ...rolloutsSchema }
export type Schema = typeof schema
export type Orm = PgDatabase<PgQueryResultHKT, Schema>

const MIGRATIONS = fileURLToPath(new URL('./migrations', import.meta.url))

export interface Database {
  readonly kind: 'pglite' | 'postgres'
  // drizzle for everything that is not a hot path
  readonly orm: Orm
  // one raw statement with positional parameters; used where one hand-written statement beats several.
  // Prepared once per text on both databases (db/pglite-statements.ts; postgres.js by default).
  query<T = Record<string, unknown>>(text: string, params?: readonly unknown[]): Promise<T[]>
  /**
   * Embedded database only: in one transaction, COPY tab-separated `rows` text into `copy` (a
   * `COPY table (columns) FROM '/dev/blob'` statement), then run `then`. COPY is PGlite's fastest way in,
   * and ingest runs on the broker's own thread there. Undefined for a Postgres server.
   */
  readonly copyThen?: (copy: string, rows: string, then: ReadonlyArray<readonly [string, readonly unknown[]]>) => Promise<void>
  close(): Promise<void>
}

export interface DatabaseOptions {
  readonly url: string | undefined
  readonly dataDir: string
  // how many server connections postgres.js may open; ingest needs one, the API a few
  readonly poolSize?: number
}

export async function openDatabase (opts: DatabaseOptions): Promise<Database> {
  const db = opts.url === undefined ? await openPglite(opts.dataDir) : openPostgres(opts.url, opts.poolSize ?? 10)
  try {
    await migrateDatabase(db)
  } catch (err) {
    await db.close().catch(() => {})
    throw err
  }
  return db
}

async function migrateDatabase (db: Database): Promise<void> {
  if (db.kind === 'pglite') await migratePglite(db.orm as Parameters<typeof migratePglite>[0], { migrationsFolder: MIGRATIONS })
  else await migratePostgres(db.orm as Parameters<typeof migratePostgres>[0], { migrationsFolder: MIGRATIONS })
}

// Settings on top of PGlite's own. Postgres fills each new 16 MiB WAL segment with zeros when it creates
// it, which through PGlite's synchronous file system stopped the event loop for 30–140 ms every 16 MiB
// of WAL; off, it writes only the file's last byte. Zero-filling allocates the space up front, so a full
// disk fails the segment's creation instead of a later WAL write; WAL contents and recovery are the same.
const PGLITE_SETTINGS = ['wal_init_zero=off']

async function openPglite (dataDir: string): Promise<Database> {
  const dir = join(dataDir, 'pglite')
  mkdirSync(dir, { recursive: true })
  const client = await PGlite.create({ dataDir: dir, startParams: [...PGlite.defaultStartParams, ...PGLITE_SETTINGS.flatMap(s => ['-c', s])] })
  const orm = drizzlePglite({ client, schema }) as unknown as Orm
  const prepared = preparedQuery(client)
  return {
    kind: 'pglite',
    orm,
    query: async <T>(text: string, params: readonly unknown[] = []) => await prepared<T>(text, params),
    async copyThen (copy: string, rows: string, then: ReadonlyArray<readonly [string, readonly unknown[]]>) {
      await client.transaction(async tx => {
        await tx.query(copy, [], { blob: new Blob([rows]) })
        for (const [text, params] of then) await tx.query(text, params as unknown[])
      })
    },
    async close () {
      if (!client.closed) await client.close()
    },
  }
}

function openPostgres (url: string, poolSize: number): Database {
  const client = postgres(url, {
    max: poolSize,
    onnotice: () => {}, // migrations print NOTICEs for IF NOT EXISTS; they are not problems
    // int8 (epoch ms, counts) comes back as a number: every value Roost stores fits in 2^53
    types: { int8: { to: 20, from: [20], serialize: (x: number) => String(x), parse: (x: string) => Number(x) } },
    transform: { undefined: null },
  })
  const orm = drizzlePostgres({ client, schema }) as unknown as Orm
  return {
    kind: 'postgres',
    orm,
    async query<T> (text: string, params: readonly unknown[] = []) {
      // named and prepared once per connection: postgres.js leaves unsafe() texts unprepared unless asked,
      // and then parses and plans every call (about 0.45 ms of server time for a command insert instead of 0.13)
      return await client.unsafe(text, params as never[], { prepare: true }) as unknown as T[]
    },
    async close () {
      await client.end({ timeout: 5 })
    },
  }
}
