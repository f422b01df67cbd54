// Firmware REST routes: upload (multipart or raw, streamed to disk, signed), list, get, delete, the public
// signing key, and downloads by signed link with ETag and byte ranges.

import { open } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import fastifyMultipart from '@fastify/multipart'
import type { FastifyReply, FastifyRequest, FastifySchemaCompiler } from 'fastify'
import { Type } from '@sinclair/typebox'
import {
  Firmware, FirmwareDetail, FirmwareDownloadQuery, FirmwareListQuery, FirmwareParams, FirmwareSigningKey, FirmwareUploadFields,
  FirmwareUploadQuery, errorResponses,
} from '../schemas/rest.ts'
import { RoostError, type ErrorCode } from '../schemas/errors.ts'
import { FIRMWARE_NOTES_MAX, isHardware, isSemver } from '../schemas/firmware.ts'
import type { FirmwareRow } from '../schemas/db/firmware.ts'
import { countDownload, createFirmware, deleteFirmware, firmwareExists, firmwareInUse, getFirmware, listFirmware } from '../db/firmware.ts'
import { newId } from '../db/webhooks.ts'
import type { ReceivedImage } from './firmware-store.ts'
import { authErrors } from './auth.ts'
import { validatorCompiler, type ApiContext } from './index.ts'

export type RangeAnswer =
  | { readonly kind: 'full' }
  | { readonly kind: 'partial', readonly start: number, readonly end: number } // inclusive, as in Content-Range
  | { readonly kind: 'unsatisfiable' }

/**
 * What a `Range` header asks of an image of `size` bytes (RFC 9110 §14). One range of bytes is served;
 * anything else (other units, several ranges, a malformed or backwards range) is ignored and the whole
 * image sent, as §14.2 allows.
 */
export function parseRange (header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: 'full' }
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header)
  if (m === null) return { kind: 'full' }
  const [, first = '', last = ''] = m
  if (first === '' && last === '') return { kind: 'full' }
  if (first === '') {
    // a suffix: the last n bytes (§14.1.3)
    const n = Number(last)
    return n === 0 ? { kind: 'unsatisfiable' } : { kind: 'partial', start: Math.max(0, size - n), end: size - 1 }
  }
  const start = Number(first)
  if (last !== '' && Number(last) < start) return { kind: 'full' }
  if (start >= size) return { kind: 'unsatisfiable' }
  return { kind: 'partial', start, end: last === '' ? size - 1 : Math.min(Number(last), size - 1) }
}

