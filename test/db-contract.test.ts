// The database contract: one suite run against each backend (embedded PGlite and a real Postgres server),
// so the two answer every query in db/ the same way.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase, type Database } from '../db/open.ts'
import { maintain } from '../db/maintenance.ts'
import { allDesired, getState, mergeReported, patchDesired } from '../db/state.ts'
import { CommandStore, createCommand, deliverable, expireDue, finishCommand, listCommands, markSent } from '../db/commands.ts'
import { createLogger } from '../log.ts'
import { recording } from './recording-db.ts'
import {
  createDevice, deleteDevice, deviceByTokenHash, getDevice, hashToken, listDevices, rotateDeviceToken, tokenMatches,
  updateDevice, writeLastSeen,
} from '../db/devices.ts'
import { insertTelemetry, latestTelemetry, telemetryAggregate, telemetryRange, type LatestValue, type RangeCursor, type StoredRow } from '../db/telemetry.ts'
import type { TelemetryScalar } from '../schemas/telemetry.ts'
import { freshDataDir } from './harness.ts'
import { postgresUnavailable, startPostgres, type PostgresServer } from './postgres.ts'

/** One database of a backend: open() may be called again after close() and reaches the same data. */
interface Store {
  open (): Promise<Database>
  dispose (): Promise<void>
}

interface Backend {
  /** A database no migration has touched. */
  empty (): Promise<Store>
  /** A database with the migrations applied (cheap: PGlite copies the template). */
  migrated (): Promise<Store>
  stop (): Promise<void>
}

const T0 = Date.UTC(2024, 0, 1) // a whole day, so minute and hour buckets start at T0
const MIGRATIONS = fileURLToPath(new URL('../db/migrations', import.meta.url))
const journal = JSON.parse(readFileSync(join(MIGRATIONS, 'meta', '_journal.json'), 'utf8')) as { entries: unknown[] }

function row (deviceId: string, key: string, ts: number, value: TelemetryScalar): StoredRow {
  return { deviceId, key, ts, value }
}

/** Reads every page of a raw range; each page is checked to hold at most `limit` rows. */
async function allPages (db: Database, q: { deviceId: string, from: number, to: number, keys?: string[], limit: number }): Promise<{ rows: LatestValue[], pages: number }> {
  const rows: LatestValue[] = []
  let after: RangeCursor | undefined
  let pages = 0
  for (;;) {
    const page = await telemetryRange(db, { deviceId: q.deviceId, from: q.from, to: q.to, keys: q.keys, limit: q.limit, after })
    pages++
    expect(page.rows.length).toBeLessThanOrEqual(q.limit)
    rows.push(...page.rows)
    if (page.next === undefined) return { rows, pages }
    after = page.next
    if (pages > 10_000) throw new Error('range paging does not end')
  }
}

function sortKey (r: { key: string, ts: number, value: TelemetryScalar }): string {
  return `${String(r.ts).padStart(16, '0')}|${r.key}|${JSON.stringify(r.value)}`
}

/** Walks an EXPLAIN (FORMAT JSON) plan tree. */
interface PlanNode { 'Node Type': string, 'Relation Name'?: string, 'Index Name'?: string, Plans?: PlanNode[] }
function planNodes (node: PlanNode): PlanNode[] {
  return [node, ...(node.Plans ?? []).flatMap(planNodes)]
}

async function explain (db: Database, text: string, params: readonly unknown[]): Promise<PlanNode[]> {
  const rows = await db.query<{ 'QUERY PLAN': unknown }>('EXPLAIN (FORMAT JSON) ' + text, params)
  let plan = rows[0]?.['QUERY PLAN']
  if (typeof plan === 'string') plan = JSON.parse(plan)
  return planNodes((plan as Array<{ Plan: PlanNode }>)[0]!.Plan)
}

