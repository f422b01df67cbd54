// `npm run bench [-- relay | ingest | idle | commands | voice ...]`: runs the benchmarks, prints their tables and writes
// bench/results/<name>-<timestamp>.json plus a bench/results/latest.json summary. Benchmarks are not tests.

import { relayBenchmark } from './relay.ts'
import { ingestBenchmark } from './ingest.ts'
import { idleBenchmark } from './idle.ts'
import { commandsBenchmark } from './commands.ts'
import { voiceBenchmark } from './voice.ts'
import { loadSettings, usage, type BenchName, type Settings } from './settings.ts'
import { machine, printReport, writeResults, type BenchReport } from './report.ts'
import { cleanUpAll } from './process.ts'
import { ONE_CPU_NODE_FLAGS } from '../bin/launcher.mjs'

const RUNNERS: Record<BenchName, (s: Settings) => Promise<BenchReport>> = {
  relay: relayBenchmark,
  ingest: ingestBenchmark,
  idle: idleBenchmark,
  commands: commandsBenchmark,
  voice: voiceBenchmark,
}

// ^C mid-run: stop brokers, Postgres and Mosquitto, and remove their data dirs, before exiting
const EXIT_INTERRUPTED = 130
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping brokers`)
    void cleanUpAll().finally(() => process.exit(EXIT_INTERRUPTED))
  })
}

const args = process.argv.slice(2)
if (args.includes('--help') || args.includes('-h')) {
  console.log(usage())
  process.exit(0)
}

let settings: Settings
try {
  settings = loadSettings(args, process.env)
} catch (err) {
  console.error((err as Error).message)
  process.exit(2)
}

const p = settings.placement
console.log(`roost bench: ${settings.benchmarks.join(', ')}; ${settings.measureMs / 1000} s measured after ${settings.warmupMs / 1000} s warm-up, ${settings.runs} run(s); ` +
  (p.broker === undefined ? 'no core pinning (fewer than two cores or no taskset)' : `broker on core ${p.broker}, load generator on core ${p.load}; Node processes pinned to one core run with ${ONE_CPU_NODE_FLAGS.join(' ')}, as roost does on one CPU`))
const start = machine()
if ((start.loadavg as number[])[0] as number > 0.5) console.log(`  note: load average ${(start.loadavg as number[]).map(x => x.toFixed(2)).join(' ')} — other work on this machine makes figures noisy`)

const reports: BenchReport[] = []
let failed = false
for (const name of settings.benchmarks) {
  const startedAt = new Date().toISOString()
  const machineAtStart = machine()
  console.log(`\n== ${name}`)
  try {
    const report = await RUNNERS[name](settings)
    reports.push(report)
    const file = writeResults(report, { startedAt, settings: { ...settings, brokers: [...settings.brokers] }, machineAtStart })
    console.log(`  wrote ${file}`)
  } catch (err) {
    failed = true
    console.error(`${name} failed:`, err)
  }
}

console.log('\n== results')
for (const r of reports) printReport(r)
process.exit(failed ? 1 : 0)
