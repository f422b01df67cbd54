// Presence: the broker's retained `{online, ts}` per device, at connect, disconnect and keepalive timeout.

import type { FamilyRule } from '../acl.ts'
import { brokerOnly } from './direction.ts'
import { deviceTopic } from '../../schemas/topics.ts'

export const presenceRules: { readonly presence: FamilyRule } = {
  presence: brokerOnly('platform'),
}

export interface PresencePayload { readonly online: boolean, readonly ts: number }

type Publish = (topic: string, payload: Buffer, retain: boolean) => Promise<void>

/**
 * Tracks which connection currently speaks for each device, so that when a device reconnects and its old
 * connection is closed after the new one logged in, the late "offline" of the old one is not published.
 * Publishes for one device are chained so the retained value always ends with the latest state.
 */
export class PresenceTracker {
  private readonly current = new Map<string, object>()
  private readonly chains = new Map<string, Promise<void>>()

  constructor (private readonly publish: Publish, private readonly now: () => number) {}

  isOnline (deviceId: string): boolean {
    return this.current.has(deviceId)
  }

  onlineIds (): IterableIterator<string> {
    return this.current.keys()
  }

  get onlineCount (): number {
    return this.current.size
  }

  online (deviceId: string, connection: object): Promise<void> {
    this.current.set(deviceId, connection)
    return this.announce(deviceId, { online: true, ts: this.now() })
  }

  offline (deviceId: string, connection: object): Promise<void> {
    if (this.current.get(deviceId) !== connection) return Promise.resolve()
    this.current.delete(deviceId)
    return this.announce(deviceId, { online: false, ts: this.now() })
  }

  /** At start nobody is connected: every known device is announced offline, with its last-seen time. */
  async rebuild (devices: Iterable<{ id: string, lastSeen: number | null }>): Promise<void> {
    const all: Array<Promise<void>> = []
    for (const d of devices) all.push(this.announce(d.id, { online: false, ts: d.lastSeen ?? 0 }))
    await Promise.all(all)
  }

  /** A deleted device's retained presence is cleared (an empty retained payload removes it). */
  forget (deviceId: string): Promise<void> {
    this.current.delete(deviceId)
    return this.chain(deviceId, () => this.publish(deviceTopic(deviceId, 'presence'), Buffer.alloc(0), true))
  }

  private announce (deviceId: string, p: PresencePayload): Promise<void> {
    const payload = Buffer.from(JSON.stringify(p))
    return this.chain(deviceId, () => this.publish(deviceTopic(deviceId, 'presence'), payload, true))
  }

  private chain (deviceId: string, step: () => Promise<void>): Promise<void> {
    const next = (this.chains.get(deviceId) ?? Promise.resolve()).then(step, step)
    this.chains.set(deviceId, next)
    // then(f, f), not finally: a finally() promise re-rejects and would be an unhandled rejection; callers see `next`'s error
    const settle = (): void => { if (this.chains.get(deviceId) === next) this.chains.delete(deviceId) }
    void next.then(settle, settle)
    return next
  }
}
