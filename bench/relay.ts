// Relay: 10 publishers → 1 subscriber on a pure relay topic (devices/{id}/stream/frames, not stored), at
// QoS 0 and QoS 1, through Roost with its logins and ACL, bare Aedes and Mosquitto.

import { newDeviceToken } from '../db/devices.ts'
import { profileArgs, startBareAedes, startMosquittoBroker, startRoostBroker, type BrokerUnderTest, type BrokerKind } from './brokers.ts'
import { benchDeviceIds, type BenchDevice } from './devices.ts'
import { mosquittoMissing } from './mosquitto.ts'
import { startLoadGenerator } from './process.ts'
import { median, rate, ratio, ratioValue, type BenchReport } from './report.ts'
import type { Settings } from './settings.ts'
import type { PublisherSpec, RelayResult, RelaySpec } from './load.ts'

// The subscriber is a platform service, as a viewer backend would be: `service:<name>` + ROOST_SERVICE_TOKEN.
const SUBSCRIBER = { clientId: 'bench-subscriber', username: 'service:bench' }
const FILTER = 'devices/+/stream/frames'
const QOS_LEVELS = [0, 1] as const
// load generator cores at which a case counts as limited by the client rather than the broker
const CLIENT_BOUND_CORES = 0.9
// a relay case's connections: publishers and the subscriber, with room to spare
const RELAY_FDS = 64

function publishers (devices: readonly BenchDevice[]): PublisherSpec[] {
  return devices.map(d => ({ clientId: d.id, username: d.id, password: d.token, topic: `devices/${d.id}/stream/frames` }))
}

/** How evenly the broker served its publishers: the least and most served one's share of the mean. */
function fairness (perPublisher: readonly number[]): string {
  const mean = perPublisher.reduce((a, b) => a + b, 0) / Math.max(perPublisher.length, 1)
  if (mean === 0) return 'all starved'
  return `${(Math.min(...perPublisher) / mean).toFixed(2)}–${(Math.max(...perPublisher) / mean).toFixed(2)}× of mean`
}

