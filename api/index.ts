// The API: Fastify with REST routes, OpenAPI docs, metrics and MQTT over WebSocket, built unstarted.

import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifySchemaCompiler } from 'fastify'
import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import fastifyWebsocket from '@fastify/websocket'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Config } from '../schemas/config.ts'
import { ERRORS, ERROR_CODES } from '../schemas/errors.ts'
import type { TelemetryLimits } from '../schemas/telemetry.ts'
import type { Database } from '../db/open.ts'
import type { BrokerPort } from './broker-port.ts'
import { installAuth } from './auth.ts'
import { installErrorHandling } from './errors.ts'
import { deviceRoutes } from './devices.ts'
import { telemetryRoutes } from './telemetry.ts'
import { stateRoutes } from './state.ts'
import { commandRoutes } from './commands.ts'
import { EventHub, eventRoutes } from './events.ts'
import { WebhookDispatcher } from './webhook-dispatch.ts'
import { webhookRoutes } from './webhooks.ts'
import { healthRoutes } from './health.ts'
import { mqttWebSocketRoute } from './mqtt-ws.ts'

export interface ApiDeps {
  readonly db: Database
  readonly log: Logger
  readonly registry: Registry
  readonly broker: BrokerPort
  readonly now?: () => number
  // where devices are told to connect (the broker's real port when it was started on port 0)
  readonly mqttPort?: number
}

/** What every route plugin receives. */
export interface ApiContext {
  readonly db: Database
  readonly registry: Registry
  readonly broker: BrokerPort
  readonly now: () => number
  readonly mqtt: { readonly host: string, readonly port: number }
  readonly telemetryLimits: TelemetryLimits
  readonly events: EventHub
  readonly eventsWindow: number
  readonly webhooks: WebhookDispatcher
}

// WebSocket frames may carry a whole MQTT packet plus a little framing; the MQTT byte guard then
// checks the packets themselves. Without this bound `ws` would buffer any frame a client announces.
const WS_FRAME_SLACK_BYTES = 64 * 1024

// Query strings and path parameters are text, so they are coerced to the schema's types ("5" → 5). JSON
// bodies are taken as sent: coercing them turned `{"name": null}` into "" and telemetry `null`/`true`/`[5]`
// into 0/1/5 (a union's first branch wins). The options are otherwise Fastify's defaults.
function validatorCompiler (): FastifySchemaCompiler<unknown> {
  const options = { useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false } as const
  // ajv-formats is CommonJS whose typings declare only a default export; its function is also its own `.default`
  const body = ajvFormats.default(new Ajv({ ...options, coerceTypes: false }))
  const text = ajvFormats.default(new Ajv({ ...options, coerceTypes: 'array' }))
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : text).compile(schema as object)
}

export async function buildApi (config: Config, deps: ApiDeps): Promise<FastifyInstance> {
  const adminToken = config.auth.adminToken
  if (adminToken === undefined) throw new Error('buildApi needs config.auth.adminToken (resolveSecrets fills it)')
  const app = Fastify({
    loggerInstance: deps.log as FastifyBaseLogger,
    // request ids in logs; never the Authorization header (pino's default request serializer omits headers)
    genReqId: () => Math.random().toString(36).slice(2, 10),
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(validatorCompiler())

  const ctx: ApiContext = {
    db: deps.db,
    registry: deps.registry,
    broker: deps.broker,
    now: deps.now ?? Date.now,
    mqtt: { host: config.broker.publicHost, port: deps.mqttPort ?? config.broker.mqttPort },
    telemetryLimits: config.telemetry,
    events: new EventHub(config.eventsWindow),
    eventsWindow: config.eventsWindow,
    webhooks: new WebhookDispatcher({ db: deps.db, log: deps.log.child({ part: 'webhooks' }), ...config.webhooks }),
  }
  await ctx.events.connect(deps.broker)
  await ctx.webhooks.start()
  ctx.events.listen(e => ctx.webhooks.onEvent(e))
  app.addHook('onClose', async () => { await ctx.webhooks.stop() })

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Roost API', version: '1', description: 'REST surface of Roost. Errors are `{statusCode, code, message}` with a stable `code`; MQTT refusals use the same catalogue (schema MqttError).' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'the admin token, or a device token on that device\'s endpoints' } },
        schemas: {
          MqttError: {
            type: 'object',
            description: 'payload on devices/{id}/errors when the broker refuses a publish or subscribe of that device',
            properties: {
              topic: { type: 'string' },
              code: { type: 'string', enum: ERROR_CODES.filter(c => ERRORS[c].surface !== 'rest') },
              message: { type: 'string' },
            },
            required: ['topic', 'code', 'message'],
          },
        },
      },
      security: [{ bearer: [] }],
    },
  })
  await app.register(fastifySwaggerUi, { routePrefix: '/docs' })
  await app.register(fastifyWebsocket, { options: { maxPayload: config.broker.maxPacketBytes + WS_FRAME_SLACK_BYTES } })

  installErrorHandling(app)
  installAuth(app, { adminToken, db: deps.db })

  await app.register(healthRoutes(ctx))
  await app.register(deviceRoutes(ctx))
  await app.register(telemetryRoutes(ctx))
  await app.register(stateRoutes(ctx))
  await app.register(commandRoutes(ctx))
  await app.register(eventRoutes(ctx))
  await app.register(webhookRoutes(ctx))
  await app.register(mqttWebSocketRoute(ctx))
  // unknown routes answer ROUTE_NOT_FOUND; documented here since no route of its own returns it
  app.get('/v1', {
    schema: {
      summary: 'API root: which version this is',
      tags: ['operations'],
      response: { 200: Type.Object({ name: Type.String(), version: Type.String() }), 404: Type.Object({ statusCode: Type.Integer(), code: Type.Unsafe<string>({ type: 'string', enum: ['ROUTE_NOT_FOUND'] }), message: Type.String() }, { description: 'any unknown path under /v1' }), 500: Type.Object({ statusCode: Type.Integer(), code: Type.Unsafe<string>({ type: 'string', enum: ['INTERNAL'] }), message: Type.String() }, { description: 'any route: an unexpected failure, logged with its request id' }) },
    },
  }, async () => ({ name: 'roost', version: '1' }))
  return app
}
