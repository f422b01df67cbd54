// Firmware store: images uploaded as a form or raw are streamed to disk, hashed and signed; downloads by
// signed, expiring link support ETag and byte ranges and are counted; oversized uploads leave nothing behind.

import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto'
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, startRoost, type TestRoost } from './harness.ts'
import { etagMatches, parseRange } from '../api/firmware.ts'
import { openFirmwareStore } from '../api/firmware-store.ts'
import { isSemver } from '../schemas/firmware.ts'
import { readSecrets } from '../secrets.ts'

const MiB = 1024 * 1024

interface Reply { status: number, body: any, headers: Headers }

async function asReply (res: Response): Promise<Reply> {
  const text = await res.text()
  let body: unknown = text
  try { body = text === '' ? undefined : JSON.parse(text) } catch { body = text }
  return { status: res.status, body, headers: res.headers }
}

function sha256 (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** POST /v1/firmware as a multipart form; fields go first, in the order given, unless `fileFirst`. */
async function uploadForm (roost: TestRoost, fields: Record<string, string>, image: Uint8Array | undefined, opts: { fileFirst?: boolean, token?: string | null } = {}): Promise<Reply> {
  const form = new FormData()
  const file = (): void => { if (image !== undefined) form.append('file', new Blob([image as Uint8Array<ArrayBuffer>]), 'image.bin') }
  if (opts.fileFirst === true) file()
  for (const [k, v] of Object.entries(fields)) form.append(k, v)
  if (opts.fileFirst !== true) file()
  const token = opts.token === undefined ? roost.adminToken : opts.token
  const headers: Record<string, string> = token === null ? {} : { authorization: `Bearer ${token}` }
  return await asReply(await fetch(roost.httpUrl + '/v1/firmware', { method: 'POST', headers, body: form }))
}

/** POST /v1/firmware with a raw application/octet-stream body (with its Content-Length). */
async function uploadRaw (roost: TestRoost, query: Record<string, string>, body: Uint8Array, token: string | null = roost.adminToken): Promise<Reply> {
  const headers: Record<string, string> = { 'content-type': 'application/octet-stream' }
  if (token !== null) headers.authorization = `Bearer ${token}`
  return await asReply(await fetch(roost.httpUrl + '/v1/firmware?' + new URLSearchParams(query).toString(), { method: 'POST', headers, body: body as Uint8Array<ArrayBuffer> }))
}

/** `total` random bytes in 64 KiB chunks made as they are taken, with `each MiB` called between; `digest()` at the end. */
function imageChunks (total: number, eachMiB: () => void = () => {}): { chunks: Iterable<Buffer>, digest (): string } {
  const hash = createHash('sha256')
  function * chunks (): Generator<Buffer> {
    for (let sent = 0; sent < total;) {
      if (sent % MiB === 0) eachMiB()
      const chunk = randomBytes(Math.min(64 * 1024, total - sent))
      sent += chunk.length
      hash.update(chunk)
      yield chunk
    }
  }
  return { chunks: chunks(), digest: () => hash.digest('hex') }
}

/** A multipart form around a streamed file part: fields first, then `file`. */
function * multipartChunks (boundary: string, fields: Record<string, string>, file: Iterable<Buffer>): Generator<Buffer> {
  yield Buffer.from(Object.entries(fields).map(([k, v]) => `--${boundary}\r\ncontent-disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`).join('') +
    `--${boundary}\r\ncontent-disposition: form-data; name="file"; filename="image.bin"\r\ncontent-type: application/octet-stream\r\n\r\n`)
  yield * file
  yield Buffer.from(`\r\n--${boundary}--\r\n`)
}

/**
 * POST /v1/firmware with a body streamed chunk by chunk (chunked transfer encoding), through node:http:
 * fetch (undici) keeps a first large streamed body alive for a while, which would blur the memory test.
 */
async function postStream (roost: TestRoost, query: Record<string, string>, contentType: string, chunks: Iterable<Buffer>): Promise<Reply> {
  const path = '/v1/firmware?' + new URLSearchParams(query).toString()
  return await new Promise<Reply>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: roost.httpPort, method: 'POST', path, headers: { authorization: `Bearer ${roost.adminToken}`, 'content-type': contentType } }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => {
        let body: unknown = text
        try { body = JSON.parse(text) } catch {}
        resolve({ status: res.statusCode ?? 0, body, headers: new Headers(res.headers as Record<string, string>) })
      })
    })
    req.on('error', reject)
    pipeline(Readable.from(chunks), req).catch(reject)
  })
}

