// Composes Roost's parts: opens the database, builds broker and API, connects them, starts listening.
// `roost start` runs them all (the voice bridge when OPENAI_API_KEY is set); `roost broker`, `roost api` and
// `roost bridge` run one each.

import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { Registry, collectDefaultMetrics } from 'prom-client'
import { ConfigError, type Config } from './schemas/config.ts'
import { openDatabase, type Database } from './db/open.ts'
import { scheduleMaintenance } from './db/maintenance.ts'
import { buildBroker, type Broker } from './broker/index.ts'
import type { BrokerPort } from './api/broker-port.ts'
import { LoginGuard } from './api/lockout.ts'
import { userAuthFor } from './api/user-auth.ts'
import type { Bridge, BrokerLink } from './bridge/index.ts'
import { serveBridgeOps, type OpsServer } from './bridge/ops-server.ts'

export type Part = 'broker' | 'api' | 'bridge'

export interface Platform {
  readonly config: Config
  readonly db: Database
  readonly broker: Broker | undefined
  readonly api: FastifyInstance | undefined
  readonly bridge: Bridge | undefined
  readonly ports: { readonly mqtt?: number, readonly mqtts?: number, readonly http?: number }
  close (): Promise<void>
}

/** Hears every message on `filter` as the platform, straight from the broker; resolves with an unsubscribe. */
async function subscribeInProcess (broker: Broker, filter: string, handler: (topic: string, payload: Buffer) => void): Promise<() => void> {
  const listener = (packet: { topic: string, payload: Buffer | string }, cb: () => void): void => {
    handler(packet.topic, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload)
    cb()
  }
  await new Promise<void>(resolve => broker.aedes.subscribe(filter, listener as never, () => resolve()))
  return () => broker.aedes.unsubscribe(filter, listener as never, () => {})
}

/** The broker as the voice bridge sees it when both run in one process: no MQTT login, no loopback hop. */
function inProcessBridgeLink (broker: Broker, log: Logger): BrokerLink {
  const unsubscribes: Array<() => void> = []
  return {
    publish (topic, payload, qos) {
      broker.publish(topic, payload, { qos, retain: false }).catch((err: unknown) => {
        log.debug({ err: (err as Error).message, topic }, 'bridge publish failed')
      })
    },
    async subscribe (filters, handler) {
      for (const filter of Object.keys(filters)) unsubscribes.push(await subscribeInProcess(broker, filter, handler))
    },
    connected: () => !broker.aedes.closed,
    async close () { for (const u of unsubscribes.splice(0)) u() },
  }
}

/** The broker as the API sees it when both run in one process. */
export function localBrokerPort (broker: Broker): BrokerPort {
  return {
    isOnline: id => broker.presence.isOnline(id),
    deviceChanged: (id, change) => broker.deviceChanged(id, change),
    commandsListening: id => broker.commandsListening(id),
    commandCreated: row => broker.commands.created(row),
    publish: (topic, payload, opts) => broker.publish(topic, payload, opts),
    storeTelemetry: rows => new Promise(resolve => { broker.committer.add(rows, resolve) }),
    handleMqttStream: (stream, req) => broker.handle(stream, req),
    finishCommand: (deviceId, commandId, body) => broker.commands.finish(deviceId, commandId, body),
    onCommandFinished: listener => {
      broker.commands.on('finished', listener)
      return () => { broker.commands.off('finished', listener) }
    },
    subscribe: (filter, handler) => subscribeInProcess(broker, filter, handler),
    healthy: () => !broker.aedes.closed,
    close: async () => {},
  }
}

export async function startPlatform (config: Config, log: Logger, parts: readonly Part[] = ['broker', 'api', 'bridge']): Promise<Platform> {
  const db = await openDatabase({ url: config.db.url, dataDir: config.dataDir })
  log.info({ database: db.kind === 'pglite' ? `embedded PGlite in ${config.dataDir}` : 'Postgres server' }, 'database ready')
  const stopMaintenance = scheduleMaintenance(db, log)
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'roost_process_' })

  let broker: Broker | undefined
  let api: FastifyInstance | undefined
  let port: BrokerPort | undefined
  let bridge: Bridge | undefined
  let ops: OpsServer | undefined
  const ports: { mqtt?: number, mqtts?: number, http?: number } = {}
  try {
    // one credential service and one login guard for both parts: a revoked key closes MQTT connections
    // made with it, and failures over REST and MQTT count together
    const users = userAuthFor(config, db)
    const guard = new LoginGuard({ addressThreshold: config.loginAddressFailures })
    if (parts.includes('broker')) {
      broker = buildBroker(config, { db, log: log.child({ part: 'broker' }), registry, apps: users, guard })
      const listening = await broker.listen()
      ports.mqtt = listening.mqttPort
      if (listening.mqttsPort !== undefined) ports.mqtts = listening.mqttsPort
    }
    if (parts.includes('api')) {
      // loaded only here: a broker-only process should not carry Fastify, Swagger and their schemas
      const { buildApi } = await import('./api/index.ts')
      port = broker !== undefined
        ? localBrokerPort(broker)
        : await (await import('./api/remote-broker.ts')).connectRemoteBroker({ url: config.broker.url, serviceToken: config.auth.serviceToken as string, db, log })
      api = await buildApi(config, { db, log: log.child({ part: 'api' }), registry, broker: port, mqttPort: ports.mqtt, users, lockout: guard })
      await api.listen({ port: config.http.port, host: config.http.host })
      const address = api.server.address()
      ports.http = typeof address === 'object' && address !== null ? address.port : config.http.port
    }
    if (parts.includes('bridge')) {
      if (config.openai.apiKey === undefined) {
        // alone, a bridge without a key has nothing to do; inside `roost start` voice is simply off
        if (parts.length === 1) throw new ConfigError(['OPENAI_API_KEY (--openai-api-key) must be set for roost bridge: voice is off without it'])
        log.info('voice off: OPENAI_API_KEY is not set')
      } else {
        const { startBridge } = await import('./bridge/index.ts')
        // in one process the bridge uses this broker directly; alone, it logs in to the one at ROOST_BROKER_URL
        const bridgeLog = log.child({ part: 'bridge' })
        const link = broker !== undefined ? inProcessBridgeLink(broker, bridgeLog) : undefined
        bridge = await startBridge(config, bridgeLog, { brokerUrl: config.broker.url, link, db, registry })
        if (api === undefined) {
          // alone, the bridge serves its own /metrics and /health where the API would
          const started = bridge
          ops = await serveBridgeOps({ registry, adminToken: config.auth.adminToken, port: config.http.port, host: config.http.host, healthy: () => started.healthy() })
          ports.http = ops.port
          bridgeLog.info({ port: ops.port }, 'bridge metrics at /metrics')
        }
      }
    }
  } catch (err) {
    await ops?.close().catch(() => {})
    await bridge?.close().catch(() => {})
    await api?.close().catch(() => {})
    await broker?.close().catch(() => {})
    await port?.close().catch(() => {})
    stopMaintenance()
    await db.close().catch(() => {})
    throw err
  }

  return {
    config,
    db,
    broker,
    api,
    bridge,
    ports,
    async close () {
      // stop taking requests, then stop the broker (which drains pending telemetry), then the database
      await ops?.close()
      await bridge?.close()
      await api?.close()
      await port?.close()
      await broker?.close()
      stopMaintenance()
      await db.close()
    },
  }
}
