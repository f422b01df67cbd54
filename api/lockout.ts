// Brute-force protection: failures are counted per key (an email, a username, an IP, a device being
// claimed); past a threshold the key is locked for a time that doubles with each further failure. While
// locked every attempt is refused, a correct one too, so guessing gains nothing from waiting it out
// quickly. In memory: one broker or API node sees the attempts made to it.

export interface LockoutOptions {
  readonly threshold: number // failures allowed before the first lock
  readonly baseMs: number // the first lock's length
  readonly maxMs: number // no lock is longer
  readonly forgetMs: number // a key quiet this long starts again from zero
  readonly maxKeys?: number // keys tracked at most; the oldest are forgotten first
}

export const DEFAULT_LOCKOUT: LockoutOptions = { threshold: 5, baseMs: 1000, maxMs: 15 * 60_000, forgetMs: 15 * 60_000 }
// enough for a burst from many addresses; each entry is a few dozen bytes
const DEFAULT_MAX_KEYS = 100_000

interface Entry { failures: number, lastAt: number, lockedUntil: number }

export class Lockout {
  private readonly entries = new Map<string, Entry>()
  lockouts = 0 // locks started, for metrics

  constructor (private readonly opts: LockoutOptions = DEFAULT_LOCKOUT, private readonly now: () => number = Date.now) {}

  /** Milliseconds until every key may try again; 0 when none is locked. */
  retryAfter (keys: readonly string[]): number {
    const t = this.now()
    let wait = 0
    for (const k of keys) {
      const e = this.entries.get(k)
      if (e !== undefined && e.lockedUntil > t) wait = Math.max(wait, e.lockedUntil - t)
    }
    return wait
  }

  /** Counts a failure against every key; returns the keys that became locked by it. */
  fail (keys: readonly string[]): string[] {
    const t = this.now()
    const locked: string[] = []
    for (const k of keys) {
      let e = this.entries.get(k)
      if (e === undefined || t - e.lastAt > this.opts.forgetMs) e = { failures: 0, lastAt: t, lockedUntil: 0 }
      this.entries.delete(k) // re-inserted last: the map stays in least-recently-failed order
      e.failures++
      e.lastAt = t
      const over = e.failures - this.opts.threshold
      if (over >= 0) {
        e.lockedUntil = t + Math.min(this.opts.baseMs * 2 ** Math.min(over, 30), this.opts.maxMs)
        this.lockouts++
        locked.push(k)
      }
      this.entries.set(k, e)
    }
    const max = this.opts.maxKeys ?? DEFAULT_MAX_KEYS
    for (const k of this.entries.keys()) {
      if (this.entries.size <= max) break
      this.entries.delete(k)
    }
    return locked
  }

  /** A success clears the keys' failures. */
  succeed (keys: readonly string[]): void {
    for (const k of keys) this.entries.delete(k)
  }
}

/**
 * Login failures counted twice: per account (an email, an MQTT username, a device being claimed) with a
 * low threshold, and per client address with a higher one, since many people can share an address (NAT).
 */
export class LoginGuard {
  readonly accounts: Lockout
  readonly addresses: Lockout

  constructor (opts: { readonly addressThreshold: number }, now: () => number = Date.now) {
    this.accounts = new Lockout(DEFAULT_LOCKOUT, now)
    this.addresses = new Lockout({ ...DEFAULT_LOCKOUT, threshold: opts.addressThreshold }, now)
  }

  get lockouts (): number {
    return this.accounts.lockouts + this.addresses.lockouts
  }

  /** Milliseconds until both may try again; 0 when neither is locked. */
  retryAfter (account: string | undefined, address: string | undefined): number {
    return Math.max(account === undefined ? 0 : this.accounts.retryAfter([account]), address === undefined ? 0 : this.addresses.retryAfter([address]))
  }

  /** Counts a failure; returns what became locked by it. */
  fail (account: string | undefined, address: string | undefined): string[] {
    return [...(account === undefined ? [] : this.accounts.fail([account])), ...(address === undefined ? [] : this.addresses.fail([address]))]
  }

  succeed (account: string | undefined): void {
    if (account !== undefined) this.accounts.succeed([account])
  }
}
