// /metrics and /health for `roost bridge` running alone, where no API serves them: the voice latency
// histograms (bridge/metrics.ts) and the process metrics, on ROOST_HTTP_PORT, with the same admin token as
// the API's /metrics. node:http rather than Fastify: two read-only routes do not need the API's stack.

import { createServer, type Server } from 'node:http'
import type { Registry } from 'prom-client'
import { secretEquals } from '../broker/identity.ts'
import { bearerOf } from '../api/auth.ts'
import { errorMessage, ERRORS, type ErrorCode } from '../schemas/errors.ts'

export interface OpsServer {
  readonly port: number
  close (): Promise<void>
}

/** Serves GET /metrics (admin token) and GET /health; anything else is ROUTE_NOT_FOUND. */
export async function serveBridgeOps (opts: { registry: Registry, adminToken: string | undefined, port: number, host: string, healthy: () => boolean }): Promise<OpsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    const fail = (code: ErrorCode, params: Record<string, string> = {}): void => {
      const statusCode = ERRORS[code].status
      res.writeHead(statusCode, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ statusCode, code, message: errorMessage(code, params) }))
    }
    if (req.method === 'GET' && path === '/health') {
      const ok = opts.healthy()
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ status: ok ? 'ok' : 'degraded', broker: ok ? 'ok' : 'down' }))
      return
    }
    if (req.method !== 'GET' || path !== '/metrics') return fail('ROUTE_NOT_FOUND', { method: req.method ?? '', url: path })
    // read as the API reads it (api/auth.ts)
    const token = bearerOf(req.headers.authorization)
    if (token === undefined) return fail('AUTH_REQUIRED')
    if (opts.adminToken === undefined || !secretEquals(token, opts.adminToken)) return fail('AUTH_INVALID')
    opts.registry.metrics().then(text => {
      res.writeHead(200, { 'content-type': opts.registry.contentType })
      res.end(text)
    }, () => fail('INTERNAL'))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port, opts.host, () => { server.off('error', reject); resolve() })
  })
  const address = server.address()
  return {
    port: typeof address === 'object' && address !== null ? address.port : opts.port,
    close: () => new Promise(resolve => { server.close(() => resolve()); server.closeAllConnections() }),
  }
}
