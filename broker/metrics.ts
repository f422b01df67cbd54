// Broker metrics: plain counters on the hot path, turned into Prometheus series only when /metrics is scraped.

import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { FAMILY_NAMES, type Family } from '../schemas/topics.ts'
import type { ErrorCode } from '../schemas/errors.ts'
import type { IngestStats } from './ingest.ts'

export type FlowKey = Family | 'scratch' | 'other'

export class BrokerCounters {
  readonly in = new Map<FlowKey, number>()
  readonly out = new Map<FlowKey, number>()
  readonly refusals = new Map<ErrorCode, number>()
  connectsAccepted = 0
  connectsRefused = 0
  offlineDropped = 0

  count (map: Map<FlowKey, number>, key: FlowKey): void {
    map.set(key, (map.get(key) ?? 0) + 1)
  }

  refuse (code: ErrorCode): void {
    this.refusals.set(code, (this.refusals.get(code) ?? 0) + 1)
  }
}

export interface BrokerMetricSources {
  readonly counters: BrokerCounters
  readonly ingest: IngestStats
  readonly connections: () => number
  readonly onlineDevices: () => number
  // locks started by failed logins, REST and MQTT together (api/lockout.ts)
  readonly lockouts: () => number
}

function setAll<K extends string> (metric: Counter<K>, label: K, values: ReadonlyMap<string, number>): void {
  metric.reset()
  for (const [k, v] of values) metric.inc({ [label]: k } as Record<K, string>, v)
}

export function registerBrokerMetrics (registry: Registry, s: BrokerMetricSources): void {
  const c = s.counters
  new Counter({ name: 'roost_login_lockouts_total', help: 'accounts or addresses locked out after repeated failed logins or claim codes (REST and MQTT)', registers: [registry], collect () { this.reset(); this.inc(s.lockouts()) } })
  new Gauge({ name: 'roost_mqtt_connections', help: 'open MQTT connections (TCP, TLS and WebSocket)', registers: [registry], collect () { this.set(s.connections()) } })
  new Gauge({ name: 'roost_devices_online', help: 'devices with an open MQTT session', registers: [registry], collect () { this.set(s.onlineDevices()) } })
  new Counter({
    name: 'roost_mqtt_connects_total', help: 'MQTT logins by result', labelNames: ['result'], registers: [registry],
    collect () { this.reset(); this.inc({ result: 'accepted' }, c.connectsAccepted); this.inc({ result: 'refused' }, c.connectsRefused) },
  })
  new Counter({
    name: 'roost_mqtt_messages_in_total', help: 'publishes accepted from clients, by topic family', labelNames: ['family'], registers: [registry],
    collect () { setAll(this, 'family', c.in) },
  })
  new Counter({
    name: 'roost_mqtt_messages_out_total', help: 'publishes by the platform (broker, api, bridge) towards devices and apps, by topic family', labelNames: ['family'], registers: [registry],
    collect () { setAll(this, 'family', c.out) },
  })
  new Counter({
    name: 'roost_refusals_total', help: 'logins, publishes, subscribes and packets refused, by error code', labelNames: ['code'], registers: [registry],
    collect () { setAll(this, 'code', c.refusals) },
  })
  new Counter({
    name: 'roost_offline_queue_dropped_total', help: 'QoS 1/2 messages not queued because a persistent session had ROOST_OFFLINE_QUEUE_LIMIT waiting', registers: [registry],
    collect () { this.reset(); this.inc(c.offlineDropped) },
  })
  new Counter({
    name: 'roost_ingest_rows_total', help: 'telemetry rows committed', registers: [registry],
    collect () { this.reset(); this.inc(s.ingest.rows) },
  })
  new Counter({
    name: 'roost_ingest_dropped_rows_total', help: 'QoS 0 telemetry rows dropped while the database was behind or down', registers: [registry],
    collect () { this.reset(); this.inc(s.ingest.droppedRows) },
  })
  new Counter({
    name: 'roost_db_errors_total', help: 'failed telemetry writes (each is retried)', registers: [registry],
    collect () { this.reset(); this.inc(s.ingest.dbErrors) },
  })
  const batchRows = new Histogram({
    name: 'roost_ingest_batch_rows', help: 'rows per group commit', registers: [registry],
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
  })
  const batchSeconds = new Histogram({
    name: 'roost_ingest_commit_seconds', help: 'time to commit one telemetry batch', registers: [registry],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
  })
  s.ingest.onBatch = (rows, seconds) => {
    batchRows.observe(rows)
    batchSeconds.observe(seconds)
  }
}

export function flowKey (family: Family | undefined, scratch: boolean): FlowKey {
  return family ?? (scratch ? 'scratch' : 'other')
}

export const FLOW_KEYS: readonly FlowKey[] = [...FAMILY_NAMES, 'scratch', 'other']
