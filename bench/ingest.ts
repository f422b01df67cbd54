// Durable ingest: 100 devices publish QoS 1 telemetry; Roost acknowledges each only after its rows
// committed (PGlite, Postgres), bare Aedes acknowledges without storing. The stored rows are counted.

import { newDeviceToken } from '../db/devices.ts'
import { postgresUnavailable } from '../test/postgres.ts'
import { profileArgs, startBareAedes, startRoostBroker, type BrokerUnderTest, type RoostUnderTest } from './brokers.ts'
import { benchDeviceIds, type BenchDevice } from './devices.ts'
import { startLoadGenerator } from './process.ts'
import { median, rate, ratio, ratioValue, type BenchReport } from './report.ts'
import type { Settings } from './settings.ts'
import type { IngestResult, IngestSpec } from './load.ts'

// The sample reading; two keys, so two stored rows per message.
const PAYLOAD = '{"temp":21.5,"hum":40}'
const ROWS_PER_MESSAGE = 2
// After the measured window, how long outstanding PUBACKs may take (a commit of the last batches).
const DRAIN_MS = 30_000
// Targets from the issue, as fractions of bare Aedes' acknowledged rate.
const TARGET_POSTGRES = 0.5
const TARGET_PGLITE = 0.3

type Case = 'aedes' | 'roost-pglite' | 'roost-postgres'

interface Subject {
  readonly name: Case
  readonly broker: BrokerUnderTest
  readonly roost: RoostUnderTest | undefined
  readonly devices: readonly BenchDevice[]
}

export async function ingestBenchmark (settings: Settings): Promise<BenchReport> {
  const notes: string[] = []
  const subjects: Subject[] = []
  const ids = benchDeviceIds('ingest', settings.ingestDevices)
  const connections = settings.ingestDevices + 16
  const load = await startLoadGenerator(settings.placement, { nodeArgs: profileArgs(settings, 'load') })
  try {
    if (settings.brokers.has('aedes')) {
      subjects.push({ name: 'aedes', broker: await startBareAedes({ settings, connections }), roost: undefined, devices: ids.map(id => ({ id, token: newDeviceToken() })) })
    }
    if (settings.brokers.has('roost')) {
      const pglite = await startRoostBroker({ db: 'pglite', deviceIds: ids, settings, connections })
      subjects.push({ name: 'roost-pglite', broker: pglite, roost: pglite, devices: pglite.devices })
      const noPostgres = postgresUnavailable()
      if (noPostgres !== undefined) notes.push(`Roost on Postgres skipped: ${noPostgres}`)
      else {
        const pg = await startRoostBroker({ db: 'postgres', deviceIds: ids, settings, connections })
        subjects.push({ name: 'roost-postgres', broker: pg, roost: pg, devices: pg.devices })
      }
    }

    const runs: Array<{ run: number, case: Case, result: IngestResult, storedRows: number | undefined, verified: boolean | undefined }> = []
    for (let run = 1; run <= settings.runs; run++) {
      for (const s of subjects) {
        const before = await s.roost?.telemetryRows()
        const spec: IngestSpec = {
          port: s.broker.port,
          brokerPid: s.broker.pid,
          publishers: s.devices.map(d => ({ clientId: d.id, username: d.id, password: d.token, topic: `devices/${d.id}/telemetry` })),
          payload: PAYLOAD,
          window: settings.window,
          refillBatch: settings.refillBatch,
          warmupMs: settings.warmupMs,
          measureMs: settings.measureMs,
          drainMs: DRAIN_MS,
        }
        const result = await load.call<IngestResult>('ingest', spec)
        // every acknowledged message must be in the table: the figure is of stored data
        const after = await s.roost?.telemetryRows()
        const storedRows = before === undefined || after === undefined ? undefined : after - before
        const verified = storedRows === undefined ? undefined : result.unacked === 0 && storedRows === result.totalAcked * ROWS_PER_MESSAGE
        runs.push({ run, case: s.name, result, storedRows, verified })
        console.log(`  ingest run ${run} ${s.broker.label}: ${rate(result.ackedPerSecond)} msg/s acknowledged` +
          `, cores busy: broker ${result.cpu.broker}, load ${result.cpu.load}` +
          (storedRows !== undefined ? `; ${result.totalAcked} acknowledged over the run, ${storedRows} rows stored (${verified === true ? 'all' : 'MISMATCH'})` : ''))
      }
    }

    const med = (c: Case): number | undefined => median(runs.filter(r => r.case === c).map(r => r.result.ackedPerSecond))
    const aedes = med('aedes')
    const rows: string[][] = []
    const summary: Record<string, unknown> = { msgsPerSecond: {}, vsAedes: {}, rowsVerified: {} }
    const targets: Record<Case, number | undefined> = { aedes: undefined, 'roost-pglite': TARGET_PGLITE, 'roost-postgres': TARGET_POSTGRES }
    for (const s of subjects) {
      const m = med(s.name)
      const mine = runs.filter(r => r.case === s.name)
      const verified = s.roost === undefined ? undefined : mine.every(r => r.verified === true)
      const stored = mine.reduce((n, r) => n + (r.storedRows ?? 0), 0)
      const target = targets[s.name]
      const vs = ratioValue(m, aedes)
      rows.push([
        s.broker.label + (s.roost === undefined ? ' (no storage)' : ''),
        rate(m),
        ratio(m, aedes),
        target === undefined ? '–' : `≥ ${target.toFixed(1)}×`,
        target === undefined || vs === undefined ? '–' : vs >= target ? 'met' : 'NOT met',
        (median(mine.map(r => r.result.cpu.broker)) ?? 0).toFixed(2),
        verified === undefined ? 'n/a' : `${verified ? 'yes' : 'NO'} (${stored.toLocaleString('en-US')} rows)`,
      ]);
      (summary.msgsPerSecond as Record<string, unknown>)[s.name] = m;
      (summary.vsAedes as Record<string, unknown>)[s.name] = vs
      if (verified !== undefined) (summary.rowsVerified as Record<string, unknown>)[s.name] = verified
    }
    summary.targets = { 'roost-postgres': TARGET_POSTGRES, 'roost-pglite': TARGET_PGLITE }
    if (runs.some(r => r.verified === false)) notes.push('stored rows differ from acknowledged messages × 2 in some run: see details')
    return {
      name: 'ingest',
      tables: [{
        title: `ingest: ${settings.ingestDevices} devices, QoS 1 ${PAYLOAD} to devices/{id}/telemetry, ${settings.window} in flight each, ` +
          `acknowledged messages/s (median of ${settings.runs} × ${settings.measureMs / 1000} s)`,
        columns: ['broker', 'acked msg/s', 'vs Aedes', 'target', 'met?', 'broker cores', 'rows = acks × 2'],
        rows,
      }],
      notes,
      summary,
      details: { runs },
    }
  } finally {
    for (const s of subjects) await s.broker.stop().catch((err: unknown) => console.error(`stopping ${s.broker.label}:`, err))
    await load.stop()
  }
}
