// Runs rollouts: applies admin actions, moves stages on as devices report, and keeps each device's
// retained OTA notice (devices/{id}/ota) a projection of the database, rebuilt at start and renewed before
// its signed link expires.

import type { FastifyBaseLogger } from 'fastify'
import { deviceTopic } from '../schemas/topics.ts'
import { parseOtaStatus, type OtaNotice, type RolloutAction } from '../schemas/rollouts.ts'
import type { Database } from '../db/open.ts'
import {
  activeNotices, advanceRollout, applyAction, offerFor, recordFirmware, runningRollouts, runningRolloutsOf,
  type ActionResult, type NoticeSource, type RolloutEffects,
} from '../db/rollouts.ts'
import type { BrokerPort } from './broker-port.ts'
import type { FirmwareStore } from './firmware-store.ts'

// A retained notice waits for devices that are offline: its link must outlive a few days away, and is
// renewed daily, so a notice a device finds is always good for at least six more days.
export const NOTICE_LINK_TTL_MS = 7 * 24 * 3600 * 1000
export const NOTICE_RENEW_MS = 24 * 3600 * 1000

export interface RolloutEngineDeps {
  readonly db: Database
  readonly log: FastifyBaseLogger
  readonly now: () => number
  readonly broker: BrokerPort
  readonly firmware: FirmwareStore
  // base URL devices reach the API at (ROOST_PUBLIC_URL, with the real port when configured as 0)
  readonly publicUrl: () => string
  readonly renewMs?: number
}

function deviceOf (topic: string): string {
  return topic.split('/')[1] as string
}

/**
 * One engine per API process. All its work (actions, stage moves, notice publishes) runs one step at a
 * time, so a device's notice is never withdrawn by a step that started before it was sent; each step's
 * database changes also hold the rollout's row lock, so several API processes do not move a stage twice.
 */
export class RolloutEngine {
  private queue: Promise<unknown> = Promise.resolve()
  private timer: NodeJS.Timeout | undefined
  private readonly unsubscribes: Array<() => void> = []

  constructor (private readonly deps: RolloutEngineDeps) {}

  /** Hears devices' reports (after the broker stored them): final OTA statuses and reported versions. */
  async connect (): Promise<void> {
    const { broker } = this.deps
    this.unsubscribes.push(await broker.subscribe('devices/+/ota/status', (topic, payload) => {
      const status = parseOtaStatus(payload)
      if (typeof status !== 'string' && (status.state === 'succeeded' || status.state === 'failed')) this.deviceReported(deviceOf(topic))
    }))
    this.unsubscribes.push(await broker.subscribe('devices/+/state/reported', (topic, payload) => {
      // only a report naming its firmware can finish an update; the broker recorded it already
      if (payload.includes('"firmware"')) this.deviceReported(deviceOf(topic))
    }))
  }

  /** Judges running rollouts again and republishes every notice the database says is out; then renews daily. */
  start (): void {
    void this.run('rebuild', async () => {
      for (const id of await runningRollouts(this.deps.db)) {
        const effects = await advanceRollout(this.deps.db, id, this.deps.now())
        if (effects !== undefined) await this.withdraw(effects.clear)
      }
      const notices = await activeNotices(this.deps.db)
      await this.publish(notices)
      this.deps.log.info({ notices: notices.length }, 'OTA notices rebuilt')
    })
    this.timer = setInterval(() => { void this.run('renew', async () => { await this.publish(await activeNotices(this.deps.db)) }) }, this.deps.renewMs ?? NOTICE_RENEW_MS)
    this.timer.unref()
  }

  async stop (): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer)
    for (const u of this.unsubscribes.splice(0)) u()
    await this.queue.catch(() => {})
  }

  /** An admin action; its notices are out (or withdrawn) when this resolves. */
  act (id: string, action: RolloutAction): Promise<ActionResult> {
    return this.run(`${action} ${id}`, async () => {
      const result = await applyAction(this.deps.db, id, action, this.deps.now())
      if (result.ok) {
        await this.apply(result)
        this.deps.log.info({ rolloutId: id, action, state: result.rollout.state, stage: result.rollout.currentStage }, 'rollout changed')
      }
      return result
    })
  }

  /**
   * What GET /v1/ota/check answers a device running `version` on `hardware`: the notice of its running
   * rollout, or undefined when it is current. The report is recorded like a reported state.
   */
  async check (deviceId: string, hardware: string, version: string): Promise<OtaNotice | undefined> {
    const succeeded = await recordFirmware(this.deps.db, deviceId, { hardware, version }, this.deps.now())
    if (succeeded.length > 0) this.deviceReported(deviceId)
    const offer = await offerFor(this.deps.db, deviceId)
    if (offer === undefined || offer.version === version || offer.hardware !== hardware) return undefined
    return this.notice(offer)
  }

  /** A device finished an update (or failed it): its running rollouts are judged again. */
  private deviceReported (deviceId: string): void {
    void this.run(`report ${deviceId}`, async () => {
      for (const id of await runningRolloutsOf(this.deps.db, deviceId)) {
        const effects = await advanceRollout(this.deps.db, id, this.deps.now())
        if (effects !== undefined) await this.apply(effects)
      }
    })
  }

  private run<T> (what: string, step: () => Promise<T>): Promise<T> {
    const next = this.queue.then(step)
    // the queue goes on after a failed step; the failure is logged here and reaches the caller, if any
    this.queue = next.catch((err: unknown) => { this.deps.log.warn({ err, what }, 'rollout step failed') })
    return next
  }

  private async apply (effects: RolloutEffects): Promise<void> {
    const withdrawn = new Set(effects.clear)
    const notify = effects.notify.filter(d => !withdrawn.has(d))
    if (notify.length > 0) await this.publish(await activeNotices(this.deps.db, { rolloutId: effects.rollout.id, deviceIds: notify }))
    await this.withdraw(effects.clear)
    if (effects.rollout.state !== 'running') this.deps.log.info({ rolloutId: effects.rollout.id, state: effects.rollout.state, reason: effects.rollout.pausedReason ?? undefined }, 'rollout stopped moving')
  }

  private notice (s: NoticeSource): OtaNotice {
    const url = this.deps.publicUrl() + this.deps.firmware.signedDownloadUrl(s.firmwareId, this.deps.now(), NOTICE_LINK_TTL_MS)
    return { version: s.version, url, size: s.size, sha256: s.sha256, signature: s.signature }
  }

  private async publish (notices: readonly NoticeSource[]): Promise<void> {
    for (const s of notices) {
      await this.deps.broker.publish(deviceTopic(s.deviceId, 'ota'), Buffer.from(JSON.stringify(this.notice(s))), { qos: 1, retain: true })
    }
  }

  /** An empty retained payload removes the retained notice [MQTT-3.3.1-10]. */
  private async withdraw (deviceIds: readonly string[]): Promise<void> {
    for (const id of deviceIds) await this.deps.broker.publish(deviceTopic(id, 'ota'), Buffer.alloc(0), { qos: 1, retain: true })
  }
}
