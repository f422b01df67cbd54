// Password hashing with Node's scrypt, a memory-hard KDF: each guess costs an attacker 32 MiB and tens
// of milliseconds. Stored as scrypt$N$r$p$salt$hash (base64url), so the cost can rise later without
// breaking stored hashes.

import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto'

// OWASP's scrypt floor is N=2^17 with r=8 for interactive logins on servers; 2^15 keeps a login
// ~60 ms on a small 2-core box while still needing 32 MiB per guess
const N = 2 ** 15
const R = 8
const P = 1
const KEY_BYTES = 32
const SALT_BYTES = 16
// scrypt needs 128·N·r bytes; Node's default cap (32 MiB) is exactly that, leave room
const maxmem = (n: number, r: number): number => 256 * n * r

export const PASSWORD_MIN_LENGTH = 8

function derive (password: string, salt: Buffer, n: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, KEY_BYTES, { N: n, r, p, maxmem: maxmem(n, r) }, (err, key) => err === null ? resolve(key) : reject(err))
  })
}

export async function hashPassword (password: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES)
  const key = await derive(password, salt, N, R, P)
  return ['scrypt', N, R, P, salt.toString('base64url'), key.toString('base64url')].join('$')
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, key] = stored.split('$')
  if (kind !== 'scrypt' || salt === undefined || key === undefined) return false
  const expected = Buffer.from(key, 'base64url')
  const actual = await derive(password, Buffer.from(salt, 'base64url'), Number(n), Number(r), Number(p))
  return actual.length === expected.length && timingSafeEqual(actual, expected)
}

// A hash to compare against when the email is unknown, so a login takes as long either way and does not
// tell which addresses have accounts.
let decoy: Promise<string> | undefined
export function decoyHash (): Promise<string> {
  decoy ??= hashPassword(randomBytes(16).toString('hex'))
  return decoy
}
