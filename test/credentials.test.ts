// Login lookups: grouped into one query per I/O turn, cached, and never caching an answer made stale by a change.

import { describe, expect, it } from 'vitest'
import { DeviceCredentials } from '../broker/credentials.ts'
import type { DeviceCredential } from '../broker/identity.ts'

function store (rows: Record<string, string>) {
  const calls: string[][] = []
  let gate: Promise<void> = Promise.resolve()
  return {
    calls,
    hold (): () => void { let open!: () => void; gate = new Promise(resolve => { open = resolve }); return open },
    load: async (ids: readonly string[]): Promise<Map<string, DeviceCredential>> => {
      calls.push([...ids])
      // the rows are read when the query starts, as a database reads them
      const found = new Map(ids.filter(id => rows[id] !== undefined).map(id => [id, { tokenHash: rows[id] as string }]))
      await gate
      return found
    },
  }
}

describe('device credential lookups', () => {
  it('a thousand logins arriving together cost one query, and each gets its own answer', async () => {
    const s = store(Object.fromEntries(Array.from({ length: 1000 }, (_v, i) => [`d${i}`, `h${i}`])))
    const creds = new DeviceCredentials(s.load)
    const answers = await Promise.all(Array.from({ length: 1000 }, (_v, i) => creds.lookup(`d${i}`)))
    expect(s.calls).toHaveLength(1)
    expect(answers.map(a => a?.tokenHash)).toEqual(Array.from({ length: 1000 }, (_v, i) => `h${i}`))
  })

  it('more ids than one query takes are looked up in several queries, none lost', async () => {
    const s = store(Object.fromEntries(Array.from({ length: 2500 }, (_v, i) => [`d${i}`, `h${i}`])))
    const creds = new DeviceCredentials(s.load)
    const answers = await Promise.all(Array.from({ length: 2500 }, (_v, i) => creds.lookup(`d${i}`)))
    expect(s.calls.map(c => c.length)).toEqual([1000, 1000, 500])
    expect(answers.every((a, i) => a?.tokenHash === `h${i}`)).toBe(true)
  })

  it('answers, "no such device" included, are cached until forgotten', async () => {
    const s = store({ a: 'ha' })
    const creds = new DeviceCredentials(s.load)
    expect(await creds.lookup('a')).toEqual({ tokenHash: 'ha' })
    expect(await creds.lookup('ghost')).toBeUndefined()
    expect(await creds.lookup('a')).toEqual({ tokenHash: 'ha' })
    expect(await creds.lookup('ghost')).toBeUndefined()
    expect(s.calls).toHaveLength(2)
    creds.forget('a')
    await creds.lookup('a')
    expect(s.calls).toHaveLength(3)
  })

  it('a lookup in flight while the device changes is answered but not cached, so the next login sees the change', async () => {
    const rows: Record<string, string> = { a: 'old' }
    const s = store(rows)
    const creds = new DeviceCredentials(s.load)
    const open = s.hold()
    const inFlight = creds.lookup('a')
    await new Promise(resolve => setImmediate(resolve))
    rows.a = 'new' // the token is rotated while the query runs (it already read the old row)
    creds.forget('a')
    open()
    expect((await inFlight)?.tokenHash).toBe('old')
    expect((await creds.lookup('a'))?.tokenHash).toBe('new')
  })

  it('a failed query rejects its logins and caches nothing', async () => {
    let fail = true
    const creds = new DeviceCredentials(async ids => {
      if (fail) throw new Error('database down')
      return new Map(ids.map(id => [id, { tokenHash: 'h' }]))
    })
    await expect(creds.lookup('a')).rejects.toThrow('database down')
    fail = false
    expect(await creds.lookup('a')).toEqual({ tokenHash: 'h' })
  })

  it('a cache primed from the fleet at start answers known devices without a query, up to its bound', async () => {
    const s = store({ c: 'hc' })
    const creds = new DeviceCredentials(s.load, 2)
    creds.prime([{ id: 'a', tokenHash: 'ha' }, { id: 'b', tokenHash: 'hb' }, { id: 'c', tokenHash: 'hc' }])
    expect(await creds.lookup('a')).toEqual({ tokenHash: 'ha' })
    expect(await creds.lookup('b')).toEqual({ tokenHash: 'hb' })
    expect(s.calls).toEqual([])
    expect(await creds.lookup('c')).toEqual({ tokenHash: 'hc' }) // beyond the bound: read when needed
    expect(s.calls).toEqual([['c']])
  })
})
