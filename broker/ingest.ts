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
  private running = false
  private failingSince: number | undefined
  private idleWaiters: Array<() => void> = []

  constructor (opts: GroupCommitterOptions) {
    this.opts = {
      maxBatchRows: DEFAULT_MAX_BATCH_ROWS,
      maxPendingRows: DEFAULT_MAX_PENDING_ROWS,
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
    if (!this.running) {
      this.running = true
      // wait for the rest of this I/O turn so every publish parsed from the same reads joins the batch
      setImmediate(() => { void this.run() })
    }
    return true
  }

  /** Resolves when everything queued so far has committed (used at shutdown). */
  async idle (): Promise<void> {
    if (!this.running && this.queue.length === 0) return
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

  private async run (): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.takeBatch()
      const rows = batch.length === 1 ? batch[0]!.rows : batch.flatMap(p => p.rows)
      await this.commit(rows)
      for (const p of batch) p.done?.()
    }
    this.running = false
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
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
