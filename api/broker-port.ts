// What the API needs from the broker, whether it runs in the same process (`roost start`) or apart (`roost api`).

import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { StoredRow } from '../db/telemetry.ts'
import type { CommandRow } from '../schemas/db/commands.ts'
import type { Refusal } from '../broker/acl.ts'

// owner: its owner changed, so apps' reads of it are judged again
export type DeviceChange = 'changed' | 'rotated' | 'deleted' | 'commands' | 'owner'

export interface BrokerPort {
  isOnline (deviceId: string): boolean
  /** Tell the broker a device changed: it forgets cached credentials and, on rotate/delete, closes the session. */
  deviceChanged (deviceId: string, change: DeviceChange): Promise<void>
  /** True when the device's session listens for commands now, so a new one can go out as it is stored. */
  commandsListening (deviceId: string): boolean
  /** A command was stored: publish it (stored as sent) or deliver what its device has queued. */
  commandCreated (row: CommandRow): Promise<void>
  /** Publish as the platform (a service login when remote). */
  publish (topic: string, payload: Buffer, opts: { qos: 0 | 1, retain: boolean }): Promise<void>
  /** Store telemetry rows durably; resolves once committed. */
  storeTelemetry (rows: readonly StoredRow[]): Promise<void>
  /** Serve an MQTT connection arriving on the API's /mqtt WebSocket. */
  handleMqttStream (stream: Duplex, req: IncomingMessage): void
  /** Records a device's command result given over HTTP, as the broker does for one given over MQTT. */
  finishCommand (deviceId: string, commandId: string, body: unknown): Promise<{ row: CommandRow } | Refusal>
  /** Calls `listener` with every command that reached a final status (answered or expired); returns an unsubscribe. */
  onCommandFinished (listener: (row: CommandRow) => void): () => void
  /** Hears every message on topics matching `filter`, as the platform (no ACL); returns an unsubscribe. */
  subscribe (filter: string, handler: (topic: string, payload: Buffer) => void): Promise<() => void>
  healthy (): boolean
  close (): Promise<void>
}
