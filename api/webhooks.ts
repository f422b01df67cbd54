// Webhook REST routes: register (secret shown once), list, get, delete, and each webhook's deliveries.

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { Delivery, DeliveryQuery, Webhook, WebhookCreate, WebhookCreated, WebhookParams, errorResponses } from '../schemas/rest.ts'
import { RoostError } from '../schemas/errors.ts'
import type { DeliveryRow, WebhookRow } from '../schemas/db/webhooks.ts'
import { createWebhook, deleteWebhook, getWebhook, listDeliveries, listWebhooks } from '../db/webhooks.ts'
import { authErrors } from './auth.ts'
import type { ApiContext } from './index.ts'

function view (w: WebhookRow): typeof Webhook.static {
  return { id: w.id, url: w.url, events: w.events, deviceIds: w.deviceIds, createdAt: w.createdAt }
}

function deliveryView (d: DeliveryRow): typeof Delivery.static {
  return {
    id: d.id, event: d.event, deviceId: d.deviceId, status: d.status, attempts: d.attempts, lastStatus: d.lastStatus, lastError: d.lastError,
    createdAt: d.createdAt, nextAttemptAt: d.status === 'pending' ? d.nextAttemptAt : null, finishedAt: d.finishedAt, body: d.body,
  }
}

export const webhookRoutes = (ctx: ApiContext): FastifyPluginAsyncTypebox => async app => {
  const { db, now } = ctx

  async function mustGet (id: string): Promise<WebhookRow> {
    const hook = await getWebhook(db, id)
    if (hook === undefined) throw new RoostError('WEBHOOK_NOT_FOUND', { id })
    return hook
  }

  app.post('/v1/webhooks', {
    config: { auth: 'admin' },
    schema: {
      summary: 'Register a webhook: matching events are POSTed as JSON, signed, and retried with backoff when the receiver fails',
      tags: ['webhooks'],
      body: WebhookCreate,
      response: { 201: WebhookCreated, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED']) },
    },
  }, async (request, reply) => {
    const hook = await createWebhook(db, { url: request.body.url, events: request.body.events, deviceIds: request.body.deviceIds ?? null }, now())
    await ctx.webhooks.reload()
    request.log.info({ webhookId: hook.id, url: hook.url, events: hook.events }, 'webhook registered')
    return reply.status(201).send({ ...view(hook), secret: hook.secret })
  })

  app.get('/v1/webhooks', {
    config: { auth: 'admin' },
    schema: { summary: 'Registered webhooks (without their secrets)', tags: ['webhooks'], response: { 200: Type.Object({ items: Type.Array(Webhook) }), ...errorResponses(authErrors('admin')) } },
  }, async () => ({ items: (await listWebhooks(db)).map(view) }))

  app.get('/v1/webhooks/:id', {
    config: { auth: 'admin' },
    schema: { summary: 'One webhook', tags: ['webhooks'], params: WebhookParams, response: { 200: Webhook, ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'WEBHOOK_NOT_FOUND']) } },
  }, async request => view(await mustGet(request.params.id)))

  app.delete('/v1/webhooks/:id', {
    config: { auth: 'admin' },
    schema: { summary: 'Remove a webhook and its delivery records', tags: ['webhooks'], params: WebhookParams, response: { 204: Type.Null(), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'WEBHOOK_NOT_FOUND']) } },
  }, async (request, reply) => {
    if (!await deleteWebhook(db, request.params.id)) throw new RoostError('WEBHOOK_NOT_FOUND', { id: request.params.id })
    await ctx.webhooks.reload()
    return reply.status(204).send(null)
  })

  app.get('/v1/webhooks/:id/deliveries', {
    config: { auth: 'admin' },
    schema: {
      summary: 'A webhook\'s deliveries, newest first, with status, attempts and the last error',
      tags: ['webhooks'],
      params: WebhookParams,
      querystring: DeliveryQuery,
      response: { 200: Type.Object({ items: Type.Array(Delivery) }), ...errorResponses([...authErrors('admin'), 'VALIDATION_FAILED', 'WEBHOOK_NOT_FOUND']) },
    },
  }, async request => {
    await mustGet(request.params.id)
    const rows = await listDeliveries(db, request.params.id, { status: request.query.status, limit: request.query.limit ?? 100 })
    return { items: rows.map(deliveryView) }
  })
}