function dbContract (name: string, startBackend: () => Promise<Backend>, skipReason?: string): void {
  const suite = skipReason === undefined ? describe : describe.skip
  suite(`database contract on ${name}`, () => {
    let backend: Backend
    let store: Store
    let db: Database

    beforeAll(async () => {
      backend = await startBackend()
      store = await backend.migrated()
      db = await store.open()
    })
    afterAll(async () => {
      await db?.close()
      await store?.dispose()
      await backend?.stop()
    })

    describe('migrations', () => {
      it('create every table and index on a fresh database and apply nothing twice when it is reopened', async () => {
        const fresh = await backend.empty()
        try {
          const first = await fresh.open()
          const tables = await first.query<{ table_name: string }>(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
          expect(tables.map(t => t.table_name)).toEqual(['api_keys', 'claim_codes', 'commands', 'device_firmware', 'device_state', 'devices', 'firmware', 'provision_nonces', 'rollout_devices', 'rollouts', 'telemetry', 'telemetry_hourly', 'telemetry_latest', 'user_sessions', 'users', 'voice_conversations', 'voice_sessions', 'voice_settings', 'voice_transcripts', 'voice_usage', 'webhook_deliveries', 'webhooks'])
          const indexes = await first.query<{ indexname: string }>("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname")
          expect(indexes.map(i => i.indexname)).toEqual(expect.arrayContaining([
            'devices_owner_idx', 'devices_pkey', 'devices_token_hash_idx', 'telemetry_device_key_ts_idx', 'telemetry_latest_device_id_key_pk',
          ]))
          const applied = await first.query<{ n: number }>('SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations')
          expect(applied[0]?.n).toBe(journal.entries.length)
          await createDevice(first, { id: 'survives-reopen' }, T0)
          await insertTelemetry(first, [row('survives-reopen', 'v', T0, 1)])
          await first.close()

          const second = await fresh.open()
          const again = await second.query<{ n: number }>('SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations')
          expect(again[0]?.n).toBe(journal.entries.length)
          expect((await getDevice(second, 'survives-reopen'))?.id).toBe('survives-reopen')
          expect(await latestTelemetry(second, 'survives-reopen')).toEqual([{ key: 'v', ts: T0, value: 1 }])
          await second.close()
        } finally {
          await fresh.dispose()
        }
      })
    })

    describe('devices', () => {
      it('a created device has a token that only its stored hash matches, and a second create with the same id is refused', async () => {
        const created = await createDevice(db, { id: 'dev-create', name: 'Kitchen', ownerId: 'u1' }, T0)
        expect(created).toBeDefined()
        const { row: r, token } = created!
        expect(r).toMatchObject({ id: 'dev-create', name: 'Kitchen', ownerId: 'u1', createdAt: T0, updatedAt: T0, lastSeen: null })
        expect(r.tokenHash).not.toContain(token)
        expect(tokenMatches(token, r.tokenHash)).toBe(true)
        expect(tokenMatches(token + 'x', r.tokenHash)).toBe(false)
        expect((await deviceByTokenHash(db, hashToken(token)))?.id).toBe('dev-create')

        expect(await createDevice(db, { id: 'dev-create' }, T0 + 1)).toBeUndefined()
        expect((await getDevice(db, 'dev-create'))?.tokenHash).toBe(r.tokenHash)
      })

      it('get returns undefined for an unknown id, and list pages in id order', async () => {
        expect(await getDevice(db, 'no-such-device')).toBeUndefined()
        for (const id of ['list-c', 'list-a', 'list-b', 'list-d']) await createDevice(db, { id }, T0)
        const seen: string[] = []
        let after: string | undefined = 'list-'
        for (;;) {
          const page = await listDevices(db, { limit: 3, after })
          const mine = page.filter(d => d.id.startsWith('list-'))
          seen.push(...mine.map(d => d.id))
          if (page.length < 3 || mine.length < page.length) break
          after = page[page.length - 1]!.id
        }
        expect(seen).toEqual(['list-a', 'list-b', 'list-c', 'list-d'])
        const ids = (await listDevices(db, { limit: 1000, after: undefined })).map(d => d.id)
        expect(ids).toEqual([...ids].sort())
      })

      it('update changes name and owner and the update time, and answers undefined for an unknown id', async () => {
        await createDevice(db, { id: 'dev-update', name: 'old' }, T0)
        const updated = await updateDevice(db, 'dev-update', { name: 'new', ownerId: 'u2' }, T0 + 5)
        expect(updated).toMatchObject({ id: 'dev-update', name: 'new', ownerId: 'u2', createdAt: T0, updatedAt: T0 + 5 })
        expect(await getDevice(db, 'dev-update')).toMatchObject({ name: 'new', ownerId: 'u2' })
        const cleared = await updateDevice(db, 'dev-update', { name: null }, T0 + 6)
        expect(cleared).toMatchObject({ name: null, ownerId: 'u2' })
        expect(await updateDevice(db, 'no-such-device', { name: 'x' }, T0)).toBeUndefined()
      })

      it('rotating a token makes the old one stop matching and the new one match', async () => {
        const { token: old } = (await createDevice(db, { id: 'dev-rotate' }, T0))!
        const fresh = await rotateDeviceToken(db, 'dev-rotate', T0 + 1)
        expect(fresh).toBeDefined()
        expect(fresh).not.toBe(old)
        const stored = (await getDevice(db, 'dev-rotate'))!
        expect(tokenMatches(old, stored.tokenHash)).toBe(false)
        expect(tokenMatches(fresh!, stored.tokenHash)).toBe(true)
        expect(stored.updatedAt).toBe(T0 + 1)
        expect(await deviceByTokenHash(db, hashToken(old))).toBeUndefined()
        expect(await rotateDeviceToken(db, 'no-such-device', T0)).toBeUndefined()
      })

      it('delete removes the device with its telemetry and latest rows, and leaves other devices alone', async () => {
        await createDevice(db, { id: 'dev-delete' }, T0)
        await createDevice(db, { id: 'dev-keep' }, T0)
        await insertTelemetry(db, [row('dev-delete', 't', T0, 1), row('dev-delete', 't', T0 + 1, 2), row('dev-keep', 't', T0, 3)])
        expect(await deleteDevice(db, 'dev-delete')).toBe(true)
        expect(await getDevice(db, 'dev-delete')).toBeUndefined()
        const left = await db.query<{ n: number }>(
          'SELECT (SELECT count(*) FROM telemetry WHERE device_id = $1)::int + (SELECT count(*) FROM telemetry_latest WHERE device_id = $1)::int AS n', ['dev-delete'])
        expect(left[0]?.n).toBe(0)
        expect(await latestTelemetry(db, 'dev-delete')).toEqual([])
        expect(await latestTelemetry(db, 'dev-keep')).toEqual([{ key: 't', ts: T0, value: 3 }])
        expect(await deleteDevice(db, 'dev-delete')).toBe(false)
      })

      it('last-seen times for many devices are written in one call and never move backwards', async () => {
        for (const id of ['seen-1', 'seen-2', 'seen-3']) await createDevice(db, { id }, T0)
        await writeLastSeen(db, new Map([['seen-1', T0 + 1000], ['seen-2', T0 + 2000], ['seen-ghost', T0]]))
        expect((await getDevice(db, 'seen-1'))?.lastSeen).toBe(T0 + 1000)
        expect((await getDevice(db, 'seen-2'))?.lastSeen).toBe(T0 + 2000)
        expect((await getDevice(db, 'seen-3'))?.lastSeen).toBeNull()
        expect(await getDevice(db, 'seen-ghost')).toBeUndefined()

        await writeLastSeen(db, new Map([['seen-1', T0 + 500], ['seen-2', T0 + 3000], ['seen-3', T0 + 10]]))
        expect((await getDevice(db, 'seen-1'))?.lastSeen).toBe(T0 + 1000)
        expect((await getDevice(db, 'seen-2'))?.lastSeen).toBe(T0 + 3000)
        expect((await getDevice(db, 'seen-3'))?.lastSeen).toBe(T0 + 10)
        await writeLastSeen(db, new Map()) // nothing to write is not an error
      })
    })

    describe('device state', () => {
      it('concurrent desired patches apply one after another, each with its own version, and a stale version is refused', async () => {
        const results = await Promise.all(Array.from({ length: 10 }, (_v, i) => patchDesired(db, 'twin', { [`k${i}`]: i }, undefined, T0 + i)))
        expect(results.every(r => r.ok)).toBe(true)
        const state = await getState(db, 'twin')
        expect(state.desiredVersion).toBe(10)
        expect(Object.keys(state.desired).sort()).toEqual(Array.from({ length: 10 }, (_v, i) => `k${i}`).sort())
        expect(await patchDesired(db, 'twin', { x: 1 }, 3, T0)).toEqual({ ok: false, reason: 'version', currentVersion: 10 })
        const reported = await mergeReported(db, 'twin', { k0: 0, extra: { deep: true } }, T0)
        expect(reported.ok && reported.row.reported).toEqual({ k0: 0, extra: { deep: true } })
        expect((await allDesired(db)).find(d => d.deviceId === 'twin')?.desiredVersion).toBe(10)
      })
    })

    describe('commands', () => {
      it('deliver in creation order, take one result each, refuse foreign or final ones, and expire on time', async () => {
        const made = []
        for (let i = 0; i < 5; i++) made.push(await createCommand(db, { deviceId: 'cmd-dev', name: `n${i}`, params: { i }, now: T0, expiresAt: T0 + 1000 }))
        expect((await deliverable(db, 'cmd-dev', false, T0)).map(c => c.name)).toEqual(['n0', 'n1', 'n2', 'n3', 'n4'])
        await markSent(db, [made[0]!.id, made[1]!.id], T0 + 1)
        expect((await deliverable(db, 'cmd-dev', false, T0 + 2)).map(c => c.name)).toEqual(['n2', 'n3', 'n4'])
        expect((await deliverable(db, 'cmd-dev', true, T0 + 2)).map(c => c.name)).toEqual(['n0', 'n1', 'n2', 'n3', 'n4'])
        const ok = await finishCommand(db, 'cmd-dev', made[0]!.id, { ok: true, result: { a: [1, 2] } }, T0 + 3)
        expect(ok.ok && ok.row).toMatchObject({ status: 'succeeded', result: { a: [1, 2] } })
        expect(await finishCommand(db, 'cmd-dev', made[0]!.id, { ok: false, error: 'x' }, T0 + 4)).toEqual({ ok: false, reason: 'final', status: 'succeeded' })
        expect(await finishCommand(db, 'other-dev', made[1]!.id, { ok: true }, T0 + 4)).toEqual({ ok: false, reason: 'not-found' })
        const late = await finishCommand(db, 'cmd-dev', made[1]!.id, { ok: true }, T0 + 5000)
        expect(late).toMatchObject({ ok: false, reason: 'final', status: 'expired' })
        const expired = await expireDue(db, T0 + 1000)
        expect(expired.map(c => c.name).sort()).toEqual(['n2', 'n3', 'n4'])
        expect(await deliverable(db, 'cmd-dev', true, T0)).toEqual([])
        expect((await listCommands(db, 'cmd-dev', { status: undefined, limit: 10, now: T0 })).map(c => c.name)).toEqual(['n4', 'n3', 'n2', 'n1', 'n0'])
      })

      it('batched: concurrent creates, claims and results share statements and keep each call\'s own answer', async () => {
        for (const id of ['batch-a', 'batch-b']) await createDevice(db, { id }, T0)
        const commands = new CommandStore(db)
        const made = await Promise.all([
          commands.create({ deviceId: 'batch-a', name: 'a0', params: { n: 1 }, now: T0, expiresAt: T0 + 1000 }),
          commands.create({ deviceId: 'batch-b', name: 'b0', params: {}, now: T0, expiresAt: T0 + 1000 }),
          commands.create({ deviceId: 'batch-a', name: 'a1', params: {}, now: T0, expiresAt: T0 + 1000 }),
          commands.create({ deviceId: 'no-such-device', name: 'x', params: {}, now: T0, expiresAt: T0 + 1000 }),
        ])
        expect(made.map(c => c?.name)).toEqual(['a0', 'b0', 'a1', undefined])
        expect(made[0]).toMatchObject({ status: 'queued', params: { n: 1 }, createdAt: T0, expiresAt: T0 + 1000, sentAt: null })
        const [a, b, again] = await Promise.all([
          commands.claimDeliverable('batch-a', false, T0 + 1),
          commands.claimDeliverable('batch-b', false, T0 + 1),
          commands.claimDeliverable('batch-a', false, T0 + 1),
        ])
        expect(a.map(c => c.name)).toEqual(['a0', 'a1'])
        expect(a.every(c => c.status === 'sent' && c.sentAt === T0 + 1)).toBe(true)
        expect(b.map(c => c.name)).toEqual(['b0'])
        expect(again).toEqual([])
        // claimed once: only a resend (a new session) gets them again, with their first sent time
        expect(await commands.claimDeliverable('batch-a', false, T0 + 2)).toEqual([])
        expect((await commands.claimDeliverable('batch-a', true, T0 + 2)).map(c => [c.name, c.sentAt])).toEqual([['a0', T0 + 1], ['a1', T0 + 1]])
        const [ok, failed, twice, foreign] = await Promise.all([
          commands.finish('batch-a', made[0]!.id, { ok: true, result: 'pong' }, T0 + 3),
          commands.finish('batch-b', made[1]!.id, { ok: false, error: 'jammed' }, T0 + 3),
          commands.finish('batch-a', made[0]!.id, { ok: true, result: 'again' }, T0 + 3),
          commands.finish('batch-b', made[2]!.id, { ok: true }, T0 + 3),
        ])
        expect(ok).toMatchObject({ ok: true, row: { status: 'succeeded', result: 'pong', finishedAt: T0 + 3 } })
        expect(failed).toMatchObject({ ok: true, row: { status: 'failed', error: 'jammed', result: null } })
        expect(twice).toEqual({ ok: false, reason: 'final', status: 'succeeded' })
        expect(foreign).toEqual({ ok: false, reason: 'not-found' })
        expect(await commands.finish('batch-a', made[2]!.id, { ok: true }, T0 + 5000)).toMatchObject({ ok: false, reason: 'final', status: 'expired' })
      })
    })

    describe('values that COPY text format must escape', () => {
      it('keys and strings with tabs, newlines, carriage returns, backslashes and \\N are stored exactly', async () => {
        const tricky = ['tab\there', 'line\nbreak', 'cr\rhere', 'back\\slash', '\\N', 'end\\', 'ünïcødé ✓', '']
        const stored = tricky.map((v, i) => row('escapes', `k${i}\t${v.slice(0, 8)}`, T0 + i, v))
        await insertTelemetry(db, stored)
        const latest = await latestTelemetry(db, 'escapes')
        expect(new Map(latest.map(l => [l.key, l.value]))).toEqual(new Map(stored.map(r => [r.key, r.value])))
        const { rows } = await telemetryRange(db, { deviceId: 'escapes', from: T0, to: T0 + 100, keys: undefined, limit: 100, after: undefined })
        expect(rows.map(r => r.value)).toEqual(tricky)
      })
    })

    describe('latest telemetry', () => {
      it('keeps each key\'s newest reading and round-trips numbers, strings, booleans and null', async () => {
        await insertTelemetry(db, [
          row('lt-types', 'n', T0, 21.5), row('lt-types', 's', T0, 'open'), row('lt-types', 'b', T0, false), row('lt-types', 'z', T0, null),
          row('lt-types', 'n', T0 + 10, -3), row('lt-types', 'i', T0, 9007199254740991),
        ])
        expect(await latestTelemetry(db, 'lt-types')).toEqual([
          { key: 'b', ts: T0, value: false },
          { key: 'i', ts: T0, value: 9007199254740991 },
          { key: 'n', ts: T0 + 10, value: -3 },
          { key: 's', ts: T0, value: 'open' },
          { key: 'z', ts: T0, value: null },
        ])
        expect(await latestTelemetry(db, 'lt-types', ['s', 'n', 'missing'])).toEqual([
          { key: 'n', ts: T0 + 10, value: -3 },
          { key: 's', ts: T0, value: 'open' },
        ])
        expect(await latestTelemetry(db, 'lt-nobody')).toEqual([])
      })

      it('never moves backwards when an older reading arrives later', async () => {
        await insertTelemetry(db, [row('lt-order', 'temp', T0 + 2000, 20)])
        await insertTelemetry(db, [row('lt-order', 'temp', T0 + 1000, 10)])
        expect(await latestTelemetry(db, 'lt-order')).toEqual([{ key: 'temp', ts: T0 + 2000, value: 20 }])
        // the older reading is still stored as history
        const range = await telemetryRange(db, { deviceId: 'lt-order', from: T0, to: T0 + 5000, keys: undefined, limit: 10, after: undefined })
        expect(range.rows.map(r => r.value)).toEqual([10, 20])
        // in one batch too: the newest wins whatever its position
        await insertTelemetry(db, [row('lt-order', 'temp', T0 + 4000, 40), row('lt-order', 'temp', T0 + 3000, 30)])
        expect(await latestTelemetry(db, 'lt-order')).toEqual([{ key: 'temp', ts: T0 + 4000, value: 40 }])
      })

      it('a reading with the same time that arrives later wins, across batches and within one', async () => {
        await insertTelemetry(db, [row('lt-same', 'mode', T0, 'a')])
        await insertTelemetry(db, [row('lt-same', 'mode', T0, 'b')])
        expect(await latestTelemetry(db, 'lt-same')).toEqual([{ key: 'mode', ts: T0, value: 'b' }])
        await insertTelemetry(db, [row('lt-same', 'mode', T0 + 1, 'c'), row('lt-same', 'mode', T0 + 1, 'd')])
        expect(await latestTelemetry(db, 'lt-same')).toEqual([{ key: 'mode', ts: T0 + 1, value: 'd' }])
      })

      it('an empty batch stores nothing and is not an error', async () => {
        await insertTelemetry(db, [])
        expect(await latestTelemetry(db, 'lt-empty')).toEqual([])
      })
    })

    describe('telemetry ranges', () => {
      // 3 keys over 10 instants; each (key, ts) holds 1–3 readings with distinct values, inserted in several batches
      const DEVICE = 'rg-dup'
      const expected: StoredRow[] = []
      for (let t = 0; t < 10; t++) {
        for (const [k, key] of ['a', 'b', 'c'].entries()) {
          const copies = 1 + ((t + k) % 3)
          for (let d = 0; d < copies; d++) expected.push(row(DEVICE, key, T0 + t * 1000, `${key}${t}.${d}`))
        }
      }
      beforeAll(async () => {
        // interleave so that duplicates of one (key, ts) land in different batches
        const shuffled = [...expected.filter((_, i) => i % 2 === 1), ...expected.filter((_, i) => i % 2 === 0)]
        for (let i = 0; i < shuffled.length; i += 7) await insertTelemetry(db, shuffled.slice(i, i + 7))
        await insertTelemetry(db, [row('rg-other', 'a', T0 + 1000, 'not mine')])
      })

      it('returns rows in time order, then key, with from inclusive and to exclusive', async () => {
        const page = await telemetryRange(db, { deviceId: DEVICE, from: T0 + 2000, to: T0 + 5000, keys: undefined, limit: 1000, after: undefined })
        expect(page.next).toBeUndefined()
        const want = expected.filter(r => r.ts >= T0 + 2000 && r.ts < T0 + 5000)
        expect(page.rows).toHaveLength(want.length)
        expect(page.rows.map(sortKey).sort()).toEqual(want.map(sortKey).sort())
        const order = page.rows.map(r => `${String(r.ts).padStart(16, '0')}|${r.key}`)
        expect(order).toEqual([...order].sort())
        expect(page.rows[0]?.ts).toBe(T0 + 2000)
        expect(page.rows[page.rows.length - 1]?.ts).toBe(T0 + 4000)
      })

      it('returns only the asked keys', async () => {
        const page = await telemetryRange(db, { deviceId: DEVICE, from: T0, to: T0 + 100_000, keys: ['c', 'a', 'nope'], limit: 1000, after: undefined })
        expect(new Set(page.rows.map(r => r.key))).toEqual(new Set(['a', 'c']))
        expect(page.rows).toHaveLength(expected.filter(r => r.key !== 'b').length)
      })

      it('returns nothing for a device without telemetry', async () => {
        expect(await telemetryRange(db, { deviceId: 'rg-nobody', from: T0, to: T0 + 1000, keys: undefined, limit: 10, after: undefined }))
          .toEqual({ rows: [], next: undefined })
      })

      it.each([1, 2, 3, 4, 5, 7, 11, 59])('pages of %i rows return every row exactly once, even where readings share key and time', async limit => {
        const { rows, pages } = await allPages(db, { deviceId: DEVICE, from: T0, to: T0 + 100_000, limit })
        expect(rows.map(sortKey).sort()).toEqual(expected.map(sortKey).sort())
        const order = rows.map(r => `${String(r.ts).padStart(16, '0')}|${r.key}`)
        expect(order).toEqual([...order].sort())
        expect(pages).toBeGreaterThanOrEqual(Math.ceil(expected.length / limit))
      })

      it('pages keep keys in one order whatever the database collation (case, punctuation, accents)', async () => {
        // under a linguistic collation (en-US) "a" < "B" < "é" < "_x"; bytewise "B" < "Z" < "_x" < "a" < "é"
        const keys = ['B', 'a', 'Z', '_x', 'é', 'b']
        const rows: StoredRow[] = []
        for (let t = 0; t < 3; t++) for (const key of keys) for (let d = 0; d < 2; d++) rows.push(row('rg-collate', key, T0 + t, t * 10 + d))
        await insertTelemetry(db, rows)
        for (const limit of [1, 2, 5]) {
          const paged = await allPages(db, { deviceId: 'rg-collate', from: T0, to: T0 + 10, limit })
          expect(paged.rows.map(sortKey).sort()).toEqual(rows.map(sortKey).sort())
        }
      })

      it('pages with a keys filter also return every row once', async () => {
        const { rows } = await allPages(db, { deviceId: DEVICE, from: T0 + 1000, to: T0 + 9000, keys: ['b', 'c'], limit: 2 })
        const want = expected.filter(r => r.key !== 'a' && r.ts >= T0 + 1000 && r.ts < T0 + 9000)
        expect(rows.map(sortKey).sort()).toEqual(want.map(sortKey).sort())
      })
    })

    describe('telemetry aggregates', () => {
      const DEVICE = 'agg'
      const MIN = 60_000
      beforeAll(async () => {
        await insertTelemetry(db, [
          // minute 0: two numbers and a string for temp; one number for hum
          row(DEVICE, 'temp', T0 + 1000, 10), row(DEVICE, 'temp', T0 + 2000, 20), row(DEVICE, 'temp', T0 + 3000, 'sensor error'),
          row(DEVICE, 'hum', T0 + 5000, 40),
          // minute 1: only a string and a boolean for temp
          row(DEVICE, 'temp', T0 + MIN, 'offline'), row(DEVICE, 'temp', T0 + MIN + 1, true),
          // minute 3: negative and fractional numbers, and a null
          row(DEVICE, 'temp', T0 + 3 * MIN, -1.5), row(DEVICE, 'temp', T0 + 3 * MIN + 59_999, 2.5), row(DEVICE, 'temp', T0 + 3 * MIN + 10, null),
          row(DEVICE, 'hum', T0 + 3 * MIN, 50),
          // minute 5 is outside the queries' `to`
          row(DEVICE, 'temp', T0 + 5 * MIN, 1000),
        ])
      })

      it('gives min, max and avg of numbers per bucket and counts every reading, strings included', async () => {
        const { buckets, nextTs } = await telemetryAggregate(db, { deviceId: DEVICE, from: T0, to: T0 + 5 * MIN, keys: undefined, interval: MIN, limit: 100, afterTs: undefined })
        expect(nextTs).toBeUndefined()
        expect(buckets).toEqual([
          { key: 'hum', ts: T0, min: 40, max: 40, avg: 40, count: 1 },
          { key: 'temp', ts: T0, min: 10, max: 20, avg: 15, count: 3 },
          { key: 'temp', ts: T0 + MIN, min: null, max: null, avg: null, count: 2 },
          { key: 'hum', ts: T0 + 3 * MIN, min: 50, max: 50, avg: 50, count: 1 },
          { key: 'temp', ts: T0 + 3 * MIN, min: -1.5, max: 2.5, avg: 0.5, count: 3 },
        ])
      })

      it('aggregates only the asked keys over the asked interval', async () => {
        const { buckets } = await telemetryAggregate(db, { deviceId: DEVICE, from: T0, to: T0 + 10 * MIN, keys: ['temp'], interval: 10 * MIN, limit: 100, afterTs: undefined })
        expect(buckets).toEqual([{ key: 'temp', ts: T0, min: -1.5, max: 1000, avg: (10 + 20 - 1.5 + 2.5 + 1000) / 5, count: 9 }])
      })

      it('pages end on whole buckets and together equal the unpaged answer', async () => {
        const q = { deviceId: DEVICE, from: T0, to: T0 + 10 * MIN, keys: undefined, interval: MIN }
        const whole = await telemetryAggregate(db, { ...q, limit: 100, afterTs: undefined })
        const paged: typeof whole.buckets = []
        let afterTs: number | undefined
        for (let i = 0; i < 20; i++) {
          const page = await telemetryAggregate(db, { ...q, limit: 1, afterTs })
          paged.push(...page.buckets)
          expect(new Set(page.buckets.map(b => b.ts)).size).toBeLessThanOrEqual(1)
          if (page.nextTs === undefined) break
          afterTs = page.nextTs
        }
        expect(paged).toEqual(whole.buckets)
        expect(new Set(whole.buckets.map(b => b.ts)).size).toBe(4)
      })

      it('returns no buckets for a device without telemetry', async () => {
        expect(await telemetryAggregate(db, { deviceId: 'agg-nobody', from: T0, to: T0 + MIN, keys: undefined, interval: MIN, limit: 10, afterTs: undefined }))
          .toEqual({ buckets: [], nextTs: undefined })
      })
    })

    describe('hourly rollup', () => {
      const DEVICE = 'rollup'
      const HOUR = 3_600_000
      // 30 hours of readings every 7 minutes, with strings and nulls mixed in, for two keys
      const readings: StoredRow[] = []
      for (let t = T0 + 13_000; t < T0 + 30 * HOUR; t += 7 * 60_000) {
        const i = readings.length
        readings.push(row(DEVICE, 'temp', t, i % 11 === 0 ? 'glitch' : i % 13 === 0 ? null : ((i * 37) % 101) / 4 - 5))
        readings.push(row(DEVICE, 'hum', t + 1, 30 + (i % 9)))
      }
      beforeAll(async () => {
        // in several batches, so the rollup is built by upserts as well as inserts
        for (let i = 0; i < readings.length; i += 97) await insertTelemetry(db, readings.slice(i, i + 97))
      })

      // what the aggregate must be, computed by brute force from the readings
      function expectedBuckets (from: number, to: number, interval: number): Array<{ key: string, ts: number, min: number | null, max: number | null, avg: number | null, count: number }> {
        const by = new Map<string, { key: string, ts: number, nums: number[], count: number }>()
        for (const r of readings) {
          if (r.ts < from || r.ts >= to) continue
          const ts = r.ts - (r.ts % interval)
          const k = `${ts}|${r.key}`
          const b = by.get(k) ?? { key: r.key, ts, nums: [], count: 0 }
          b.count++
          if (typeof r.value === 'number') b.nums.push(r.value)
          by.set(k, b)
        }
        return [...by.values()]
          .sort((a, b) => a.ts - b.ts || (a.key < b.key ? -1 : 1))
          .map(b => ({
            key: b.key,
            ts: b.ts,
            min: b.nums.length === 0 ? null : Math.min(...b.nums),
            max: b.nums.length === 0 ? null : Math.max(...b.nums),
            avg: b.nums.length === 0 ? null : b.nums.reduce((x, y) => x + y, 0) / b.nums.length,
            count: b.count,
          }))
      }

      it.each([
        ['1 h over whole hours', 0, 30 * HOUR, HOUR],
        ['1 h with ragged edges (partial first and last hour)', 17 * 60_000 + 5, 29 * HOUR - 123_456, HOUR],
        ['3 h with ragged edges', 42 * 60_000, 28 * HOUR + 1, 3 * HOUR],
        ['1 d across the whole range', 5_000, 30 * HOUR, 24 * HOUR],
        ['1 h within one hour', 2 * HOUR + 60_000, 2 * HOUR + 40 * 60_000, HOUR],
      ])('an aggregate at %s equals the one computed from every reading', async (_name, from, to, interval) => {
        const { buckets, nextTs } = await telemetryAggregate(db, { deviceId: DEVICE, from: T0 + from, to: T0 + to, keys: undefined, interval, limit: 1000, afterTs: undefined })
        expect(nextTs).toBeUndefined()
        const want = expectedBuckets(T0 + from, T0 + to, interval)
        expect(buckets.map(b => ({ ...b, avg: null }))).toEqual(want.map(b => ({ ...b, avg: null })))
        // sums of partial sums round differently from one sum: close, not bit-identical
        buckets.forEach((b, i) => { if (want[i]!.avg === null) expect(b.avg).toBeNull(); else expect(b.avg).toBeCloseTo(want[i]!.avg!, 9) })
      })

      it('pages of hour buckets read one window each and together equal the unpaged answer', async () => {
        const q = { deviceId: DEVICE, from: T0 + 999, to: T0 + 30 * HOUR, keys: ['temp'], interval: HOUR }
        const whole = await telemetryAggregate(db, { ...q, limit: 1000, afterTs: undefined })
        const paged: typeof whole.buckets = []
        let afterTs: number | undefined
        for (let i = 0; i < 50; i++) {
          const page = await telemetryAggregate(db, { ...q, limit: 7, afterTs })
          expect(new Set(page.buckets.map(b => b.ts)).size).toBeLessThanOrEqual(7)
          paged.push(...page.buckets)
          if (page.nextTs === undefined) break
          afterTs = page.nextTs
        }
        expect(paged).toEqual(whole.buckets)
        expect(whole.buckets).toHaveLength(30)
      })

      it('skips empty windows in sparse data instead of returning empty pages', async () => {
        await insertTelemetry(db, [row('sparse', 'k', T0, 1), row('sparse', 'k', T0 + 200 * HOUR + 5, 2), row('sparse', 'k', T0 + 900 * HOUR, 3)])
        const q = { deviceId: 'sparse', from: T0, to: T0 + 1000 * HOUR, keys: undefined, interval: HOUR, limit: 10 }
        const first = await telemetryAggregate(db, { ...q, afterTs: undefined })
        expect(first.buckets.map(b => b.min)).toEqual([1])
        const second = await telemetryAggregate(db, { ...q, afterTs: first.nextTs })
        expect(second.buckets.map(b => [b.ts, b.min])).toEqual([[T0 + 200 * HOUR, 2]])
        const third = await telemetryAggregate(db, { ...q, afterTs: second.nextTs })
        expect(third.buckets.map(b => b.min)).toEqual([3])
        expect(third.nextTs === undefined || (await telemetryAggregate(db, { ...q, afterTs: third.nextTs })).buckets.length === 0).toBe(true)
      })

      it('maintenance (vacuum and statistics) runs on a live database and leaves the data as it was', async () => {
        const before = await telemetryAggregate(db, { deviceId: DEVICE, from: T0, to: T0 + 30 * HOUR, keys: undefined, interval: HOUR, limit: 1000, afterTs: undefined })
        await maintain(db, createLogger('silent'))
        const stats = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stats WHERE tablename = 'telemetry_hourly'")
        expect(Number(stats[0]!.n)).toBeGreaterThan(0)
        expect(await telemetryAggregate(db, { deviceId: DEVICE, from: T0, to: T0 + 30 * HOUR, keys: undefined, interval: HOUR, limit: 1000, afterTs: undefined })).toEqual(before)
      })

      it('deleting a device removes its rollup too', async () => {
        await createDevice(db, { id: 'rollup-gone' }, T0)
        await insertTelemetry(db, [row('rollup-gone', 'k', T0 + 5, 1)])
        expect((await db.query('SELECT 1 FROM telemetry_hourly WHERE device_id = $1', ['rollup-gone'])).length).toBe(1)
        expect(await deleteDevice(db, 'rollup-gone')).toBe(true)
        expect((await db.query('SELECT 1 FROM telemetry_hourly WHERE device_id = $1', ['rollup-gone'])).length).toBe(0)
      })
    })

    describe('query plans', () => {
      const DEVICES = 50
      const KEYS = ['temp', 'hum', 'volt', 'rssi']
      const PER_KEY = 250 // 50 devices × 4 keys × 250 = 50,000 rows
      beforeAll(async () => {
        for (let d = 0; d < DEVICES; d++) {
          const rows: StoredRow[] = []
          for (const key of KEYS) for (let i = 0; i < PER_KEY; i++) rows.push(row(`plan-${d}`, key, T0 + i * 60_000, i % 17))
          await insertTelemetry(db, rows)
        }
        await db.query('ANALYZE telemetry')
      })

      it('a raw range for one key of one device reads telemetry_device_key_ts_idx, not the whole table', async () => {
        const rec = recording(db)
        const page = await telemetryRange(rec.db, { deviceId: 'plan-7', from: T0 + 10 * 60_000, to: T0 + 100 * 60_000, keys: ['hum'], limit: 50, after: undefined })
        expect(page.rows).toHaveLength(50)
        const statement = rec.statements[rec.statements.length - 1]!
        const nodes = await explain(db, statement.text, statement.params)
        expect(nodes.filter(n => n['Relation Name'] === 'telemetry').map(n => n['Index Name'] ?? n['Node Type']))
          .toEqual(['telemetry_device_key_ts_idx'])
        expect(nodes.some(n => n['Node Type'] === 'Seq Scan')).toBe(false)
      })

      it('a range that continues from a cursor reads the index too', async () => {
        const first = await telemetryRange(db, { deviceId: 'plan-3', from: T0, to: T0 + 300 * 60_000, keys: ['temp', 'volt'], limit: 100, after: undefined })
        const rec = recording(db)
        await telemetryRange(rec.db, { deviceId: 'plan-3', from: T0, to: T0 + 300 * 60_000, keys: ['temp', 'volt'], limit: 100, after: first.next })
        const statement = rec.statements[rec.statements.length - 1]!
        const nodes = await explain(db, statement.text, statement.params)
        const scans = nodes.filter(n => n['Relation Name'] === 'telemetry')
        expect(scans).toHaveLength(2)
        expect(scans.every(n => n['Index Name'] === 'telemetry_device_key_ts_idx')).toBe(true)
      })

      it('an aggregate over one key of one device reads the index, not the whole table', async () => {
        const rec = recording(db)
        const { buckets } = await telemetryAggregate(rec.db, { deviceId: 'plan-9', from: T0, to: T0 + 300 * 60_000, keys: ['rssi'], interval: 3_600_000, limit: 100, afterTs: undefined })
        expect(buckets.reduce((n, b) => n + b.count, 0)).toBe(PER_KEY)
        const statement = rec.statements[rec.statements.length - 1]!
        const nodes = await explain(db, statement.text, statement.params)
        expect(nodes.some(n => n['Index Name'] === 'telemetry_device_key_ts_idx')).toBe(true)
        expect(nodes.some(n => n['Node Type'] === 'Seq Scan')).toBe(false)
      })
    })
  })
}

function pgliteBackend (): Promise<Backend> {
  const dirs: string[] = []
  const store = (dir: string): Store => {
    dirs.push(dir)
    return {
      open: () => openDatabase({ url: undefined, dataDir: dir }),
      dispose: async () => { rmSync(dir, { recursive: true, force: true }) },
    }
  }
  return Promise.resolve({
    empty: async () => store(mkdtempSync(join(tmpdir(), 'roost-contract-empty-'))),
    migrated: async () => store(freshDataDir()),
    stop: async () => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) },
  })
}

