// A database that remembers each raw statement it was asked to run: for tests and benchmarks that look at
// the SQL (and its plan) a library call produces.

import type { Database } from '../db/open.ts'

export interface Statement { readonly text: string, readonly params: readonly unknown[] }

/** The same database, remembering each statement it was asked to run. */
export function recording (db: Database): { db: Database, statements: Statement[] } {
  const statements: Statement[] = []
  return {
    statements,
    db: {
      kind: db.kind,
      orm: db.orm,
      close: () => db.close(),
      query<T> (text: string, params: readonly unknown[] = []) {
        statements.push({ text, params })
        return db.query<T>(text, params)
      },
    },
  }
}
