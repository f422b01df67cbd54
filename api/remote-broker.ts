// The BrokerPort of `roost api` running apart from the broker: an MQTT service login, a presence view built
// from the retained presence topics, and /mqtt WebSocket connections piped to the broker's TCP listener.

import { connect as netConnect } from 'node:net'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import mqtt from 'mqtt'
import type { Logger } from 'pino'
import type { Database } from '../db/open.ts'
import { insertTelemetry, type StoredRow } from '../db/telemetry.ts'
import { parseTopic, topicMatchesFilter } from '../schemas/topics.ts'
import type { BrokerPort, DeviceChange } from './broker-port.ts'
import { CommandCenter } from '../broker/topics/commands.ts'
import { getCommand } from '../db/commands.ts'
import { FINAL_STATUSES, type CommandRow } from '../schemas/db/commands.ts'

export async function connectRemoteBroker (opts: { url: string, serviceToken: string, db: Database, log: Logger }): Promise<BrokerPort> {
  const { log } = opts
  const online = new Set<string>()
  const client = await mqtt.connectAsync(opts.url, {
    username: 'service:api',
    password: opts.serviceToken,
    clientId: 'roost-api-' + Math.random().toString(36).slice(2, 10),
    reconnectPeriod: 1000,
  })
  client.on('error', err => log.warn({ err: err.message }, 'broker link error'))
  // results given over HTTP are recorded here; deliveries stay with the broker (roost/control), which
  // also records results given over MQTT: the API learns of those from the result topic
  const center = new CommandCenter({
    db: opts.db,
    log,
    now: Date.now,
    publish: async () => { throw new Error('the API process does not deliver commands; the broker does') },
    isOnline: id => online.has(id),
  })
  const listeners = new Set<{ filter: string, handler: (topic: string, payload: Buffer) => void }>()
  client.on('message', (topic, payload) => {
    for (const l of listeners) if (topicMatchesFilter(l.filter, topic)) l.handler(topic, payload)
    const parsed = parseTopic(topic)
    if (parsed.space === 'device' && parsed.family === 'commands/result' && parsed.param !== undefined) {
      void getCommand(opts.db, parsed.deviceId, parsed.param).then(row => {
        if (row !== undefined && FINAL_STATUSES.includes(row.status)) center.emit('finished', row)
      }, () => {})
      return
    }
    if (parsed.space !== 'device' || parsed.family !== 'presence') return
    let isOnline = false
    try { isOnline = payload.length > 0 && (JSON.parse(payload.toString()) as { online?: unknown }).online === true } catch { isOnline = false }
    if (isOnline) online.add(parsed.deviceId)
    else online.delete(parsed.deviceId)
  })
  await client.subscribeAsync(['devices/+/presence', 'devices/+/commands/+/result'], { qos: 1 })
  center.start() // expiries, for waiters of this process
  const target = new URL(opts.url)

  const deviceChanged = async (deviceId: string, change: DeviceChange): Promise<void> => {
    await client.publishAsync(`roost/control/devices/${deviceId}`, JSON.stringify({ change }), { qos: 1 })
  }

  return {
    isOnline: id => online.has(id),
    deviceChanged,
    // this process cannot order its publishes with the broker's own deliveries: every command queues,
    // and the broker delivers it
    commandsListening: () => false,
    commandCreated: (row: CommandRow) => deviceChanged(row.deviceId, 'commands'),
    async publish (topic, payload, o) {
      await client.publishAsync(topic, payload, { qos: o.qos, retain: o.retain })
    },
    storeTelemetry: (rows: readonly StoredRow[]) => insertTelemetry(opts.db, rows),
    handleMqttStream (stream: Duplex, _req: IncomingMessage) {
      const socket = netConnect({ host: target.hostname, port: Number(target.port || 1883) })
      socket.setNoDelay(true)
      stream.pipe(socket).pipe(stream)
      const end = (): void => { socket.destroy(); stream.destroy() }
      socket.on('error', end)
      stream.on('error', end)
      socket.on('close', end)
      stream.on('close', end)
    },
    finishCommand: (deviceId, commandId, body) => center.finish(deviceId, commandId, body),
    onCommandFinished: listener => {
      center.on('finished', listener)
      return () => { center.off('finished', listener) }
    },
    async subscribe (filter, handler) {
      const entry = { filter, handler }
      listeners.add(entry)
      await client.subscribeAsync(filter, { qos: 1 })
      return () => { listeners.delete(entry) }
    },
    healthy: () => client.connected,
    async close () {
      center.stop()
      await client.endAsync()
    },
  }
}
