// Last-seen times: kept in memory per message, written to the database in one statement every few seconds.

import type { Logger } from 'pino'

export class LastSeen {
  private pending = new Map<string, number>()
  private timer: NodeJS.Timeout | undefined
  private flushing: Promise<void> | undefined

  constructor (
    private readonly write: (seen: ReadonlyMap<string, number>) => Promise<void>,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  start (): void {
    this.timer = setInterval(() => { void this.flush() }, this.intervalMs)
    this.timer.unref()
  }

  touch (deviceId: string, ts: number): void {
    this.pending.set(deviceId, ts)
  }

  async flush (): Promise<void> {
    if (this.flushing !== undefined) return await this.flushing
    if (this.pending.size === 0) return
    const batch = this.pending
    this.pending = new Map()
    this.flushing = this.write(batch).catch(err => {
      // keep the newer of the failed and the fresh times for the next attempt
      for (const [id, ts] of batch) if ((this.pending.get(id) ?? 0) < ts) this.pending.set(id, ts)
      this.log.warn({ err, devices: batch.size }, 'last-seen write failed; will retry')
    }).finally(() => { this.flushing = undefined })
    await this.flushing
  }

  async stop (): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer)
    await this.flush()
  }
}