async function uploadStream (roost: TestRoost, form: 'raw' | 'multipart', fields: Record<string, string>, image: Iterable<Buffer>): Promise<Reply> {
  if (form === 'raw') return await postStream(roost, fields, 'application/octet-stream', image)
  const boundary = 'roost' + randomBytes(8).toString('hex')
  return await postStream(roost, {}, `multipart/form-data; boundary=${boundary}`, multipartChunks(boundary, fields, image))
}

async function download (roost: TestRoost, url: string, headers: Record<string, string> = {}): Promise<{ status: number, bytes: Buffer, headers: Headers, body: any }> {
  const res = await fetch(url.startsWith('http') ? url : roost.httpUrl + url, { headers })
  const bytes = Buffer.from(await res.arrayBuffer())
  let body: unknown
  if ((res.headers.get('content-type') ?? '').includes('json')) body = JSON.parse(bytes.toString())
  return { status: res.status, bytes, headers: res.headers, body }
}

/** Names in the firmware folder: committed images and any temporary upload left behind. */
function firmwareFiles (roost: TestRoost): string[] {
  const dir = join(roost.dataDir, 'firmware')
  return existsSync(dir) ? readdirSync(dir).sort() : []
}

describe('firmware rules', () => {
  it.each([
    ['1.0.0', true], ['0.0.1', true], ['10.20.30', true], ['1.4.2-rc.1', true], ['2.0.0-alpha.beta+exp.sha.5114f85', true], ['1.0.0+20130313144700', true],
    ['1.0', false], ['01.0.0', false], ['1.0.0-', false], ['v1.0.0', false], ['1.0.0+', false], ['1.0.0-01', false], [' 1.0.0', false], ['1.0.0\n', false], ['', false],
  ])('"%s" is a semantic version: %s', (version, ok) => {
    expect(isSemver(version)).toBe(ok)
  })

  it.each([
    ['bytes=0-99', 1000, { kind: 'partial', start: 0, end: 99 }],
    ['bytes=500-', 1000, { kind: 'partial', start: 500, end: 999 }],
    ['bytes=-100', 1000, { kind: 'partial', start: 900, end: 999 }],
    ['bytes=-5000', 1000, { kind: 'partial', start: 0, end: 999 }],
    ['bytes=990-5000', 1000, { kind: 'partial', start: 990, end: 999 }],
    ['bytes=1000-', 1000, { kind: 'unsatisfiable' }],
    ['bytes=-0', 1000, { kind: 'unsatisfiable' }],
    ['bytes=5-2', 1000, { kind: 'full' }],
    ['bytes=0-1,5-6', 1000, { kind: 'full' }],
    ['items=0-1', 1000, { kind: 'full' }],
    ['bytes=-', 1000, { kind: 'full' }],
  ])('Range "%s" of %i bytes is %o', (header, size, answer) => {
    expect(parseRange(header, size)).toEqual(answer)
  })

  it('If-None-Match matches the ETag in a list, weakly, or as *', () => {
    expect(etagMatches('"abc"', '"abc"')).toBe(true)
    expect(etagMatches('"x", W/"abc"', '"abc"')).toBe(true)
    expect(etagMatches('*', '"abc"')).toBe(true)
    expect(etagMatches('"abd"', '"abc"')).toBe(false)
    expect(etagMatches(undefined, '"abc"')).toBe(false)
  })
})