export async function relayBenchmark (settings: Settings): Promise<BenchReport> {
  const notes: string[] = []
  const brokers: Array<{ broker: BrokerUnderTest, devices: readonly BenchDevice[], serviceToken: string }> = []
  const ids = benchDeviceIds('relay', settings.relayPublishers)
  // bare brokers ignore credentials; they get the same CONNECT shape (and size) as Roost's devices
  const anyDevices = ids.map(id => ({ id, token: newDeviceToken() }))
  const anyToken = newDeviceToken()
  const load = await startLoadGenerator(settings.placement, { nodeArgs: profileArgs(settings, 'load') })
  try {
    if (settings.brokers.has('aedes')) brokers.push({ broker: await startBareAedes({ settings, connections: RELAY_FDS }), devices: anyDevices, serviceToken: anyToken })
    if (settings.brokers.has('roost')) {
      const roost = await startRoostBroker({ db: 'pglite', deviceIds: ids, settings, connections: RELAY_FDS })
      brokers.push({ broker: roost, devices: roost.devices, serviceToken: roost.serviceToken })
    }
    if (settings.brokers.has('mosquitto')) {
      const missing = mosquittoMissing()
      if (missing !== undefined) notes.push(`Mosquitto skipped: ${missing}`)
      else brokers.push({ broker: await startMosquittoBroker({ settings, connections: RELAY_FDS }), devices: anyDevices, serviceToken: anyToken })
    }

    const runs: Array<{ run: number, qos: 0 | 1, broker: BrokerKind, result: RelayResult }> = []
    // cases interleave (run, QoS, broker) so that noise from the shared machine spreads over all brokers
    for (let run = 1; run <= settings.runs; run++) {
      for (const qos of QOS_LEVELS) {
        for (const b of brokers) {
          const spec: RelaySpec = {
            port: b.broker.port,
            brokerPid: b.broker.pid,
            qos,
            publishers: publishers(b.devices),
            subscriber: { ...SUBSCRIBER, password: b.serviceToken, filter: FILTER },
            payloadBytes: settings.payloadBytes,
            window: settings.window,
            refillBatch: settings.refillBatch,
            pipeline: settings.pipeline,
            warmupMs: settings.warmupMs,
            measureMs: settings.measureMs,
          }
          const result = await load.call<RelayResult>('relay', spec)
          runs.push({ run, qos, broker: b.broker.kind, result })
          console.log(`  relay run ${run} QoS ${qos} ${b.broker.label}: ${rate(result.deliveredPerSecond)} msg/s delivered` +
            (result.lost > 0 ? `, ${result.lost} lost` : '') + (result.stalledMs > 0 ? `, subscriber starved ${result.stalledMs} ms` : '') +
            `, publishers ${fairness(result.perPublisher)}, cores busy: broker ${result.cpu.broker}, load ${result.cpu.load}` +
            (result.undrained > 0 ? `, ${result.undrained} never delivered after the run` : ''))
        }
      }
    }

    // Two views of each case: messages/s as delivered, and messages per second of broker CPU. The second
    // holds up better on a shared machine, where a broker is sometimes runnable but not running.
    const med = (qos: 0 | 1, kind: BrokerKind, of: (r: RelayResult) => number): number | undefined =>
      median(runs.filter(r => r.qos === qos && r.broker === kind).map(r => of(r.result)))
    const delivered = (r: RelayResult): number => r.deliveredPerSecond
    const perCpu = (r: RelayResult): number => r.cpu.broker > 0 ? r.deliveredPerSecond / r.cpu.broker : 0
    const rows: string[][] = []
    const cpuRows: string[][] = []
    const summary: Record<string, unknown> = {}
    for (const qos of QOS_LEVELS) {
      const [roost, aedes, mosquitto] = (['roost', 'aedes', 'mosquitto'] as const).map(k => med(qos, k, delivered))
      const [roostCpu, aedesCpu, mosquittoCpu] = (['roost', 'aedes', 'mosquitto'] as const).map(k => med(qos, k, perCpu))
      const cores = (k: BrokerKind): string => {
        const c = median(runs.filter(r => r.qos === qos && r.broker === k).map(r => r.result.cpu.broker))
        return c === undefined ? '–' : c.toFixed(2)
      }
      rows.push([`QoS ${qos}`, rate(roost), rate(aedes), rate(mosquitto), ratio(roost, aedes), ratio(aedes, mosquitto), ratio(roost, mosquitto)])
      cpuRows.push([`QoS ${qos}`, rate(roostCpu), rate(aedesCpu), rate(mosquittoCpu), ratio(roostCpu, aedesCpu), ratio(aedesCpu, mosquittoCpu), ratio(roostCpu, mosquittoCpu), `${cores('roost')} / ${cores('aedes')} / ${cores('mosquitto')}`])
      summary[`qos${qos}`] = {
        msgsPerSecond: { roost, aedes, mosquitto },
        roostVsAedes: ratioValue(roost, aedes),
        aedesVsMosquitto: ratioValue(aedes, mosquitto),
        roostVsMosquitto: ratioValue(roost, mosquitto),
        msgsPerBrokerCpuSecond: { roost: roostCpu, aedes: aedesCpu, mosquitto: mosquittoCpu },
        roostVsAedesPerCpu: ratioValue(roostCpu, aedesCpu),
        goalRoostVsAedes: 1.0,
      }
      const r = ratioValue(roost, aedes)
      if (r !== undefined) notes.push(`QoS ${qos}: Roost is ${r.toFixed(2)}× bare Aedes (goal ≥ 1.0×) — ${r >= 1 ? 'met' : 'NOT met'}; per broker CPU-second ${ratio(roostCpu, aedesCpu)}`)
    }
    // a case whose generator was as busy as a core measured the client: its rate is a lower bound
    const clientBound = runs.filter(r => r.result.cpu.load >= CLIENT_BOUND_CORES)
    for (const kind of new Set(clientBound.map(r => r.broker))) {
      const n = clientBound.filter(r => r.broker === kind).length
      notes.push(`${kind}: the load generator used ≥ ${CLIENT_BOUND_CORES} of its core in ${n} of ${runs.filter(r => r.broker === kind).length} cases — those rates are lower bounds for the broker`)
    }
    const lost = runs.reduce((n, r) => n + r.result.lost, 0)
    if (lost > 0) notes.push(`${lost} QoS 0 messages were never delivered (written off after 2 s in which the subscriber received nothing)`)
    return {
      name: 'relay',
      tables: [{
        title: `relay: ${settings.relayPublishers} publishers → 1 subscriber on ${FILTER}, ${settings.payloadBytes}-byte payloads, ` +
          `messages/s delivered to the subscriber (median of ${settings.runs} × ${settings.measureMs / 1000} s)`,
        columns: ['case', 'Roost', 'bare Aedes', 'Mosquitto', 'Roost/Aedes', 'Aedes/Mosq', 'Roost/Mosq'],
        rows,
      }, {
        title: 'relay per broker CPU-second (messages/s ÷ broker cores busy; a broker below ~0.9 cores was not saturated or not scheduled)',
        columns: ['case', 'Roost', 'bare Aedes', 'Mosquitto', 'Roost/Aedes', 'Aedes/Mosq', 'Roost/Mosq', 'cores R / A / M'],
        rows: cpuRows,
      }],
      notes,
      summary,
      details: { runs, brokers: brokers.map(b => ({ kind: b.broker.kind, label: b.broker.label })) },
    }
  } finally {
    for (const b of brokers) await b.broker.stop().catch((err: unknown) => console.error(`stopping ${b.broker.label}:`, err))
    await load.stop()
  }
}
