// A Postgres outage while devices publish: QoS 1 telemetry waits unacknowledged and is stored once the
// server is back, QoS 0 is relayed and, past the pending bound, dropped and counted, and the broker keeps
// serving everything that needs no database.

import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, nextMessage, sleep, startRoost, type TestRoost } from './harness.ts'
import { postgresUnavailable, startPostgres, type PostgresServer } from './postgres.ts'
import { sampleValue, scrape } from './prometheus.ts'

const noPostgres = postgresUnavailable()
if (noPostgres !== undefined) console.warn(`database outage tests skipped: ${noPostgres}`)

// The committer holds at most 100,000 QoS 0 rows (DEFAULT_MAX_PENDING_ROWS in broker/ingest.ts, no config
// knob); 20 messages of 10,000 rows overflow it whatever one batch in retry holds.
const QOS0_MESSAGES = 20
const QOS0_READINGS = 1000 // objects per message, ROOST_TELEMETRY_MAX_ROWS' default
const QOS0_KEYS = 10 // rows per object
const QOS0_ROWS = QOS0_MESSAGES * QOS0_READINGS * QOS0_KEYS
const QOS1_DURING_OUTAGE = 20

function qos0Payload (message: number): string {
  const readings: Array<Record<string, number>> = []
  for (let i = 0; i < QOS0_READINGS; i++) {
    const r: Record<string, number> = {}
    for (let k = 0; k < QOS0_KEYS; k++) r[`k${k}`] = message
    readings.push(r)
  }
  return JSON.stringify(readings)
}

