// Printing the benchmark tables and writing the JSON results (one file per run, and latest.json).

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface Table {
  readonly title: string
  readonly columns: readonly string[]
  readonly rows: ReadonlyArray<readonly string[]>
}

export interface BenchReport {
  readonly name: string
  readonly tables: readonly Table[]
  readonly notes: readonly string[]
  // the headline figures, kept in latest.json
  readonly summary: Readonly<Record<string, unknown>>
  // everything measured, every run, for the per-run file
  readonly details: unknown
}

export const RESULTS_DIR = fileURLToPath(new URL('./results', import.meta.url))

export function printTable (t: Table): void {
  const widths = t.columns.map((c, i) => Math.max(c.length, ...t.rows.map(r => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number)).join('  ')
  console.log('\n' + t.title)
  console.log(line(t.columns))
  console.log(widths.map(w => '-'.repeat(w)).join('  '))
  for (const r of t.rows) console.log(line(r))
}

export function printReport (r: BenchReport): void {
  for (const t of r.tables) printTable(t)
  for (const n of r.notes) console.log('  • ' + n)
}

export function machine (): Record<string, unknown> {
  const c = cpus()
  return { cpus: c.length, cpuModel: c[0]?.model, memoryBytes: totalmem(), loadavg: loadavg(), node: process.version }
}

/** Writes results/<name>-<timestamp>.json and merges the summary into results/latest.json. */
export function writeResults (r: BenchReport, context: { readonly startedAt: string, readonly settings: unknown, readonly machineAtStart: unknown }): string {
  mkdirSync(RESULTS_DIR, { recursive: true })
  const stamp = context.startedAt.replace(/[:.]/g, '-')
  const file = join(RESULTS_DIR, `${r.name}-${stamp}.json`)
  const record = { name: r.name, startedAt: context.startedAt, finishedAt: new Date().toISOString(), machineAtStart: context.machineAtStart, machineAtEnd: machine(), settings: context.settings, summary: r.summary, notes: r.notes, details: r.details }
  writeFileSync(file, JSON.stringify(record, null, 2) + '\n')

  const latestFile = join(RESULTS_DIR, 'latest.json')
  let latest: { benchmarks?: Record<string, unknown> } = {}
  if (existsSync(latestFile)) {
    try { latest = JSON.parse(readFileSync(latestFile, 'utf8')) as typeof latest } catch { latest = {} }
  }
  // one entry per benchmark: running only `relay` keeps the last ingest and idle figures
  const benchmarks = { ...(latest.benchmarks ?? {}), [r.name]: { startedAt: context.startedAt, file: `${r.name}-${stamp}.json`, machineAtStart: context.machineAtStart, summary: r.summary, notes: r.notes } }
  writeFileSync(latestFile, JSON.stringify({ updatedAt: new Date().toISOString(), benchmarks }, null, 2) + '\n')
  return file
}

// ---- formatting ----------------------------------------------------------------------------------

export function rate (n: number | undefined): string {
  return n === undefined ? '–' : Math.round(n).toLocaleString('en-US')
}

export function ratio (a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || b === 0 ? '–' : (a / b).toFixed(2) + '×'
}

export function ratioValue (a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : Math.round((a / b) * 1000) / 1000
}

export function kib (bytes: number | undefined): string {
  return bytes === undefined ? '–' : (bytes / 1024).toFixed(2)
}

export function median (xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid] : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}
