// Runs once before the suite: builds a migrated PGlite data dir that each test copies instead of paying
// PGlite's initdb (several seconds) per test.
import { existsSync, renameSync, rmSync } from 'node:fs'
import { openDatabase } from '../db/open.ts'
import { pgliteTemplateDir } from './template.ts'

export default async function setup (): Promise<void> {
  const dir = pgliteTemplateDir()
  if (existsSync(dir)) return
  const building = dir + '.building-' + process.pid
  rmSync(building, { recursive: true, force: true })
  const db = await openDatabase({ url: undefined, dataDir: building })
  await db.close()
  renameSync(building, dir)
}
