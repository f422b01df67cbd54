// Device credentials for logins: cached, and looked up in groups, so a reconnect storm of thousands of
// devices costs a few queries rather than one per login.

import type { DeviceCredential } from './identity.ts'

type Loader = (ids: readonly string[]) => Promise<ReadonlyMap<string, DeviceCredential>>

interface Waiter { resolve (c: DeviceCredential | undefined): void, reject (err: unknown): void }

// one statement looks up at most this many ids; more wait for the next statement
const MAX_IDS_PER_QUERY = 1000
// cached answers (including "no such device"); a flood of unknown ids clears the cache rather than grow it
const DEFAULT_MAX_ENTRIES = 100_000

export class DeviceCredentials {
  private readonly cache = new Map<string, DeviceCredential | null>()
  private pending = new Map<string, Waiter[]>()
  private running = false
  // bumped by forget(): a lookup that was in flight across a forget() must not cache its stale answer
  private version = 0

  constructor (private readonly load: Loader, private readonly maxEntries = DEFAULT_MAX_ENTRIES) {}

  lookup (id: string): Promise<DeviceCredential | undefined> {
    const cached = this.cache.get(id)
    if (cached !== undefined) return Promise.resolve(cached ?? undefined)
    return new Promise((resolve, reject) => {
      const waiters = this.pending.get(id)
      if (waiters !== undefined) waiters.push({ resolve, reject })
      else this.pending.set(id, [{ resolve, reject }])
      if (!this.running) {
        this.running = true
        // let every login parsed in this I/O turn join the same query
        setImmediate(() => { void this.run() })
      }
    })
  }

  /** Fills the cache from a read of the whole fleet at start, up to its bound; logins then need no query. */
  prime (devices: Iterable<{ id: string, tokenHash: string }>): void {
    for (const d of devices) {
      if (this.cache.size >= this.maxEntries) break
      this.cache.set(d.id, { tokenHash: d.tokenHash })
    }
  }

  /** The device was created, changed or deleted: the next login reads the database again. */
  forget (id: string): void {
    this.cache.delete(id)
    this.version++
  }

  private async run (): Promise<void> {
    while (this.pending.size > 0) {
      const batch = new Map<string, Waiter[]>()
      for (const [id, waiters] of this.pending) {
        batch.set(id, waiters)
        if (batch.size >= MAX_IDS_PER_QUERY) break
      }
      for (const id of batch.keys()) this.pending.delete(id)
      const version = this.version
      try {
        const found = await this.load([...batch.keys()])
        const cacheable = version === this.version
        if (cacheable && this.cache.size + batch.size > this.maxEntries) this.cache.clear()
        for (const [id, waiters] of batch) {
          const credential = found.get(id)
          if (cacheable) this.cache.set(id, credential ?? null)
          for (const w of waiters) w.resolve(credential)
        }
      } catch (err) {
        for (const waiters of batch.values()) for (const w of waiters) w.reject(err)
      }
    }
    this.running = false
  }
}
