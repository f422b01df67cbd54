// What the API needs from the broker, whether it runs in the same process (`roost start`) or apart (`roost api`).

import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { StoredRow } from '../db/telemetry.ts'

export type DeviceChange = 'changed' | 'rotated' | 'deleted'

export interface BrokerPort {
  isOnline (deviceId: string): boolean
  /** Tell the broker a device changed: it forgets cached credentials and, on rotate/delete, closes the session. */
  deviceChanged (deviceId: string, change: DeviceChange): Promise<void>
  /** Publish as the platform (a service login when remote). */
  publish (topic: string, payload: Buffer, opts: { qos: 0 | 1, retain: boolean }): Promise<void>
  /** Store telemetry rows durably; resolves once committed. */
  storeTelemetry (rows: readonly StoredRow[]): Promise<void>
  /** Serve an MQTT connection arriving on the API's /mqtt WebSocket. */
  handleMqttStream (stream: Duplex, req: IncomingMessage): void
  healthy (): boolean
  close (): Promise<void>
}