describe('firmware', () => {
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost() })
  afterAll(async () => { await roost?.close() })

  it('a multipart upload is stored with its size, SHA-256, and an Ed25519 signature over the raw digest that verifies with the published key', async () => {
    const image = randomBytes(200_000)
    const res = await uploadForm(roost, { version: '1.4.2', hardware: 'esp32-s3', notes: 'fixes the Wi-Fi reconnect' }, image)
    expect(res.status).toBe(201)
    expect(res.body).toMatchObject({ version: '1.4.2', hardware: 'esp32-s3', notes: 'fixes the Wi-Fi reconnect', size: image.length, sha256: sha256(image), downloads: 0 })
    expect(res.body.id).toMatch(/^fw_/)

    const key = await roost.request('GET', '/v1/firmware/signing-key', undefined, null)
    expect(key.status).toBe(200)
    expect(key.body.algorithm).toBe('Ed25519')
    const digest = createHash('sha256').update(image).digest()
    const signature = Buffer.from(res.body.signature as string, 'base64')
    expect(verify(null, digest, createPublicKey(key.body.pem as string), signature)).toBe(true)
    // the raw 32-byte form is the same key, as a device would embed it
    const raw = Buffer.from(key.body.raw as string, 'base64')
    expect(raw.length).toBe(32)
    const fromRaw = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' })
    expect(verify(null, digest, fromRaw, signature)).toBe(true)
    // what is signed is the digest's bytes, not the image and not the hex text
    expect(verify(null, Buffer.from(sha256(image)), fromRaw, signature)).toBe(false)

    const stored = join(roost.dataDir, 'firmware', `${res.body.id as string}.bin`)
    expect(readFileSync(stored).equals(image)).toBe(true)
    expect(statSync(join(roost.dataDir, 'firmware-signing.pem')).mode & 0o777).toBe(0o600)
  })

  it('a raw application/octet-stream upload takes version, hardware and notes from the query', async () => {
    const image = randomBytes(70_000)
    const res = await uploadRaw(roost, { version: '2.0.0-rc.1', hardware: 'esp32-c3' }, image)
    expect(res.status).toBe(201)
    expect(res.body).toMatchObject({ version: '2.0.0-rc.1', hardware: 'esp32-c3', notes: null, size: image.length, sha256: sha256(image) })
    const chunked = imageChunks(300_000)
    const streamed = await uploadStream(roost, 'raw', { version: '2.0.1', hardware: 'esp32-c3', notes: 'sent chunked' }, chunked.chunks)
    expect(streamed.status).toBe(201)
    expect(streamed.body).toMatchObject({ size: 300_000, sha256: chunked.digest(), notes: 'sent chunked' })
  })

  it('a second image with the same hardware and version is refused with FIRMWARE_EXISTS, and nothing of it is kept', async () => {
    expect((await uploadForm(roost, { version: '3.0.0', hardware: 'dup-board' }, randomBytes(1000))).status).toBe(201)
    const before = firmwareFiles(roost)
    const again = [
      await uploadForm(roost, { version: '3.0.0', hardware: 'dup-board' }, randomBytes(1000)),
      await uploadForm(roost, { version: '3.0.0', hardware: 'dup-board' }, randomBytes(1000), { fileFirst: true }),
      await uploadRaw(roost, { version: '3.0.0', hardware: 'dup-board' }, randomBytes(1000)),
    ]
    for (const res of again) expect(res.body).toMatchObject({ statusCode: 409, code: 'FIRMWARE_EXISTS' })
    expect(firmwareFiles(roost)).toEqual(before)
    // another hardware may carry the same version
    expect((await uploadRaw(roost, { version: '3.0.0', hardware: 'dup-board-2' }, randomBytes(1000))).status).toBe(201)
  })

  it('a malformed version or hardware, an empty image or a missing part is refused with its code, and nothing is kept', async () => {
    const before = firmwareFiles(roost)
    const image = randomBytes(1000)
    const cases: Array<[Promise<Reply>, number, string]> = [
      [uploadForm(roost, { version: '1.0', hardware: 'b' }, image), 400, 'FIRMWARE_VERSION_INVALID'],
      [uploadForm(roost, { version: 'v1.0.0', hardware: 'b' }, image, { fileFirst: true }), 400, 'FIRMWARE_VERSION_INVALID'],
      [uploadRaw(roost, { version: '01.2.3', hardware: 'b' }, image), 400, 'FIRMWARE_VERSION_INVALID'],
      [uploadForm(roost, { version: '1.0.0', hardware: 'esp32/s3' }, image), 400, 'FIRMWARE_HARDWARE_INVALID'],
      [uploadForm(roost, { version: '1.0.0', hardware: 'x'.repeat(65) }, image, { fileFirst: true }), 400, 'FIRMWARE_HARDWARE_INVALID'],
      [uploadRaw(roost, { version: '1.0.0', hardware: 'esp 32' }, image), 400, 'FIRMWARE_HARDWARE_INVALID'],
      [uploadForm(roost, { version: '1.0.0', hardware: 'empty-board' }, new Uint8Array(0)), 400, 'FIRMWARE_EMPTY'],
      [uploadRaw(roost, { version: '1.0.0', hardware: 'empty-board' }, new Uint8Array(0)), 400, 'FIRMWARE_EMPTY'],
      [uploadForm(roost, { version: '1.0.0', hardware: 'no-file' }, undefined), 400, 'VALIDATION_FAILED'],
      [uploadForm(roost, { hardware: 'no-version' }, image), 400, 'VALIDATION_FAILED'],
      [uploadRaw(roost, { version: '1.0.0' }, image), 400, 'VALIDATION_FAILED'],
      [uploadForm(roost, { version: '1.0.0', hardware: 'long-notes', notes: 'n'.repeat(4001) }, image), 400, 'VALIDATION_FAILED'],
      [roost.request('POST', '/v1/firmware', { version: '1.0.0', hardware: 'json' }), 400, 'VALIDATION_FAILED'],
      [postStream(roost, {}, 'multipart/form-data; boundary=cutshort', [...multipartChunks('cutshort', { version: '1.0.0', hardware: 'cut-form' }, [image])].slice(0, 2)), 400, 'VALIDATION_FAILED'],
    ]
    for (const [pending, status, code] of cases) {
      const res = await pending
      expect(res.body, code).toMatchObject({ statusCode: status, code })
      expect(res.status).toBe(status)
    }
    expect(firmwareFiles(roost)).toEqual(before)
  })

  it('an upload cut off by the client leaves no file behind', async () => {
    const before = firmwareFiles(roost)
    for (const form of ['raw', 'multipart'] as const) {
      const boundary = 'roost' + randomBytes(8).toString('hex')
      const req = httpRequest({
        host: '127.0.0.1', port: roost.httpPort, method: 'POST', path: '/v1/firmware?version=5.0.0&hardware=cut',
        headers: { authorization: `Bearer ${roost.adminToken}`, 'content-type': form === 'raw' ? 'application/octet-stream' : `multipart/form-data; boundary=${boundary}` },
      })
      req.on('error', () => {}) // the connection is cut on purpose
      req.write(form === 'raw' ? randomBytes(MiB) : Buffer.concat([...multipartChunks(boundary, { version: '5.0.0', hardware: 'cut' }, [randomBytes(MiB)])].slice(0, 2)))
      // the temporary file appears, then the client goes away mid-image
      await eventually(() => firmwareFiles(roost).some(f => f.endsWith('.part')) ? true : undefined, 5000, 'the upload to start')
      req.destroy()
      await eventually(() => firmwareFiles(roost).length === before.length ? true : undefined, 5000, 'the temporary file to go')
    }
    expect(firmwareFiles(roost)).toEqual(before)
    expect((await roost.request('GET', '/v1/firmware?hardware=cut')).body.items).toEqual([])
  })

  it('lists with filters, gets one with a signed link, and deletes the record and its file', async () => {
    const a = (await uploadRaw(roost, { version: '1.0.0', hardware: 'list-a' }, randomBytes(100))).body
    const b = (await uploadRaw(roost, { version: '1.1.0', hardware: 'list-a' }, randomBytes(100))).body
    const c = (await uploadRaw(roost, { version: '1.0.0', hardware: 'list-b' }, randomBytes(100))).body
    expect((await roost.request('GET', '/v1/firmware?hardware=list-a')).body.items.map((f: { id: string }) => f.id)).toEqual([b.id, a.id])
    expect((await roost.request('GET', '/v1/firmware?hardware=list-a&version=1.0.0')).body.items.map((f: { id: string }) => f.id)).toEqual([a.id])
    expect((await roost.request('GET', '/v1/firmware?version=1.0.0')).body.items.map((f: { id: string }) => f.id)).toEqual(expect.arrayContaining([a.id, c.id]))
    const all = (await roost.request('GET', '/v1/firmware')).body.items.map((f: { id: string }) => f.id)
    expect(all).toEqual(expect.arrayContaining([a.id, b.id, c.id]))

    const one = await roost.request('GET', `/v1/firmware/${a.id as string}`)
    expect(one.status).toBe(200)
    expect(one.body).toMatchObject({ ...a, url: expect.stringMatching(new RegExp(`^${roost.httpUrl}/v1/firmware/${a.id as string}/download\\?exp=\\d+&sig=[A-Za-z0-9_-]{43}$`)) })
    const exp = Number(new URL(one.body.url as string).searchParams.get('exp'))
    expect(exp * 1000).toBeGreaterThan(Date.now() + 3500 * 1000) // an hour ahead
    expect(exp * 1000).toBeLessThan(Date.now() + 3700 * 1000)

    const file = join(roost.dataDir, 'firmware', `${a.id as string}.bin`)
    expect(existsSync(file)).toBe(true)
    expect((await roost.request('DELETE', `/v1/firmware/${a.id as string}`)).status).toBe(204)
    expect(existsSync(file)).toBe(false)
    expect((await roost.request('GET', `/v1/firmware/${a.id as string}`)).body).toMatchObject({ statusCode: 404, code: 'FIRMWARE_NOT_FOUND' })
    expect((await roost.request('DELETE', `/v1/firmware/${a.id as string}`)).body).toMatchObject({ statusCode: 404, code: 'FIRMWARE_NOT_FOUND' })
    // a link handed out before the deletion leads nowhere now
    expect((await download(roost, one.body.url as string)).body).toMatchObject({ statusCode: 404, code: 'FIRMWARE_NOT_FOUND' })
    // the same hardware and version may be uploaded again
    expect((await uploadRaw(roost, { version: '1.0.0', hardware: 'list-a' }, randomBytes(100))).status).toBe(201)
  })

  describe('downloads', () => {
    const image = randomBytes(3 * MiB + 12345)
    let id: string
    let url: string
    beforeAll(async () => {
      const res = await uploadRaw(roost, { version: '4.0.0', hardware: 'dl-board' }, image)
      expect(res.status).toBe(201)
      id = res.body.id as string
      url = (await roost.request('GET', `/v1/firmware/${id}`)).body.url as string
    })

    it('the whole image comes without a credential, with Content-Length, ETag (the SHA-256) and Accept-Ranges', async () => {
      const res = await download(roost, url)
      expect(res.status).toBe(200)
      expect(res.bytes.equals(image)).toBe(true)
      expect(res.headers.get('content-length')).toBe(String(image.length))
      expect(res.headers.get('content-type')).toBe('application/octet-stream')
      expect(res.headers.get('etag')).toBe(`"${sha256(image)}"`)
      expect(res.headers.get('accept-ranges')).toBe('bytes')
    })

    it('If-None-Match with the ETag answers 304 without a body', async () => {
      const res = await download(roost, url, { 'if-none-match': `"${sha256(image)}"` })
      expect(res.status).toBe(304)
      expect(res.bytes.length).toBe(0)
      expect(res.headers.get('etag')).toBe(`"${sha256(image)}"`)
      expect((await download(roost, url, { 'if-none-match': '"something-else"' })).status).toBe(200)
    })

    it.each([
      ['first bytes', 'bytes=0-99', 0, 99],
      ['a middle slice', 'bytes=1000000-1999999', 1_000_000, 1_999_999],
      ['a suffix', 'bytes=-4096', image.length - 4096, image.length - 1],
      ['an open end', `bytes=${image.length - 10}-`, image.length - 10, image.length - 1],
      ['an end past the image', `bytes=${image.length - 3}-${image.length + 100}`, image.length - 3, image.length - 1],
    ])('Range with %s answers 206 with exactly those bytes and Content-Range', async (_what, range, start, end) => {
      const res = await download(roost, url, { range })
      expect(res.status).toBe(206)
      expect(res.headers.get('content-range')).toBe(`bytes ${start}-${end}/${image.length}`)
      expect(res.headers.get('content-length')).toBe(String(end - start + 1))
      expect(res.bytes.equals(image.subarray(start, end + 1))).toBe(true)
    })

    it('a range outside the image answers 416 with Content-Range: bytes */size', async () => {
      for (const range of [`bytes=${image.length}-`, 'bytes=-0']) {
        const res = await download(roost, url, { range })
        expect(res.status).toBe(416)
        expect(res.headers.get('content-range')).toBe(`bytes */${image.length}`)
        expect(res.body).toMatchObject({ statusCode: 416, code: 'RANGE_NOT_SATISFIABLE' })
      }
    })

    it('an interrupted download resumed with Range reassembles to the exact SHA-256', async () => {
      const abort = new AbortController()
      const first = await fetch(url, { signal: abort.signal })
      expect(first.status).toBe(200)
      const got: Buffer[] = []
      let have = 0
      const reader = (first.body as ReadableStream<Uint8Array>).getReader()
      while (have < 500_000) {
        const { value, done } = await reader.read()
        if (done === true) throw new Error('the whole image arrived before the cut')
        got.push(Buffer.from(value))
        have += value.length
      }
      abort.abort() // the connection drops mid-image
      await reader.cancel().catch(() => {})
      const rest = await download(roost, url, { range: `bytes=${have}-`, 'if-range': `"${sha256(image)}"` })
      expect(rest.status).toBe(206)
      expect(rest.headers.get('content-range')).toBe(`bytes ${have}-${image.length - 1}/${image.length}`)
      expect(sha256(Buffer.concat([...got, rest.bytes]))).toBe(sha256(image))
    })

    it('a tampered link is refused with DOWNLOAD_SIGNATURE_INVALID; an expired genuine one with DOWNLOAD_EXPIRED', async () => {
      const u = new URL(url)
      const sig = u.searchParams.get('sig') as string
      const exp = u.searchParams.get('exp') as string
      const flip = (s: string): string => (s[0] === 'A' ? 'B' : 'A') + s.slice(1)
      const other = (await uploadRaw(roost, { version: '4.0.1', hardware: 'dl-board' }, randomBytes(10))).body.id as string
      const tampered = [
        `/v1/firmware/${id}/download?exp=${exp}&sig=${flip(sig)}`,
        `/v1/firmware/${id}/download?exp=${Number(exp) + 3600}&sig=${sig}`, // a longer life
        `/v1/firmware/${other}/download?exp=${exp}&sig=${sig}`, // another image
        `/v1/firmware/${id}/download?exp=${exp}&sig=${sig.slice(0, 20)}`,
      ]
      for (const t of tampered) {
        const res = await download(roost, t)
        expect(res.status, t).toBe(403)
        expect(res.body).toMatchObject({ code: 'DOWNLOAD_SIGNATURE_INVALID' })
      }
      // the same signature in hex is as good as base64url
      const hex = Buffer.from(sig, 'base64url').toString('hex')
      expect((await download(roost, `/v1/firmware/${id}/download?exp=${exp}&sig=${hex}`, { range: 'bytes=0-0' })).status).toBe(206)

      // a link signed two hours ago for one hour, with the data dir's own link secret
      const store = await openFirmwareStore({ dataDir: roost.dataDir, maxBytes: 1, urlSecret: readSecrets(roost.dataDir)?.urlSecret as string })
      const stale = store.signedDownloadUrl(id, Date.now() - 2 * 3600 * 1000, 3600 * 1000)
      const expired = await download(roost, stale)
      expect(expired.status).toBe(403)
      expect(expired.body).toMatchObject({ code: 'DOWNLOAD_EXPIRED' })
      // a fresh link from the same secret works: the secret is what the server uses
      expect((await download(roost, store.signedDownloadUrl(id, Date.now()), { range: 'bytes=0-0' })).status).toBe(206)
      // no credential is no way in either
      expect((await download(roost, `/v1/firmware/${id}/download`)).body).toMatchObject({ statusCode: 400, code: 'VALIDATION_FAILED' })
    })

    it('completed downloads are counted: a 200, or a 206 reaching the last byte; not a 304, a HEAD, a range short of the end or a refused link', async () => {
      const fresh = (await uploadRaw(roost, { version: '4.1.0', hardware: 'dl-board' }, image)).body.id as string
      const link = (await roost.request('GET', `/v1/firmware/${fresh}`)).body.url as string
      const etag = `"${sha256(image)}"`
      expect((await download(roost, link)).status).toBe(200) // +1
      expect((await download(roost, link, { range: 'bytes=0-99' })).status).toBe(206) // not to the end
      expect((await download(roost, link, { range: 'bytes=-100' })).status).toBe(206) // +1
      expect((await download(roost, link, { 'if-none-match': etag })).status).toBe(304)
      const head = await fetch(link, { method: 'HEAD' })
      expect(head.status).toBe(200)
      expect(head.headers.get('content-length')).toBe(String(image.length))
      expect((await download(roost, link.replace(/sig=./, 'sig=_'))).status).toBe(403)
      const counted = await eventually(async () => {
        const n = (await roost.request('GET', `/v1/firmware/${fresh}`)).body.downloads as number
        return n >= 2 ? n : undefined
      }, 5000, 'two counted downloads')
      expect(counted).toBe(2)
    })
  })

  it('only the admin may upload, list, get and delete: no credential is 401, a device token 403', async () => {
    const deviceToken = await roost.addDevice('fw-not-admin')
    const { id } = (await uploadRaw(roost, { version: '9.0.0', hardware: 'auth-board' }, randomBytes(100))).body as { id: string }
    const before = firmwareFiles(roost)
    for (const [token, status, code] of [[null, 401, 'AUTH_REQUIRED'], [deviceToken, 403, 'ADMIN_REQUIRED'], ['rat_wrong', 401, 'AUTH_INVALID']] as const) {
      expect((await uploadRaw(roost, { version: '9.0.1', hardware: 'auth-board' }, randomBytes(100_000), token)).body).toMatchObject({ statusCode: status, code })
      expect((await uploadForm(roost, { version: '9.0.1', hardware: 'auth-board' }, randomBytes(100_000), { token })).body).toMatchObject({ statusCode: status, code })
      expect((await roost.request('GET', '/v1/firmware', undefined, token)).body).toMatchObject({ statusCode: status, code })
      expect((await roost.request('GET', `/v1/firmware/${id}`, undefined, token)).body).toMatchObject({ statusCode: status, code })
      expect((await roost.request('DELETE', `/v1/firmware/${id}`, undefined, token)).body).toMatchObject({ statusCode: status, code })
    }
    expect(firmwareFiles(roost)).toEqual(before)
    // the public key needs no credential
    expect((await roost.request('GET', '/v1/firmware/signing-key', undefined, null)).status).toBe(200)
  })

  it('a 16 MiB upload is streamed: the process\'s RSS grows far less than the image', async () => {
    // V8 frees Buffers only once tens of MiB of them are garbage, so RSS would measure garbage rather than
    // what the platform holds. Collecting after every MiB sent makes it measure what is kept alive: an
    // upload held in memory would still show its 16 MiB.
    v8.setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    for (const [form, version] of [['raw', '16.0.0'], ['multipart', '16.0.1']] as const) {
      // the same route and form once with 2 MiB first, so first-use allocations are not counted
      expect((await uploadStream(roost, form, { version: version + '-warmup', hardware: 'rss-board' }, imageChunks(2 * MiB, gc).chunks)).status).toBe(201)
      const image = imageChunks(16 * MiB, gc)
      gc()
      const baseline = process.memoryUsage().rss
      let peak = baseline
      const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 5)
      let res: Reply
      try {
        res = await uploadStream(roost, form, { version, hardware: 'rss-board' }, image.chunks)
      } finally {
        clearInterval(sampler)
      }
      peak = Math.max(peak, process.memoryUsage().rss)
      expect(res.status).toBe(201)
      expect(res.body).toMatchObject({ size: 16 * MiB, sha256: image.digest() })
      const growth = peak - baseline
      console.log(`firmware upload (${form}, 16 MiB): RSS grew ${(growth / MiB).toFixed(1)} MiB`)
      expect(growth).toBeLessThan(8 * MiB)
    }
  })
})

