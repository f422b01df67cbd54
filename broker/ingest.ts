// Group commit of telemetry: concurrent publishes share one database statement, acknowledged only once it committed.

import type { Logger } from 'pino'
import type { StoredRow } from '../db/telemetry.ts'

interface Pending {
  readonly rows: readonly StoredRow[]
  readonly done: (() => void) | undefined // set for durable (QoS 1) writes: called after commit
}

export interface IngestStats {
  batches: number
  rows: number
  droppedRows: number // QoS 0 rows dropped while the database could not keep up or was down
  dbErrors: number
  lastBatchRows: number
  onBatch?: (rows: number, seconds: number) => void
}

export interface GroupCommitterOptions {
  readonly write: (rows: readonly StoredRow[]) => Promise<void>
  readonly log: Logger
  // rows per statement: large enough to amortise a commit, small enough that one batch's arrays stay a few MB
  readonly maxBatchRows?: number
  // QoS 0 rows that may wait; beyond this they are dropped and counted (QoS 1 is never dropped: its
  // publisher is paused until its rows commit, which bounds it)
  readonly maxPendingRows?: number
  // statements committing at once: a server database overlaps them on its own cores; an embedded one
  // runs on our thread, where a second statement would only wait
  readonly maxInFlight?: number
  readonly retryMinMs?: number
  readonly retryMaxMs?: number
  readonly sleep?: (ms: number) => Promise<void>
  readonly now?: () => number
}

const DEFAULT_MAX_BATCH_ROWS = 5000
const DEFAULT_MAX_PENDING_ROWS = 100_000
// first retry soon (a blip), then back off to once every 5 s during an outage
const DEFAULT_RETRY_MIN_MS = 100
const DEFAULT_RETRY_MAX_MS = 5000

export class GroupCommitter {
  readonly stats: IngestStats = { batches: 0, rows: 0, droppedRows: 0, dbErrors: 0, lastBatchRows: 0 }
  private readonly opts: Required<Omit<GroupCommitterOptions, 'log' | 'write'>> & Pick<GroupCommitterOptions, 'log' | 'write'>
  private queue: Pending[] = []
  private queuedRows = 0
  private scheduled = false
  private inFlight = 0
  // batches are numbered as they start and acknowledged in that order, whichever commits first:
  // a publisher's PUBACKs must go out in the order of its PUBLISHes [MQTT-4.6.0-2]
  private started = 0
  private acknowledged = 0
  private readonly committed = new Map<number, Pending[]>()
  private failingSince: number | undefined
  private idleWaiters: Array<() => void> = []

  constructor (opts: GroupCommitterOptions) {
    this.opts = {
      maxBatchRows: DEFAULT_MAX_BATCH_ROWS,
      maxPendingRows: DEFAULT_MAX_PENDING_ROWS,
      maxInFlight: 1,
      retryMinMs: DEFAULT_RETRY_MIN_MS,
      retryMaxMs: DEFAULT_RETRY_MAX_MS,
      sleep: ms => new Promise(resolve => setTimeout(resolve, ms)),
      now: Date.now,
      ...opts,
    }
  }

  /** True while the database refuses writes; for /health. */
  get failing (): boolean {
    return this.failingSince !== undefined
  }

  get pendingRows (): number {
    return this.queuedRows
  }

  /**
   * Queues rows. With `done`, the write is durable: `done` runs after the rows committed, however long
   * the database is away. Without it (QoS 0) rows are dropped when too many are waiting; returns false then.
   */
  add (rows: readonly StoredRow[], done?: () => void): boolean {
    if (done === undefined && this.queuedRows + rows.length > this.opts.maxPendingRows) {
      this.stats.droppedRows += rows.length
      return false
    }
    this.queue.push({ rows, done })
    this.queuedRows += rows.length
    if (!this.scheduled && this.inFlight < this.opts.maxInFlight) {
      this.scheduled = true
      // wait for the rest of this I/O turn so every publish parsed from the same reads joins the batch
      setImmediate(() => {
        this.scheduled = false
        this.launch()
      })
    }
    return true
  }

  /** Resolves when everything queued so far has committed (used at shutdown). */
  async idle (): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return
    await new Promise<void>(resolve => this.idleWaiters.push(resolve))
  }

  private takeBatch (): Pending[] {
    let rows = 0
    let n = 0
    while (n < this.queue.length && (n === 0 || rows + this.queue[n]!.rows.length <= this.opts.maxBatchRows)) {
      rows += this.queue[n]!.rows.length
      n++
    }
    const batch = this.queue.slice(0, n)
    this.queue = this.queue.slice(n)
    this.queuedRows -= rows
    return batch
  }

  /** Starts batches while there is room; each start takes everything queued (up to a batch). */
  private launch (): void {
    while (this.inFlight < this.opts.maxInFlight && this.queue.length > 0) {
      const batch = this.takeBatch()
      const rows = batch.length === 1 ? batch[0]!.rows : batch.flatMap(p => p.rows)
      const n = this.started++
      this.inFlight++
      void this.commit(rows).then(() => {
        this.inFlight--
        this.committed.set(n, batch)
        this.acknowledgeInOrder()
        this.launch()
      })
    }
    if (this.inFlight === 0 && this.queue.length === 0) {
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const w of waiters) w()
    }
  }

  private acknowledgeInOrder (): void {
    for (let batch = this.committed.get(this.acknowledged); batch !== undefined; batch = this.committed.get(this.acknowledged)) {
      this.committed.delete(this.acknowledged++)
      for (const p of batch) p.done?.()
    }
  }

  /** Writes one batch, retrying with backoff until it commits: acknowledged data is never given up. */
  private async commit (rows: readonly StoredRow[]): Promise<void> {
    let delay = this.opts.retryMinMs
    for (;;) {
      const start = this.opts.now()
      try {
        await this.opts.write(rows)
        const seconds = (this.opts.now() - start) / 1000
        this.stats.batches++
        this.stats.rows += rows.length
        this.stats.lastBatchRows = rows.length
        this.stats.onBatch?.(rows.length, seconds)
        if (this.failingSince !== undefined) {
          this.opts.log.info({ downMs: this.opts.now() - this.failingSince }, 'telemetry writes recovered')
          this.failingSince = undefined
        }
        return
      } catch (err) {
        this.stats.dbErrors++
        if (this.failingSince === undefined) {
          this.failingSince = this.opts.now()
          this.opts.log.error({ err, rows: rows.length }, 'telemetry write failed; QoS 1 publishers wait unacknowledged while it is retried')
        }
        await this.opts.sleep(delay)
        delay = Math.min(delay * 2, this.opts.retryMaxMs)
      }
    }
  }
}
