// Where the migrated PGlite template lives: keyed by the migrations, so a new migration builds a new one.
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export function pgliteTemplateDir (): string {
  const migrations = fileURLToPath(new URL('../db/migrations', import.meta.url))
  const hash = createHash('sha256')
  for (const f of readdirSync(migrations).filter(f => f.endsWith('.sql')).sort()) hash.update(readFileSync(join(migrations, f)))
  return join(tmpdir(), 'roost-test-pglite-' + hash.digest('hex').slice(0, 12))
}
