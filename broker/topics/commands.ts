// Commands: delivered to a device from the database (the source of truth, not the broker's offline queue)
// when it is created and whenever the device connects; the device's results are correlated here.

import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import type { FamilyRule, Refusal } from '../acl.ts'
import { deviceToPlatform, platformToDevice } from './direction.ts'
import { parseCommandResult, type CommandMessage } from '../../schemas/commands.ts'
import { deviceTopic } from '../../schemas/topics.ts'
import type { CommandRow } from '../../schemas/db/commands.ts'
import type { Database } from '../../db/open.ts'
import { commandStore, expireDue, type CommandStore } from '../../db/commands.ts'

// expiry is checked this often; a command's `expiresAt` travels with it, so a device can also judge
const SWEEP_MS = 1000

export interface CommandDeps {
  readonly db: Database
  readonly log: Logger
  readonly now: () => number
  readonly publish: (topic: string, payload: Buffer, opts: { qos: 1, retain: false }) => Promise<void>
  readonly isOnline: (deviceId: string) => boolean
}

/** Delivery, expiry and result correlation; emits 'finished' with the row of every command that reached a final status. */
export class CommandCenter extends EventEmitter<{ finished: [CommandRow] }> {
  private readonly chains = new Map<string, Promise<void>>()
  private timer: NodeJS.Timeout | undefined
  private readonly store: CommandStore

  constructor (private readonly deps: CommandDeps) {
    super()
    this.store = commandStore(deps.db)
  }

  start (): void {
    this.timer = setInterval(() => { void this.sweep() }, SWEEP_MS)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
  }

  /**
   * Publishes a device's deliverable commands, oldest first. `resend` (at connect) includes sent but
   * unanswered ones: a clean session has lost them, and a device acts once per command id.
   * One device's deliveries run one after another, so order holds.
   */
  deliver (deviceId: string, resend: boolean): Promise<void> {
    return this.inOrder(deviceId, async () => {
      for (const row of await this.store.claimDeliverable(deviceId, resend, this.deps.now())) await this.send(row)
    })
  }

  /**
   * A command just stored. One stored as already sent (its device was listening, with nothing queued
   * before it; see CommandStore.create) goes out now, behind whatever is still going out to its device;
   * a queued one goes out through `deliver`.
   */
  created (row: CommandRow): Promise<void> {
    if (row.status !== 'sent') return this.deliver(row.deviceId, false)
    return this.inOrder(row.deviceId, async () => { await this.send(row) })
  }

  private async send (row: CommandRow): Promise<void> {
    const message: CommandMessage = { name: row.name, params: row.params, expiresAt: row.expiresAt }
    await this.deps.publish(deviceTopic(row.deviceId, 'commands', row.id), Buffer.from(JSON.stringify(message)), { qos: 1, retain: false })
  }

  /** Runs one device's deliveries one after another, so its commands go out in order; only while it is online. */
  private inOrder (deviceId: string, step: () => Promise<void>): Promise<void> {
    const next = (this.chains.get(deviceId) ?? Promise.resolve()).then(async () => {
      if (this.deps.isOnline(deviceId)) await step()
    }).catch((err: unknown) => {
      // the commands stay open in the database and go out at the device's next connect
      this.deps.log.warn({ err, deviceId }, 'command delivery failed')
    })
    this.chains.set(deviceId, next)
    void next.then(() => { if (this.chains.get(deviceId) === next) this.chains.delete(deviceId) })
    return next
  }

  /** Records a device's result; a refusal says why it was not taken. */
  async finish (deviceId: string, commandId: string, payload: Buffer | unknown): Promise<{ row: CommandRow } | Refusal> {
    const outcome = parseCommandResult(payload)
    if (typeof outcome === 'string') return { code: 'PAYLOAD_INVALID', detail: outcome }
    const result = await this.store.finish(deviceId, commandId, outcome, this.deps.now())
    if (result.ok) {
      this.emit('finished', result.row)
      return { row: result.row }
    }
    const params = { id: deviceId, command: commandId }
    if (result.reason === 'not-found') return { code: 'COMMAND_NOT_FOUND', params }
    if (result.expired !== undefined) this.emit('finished', result.expired)
    return { code: 'COMMAND_FINAL', params: { ...params, status: result.status } }
  }

  async sweep (): Promise<void> {
    try {
      for (const row of await expireDue(this.deps.db, this.deps.now())) this.emit('finished', row)
    } catch (err) {
      this.deps.log.warn({ err }, 'command expiry sweep failed; retried in a second')
    }
  }
}

export function commandRules (center: CommandCenter): { readonly commands: FamilyRule, readonly 'commands/result': FamilyRule } {
  return {
    commands: platformToDevice,
    'commands/result': {
      ...deviceToPlatform,
      accept (identity, deviceId, packet, done) {
        if (identity.kind !== 'device') return done()
        const commandId = packet.topic.split('/')[3] as string
        center.finish(deviceId, commandId, packet.payload as Buffer).then(
          r => done('code' in r ? r : undefined),
          () => done({ code: 'DB_UNAVAILABLE', unacknowledged: true }),
        )
      },
    },
  }
}

/** True when a command message's `expiresAt` has passed: such a message is never delivered. */
export function commandExpired (payload: Buffer, now: number): boolean {
  try {
    const expiresAt = (JSON.parse(payload.toString('utf8')) as { expiresAt?: unknown }).expiresAt
    return typeof expiresAt === 'number' && expiresAt <= now
  } catch {
    return false
  }
}