describe('firmware size limit', () => {
  const LIMIT = 256 * 1024
  let roost: TestRoost
  beforeAll(async () => { roost = await startRoost({ env: { ROOST_FIRMWARE_MAX_BYTES: String(LIMIT) } }) })
  afterAll(async () => { await roost?.close() })

  it('an image over ROOST_FIRMWARE_MAX_BYTES is refused with 413 FIRMWARE_TOO_LARGE in every form, and no file is left behind', async () => {
    const over = randomBytes(LIMIT + 1)
    const big = randomBytes(4 * LIMIT)
    const cases: Array<[string, () => Promise<Reply>]> = [
      ['raw, Content-Length over the limit', () => uploadRaw(roost, { version: '1.0.0', hardware: 'big' }, over)],
      ['raw, chunked without a length', () => uploadStream(roost, 'raw', { version: '1.0.0', hardware: 'big' }, imageChunks(4 * LIMIT).chunks)],
      ['multipart, one byte over', () => uploadForm(roost, { version: '1.0.0', hardware: 'big' }, over)],
      ['multipart, far over', () => uploadForm(roost, { version: '1.0.0', hardware: 'big' }, big, { fileFirst: true })],
      ['multipart streamed', () => uploadStream(roost, 'multipart', { version: '1.0.0', hardware: 'big' }, imageChunks(4 * LIMIT).chunks)],
    ]
    for (const [what, send] of cases) {
      const res = await send()
      expect(res.body, what).toMatchObject({ statusCode: 413, code: 'FIRMWARE_TOO_LARGE' })
      expect(firmwareFiles(roost), what).toEqual([])
    }
    expect((await roost.request('GET', '/v1/firmware')).body.items).toEqual([])
  })

  it('an image of exactly the limit is taken', async () => {
    const image = randomBytes(LIMIT)
    const res = await uploadForm(roost, { version: '1.0.0', hardware: 'exact' }, image)
    expect(res.status).toBe(201)
    expect(res.body).toMatchObject({ size: LIMIT, sha256: sha256(image) })
    const raw = await uploadRaw(roost, { version: '1.0.1', hardware: 'exact' }, image)
    expect(raw.status).toBe(201)
  })
})
