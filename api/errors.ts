// Turns every error a route throws into the catalogue's `{statusCode, code, message}` reply.

import type { FastifyError, FastifyInstance } from 'fastify'
import { RoostError, errorMessage, type ErrorCode } from '../schemas/errors.ts'

// postgres.js and Node socket codes that mean "the database is not reachable", not "the query is wrong"
const DB_DOWN_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT', '57P01', '57P03'])

export function isDbUnavailable (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && DB_DOWN_CODES.has(code)
}

function reply (code: ErrorCode, statusCode: number, message: string): { statusCode: number, code: ErrorCode, message: string } {
  return { statusCode, code, message }
}

export function installErrorHandling (app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | RoostError | Error, request, res) => {
    if (err instanceof RoostError) return res.status(err.statusCode).headers(err.headers).send(reply(err.code, err.statusCode, err.message))
    const fe = err as FastifyError
    if (fe.validation !== undefined) {
      return res.status(400).send(reply('VALIDATION_FAILED', 400, errorMessage('VALIDATION_FAILED', { detail: fe.message })))
    }
    if (isDbUnavailable(err)) {
      request.log.error({ err }, 'database unavailable')
      return res.status(503).send(reply('DB_UNAVAILABLE', 503, errorMessage('DB_UNAVAILABLE')))
    }
    if (fe.statusCode === 413) return res.status(413).send(reply('PAYLOAD_TOO_LARGE', 413, errorMessage('PAYLOAD_TOO_LARGE', { limit: String(request.routeOptions.bodyLimit ?? '') })))
    if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) {
      // body parser and content-type problems: the request is malformed
      return res.status(400).send(reply('VALIDATION_FAILED', 400, errorMessage('VALIDATION_FAILED', { detail: fe.message })))
    }
    request.log.error({ err }, 'request failed')
    return res.status(500).send(reply('INTERNAL', 500, errorMessage('INTERNAL')))
  })
  app.setNotFoundHandler((request, res) => {
    res.status(404).send(reply('ROUTE_NOT_FOUND', 404, errorMessage('ROUTE_NOT_FOUND', { method: request.method, url: request.url.split('?')[0] ?? '' })))
  })
}
