// Webhook delivery: events are recorded as deliveries (in batches, off the event path) and sent by a
// worker with bounded concurrency, signed, retried with exponential backoff and jitter for a bounded time.
// Nothing here runs on the broker's ingest path: a slow or failing receiver only delays its own deliveries.

import { createHmac } from 'node:crypto'
import type { Logger } from 'pino'
import type { Database } from '../db/open.ts'
import { claimDue, insertDeliveries, listWebhooks, recordAttempt, type NewDelivery } from '../db/webhooks.ts'
import type { DeliveryRow, WebhookRow } from '../schemas/db/webhooks.ts'
import type { HubEvent } from './events.ts'

// first retry after about a second, doubling to at most five minutes between attempts
const BACKOFF_BASE_MS = 1000
const BACKOFF_MAX_MS = 5 * 60 * 1000
// attempts in flight at once, across all webhooks
const CONCURRENCY = 8
// recorded events are written in batches this often (and at once when this many wait)
const RECORD_EVERY_MS = 100
const RECORD_BATCH = 500
// events waiting to be recorded, at most; beyond it (the database is away) new ones are dropped and logged
const MAX_UNRECORDED = 10_000
const POLL_MS = 250

export const SIGNATURE_HEADER = 'x-roost-signature'

/** `sha256=<hex>` of HMAC-SHA256(secret, body): what a receiver recomputes to trust a delivery. */
export function sign (secret: string, body: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(body).digest('hex')
}

/** Exponential backoff with jitter: between half and all of base·2^(attempt−1), capped. */
export function backoff (attempt: number, random: () => number = Math.random): number {
  const full = Math.min(BACKOFF_BASE_MS * 2 ** (attempt - 1), BACKOFF_MAX_MS)
  return Math.round(full / 2 + random() * full / 2)
}

export interface DispatcherOptions {
  readonly db: Database
  readonly log: Logger
  readonly retryWindowMs: number
  readonly timeoutMs: number
  readonly now?: () => number
}

export class WebhookDispatcher {
  private hooks: WebhookRow[] = []
  private unrecorded: NewDelivery[] = []
  private dropped = 0
  private inFlight = 0
  private timers: NodeJS.Timeout[] = []
  private stopped = false
  private readonly now: () => number

  constructor (private readonly opts: DispatcherOptions) {
    this.now = opts.now ?? Date.now
  }

  async start (): Promise<void> {
    await this.reload()
    this.timers.push(setInterval(() => { void this.record() }, RECORD_EVERY_MS))
    this.timers.push(setInterval(() => { void this.send() }, POLL_MS))
    for (const t of this.timers) t.unref()
  }

  async stop (): Promise<void> {
    this.stopped = true
    for (const t of this.timers) clearInterval(t)
    await this.record()
  }

  /** Webhooks were created or deleted. */
  async reload (): Promise<void> {
    this.hooks = await listWebhooks(this.opts.db)
  }

  /** Called for every hub event; only queues, so the event path never waits for the database or a receiver. */
  onEvent (e: HubEvent): void {
    for (const hook of this.hooks) {
      if (!hook.events.includes(e.type)) continue
      if (hook.deviceIds !== null && !hook.deviceIds.includes(e.deviceId)) continue
      if (this.unrecorded.length >= MAX_UNRECORDED) {
        if (this.dropped++ % 1000 === 0) this.opts.log.warn({ dropped: this.dropped }, 'webhook events dropped: the database is not taking deliveries')
        continue
      }
      const body = `{"event":"${e.type}","eventId":${e.id},"ts":${this.now()},"data":${e.data}}`
      this.unrecorded.push({ webhookId: hook.id, event: e.type, deviceId: e.deviceId, body })
      if (this.unrecorded.length >= RECORD_BATCH) void this.record()
    }
  }

  private recording: Promise<void> | undefined
  private async record (): Promise<void> {
    if (this.recording !== undefined) return await this.recording
    if (this.unrecorded.length === 0) return
    const batch = this.unrecorded
    this.unrecorded = []
    this.recording = insertDeliveries(this.opts.db, batch, this.now()).catch((err: unknown) => {
      this.unrecorded = batch.concat(this.unrecorded).slice(0, MAX_UNRECORDED)
      this.opts.log.warn({ err, deliveries: batch.length }, 'recording webhook deliveries failed; will retry')
    }).finally(() => { this.recording = undefined })
    await this.recording
  }

  private async send (): Promise<void> {
    if (this.stopped || this.inFlight >= CONCURRENCY) return
    let due: DeliveryRow[]
    try {
      // a claim lasts a little longer than one attempt may
      due = await claimDue(this.opts.db, this.now(), CONCURRENCY - this.inFlight, this.opts.timeoutMs + 5000)
    } catch (err) {
      this.opts.log.warn({ err }, 'claiming webhook deliveries failed')
      return
    }
    for (const d of due) {
      this.inFlight++
      void this.attempt(d).finally(() => { this.inFlight-- })
    }
  }

  private async attempt (d: DeliveryRow): Promise<void> {
    const hook = this.hooks.find(h => h.id === d.webhookId)
    if (hook === undefined) return // deleted meanwhile; its deliveries went with it
    let httpStatus: number | null = null
    let error: string | null = null
    try {
      const res = await fetch(hook.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'roost-webhooks/1',
          'x-roost-event': d.event,
          'x-roost-delivery': d.id,
          [SIGNATURE_HEADER]: sign(hook.secret, d.body),
        },
        body: d.body,
        signal: AbortSignal.timeout(this.opts.timeoutMs),
        redirect: 'manual', // a receiver that moved must be re-registered, not followed blindly
      })
      httpStatus = res.status
      await res.body?.cancel()
      if (res.status < 200 || res.status >= 300) error = `HTTP ${res.status}`
    } catch (err) {
      error = (err as Error).name === 'TimeoutError' ? `no answer within ${this.opts.timeoutMs} ms` : (err as Error).message
    }
    const now = this.now()
    const attempts = d.attempts + 1
    let next: number | 'give-up' | undefined
    if (error !== null) {
      const at = now + backoff(attempts)
      next = at - d.createdAt > this.opts.retryWindowMs ? 'give-up' : at
      this.opts.log.info({ webhookId: hook.id, deliveryId: d.id, attempts, error, next }, 'webhook delivery failed')
    }
    try {
      await recordAttempt(this.opts.db, d.id, { httpStatus, error, next }, now)
    } catch (err) {
      // the claim runs out and the delivery is attempted again: at least once
      this.opts.log.warn({ err, deliveryId: d.id }, 'recording a webhook attempt failed')
    }
  }
}