async function postgresBackend (): Promise<Backend> {
  const server: PostgresServer = await startPostgres()
  const admin = postgres(server.url, { max: 1, onnotice: () => {} })
  const unusedDataDir = mkdtempSync(join(tmpdir(), 'roost-contract-pg-'))
  let n = 0
  const store = async (): Promise<Store> => {
    const name = `contract_${++n}`
    try {
      // servers in production mostly run a linguistic collation, not the C locale of a test machine
      await admin.unsafe(`CREATE DATABASE ${name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`)
    } catch (err) {
      console.warn(`Postgres has no ICU en-US collation (${String(err)}); the contract runs under the server's default collation`)
      await admin.unsafe(`CREATE DATABASE ${name}`)
    }
    const url = server.url.replace(/\/[^/]*$/, '/' + name)
    return {
      open: () => openDatabase({ url, dataDir: unusedDataDir }),
      dispose: async () => { await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) },
    }
  }
  return {
    empty: store,
    migrated: store, // a new Postgres database is cheap; opening it migrates it
    stop: async () => {
      await admin.end({ timeout: 5 })
      await server.stop()
      rmSync(unusedDataDir, { recursive: true, force: true })
    },
  }
}

dbContract('embedded PGlite', pgliteBackend)

const noPostgres = postgresUnavailable()
if (noPostgres !== undefined) {
  // CI installs Postgres: there a missing server is a failure, not a skip
  if (process.env.CI !== undefined && process.env.CI !== '') throw new Error(`the Postgres contract cannot run in CI: ${noPostgres}`)
  console.warn(`database contract on Postgres skipped: ${noPostgres}`)
}
dbContract('a Postgres server', postgresBackend, noPostgres)
