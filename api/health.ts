// Operations routes: /health for load balancers and /metrics for Prometheus (admin token).

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { Health, errorResponses } from '../schemas/rest.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

// a health check that hangs is worse than one that says "down"
const DB_PING_TIMEOUT_MS = 2000

export const healthRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  async function dbUp (): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), DB_PING_TIMEOUT_MS) })
    const ping = ctx.db.query('SELECT 1').then(() => true, () => false)
    const up = await Promise.race([ping, timeout])
    clearTimeout(timer)
    return up
  }

  app.get('/health', {
    schema: {
      summary: 'Liveness and dependencies; 503 when degraded',
      tags: ['operations'],
      response: { 200: Health, 503: Health },
    },
  }, async (_request, reply) => {
    const db = await dbUp() ? 'ok' : 'down'
    const broker = ctx.broker.healthy() ? 'ok' : 'down'
    const status = db === 'ok' && broker === 'ok' ? 'ok' : 'degraded'
    return reply.status(status === 'ok' ? 200 : 503).send({ status, db, broker })
  })

  app.get('/metrics', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Prometheus metrics (text exposition format)',
      tags: ['operations'],
      response: { 200: Type.String(), ...errorResponses(authErrors('admin')) },
    },
  }, async (_request, reply) => {
    const text = await ctx.registry.metrics()
    return reply.type(ctx.registry.contentType).send(text)
  })
}
