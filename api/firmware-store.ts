// Firmware images on disk (<data dir>/firmware/<id>.bin): streamed in while hashed and size-checked,
// their digests signed with Ed25519, and downloads authorised by signed, expiring links.

import { createHash, createHmac, createPublicKey, sign, timingSafeEqual, type KeyObject } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, readdir, rename, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { DOWNLOAD_LINK_TTL_MS } from '../schemas/firmware.ts'
import { firmwareSigningKey } from '../secrets.ts'

// an upload still being written after this long was cut off by a crash; its temporary file is removed
const STALE_UPLOAD_MS = 3600 * 1000
const UPLOAD_SUFFIX = '.part'

/** An image streamed to a temporary file, not yet in the store. */
export interface ReceivedImage {
  readonly tempPath: string
  readonly size: number
  readonly sha256: Buffer // raw digest bytes
  readonly tooLarge: boolean // more than maxBytes arrived: nothing past the limit was written
}

export type LinkCheck = 'ok' | 'signature' | 'expired'

export interface FirmwareStore {
  readonly dir: string
  readonly maxBytes: number
  readonly publicKey: KeyObject
  path (id: string): string
  /**
   * Streams `source` into a temporary file for `id`, computing SHA-256 and size on the way. Past maxBytes
   * it stops writing but keeps reading (and dropping) the source, so the client is answered rather than
   * cut off mid-upload. On any failure the temporary file is removed.
   */
  receive (id: string, source: Readable): Promise<ReceivedImage>
  /** Moves a received image to its place in the store. */
  commit (id: string, image: ReceivedImage): Promise<void>
  /** Removes an image's file; a file already gone is fine. */
  remove (path: string): Promise<void>
  /** Base64 Ed25519 signature over the 32 raw digest bytes. */
  signDigest (sha256: Buffer): string
  /** Path and query of a download link for `id` valid `ttlMs` from `now` (epoch ms); no credential needed. */
  signedDownloadUrl (id: string, now: number, ttlMs?: number): string
  /** Whether a link's `exp` (epoch s) and `sig` are genuine and still valid at `now` (epoch ms). */
  checkDownloadLink (id: string, exp: number, sig: string, now: number): LinkCheck
}

/** Counts, hashes and passes bytes on up to `max`; beyond that it only counts, so the source still drains. */
class Meter extends Transform {
  readonly hash = createHash('sha256')
  size = 0
  private readonly max: number
  constructor (max: number) {
    super()
    this.max = max
  }
  override _transform (chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void): void {
    const before = this.size
    this.size += chunk.length
    if (this.size <= this.max) {
      this.hash.update(chunk)
      done(null, chunk)
    } else if (before < this.max) {
      // the part of this chunk that still fits is written, so the file never exceeds the limit
      const head = chunk.subarray(0, this.max - before)
      this.hash.update(head)
      done(null, head)
    } else {
      done()
    }
  }
}

/** The HMAC key of download links, derived so the data dir's link secret can later sign other kinds of link. */
function linkKey (urlSecret: string): Buffer {
  return createHmac('sha256', urlSecret).update('roost firmware download link v1').digest()
}

function linkSignature (key: Buffer, id: string, exp: number): Buffer {
  return createHmac('sha256', key).update(`${id}:${exp}`).digest()
}

/** A presented `sig`: 64 hex characters or 43 base64url ones (both are 32 bytes); anything else is no signature. */
function decodeSignature (sig: string): Buffer | undefined {
  if (/^[0-9a-fA-F]{64}$/.test(sig)) return Buffer.from(sig, 'hex')
  if (/^[A-Za-z0-9_-]{43}$/.test(sig)) return Buffer.from(sig, 'base64url')
  return undefined
}

export async function openFirmwareStore (opts: { dataDir: string, maxBytes: number, urlSecret: string }): Promise<FirmwareStore> {
  const dir = join(opts.dataDir, 'firmware')
  await mkdir(dir, { recursive: true })
  await removeStaleUploads(dir, Date.now())
  const signingKey = firmwareSigningKey(opts.dataDir)
  const key = linkKey(opts.urlSecret)

  const store: FirmwareStore = {
    dir,
    maxBytes: opts.maxBytes,
    publicKey: createPublicKey(signingKey),
    path: id => join(dir, `${id}.bin`),

    async receive (id, source) {
      const tempPath = join(dir, id + '.bin' + UPLOAD_SUFFIX)
      const meter = new Meter(opts.maxBytes)
      try {
        // 'wx': ids are random, so an existing file means something is wrong; never overwrite
        await pipeline(source, meter, createWriteStream(tempPath, { flags: 'wx', mode: 0o600 }))
      } catch (err) {
        await store.remove(tempPath)
        throw err
      }
      return { tempPath, size: meter.size, sha256: meter.hash.digest(), tooLarge: meter.size > opts.maxBytes }
    },

    async commit (id, image) {
      await rename(image.tempPath, store.path(id))
    },

    async remove (path) {
      await unlink(path).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
    },

    signDigest: sha256 => sign(null, sha256, signingKey).toString('base64'),

    signedDownloadUrl (id, now, ttlMs = DOWNLOAD_LINK_TTL_MS) {
      const exp = Math.ceil((now + ttlMs) / 1000)
      return `/v1/firmware/${id}/download?exp=${exp}&sig=${linkSignature(key, id, exp).toString('base64url')}`
    },

    checkDownloadLink (id, exp, sig, now) {
      const presented = decodeSignature(sig)
      // the signature is checked first: a forged link learns nothing, not even whether its time is up
      if (presented === undefined || !timingSafeEqual(presented, linkSignature(key, id, exp))) return 'signature'
      return now > exp * 1000 ? 'expired' : 'ok'
    },
  }
  return store
}

async function removeStaleUploads (dir: string, now: number): Promise<void> {
  for (const name of await readdir(dir)) {
    if (!name.endsWith(UPLOAD_SUFFIX)) continue
    const path = join(dir, name)
    const info = await stat(path).catch(() => undefined)
    if (info !== undefined && now - info.mtimeMs > STALE_UPLOAD_MS) await unlink(path).catch(() => {})
  }
}
