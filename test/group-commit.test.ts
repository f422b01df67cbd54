// The group committer: publishes share statements, acknowledgements follow commits and keep publish order.

import { describe, expect, it } from 'vitest'
import { GroupCommitter } from '../broker/ingest.ts'
import type { StoredRow } from '../db/telemetry.ts'
import { createLogger } from '../log.ts'

const log = createLogger('silent')
const rows = (n: number, tag: string): StoredRow[] => Array.from({ length: n }, (_v, i) => ({ deviceId: tag, key: 'k', ts: i, value: i }))
const tick = (): Promise<void> => new Promise(resolve => setImmediate(resolve))

describe('group commit', () => {
  it('publishes queued in the same turn share one statement, and each is acknowledged only after it committed', async () => {
    const statements: number[] = []
    let release!: () => void
    const committer = new GroupCommitter({ log, write: async r => { statements.push(r.length); await new Promise<void>(resolve => { release = resolve }) } })
    const acked: string[] = []
    for (let i = 0; i < 10; i++) committer.add(rows(2, `d${i}`), () => acked.push(`d${i}`))
    await tick()
    expect(statements).toEqual([20])
    expect(acked).toEqual([])
    release()
    await committer.idle()
    expect(acked).toEqual(Array.from({ length: 10 }, (_v, i) => `d${i}`))
  })

  it('with several statements in flight, a later one that commits first waits: acknowledgements keep publish order [MQTT-4.6.0-2]', async () => {
    const releases: Array<() => void> = []
    const committer = new GroupCommitter({
      log,
      maxInFlight: 3,
      maxBatchRows: 2, // one publish per statement
      write: async () => { await new Promise<void>(resolve => releases.push(resolve)) },
    })
    const acked: number[] = []
    for (let i = 0; i < 3; i++) committer.add(rows(2, 'd'), () => acked.push(i))
    await tick()
    expect(releases).toHaveLength(3) // three statements at once
    releases[2]!()
    releases[1]!()
    await tick()
    expect(acked).toEqual([]) // the first has not committed: nothing may be acknowledged yet
    releases[0]!()
    await committer.idle()
    expect(acked).toEqual([0, 1, 2])
  })

  it('a failing database is retried until it commits; nothing is acknowledged before, nothing is lost', async () => {
    let failures = 3
    const committed: number[] = []
    const committer = new GroupCommitter({
      log,
      retryMinMs: 1,
      retryMaxMs: 4,
      write: async r => {
        if (failures-- > 0) throw Object.assign(new Error('connection refused'), { code: 'ECONNREFUSED' })
        committed.push(r.length)
      },
    })
    let acked = false
    committer.add(rows(5, 'd'), () => { acked = true })
    await tick()
    expect(acked).toBe(false)
    await committer.idle()
    expect(acked).toBe(true)
    expect(committed).toEqual([5])
    expect(committer.stats.dbErrors).toBe(3)
  })

  it('QoS 0 rows beyond the pending bound are dropped and counted; QoS 1 rows never are', async () => {
    let release!: () => void
    const committer = new GroupCommitter({ log, maxPendingRows: 10, write: async () => { await new Promise<void>(resolve => { release = resolve }) } })
    committer.add(rows(1, 'first'), () => {})
    await tick() // the first statement is now in flight; the next rows wait in the queue
    expect(committer.add(rows(8, 'q0'))).toBe(true)
    expect(committer.add(rows(5, 'q0-over'))).toBe(false)
    expect(committer.add(rows(50, 'q1'), () => {})).toBe(true)
    expect(committer.stats.droppedRows).toBe(5)
    release()
    while (committer.pendingRows > 0 || committer.stats.batches < 2) { await tick(); release() }
    await committer.idle()
    expect(committer.stats.rows).toBe(1 + 8 + 50)
  })
})