/** Whether an `If-None-Match` header names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`. */
export function etagMatches (header: string | undefined, etag: string): boolean {
  if (header === undefined) return false
  if (header.trim() === '*') return true
  const opaque = (tag: string): string => tag.trim().replace(/^W\//, '')
  return header.split(',').some(t => opaque(t) === opaque(etag))
}

function view (f: FirmwareRow): typeof Firmware.static {
  return { id: f.id, version: f.version, hardware: f.hardware, notes: f.notes, size: f.size, sha256: f.sha256, signature: f.signature, createdAt: f.createdAt, downloads: f.downloads }
}

interface UploadFields { version?: string | undefined, hardware?: string | undefined, notes?: string | undefined }

/** Refuses missing or malformed metadata with its own code; returns it checked. */
function checkFields (f: UploadFields): { version: string, hardware: string, notes: string | null } {
  if (f.version === undefined) throw new RoostError('VALIDATION_FAILED', { detail: 'version is required' })
  if (f.hardware === undefined) throw new RoostError('VALIDATION_FAILED', { detail: 'hardware is required' })
  if (!isSemver(f.version)) throw new RoostError('FIRMWARE_VERSION_INVALID', { version: f.version.slice(0, 200) })
  if (!isHardware(f.hardware)) throw new RoostError('FIRMWARE_HARDWARE_INVALID', { hardware: f.hardware.slice(0, 200) })
  if (f.notes !== undefined && f.notes.length > FIRMWARE_NOTES_MAX) throw new RoostError('VALIDATION_FAILED', { detail: `notes must be at most ${FIRMWARE_NOTES_MAX} characters` })
  return { version: f.version, hardware: f.hardware, notes: f.notes ?? null }
}

// a multipart field can hold this many bytes before busboy truncates it: notes at four bytes a character
const FIELD_MAX_BYTES = FIRMWARE_NOTES_MAX * 4

const UPLOAD_ERRORS: ErrorCode[] = [
  ...authErrors('admin'), 'VALIDATION_FAILED', 'FIRMWARE_VERSION_INVALID', 'FIRMWARE_HARDWARE_INVALID', 'FIRMWARE_EMPTY', 'FIRMWARE_EXISTS', 'FIRMWARE_TOO_LARGE',
]
const DOWNLOAD_ERRORS: ErrorCode[] = ['VALIDATION_FAILED', 'DOWNLOAD_SIGNATURE_INVALID', 'DOWNLOAD_EXPIRED', 'FIRMWARE_NOT_FOUND', 'RANGE_NOT_SATISFIABLE']

export const firmwareRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, now, firmware: store } = ctx

  // multipart only in this plugin: nothing else takes uploads. The file limit is one byte past the store's,
  // so the store sees an oversized image as such; a field is cut at FIELD_MAX_BYTES and then refused.
  await app.register(fastifyMultipart, { limits: { fileSize: store.maxBytes + 1, fieldSize: FIELD_MAX_BYTES }, throwFileSizeLimit: false })
  // a raw image is left unread here and streamed by the route itself
  app.addContentTypeParser('application/octet-stream', (_request, _payload, done) => { done(null) })

  // The upload's body is read by the route (streamed to disk), never by the validator: its schema only
  // documents the two forms in OpenAPI. Parameters and query are validated as everywhere else.
  const validate = validatorCompiler()
  const uploadValidator: FastifySchemaCompiler<unknown> = req => req.httpPart === 'body' ? () => true : validate(req)

  async function mustGet (id: string): Promise<FirmwareRow> {
    const row = await getFirmware(db, id)
    if (row === undefined) throw new RoostError('FIRMWARE_NOT_FOUND', { id })
    return row
  }

  /** Reads the multipart form: fields as strings, the `file` part streamed into the store. */
  async function receiveMultipart (request: FastifyRequest, id: string): Promise<{ fields: UploadFields, image: ReceivedImage | undefined }> {
    const fields: Record<string, string> = {}
    let image: ReceivedImage | undefined
    const parts = request.parts()[Symbol.asyncIterator]()
    try {
      for (;;) {
        let next: IteratorResult<Awaited<ReturnType<typeof parts.next>>['value']>
        try {
          next = await parts.next()
        } catch (err) {
          // busboy's complaints about the form itself (truncated, malformed)
          throw new RoostError('VALIDATION_FAILED', { detail: 'multipart form: ' + (err as Error).message })
        }
        if (next.done === true) break
        const part = next.value
        if (part.type === 'field') {
          if (part.valueTruncated) throw new RoostError('VALIDATION_FAILED', { detail: `field ${part.fieldname} is longer than ${FIELD_MAX_BYTES} bytes` })
          fields[part.fieldname] = String(part.value)
          continue
        }
        if (part.fieldname !== 'file' || image !== undefined) {
          part.file.resume() // dropped, so the rest of the form is still read and the client answered
          throw new RoostError('VALIDATION_FAILED', { detail: 'the form takes one image, in the file field "file"' })
        }
        // when the metadata came first (as curl -F sends it in order), refuse it before storing a byte
        if (fields.version !== undefined && fields.hardware !== undefined) {
          try {
            const checked = checkFields(fields)
            if (await firmwareExists(db, checked.hardware, checked.version)) throw new RoostError('FIRMWARE_EXISTS', { version: checked.version, hardware: checked.hardware })
          } catch (err) {
            part.file.resume()
            throw err
          }
        }
        image = await store.receive(id, part.file).catch((err: NodeJS.ErrnoException) => {
          // a file system error is ours (500); anything else broke the form mid-image (it ended early)
          throw err.syscall !== undefined ? err : new RoostError('VALIDATION_FAILED', { detail: 'multipart form: ' + err.message })
        })
      }
    } catch (err) {
      if (image !== undefined) await store.remove(image.tempPath)
      throw err
    }
    return { fields: { version: fields.version, hardware: fields.hardware, notes: fields.notes }, image }
  }

  app.post('/v1/firmware', {
    config: { auth: 'admin' },
    validatorCompiler: uploadValidator,
    schema: {
      summary: 'Upload a firmware image: streamed to disk, hashed (SHA-256) and its digest signed (Ed25519)',
      description: 'Send a multipart form with the fields `version`, `hardware`, optional `notes`, and the image in the file field `file` ' +
        '(metadata first lets a bad upload be refused before it is stored), or the image as an `application/octet-stream` body with the metadata as query parameters. ' +
        'The reply\'s `signature` is the base64 Ed25519 signature (RFC 8032), with the key of `GET /v1/firmware/signing-key`, over exactly the 32 raw bytes of the image\'s SHA-256 digest; ' +
        '`sha256` is that digest in hex. Images over ROOST_FIRMWARE_MAX_BYTES are refused with 413 and nothing is kept.',
      tags: ['firmware'],
      querystring: FirmwareUploadQuery,
      body: {
        content: {
          'multipart/form-data': {
            schema: Type.Object({
              version: FirmwareUploadFields.version,
              hardware: FirmwareUploadFields.hardware,
              notes: Type.Optional(FirmwareUploadFields.notes),
              file: Type.String({ format: 'binary', description: 'the image' }),
            }),
          },
          'application/octet-stream': { schema: Type.String({ format: 'binary', description: 'the image; version, hardware and notes as query parameters' }) },
        },
      },
      response: { 201: Firmware, ...errorResponses(UPLOAD_ERRORS) },
    },
  }, async (request, reply) => {
    const id = newId('fw_')
    let fields: UploadFields
    let image: ReceivedImage | undefined
    if (request.isMultipart()) {
      ({ fields, image } = await receiveMultipart(request, id))
    } else if (request.headers['content-type']?.split(';')[0]?.trim().toLowerCase() === 'application/octet-stream') {
      fields = request.query
      const checked = checkFields(fields)
      const declared = Number(request.headers['content-length'])
      // an honest Content-Length over the limit is refused before anything is read or written
      if (declared > store.maxBytes) throw new RoostError('FIRMWARE_TOO_LARGE', { limit: store.maxBytes })
      if (await firmwareExists(db, checked.hardware, checked.version)) throw new RoostError('FIRMWARE_EXISTS', { version: checked.version, hardware: checked.hardware })
      image = await store.receive(id, request.raw as Readable)
    } else {
      throw new RoostError('VALIDATION_FAILED', { detail: 'send a multipart/form-data form or an application/octet-stream body' })
    }

    let committed = false
    try {
      const checked = checkFields(fields)
      if (image === undefined) throw new RoostError('VALIDATION_FAILED', { detail: 'the image is missing: send it in the file field "file"' })
      if (image.tooLarge) throw new RoostError('FIRMWARE_TOO_LARGE', { limit: store.maxBytes })
      if (image.size === 0) throw new RoostError('FIRMWARE_EMPTY')
      // the file takes its place before the row exists, so a listed image always has its bytes
      await store.commit(id, image)
      committed = true
      const row = await createFirmware(db, { id, ...checked, size: image.size, sha256: image.sha256.toString('hex'), signature: store.signDigest(image.sha256) }, now())
      if (row === undefined) throw new RoostError('FIRMWARE_EXISTS', { version: checked.version, hardware: checked.hardware })
      request.log.info({ firmwareId: id, version: row.version, hardware: row.hardware, size: row.size }, 'firmware uploaded')
      return await reply.status(201).send(view(row))
    } catch (err) {
      if (image !== undefined) await store.remove(committed ? store.path(id) : image.tempPath)
      throw err
    }
  })

  app.get('/v1/firmware', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Firmware images, newest first',
      tags: ['firmware'],
      querystring: FirmwareListQuery,
      response: { 200: Type.Object({ items: Type.Array(Firmware) }), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED']) },
    },
  }, async request => ({ items: (await listFirmware(db, request.query)).map(view) }))

  app.get('/v1/firmware/signing-key', {
    schema: {
      summary: 'The Ed25519 public key firmware signatures verify against (no credential needed)',
      description: 'Devices pin this key. Each firmware `signature` is an Ed25519 signature over the 32 raw bytes of the image\'s SHA-256 digest.',
      tags: ['firmware'],
      security: [],
      response: { 200: FirmwareSigningKey },
    },
  }, async () => {
    const jwk = store.publicKey.export({ format: 'jwk' })
    return {
      algorithm: 'Ed25519' as const,
      pem: store.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      raw: Buffer.from(jwk.x ?? '', 'base64url').toString('base64'),
      signs: 'the 32 raw bytes of the SHA-256 digest of the image (Ed25519, RFC 8032)',
    }
  })

  app.get('/v1/firmware/:id', {
    config: { auth: 'admin' },
    schema: {
      summary: 'One firmware image, with a freshly signed download link',
      tags: ['firmware'],
      params: FirmwareParams,
      response: { 200: FirmwareDetail, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'FIRMWARE_NOT_FOUND']) },
    },
  }, async request => {
    const row = await mustGet(request.params.id)
    // absolute on the host the caller reached us at; the link itself is the credential
    return { ...view(row), url: `${request.protocol}://${request.host}${store.signedDownloadUrl(row.id, now())}` }
  })

  app.delete('/v1/firmware/:id', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Delete a firmware image and its file',
      tags: ['firmware'],
      params: FirmwareParams,
      response: { 204: Type.Null(), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'FIRMWARE_NOT_FOUND', 'FIRMWARE_IN_USE']) },
    },
  }, async (request, reply) => {
    const { id } = request.params
    // a rollout still handing this image out (draft, running or paused) keeps it
    if (await firmwareInUse(db, id)) throw new RoostError('FIRMWARE_IN_USE', { id })
    if (!await deleteFirmware(db, id)) throw new RoostError('FIRMWARE_NOT_FOUND', { id })
    // a download still streaming keeps its open file; the name is gone at once
    await store.remove(store.path(id))
    request.log.info({ firmwareId: id }, 'firmware deleted')
    return reply.status(204).send(null)
  })

  app.get('/v1/firmware/:id/download', {
    schema: {
      summary: 'Download an image by signed link (from GET /v1/firmware/{id}); supports ETag and one byte Range',
      description: 'The link is the credential: `sig` is HMAC-SHA256 over `{id}:{exp}`, and the link stops working after `exp` (epoch seconds). ' +
        'Answers 200 with the whole image, 206 for a `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` (with `Content-Range`), 416 when the range lies outside the image, ' +
        '304 when `If-None-Match` names the ETag (the SHA-256 in quotes). A completed download (a 200, or a 206 that reaches the last byte) is counted.',
      tags: ['firmware'],
      security: [],
      params: FirmwareParams,
      querystring: FirmwareDownloadQuery,
      response: {
        200: { description: 'the whole image', content: { 'application/octet-stream': { schema: Type.String({ format: 'binary' }) } } },
        206: { description: 'the requested range of the image, with Content-Range', content: { 'application/octet-stream': { schema: Type.String({ format: 'binary' }) } } },
        304: Type.Null({ description: 'the image is unchanged: If-None-Match named its ETag' }),
        ...errorResponses(DOWNLOAD_ERRORS),
      },
    },
  }, async (request, reply) => {
    const { id } = request.params
    const { exp, sig } = request.query
    const check = store.checkDownloadLink(id, exp, sig, now())
    if (check === 'signature') throw new RoostError('DOWNLOAD_SIGNATURE_INVALID')
    if (check === 'expired') throw new RoostError('DOWNLOAD_EXPIRED', { expiredAt: new Date(exp * 1000).toISOString() })
    const row = await mustGet(id)
    return await sendImage(request, reply, row)
  })

  async function sendImage (request: FastifyRequest, reply: FastifyReply, row: FirmwareRow): Promise<FastifyReply> {
    const etag = `"${row.sha256}"`
    reply.header('etag', etag).header('accept-ranges', 'bytes').header('cache-control', 'private, no-transform')
    if (etagMatches(request.headers['if-none-match'], etag)) return await reply.status(304).send()

    const ifRange = request.headers['if-range'] as string | undefined
    // If-Range (RFC 9110 §13.1.5): the range only applies to the image the client started with
    const range = ifRange !== undefined && ifRange.trim() !== etag ? { kind: 'full' as const } : parseRange(request.headers.range, row.size)
    if (range.kind === 'unsatisfiable') {
      reply.header('content-range', `bytes */${row.size}`)
      throw new RoostError('RANGE_NOT_SATISFIABLE', { range: request.headers.range ?? '', size: row.size })
    }
    const start = range.kind === 'partial' ? range.start : 0
    const end = range.kind === 'partial' ? range.end : row.size - 1

    const file = await open(store.path(row.id)).catch((err: NodeJS.ErrnoException) => {
      // the row outlived its file only if someone removed it by hand; answer as if the image were gone
      if (err.code === 'ENOENT') throw new RoostError('FIRMWARE_NOT_FOUND', { id: row.id })
      throw err
    })
    const body = file.createReadStream({ start, end })
    if (request.method === 'GET' && end === row.size - 1) {
      // counted when the last byte has been handed to the socket; a client that drops out is not counted
      reply.raw.once('finish', () => {
        countDownload(db, row.id).catch((err: unknown) => { request.log.warn({ err, firmwareId: row.id }, 'download not counted') })
      })
    }
    if (range.kind === 'partial') reply.status(206).header('content-range', `bytes ${start}-${end}/${row.size}`)
    return await reply
      .type('application/octet-stream')
      .header('content-length', end - start + 1)
      .header('content-disposition', `attachment; filename="${row.hardware}-${row.version}.bin"`)
      .send(body)
  }
}