describe.skipIf(noPostgres !== undefined)('a Postgres outage', () => {
  let pg: PostgresServer
  let roost: TestRoost

  beforeAll(async () => {
    pg = await startPostgres()
    roost = await startRoost({
      env: {
        DATABASE_URL: pg.url,
        ROOST_ANONYMOUS: 'true', // a scratch relay between two clients that need nothing from the database
        ROOST_TELEMETRY_MAX_BYTES: '200000', // a 10,000-row QoS 0 message is about 80 KB
      },
    })
  })
  afterAll(async () => {
    await roost?.close()
    await pg?.stop()
  })

  async function metric (name: string): Promise<number | undefined> {
    return sampleValue(await scrape(roost), name)
  }

  it('holds QoS 1 telemetry unacknowledged, drops and counts QoS 0 past the bound, keeps relaying, and stores every acknowledged reading once the server is back', async () => {
    const q1Token = await roost.addDevice('out-q1')
    const q0Token = await roost.addDevice('out-q0')
    const cachedToken = await roost.addDevice('out-cached')
    const neverToken = await roost.addDevice('out-never') // never logged in, so its credential is not cached

    const q1 = await roost.connectDevice('out-q1', q1Token)
    const q0 = await roost.connectDevice('out-q0', q0Token)
    const cachedOnce = await roost.connectDevice('out-cached', cachedToken)
    await cachedOnce.endAsync()
    const observer = await roost.connect({ clientId: 'outage-observer', username: 'service:outage-test', password: roost.serviceToken })
    await observer.subscribeAsync('devices/+/telemetry', { qos: 0 })
    const relayIn = await roost.connect({ clientId: 'relay-in' })
    const relayOut = await roost.connect({ clientId: 'relay-out' })
    await relayIn.subscribeAsync('scratch/outage', { qos: 1 })
    let q0Relayed = 0
    let q1RelayedDuringOutage = 0
    let outage = false
    observer.on('message', topic => {
      if (topic === 'devices/out-q0/telemetry') q0Relayed++
      if (topic === 'devices/out-q1/telemetry' && outage) q1RelayedDuringOutage++
    })

    // before: acknowledged and stored as usual
    await q1.publishAsync('devices/out-q1/telemetry', JSON.stringify({ seq: 0 }), { qos: 1 })
    expect((await roost.request('GET', '/health', undefined, null)).status).toBe(200)

    await pg.pause()
    outage = true
    const health = await eventually(async () => {
      const res = await roost.request('GET', '/health', undefined, null)
      return res.status === 503 ? res : undefined
    }, 10_000, '/health to report the database down')
    expect(health.body).toEqual({ status: 'degraded', db: 'down', broker: 'ok' })

    // QoS 1: published, not acknowledged while the database is away
    const acked = new Set<number>()
    const pending = Array.from({ length: QOS1_DURING_OUTAGE }, (_, i) => {
      const seq = i + 1
      return q1.publishAsync('devices/out-q1/telemetry', JSON.stringify({ seq }), { qos: 1 }).then(() => { acked.add(seq) })
    })

    // QoS 0: accepted and relayed at once; past the pending bound its rows are dropped and counted
    for (let m = 0; m < QOS0_MESSAGES; m++) await q0.publishAsync('devices/out-q0/telemetry', qos0Payload(m), { qos: 0 })
    await eventually(() => q0Relayed === QOS0_MESSAGES ? true : undefined, 20_000, 'every QoS 0 message relayed during the outage')
    const droppedDuring = await eventually(async () => {
      const n = await metric('roost_ingest_dropped_rows_total')
      return n !== undefined && n > 0 ? n : undefined
    }, 10_000, 'QoS 0 rows to be dropped past the pending bound')
    expect(droppedDuring % (QOS0_READINGS * QOS0_KEYS)).toBe(0) // a message is kept or dropped whole

    // other traffic flows: a relay between two connected clients, and a re-login whose credential is cached
    const relayed = nextMessage(relayIn, topic => topic === 'scratch/outage')
    await relayOut.publishAsync('scratch/outage', 'still here', { qos: 1 })
    expect((await relayed).payload.toString()).toBe('still here')
    const cachedAgain = await roost.connectDevice('out-cached', cachedToken)
    expect(cachedAgain.connected).toBe(true)
    // a login the broker has to look up cannot be checked: CONNACK 3, server unavailable, so the client retries
    const refused = await mqtt.connectAsync(roost.mqttUrl, { clientId: 'out-never', username: 'out-never', password: neverToken, reconnectPeriod: 0, connectTimeout: 5000 })
      .then((c: MqttClient) => { void c.endAsync(true); return undefined }, (err: unknown) => err as { code?: number })
    expect(refused?.code).toBe(3)

    // still nothing acknowledged after all that (a few seconds of outage)
    await sleep(500)
    expect([...acked]).toEqual([])
    expect(q1RelayedDuringOutage).toBe(0)
    expect((await roost.request('GET', '/health', undefined, null)).status).toBe(503)

    await pg.start()
    outage = false
    // the waiting publishes are acknowledged by themselves: the committer retries with backoff (at most 5 s)
    await Promise.race([
      Promise.all(pending),
      sleep(30_000).then(() => { throw new Error(`only ${acked.size} of ${QOS1_DURING_OUTAGE} QoS 1 publishes acknowledged 30 s after the database came back`) }),
    ])
    expect(acked.size).toBe(QOS1_DURING_OUTAGE)

    const stored = await roost.platform.db.query<{ seq: number }>(
      "SELECT num AS seq FROM telemetry WHERE device_id = 'out-q1' AND key = 'seq' ORDER BY num")
    expect(stored.map(r => Number(r.seq))).toEqual(Array.from({ length: QOS1_DURING_OUTAGE + 1 }, (_, i) => i))

    // every QoS 0 row is either stored or counted as dropped
    const dropped = await metric('roost_ingest_dropped_rows_total') ?? -1
    const dbErrors = await metric('roost_db_errors_total') ?? 0
    const storedQos0 = await eventually(async () => {
      const rows = await roost.platform.db.query<{ n: number }>("SELECT count(*)::int AS n FROM telemetry WHERE device_id = 'out-q0'")
      const n = Number(rows[0]?.n)
      return n + dropped === QOS0_ROWS ? n : undefined
    }, 20_000, `stored + dropped QoS 0 rows to equal the ${QOS0_ROWS} sent`)
    expect(storedQos0).toBeGreaterThan(0)
    expect(dropped).toBeGreaterThan(0)
    expect(dbErrors).toBeGreaterThan(0)
    console.log(`[db outage] QoS 0: ${QOS0_ROWS} rows sent, ${storedQos0} stored, ${dropped} dropped; QoS 1: ${acked.size} held and then acknowledged; db errors ${dbErrors}`)

    await eventually(async () => (await roost.request('GET', '/health', undefined, null)).status === 200 ? true : undefined, 10_000, '/health ok again')
  }, 120_000)
})
